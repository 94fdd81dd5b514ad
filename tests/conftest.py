"""Test fixtures on real servers.

Where the servers come from, in order: `NATS_URL` / `DATABASE_URL` when set (this machine's
PostgreSQL and NATS, and CI's), else testcontainers when a Docker engine answers, else the
embedded servers of `sigmabatch.embedded` (the nats-server and PostgreSQL wheels).

Isolation: each test gets its own database (cloned from a template migrated once per session)
and its own bus prefix (its own streams and subjects), so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats
import pytest
from nats.js.errors import NotFoundError

from libs.common import bus
from libs.common.config import Settings
from libs.common.db import asyncpg_dsn, dispose_engines, normalize_url
from libs.common.migrate import upgrade
from libs.common.service import ServiceContext, connect_context

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"


@dataclass(frozen=True)
class Servers:
    nats_url: str
    admin_database_url: str  # a database we may CREATE/DROP other databases from


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(normalize_url(url))
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    nats_url = os.environ.get("NATS_URL")
    database_url = os.environ.get("DATABASE_URL")
    stack = contextlib.ExitStack()
    tmp = Path(tempfile.mkdtemp(prefix="sigmabatch-test-"))
    try:
        if (not nats_url or not database_url) and _docker_available():
            from testcontainers.core.container import DockerContainer
            from testcontainers.postgres import PostgresContainer

            if not database_url:
                pg = stack.enter_context(PostgresContainer("postgres:16", driver="asyncpg"))
                database_url = pg.get_connection_url()
            if not nats_url:
                container = stack.enter_context(
                    DockerContainer("nats:2.10").with_command("-js").with_exposed_ports(4222)
                )
                nats_url = (
                    f"nats://{container.get_container_host_ip()}:{container.get_exposed_port(4222)}"
                )
        if not nats_url or not database_url:
            from sigmabatch.embedded import EmbeddedNats, EmbeddedPostgres

            if not nats_url:
                nats_url = stack.enter_context(EmbeddedNats(tmp / "nats")).url
            if not database_url:
                database_url = stack.enter_context(EmbeddedPostgres(tmp / "pg")).url
        yield Servers(nats_url=nats_url, admin_database_url=normalize_url(database_url))
    finally:
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def _admin_execute(servers: Servers, *statements: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(servers.admin_database_url))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def template_database(servers: Servers) -> Iterator[str]:
    """A database migrated to head once; each test clones it (CREATE DATABASE ... TEMPLATE)."""
    name = f"sb_tmpl_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin_execute(servers, f'CREATE DATABASE "{name}"'))
    upgrade(_with_database(servers.admin_database_url, name))
    try:
        yield name
    finally:
        asyncio.run(_admin_execute(servers, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def empty_database_url(servers: Servers) -> Iterator[str]:
    """A fresh, unmigrated database (for migration tests)."""
    name = f"sb_e_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin_execute(servers, f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(servers.admin_database_url, name)
    finally:
        asyncio.run(_admin_execute(servers, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def database_url(servers: Servers, template_database: str) -> Iterator[str]:
    """This test's own migrated database."""
    name = f"sb_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin_execute(servers, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
    try:
        yield _with_database(servers.admin_database_url, name)
    finally:
        asyncio.run(_admin_execute(servers, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _delete_streams(nats_url: str, topology: bus.Topology) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for stream in (topology.jobs_stream, topology.events_stream, topology.advisories_stream,
                       f"KV_{topology.provider_limits_bucket}"):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(stream)
    finally:
        await nc.close()


@pytest.fixture
def bus_prefix(servers: Servers) -> Iterator[str]:
    """This test's own subjects and streams; deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    yield prefix
    asyncio.run(_delete_streams(servers.nats_url, bus.Topology(prefix)))


@pytest.fixture
def settings(servers: Servers, database_url: str, bus_prefix: str) -> Settings:
    """Settings pointing at this test's database and bus prefix (short timeouts for tests)."""
    return Settings(
        DATABASE_URL=database_url,
        NATS_URL=servers.nats_url,
        SIGMABATCH_BUS_PREFIX=bus_prefix,
        MARKET_DATA_PROVIDER="sample",
        SIGMABATCH_ACK_WAIT_SECONDS=5.0,
        SIGMABATCH_JOB_STALE_SECONDS=5.0,
        SIGMABATCH_JOB_HEARTBEAT_SECONDS=1.0,
        SIGMABATCH_MAX_DELIVER=3,
    )


@pytest.fixture
def service_env(settings: Settings) -> dict[str, str]:
    """Environment for a service subprocess of this test (see tests/processes.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        DATABASE_URL=settings.require_database_url(),
        NATS_URL=settings.require_nats_url(),
        SIGMABATCH_BUS_PREFIX=settings.bus_prefix,
        MARKET_DATA_PROVIDER=settings.market_data_provider,
        SIGMABATCH_ACK_WAIT_SECONDS=str(settings.ack_wait_seconds),
        SIGMABATCH_JOB_STALE_SECONDS=str(settings.job_stale_after_seconds),
        SIGMABATCH_JOB_HEARTBEAT_SECONDS=str(settings.job_heartbeat_seconds),
        SIGMABATCH_MAX_DELIVER=str(settings.max_deliver),
        PYTHONPATH=str(REPO_ROOT),
    )
    return env


@pytest.fixture
async def ctx(settings: Settings) -> AsyncIterator[ServiceContext]:
    """A connected service context (NATS + DB + streams) for in-process handler tests."""
    context = await connect_context("test", settings)
    try:
        yield context
    finally:
        with contextlib.suppress(Exception):
            await context.nc.close()
        await dispose_engines()
