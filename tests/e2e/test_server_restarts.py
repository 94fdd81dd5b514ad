"""NATS and PostgreSQL restarted in the middle of the nightly cycle: services ride it out.

These tests own their servers (embedded nats-server and PostgreSQL from the wheels), so
restarting them disturbs nothing else on the machine.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.common.migrate import upgrade
from sigmabatch.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from tests.e2e.harness import System
from tests.e2e.scenario import run_scenario
from tests.e2e.test_faults import assert_same_state

pytestmark = pytest.mark.e2e


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats", port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "pg")
    server.start()
    try:
        upgrade(server.url)
        yield server
    finally:
        server.stop()


def restart_after(server, delay: float, down_for: float = 1.5):
    def fault(system: System) -> None:
        time.sleep(delay)
        server.stop()
        time.sleep(down_for)
        server.start()

    return fault


def test_nats_restarted_mid_run(service_env, own_nats: EmbeddedNats, reference_digest) -> None:
    system = System(dict(service_env, NATS_URL=own_nats.url, SIGMABATCH_MAX_DELIVER="20"))
    try:
        digest = run_scenario(system, {"after_second_trigger": restart_after(own_nats, 0.3)})
        assert_same_state(system, digest, reference_digest)
    finally:
        system.stop_all()


def test_postgres_restarted_mid_run(
    service_env, own_postgres: EmbeddedPostgres, reference_digest
) -> None:
    system = System(dict(service_env, DATABASE_URL=own_postgres.url, SIGMABATCH_MAX_DELIVER="20"))
    try:
        digest = run_scenario(system, {"after_second_trigger": restart_after(own_postgres, 0.3)})
        assert_same_state(system, digest, reference_digest)
    finally:
        system.stop_all()
