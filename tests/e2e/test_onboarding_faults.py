"""Async onboarding (a symbol nobody had) with the onboarding worker killed mid-fetch.

The upload queues the unknown symbol as a durable job; the worker is SIGKILLed while the
job runs; with the shipped AckWait (30 s) the redelivery reaches the restarted worker, which
takes the dead owner's row over at once (its liveness lease died with it) and finishes: the
portfolio ends `completed` with its first snapshot, the symbol fetched once.
"""

from __future__ import annotations

import time

import pytest

from libs.common.portfolio_csv import HEADER_LINE
from tests.e2e.harness import System
from tests.e2e.scenario import FIRST_DATES, FIRST_TARGET, WATERMARK, portfolio_files, symbols_of
from tests.e2e.test_faults import KILLS, assert_integrity

pytestmark = pytest.mark.e2e

NEW_SYMBOL = "IBM"  # not in the seeded universe: onboarded asynchronously
CSV = (f"{HEADER_LINE}\nSPY,10,400.00,2025-06-30,PUBLIC,ETF,,,,,,\n"
       f"{NEW_SYMBOL},20,150.00,2025-06-30,PUBLIC,STOCK,,,,,,\n").encode()


def test_async_onboarding_survives_kill_9_of_the_onboarding_worker(system: System) -> None:
    symbols = symbols_of(portfolio_files())
    assert NEW_SYMBOL not in symbols
    system.start_all()
    system.seed_universe(symbols)
    system.set_watermark(WATERMARK)
    system.login("alice")
    system.trigger(FIRST_TARGET)
    system.wait_for_cycle(FIRST_DATES, portfolios=0)

    with system.client() as client:
        created = client.post("/api/v1/portfolios",
                              files={"file": ("new.csv", CSV, "text/csv")}, data={"name": "new"})
    assert created.status_code == 201, created.text
    assert created.json()["mode"] == "v2_async"
    portfolio_id = created.json()["portfolio_id"]

    def onboard_running() -> bool:
        rows = system.query("SELECT status FROM batch_run_history WHERE job_type = "
                            "'symbol_onboard' AND job_key = :s", s=NEW_SYMBOL)
        return any(r["status"] == "running" for r in rows)

    system.wait_until("the symbol's onboarding job", onboard_running, timeout=60)
    system.kill("onboarding")
    KILLS.append({"service": "onboarding", "seed": 1, "jobs_running_at_kill": int(
        onboard_running())})
    time.sleep(0.5)
    system.restart("onboarding")
    status = system.wait_onboarded(portfolio_id, timeout=240)
    assert status["status"] == "completed", status
    jobs = system.query("SELECT status, attempts FROM batch_run_history WHERE job_type = "
                        "'symbol_onboard' AND job_key = :s ORDER BY started_at", s=NEW_SYMBOL)
    assert [j["status"] for j in jobs] == ["completed"], jobs  # one row, taken over
    assert jobs[0]["attempts"] == 2
    prices = system.query("SELECT count(*) AS n FROM market_data_cache WHERE symbol = :s",
                          s=NEW_SYMBOL)
    assert prices[0]["n"] > 0
    assert_integrity(system)
