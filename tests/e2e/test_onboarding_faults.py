"""Onboarding faults with the shipped settings (AckWait 30 s, stale 120 s, MaxDeliver 5):

1. kill -9 of the onboarding worker while it waits for the vendor (async onboarding of an
   unknown symbol). The vendor's latency is injected (SIGMABATCH_PROVIDER_LATENCY) and every
   call it receives is logged (SIGMABATCH_PROVIDER_CALL_LOG), so the kill is seen to land
   mid-fetch. JetStream redelivers the unacked message after AckWait, the restarted worker
   takes the dead owner's job row over (its liveness lock died with it) and the portfolio
   gets its first snapshot exactly once.
2. kill -9 of status_api in the middle of the first snapshot it makes inside the upload
   request (every symbol known). A test transaction holds a lock the snapshot's write needs,
   so the kill lands while the snapshot transaction is open. Nothing of it may be committed;
   the snapshot request was committed with the upload, so the onboarding coordinator's
   reconciler re-publishes it and portfolio_refresh makes the snapshot, once.

CI runs one seed per fault; `SIGMABATCH_FULL_FAULTS=1` runs five (docs/reliability.md).
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.common.market_data.faults import read_call_log
from tests.e2e.harness import System, run
from tests.test_api_helpers import csv_bytes, seed_known_symbols, stock_rows

pytestmark = pytest.mark.e2e

FULL = os.environ.get("SIGMABATCH_FULL_FAULTS") == "1"
SEEDS = list(range(1, 6)) if FULL else [1]
LATENCY = 8.0  # seconds the vendor takes per call: the window the kill lands in


def wait_recorded(system: System, portfolio_id: str) -> None:
    """Until the coordinator has recorded the outcome (within ~1 s of the snapshot)."""
    system.wait_until("the onboarding outcome recorded", lambda: bool(system.query(
        "SELECT 1 FROM portfolio_onboarding WHERE portfolio_id = CAST(:p AS uuid) "
        "AND finished_at IS NOT NULL", p=portfolio_id)), timeout=30)


def snapshot_facts(system: System, portfolio_id: str) -> dict[str, Any]:
    snapshots = system.query(
        "SELECT snapshot_date, is_complete FROM portfolio_snapshots WHERE portfolio_id = "
        "CAST(:p AS uuid)", p=portfolio_id)
    ready_lines = system.query(
        "SELECT count(*) AS n FROM onboarding_activity WHERE portfolio_id = CAST(:p AS uuid) "
        "AND message LIKE 'First snapshot for % is ready%'", p=portfolio_id)[0]["n"]
    refresh_jobs = system.query(
        "SELECT status FROM batch_run_history WHERE job_type = 'portfolio_refresh_request' "
        "AND job_key LIKE :k", k=f"{portfolio_id}:%")
    positions = system.query(
        "SELECT count(*) AS n FROM position_snapshots WHERE portfolio_id = CAST(:p AS uuid)",
        p=portfolio_id)[0]["n"]
    return {"snapshots": [(str(r["snapshot_date"]), r["is_complete"]) for r in snapshots],
            "ready_lines": ready_lines, "refresh_jobs": sorted(r["status"] for r in refresh_jobs),
            "position_snapshots": positions}


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_9_of_the_onboarding_worker_mid_fetch(system: System, tmp_path: Path, seed: int):
    calls = tmp_path / "vendor-calls.log"
    system.env.update(SIGMABATCH_PROVIDER_LATENCY=str(LATENCY),
                      SIGMABATCH_PROVIDER_CALL_LOG=str(calls))
    as_of = run(seed_known_symbols(system.database_url, ["AAPL"]))
    for name in ("status_api", "onboarding", "portfolio_refresh"):
        system.start(name)
    system.wait_api()
    system.login()
    upload = tmp_path / "kill.csv"
    upload.write_bytes(csv_bytes(*stock_rows(["AAPL", "ZZKIL"])))
    created = system.upload(upload, name=f"kill-{seed}")
    assert created["status"] == "running"
    pid = created["portfolio_id"]

    system.wait_until("the vendor call for ZZKIL", lambda: any(
        "ZZKIL" in symbols for _, _, symbols in read_call_log(calls)), timeout=60)
    time.sleep(random.Random(seed).uniform(0.0, LATENCY - 3.0))
    running = system.query("SELECT count(*) AS n FROM batch_run_history WHERE "
                           "job_type = 'symbol_onboard' AND job_key = 'ZZKIL' AND "
                           "status = 'running'")[0]["n"]
    system.kill("onboarding")
    killed_at = time.monotonic()
    assert running == 1  # the kill landed mid-fetch: the job was running, the vendor answering
    system.restart("onboarding")
    final = system.wait_onboarded(pid, timeout=240)
    resumed_after = time.monotonic() - killed_at

    assert (final["status"], final["snapshot_date"]) == ("completed", as_of.isoformat()), final
    wait_recorded(system, pid)
    facts = snapshot_facts(system, pid)
    assert facts["snapshots"] == [(as_of.isoformat(), True)]
    assert facts["ready_lines"] == 1 and facts["refresh_jobs"] == ["completed"], facts
    price_calls = [t for t, method, symbols in read_call_log(calls)
                   if method == "prices" and "ZZKIL" in symbols]
    assert len(price_calls) == 2  # the killed attempt and the resumed one, no more
    jobs = system.query("SELECT status FROM batch_run_history WHERE job_type = 'symbol_onboard' "
                        "AND job_key = 'ZZKIL' ORDER BY started_at")
    assert [j["status"] for j in jobs] == ["completed"], jobs  # the dead owner's row taken over
    # Resumed within AckWait (30 s) plus the vendor's latency and a margin, not after 120 s.
    assert resumed_after < 30 + LATENCY + 60, resumed_after
    print(f"\nonboarding kill seed {seed}: completed {resumed_after:.1f}s after the kill")


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_9_of_status_api_mid_first_snapshot(system: System, tmp_path: Path, seed: int):
    as_of = run(seed_known_symbols(system.database_url, ["AAPL", "MSFT"]))
    for name in ("status_api", "onboarding", "portfolio_refresh"):
        system.start(name)
    system.wait_api()
    token = system.login()
    name = f"instant-kill-{seed}"
    data = csv_bytes(*stock_rows(["AAPL", "MSFT"]))
    answer: dict[str, Any] = {}

    def post() -> None:
        try:
            with httpx.Client(base_url=system.api_url, timeout=120,
                              headers={"Authorization": f"Bearer {token}"}) as client:
                answer["response"] = client.post(
                    "/api/v1/portfolios", files={"file": ("p.csv", data, "text/csv")},
                    data={"name": name})
        except httpx.HTTPError as exc:
            answer["error"] = exc

    # Writers of portfolio_snapshots wait behind the held lock: the in-request snapshot stops there.
    with system.writes_held("portfolio_snapshots") as held:
        request = threading.Thread(target=post)
        request.start()
        deadline = time.monotonic() + 60
        while not held.waiters():
            assert time.monotonic() < deadline, system.logs()
            time.sleep(0.05)
        time.sleep(random.Random(seed).uniform(0.0, 0.5))
        system.kill("status_api")
        request.join(timeout=30)
    assert "response" not in answer, answer  # the request died with its process
    rows = system.query("SELECT id FROM portfolios WHERE name = :n", n=name)
    assert len(rows) == 1  # the upload itself was committed before the snapshot started
    pid = str(rows[0]["id"])

    # The killed backend's transaction ends when PostgreSQL notices the client is gone.
    def settled() -> bool:
        return not system.query(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'")

    system.wait_until("the killed request's transaction to end", settled, timeout=30)
    half = snapshot_facts(system, pid)
    # Nothing half-written: no snapshot slot, no position rows, no snapshot job left running.
    assert half["snapshots"] == [] and half["position_snapshots"] == 0, half
    assert "running" not in half["refresh_jobs"], half

    killed_at = time.monotonic()
    system.restart("status_api")
    system.wait_api()
    final = system.wait_onboarded(pid, timeout=150)
    recovered_after = time.monotonic() - killed_at
    assert (final["status"], final["snapshot_date"]) == ("completed", as_of.isoformat()), final
    wait_recorded(system, pid)
    facts = snapshot_facts(system, pid)
    assert facts["snapshots"] == [(as_of.isoformat(), True)], facts
    assert facts["ready_lines"] == 1 and facts["refresh_jobs"] == ["completed"], facts
    print(f"\nin-request snapshot kill seed {seed}: snapshot made {recovered_after:.1f}s after "
          "the kill (by the coordinator's reconciler and portfolio_refresh)")
