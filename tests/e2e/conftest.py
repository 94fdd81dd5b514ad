"""End-to-end fixtures: a deployment per test, and one clean reference run per session."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from libs.common import bus
from tests.conftest import REPO_ROOT, Servers, _admin_execute, _delete_streams, _with_database
from tests.e2e.harness import System, shipped
from tests.e2e.scenario import run_scenario


def _env(database_url: str, nats_url: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        DATABASE_URL=database_url,
        NATS_URL=nats_url,
        SIGMABATCH_BUS_PREFIX=prefix,
        MARKET_DATA_PROVIDER="sample",
        PYTHONPATH=str(REPO_ROOT),
    )
    return shipped(env)


@pytest.fixture
def system(service_env: dict[str, str]) -> Iterator[System]:
    deployment = System(shipped(service_env))
    try:
        yield deployment
    finally:
        deployment.stop_all()


@pytest.fixture(scope="session")
def reference_digest(servers: Servers, template_database: str) -> dict[str, Any]:
    """The digest of the scenario run once with no fault: what every faulty run must equal."""
    name = f"sb_ref_{uuid.uuid4().hex[:10]}"
    prefix = f"r{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin_execute(servers, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
    deployment = System(
        _env(_with_database(servers.admin_database_url, name), servers.nats_url, prefix)
    )
    try:
        return run_scenario(deployment)
    finally:
        deployment.stop_all()
        asyncio.run(_delete_streams(servers.nats_url, bus.Topology(prefix)))
        asyncio.run(_admin_execute(servers, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """An e2e test waits out the shipped AckWait (30 s) after each kill and may include the
    session's reference run: it gets 15 minutes, not the unit tests' 5."""
    for item in items:
        if "tests/e2e/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.timeout(900))
