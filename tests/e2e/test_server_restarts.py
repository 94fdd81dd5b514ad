"""NATS and PostgreSQL restarted in the middle of the nightly cycle: services ride it out.

These tests own their servers (embedded nats-server and PostgreSQL from the wheels), so
restarting them disturbs nothing else on the machine.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.common.migrate import upgrade
from sigmabatch.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from tests.conftest import REPO_ROOT
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


def test_nats_down_30_seconds_mid_run(
    service_env, own_nats: EmbeddedNats, reference_digest
) -> None:
    system = System(dict(service_env, NATS_URL=own_nats.url))
    try:
        digest = run_scenario(
            system, {"after_second_trigger": restart_after(own_nats, 0.3, down_for=30.0)}
        )
        assert_same_state(system, digest, reference_digest)
    finally:
        system.stop_all()


def test_postgres_restarted_mid_run(
    service_env, own_postgres: EmbeddedPostgres, reference_digest
) -> None:
    system = System(dict(service_env, DATABASE_URL=own_postgres.url))
    try:
        digest = run_scenario(system, {"after_second_trigger": restart_after(own_postgres, 0.3)})
        assert_same_state(system, digest, reference_digest)
    finally:
        system.stop_all()


def test_postgres_down_longer_than_the_retry_budget_then_failed_work_is_redriven(
    service_env, own_postgres: EmbeddedPostgres, reference_digest
) -> None:
    """PostgreSQL stays down past every retry (shipped MaxDeliver 5, naks 1+5+15+60 s): the
    nightly request is stranded at MaxDeliver without a dead letter (nothing can be written).
    Once the server is back, the MAX_DELIVERIES advisory consumer records it as a failed job
    with its message, and `sigmabatch jobs retry` re-drives it: the cycle then ends in the
    clean run's state. Nothing is lost silently."""
    system = System(dict(service_env, DATABASE_URL=own_postgres.url))
    retried: list[str] = []

    def outage_then_redrive(system: System) -> None:
        restart_after(own_postgres, 0.3, down_for=BUDGET + 20)(system)

        def failures() -> list[dict]:
            return system.query(
                "SELECT f.id FROM batch_run_history f WHERE f.status = 'failed' "
                "AND NOT EXISTS (SELECT 1 FROM batch_run_history o WHERE o.job_type = f.job_type "
                "AND o.job_key = f.job_key AND o.started_at > f.started_at)")

        system.wait_until("the stranded request recorded as a failed job",
                          lambda: bool(failures()), timeout=120)
        for row in failures():
            result = subprocess.run(
                [sys.executable, "-m", "sigmabatch.cli", "jobs", "retry", str(row["id"])],
                cwd=REPO_ROOT, env=system.env, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            retried.append(str(row["id"]))

    try:
        digest = run_scenario(system, {"after_second_trigger": outage_then_redrive})
        assert retried, "nothing was recorded as failed"
        assert_same_state(system, digest, reference_digest)
    finally:
        system.stop_all()


# The shipped retry budget of a handler failing fast (PostgreSQL refusing connections).
BUDGET = sum((1.0, 5.0, 15.0, 60.0))
