"""Faults injected into the nightly cycle; each run must end in the clean run's exact state.

Equality with the reference digest is the whole assertion: every batch date, price, beta,
snapshot and exposure present once with the clean run's values (nothing lost, nothing
duplicated). CI runs one seed per fault; `SIGMABATCH_FULL_FAULTS=1` runs every seed
(docs/reliability.md has the figures).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.e2e.harness import System
from tests.e2e.scenario import FIRST_TARGET, SECOND_TARGET, run_scenario

pytestmark = pytest.mark.e2e

FULL = os.environ.get("SIGMABATCH_FULL_FAULTS") == "1"
SEEDS = list(range(1, 6)) if FULL else [1]


# The job types whose rows show a service in the middle of its work.
WORK_OF = {
    "symbol_batch": ("symbol_batch",),
    "portfolio_refresh": (
        "portfolio_refresh",
        "portfolio_refresh_chunk",
        "portfolio_refresh_request",
    ),
}
KILLS: list[dict[str, Any]] = []  # what each kill interrupted, printed at the end of the run


def running_jobs(system: System, service: str) -> int:
    types = WORK_OF.get(service)
    if not types:
        return 0
    rows = system.query(
        "SELECT count(*) AS n FROM batch_run_history WHERE status = 'running' "
        "AND job_type = ANY(:types)",
        types=list(types),
    )
    return rows[0]["n"]


def kill_and_restart(service: str, seed: int, window: float = 0.3):
    """A fault: SIGKILL `service` at a random point of its work, then restart it.

    For services that record jobs, the kill waits until one of their jobs is running, then a
    random delay within `window` s; whether the kill caught the job running is recorded.
    """

    def fault(system: System) -> None:
        rng = random.Random(f"{service}:{seed}")
        if service in WORK_OF:
            deadline = time.monotonic() + 10
            while not running_jobs(system, service) and time.monotonic() < deadline:
                time.sleep(0.02)
        time.sleep(rng.uniform(0.0, window))
        interrupted = running_jobs(system, service)
        system.kill(service)
        KILLS.append({"service": service, "seed": seed, "jobs_running_at_kill": interrupted})
        time.sleep(rng.uniform(0.0, 0.5))
        system.restart(service)

    return fault


@pytest.fixture(scope="module", autouse=True)
def report_kills():
    yield
    if KILLS:
        mid = sum(1 for k in KILLS if k["jobs_running_at_kill"])
        print(f"\nkill -9 faults: {len(KILLS)}, with a job of the killed service running: {mid}")


def assert_integrity(system: System) -> None:
    found = system.integrity()
    if any(found.values()):
        running = system.query(
            "SELECT job_type, job_key, worker_id, started_at, heartbeat_at, attempts "
            "FROM batch_run_history WHERE status = 'running'")
        pytest.fail(f"lost or doubled work: {found}\njobs still running: {running}\n"
                    f"{system.logs()}")


def assert_same_state(system: System, digest: dict[str, Any], reference: dict[str, Any]) -> None:
    for key in reference:
        assert digest[key] == reference[key], f"{key} differs from the clean run"
    assert_integrity(system)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "service,point",
    [
        ("symbol_batch", "after_first_trigger"),
        ("symbol_batch", "after_second_trigger"),
        ("portfolio_refresh", "after_second_trigger"),
        ("onboarding", "after_upload"),
        ("status_api", "after_upload"),
    ],
)
def test_kill_9_then_restart_loses_and_duplicates_nothing(
    system: System, reference_digest, service: str, point: str, seed: int
) -> None:
    digest = run_scenario(system, {point: kill_and_restart(service, seed)})
    assert_same_state(system, digest, reference_digest)


def test_nightly_trigger_fired_ten_times_by_two_cron_hosts(
    system: System, reference_digest
) -> None:
    def storm(target):
        def fault(system: System) -> None:
            for i in range(9):
                system.trigger(target, requested_by=f"cron-{'ab'[i % 2]}")
            # The second cron host runs the real CLI, as its crontab line does.
            env = dict(system.env)
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "sigmabatch.cli",
                    "trigger",
                    "nightly",
                    "--date",
                    target.isoformat(),
                ],
                cwd=REPO_ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr

        return fault

    digest = run_scenario(
        system,
        {"after_first_trigger": storm(FIRST_TARGET), "after_second_trigger": storm(SECOND_TARGET)},
    )
    assert_same_state(system, digest, reference_digest)
    runs = system.query(
        "SELECT job_key, count(*) AS n FROM batch_run_history WHERE job_type = 'symbol_batch' "
        "AND status IN ('completed', 'partial') GROUP BY job_key"
    )
    assert runs and all(r["n"] == 1 for r in runs)


# A table each service's jobs write in the middle of their work, and the job types that do:
# holding its writes keeps such a job running (a slow database), so the kill lands mid-job
# however fast the machine is. (The refresh's plan job writes no snapshot: it publishes the
# chunks and finishes, so it is not one of them.)
WRITES_OF = {
    "symbol_batch": ("symbol_factor_exposures", ("symbol_batch",)),
    "portfolio_refresh": ("portfolio_snapshots",
                          ("portfolio_refresh_chunk", "portfolio_refresh_request")),
}


def kill_the_owner(system: System, service: str, *, delay: float = 0.0,
                   held: threading.Event | None = None,
                   timeout: float = 180.0) -> dict[str, Any]:
    """SIGKILL the replica of `service` that owns a running job while that job waits on a
    write the test holds back (its row names the owner's pid in `worker_id`), `delay` s after
    it started waiting; the row must still be `running` after the kill, then the writes are
    let go and a survivor takes over. `held` is set once the writes are held."""
    table, writers = WRITES_OF[service]
    deadline = time.monotonic() + timeout
    with system.writes_held(table) as writes:
        if held is not None:
            held.set()
        while time.monotonic() < deadline:
            rows = writes.query(
                "SELECT job_type, job_key, worker_id FROM batch_run_history "
                "WHERE status = 'running' AND job_type = ANY($1::text[]) "
                "AND worker_id IS NOT NULL", list(writers))
            pids = {p.process.pid: i for i, p in enumerate(system.processes[service])
                    if p.process is not None and p.process.poll() is None}
            owned = [(r, pids[pid]) for r in rows
                     if (pid := int(r["worker_id"].split(":")[1])) in pids]
            if owned and writes.waiters():
                time.sleep(delay)
                row, replica = owned[0]
                system.kill(service, replica)
                still = writes.query(
                    "SELECT status FROM batch_run_history WHERE job_type = $1 AND job_key = $2 "
                    "ORDER BY started_at DESC LIMIT 1", row["job_type"], row["job_key"])
                kill = {"service": service, "job": f"{row['job_type']} {row['job_key']}",
                        "jobs_running_at_kill": int(still[0]["status"] == "running")}
                KILLS.append(kill)
                return kill
            time.sleep(0.02)
    raise AssertionError(f"no job of {service} waited on {table} within {timeout} s:\n"
                         f"{system.logs()}")


@pytest.mark.parametrize("seed", SEEDS)
def test_two_replicas_of_batch_and_refresh_one_killed_mid_run(
    system: System, reference_digest, seed: int
) -> None:
    """Two replicas of symbol_batch and of portfolio_refresh; the replica running the batch
    job, then the one running a refresh job, is killed while the job runs (checked after the
    kill: the row is still `running`, taken over later by the surviving replica)."""
    kills: list[dict[str, Any]] = []
    failures: list[BaseException] = []
    held = threading.Event()
    delay = random.Random(seed).uniform(0.0, 0.3)

    def add_replicas(system: System) -> None:
        system.start("symbol_batch")
        system.start("portfolio_refresh")

    def kill_owners() -> None:
        try:
            kills.append(kill_the_owner(system, "symbol_batch", delay=delay, held=held))
            kills.append(kill_the_owner(system, "portfolio_refresh", delay=delay))
        except BaseException as exc:
            failures.append(exc)
        finally:
            held.set()

    killer = threading.Thread(target=kill_owners)

    def hold_the_batch_then_trigger(system: System) -> None:
        # The batch's writes are held before the trigger: a 33-symbol batch job can be done
        # in 0.2 s, before a hook after the trigger could hold anything.
        killer.start()
        assert held.wait(30)

    def killed(system: System) -> None:
        killer.join()
        if failures:
            raise failures[0]

    digest = run_scenario(system, {"after_first_trigger": add_replicas,
                                   "before_second_trigger": hold_the_batch_then_trigger,
                                   "before_digest": killed})
    assert_same_state(system, digest, reference_digest)
    assert all(k["jobs_running_at_kill"] for k in kills), kills
