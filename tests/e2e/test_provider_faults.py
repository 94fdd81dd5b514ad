"""A provider that hangs for one symbol and returns garbage for another, in the real batch.

The run must end `partial` naming both symbols with their reasons, write no invalid bar,
and complete every other symbol; the portfolios holding them are still onboarded and
refreshed for every date (issue 12).
"""

from __future__ import annotations

import pytest

from tests.e2e.harness import System
from tests.e2e.scenario import (
    FIRST_DATES,
    FIRST_TARGET,
    SECOND_DATES,
    SECOND_TARGET,
    WATERMARK,
    portfolio_files,
    symbols_of,
)

pytestmark = pytest.mark.e2e


def test_timeouts_and_garbage_give_partial_with_reasons_and_nothing_invalid_written(
    service_env: dict[str, str],
) -> None:
    env = dict(
        service_env,
        SIGMABATCH_PROVIDER_FAULTS="VTI:timeout,XLK:garbage",
        SIGMABATCH_PROVIDER_TIMEOUT="3",
    )
    system = System(env)
    try:
        symbols = symbols_of(portfolio_files())
        assert {"VTI", "XLK"} <= set(symbols)
        system.start_all()
        system.seed_universe(symbols)
        system.set_watermark(WATERMARK)
        system.trigger(FIRST_TARGET)
        system.wait_until("batch dates", lambda: set(FIRST_DATES) <= set(system.batch_dates()))

        rows = system.query(
            "SELECT batch_date, status, symbols_failed, failures FROM symbol_batch_dates "
            "WHERE batch_date = ANY(:d) ORDER BY batch_date",
            d=FIRST_DATES,
        )
        for row in rows:
            assert row["status"] == "partial" and row["symbols_failed"] == 2
            assert "timed out" in row["failures"]["VTI"]
            assert "invalid prices" in row["failures"]["XLK"]
        bad = system.query(
            "SELECT count(*) AS n FROM market_data_cache WHERE symbol IN ('VTI', 'XLK') "
            "OR NOT (adj_close > 0 AND close > 0) OR adj_close = 'NaN'::float8"
        )
        assert bad[0]["n"] == 0
        healthy = [s for s in symbols if s not in ("VTI", "XLK")]
        betas = system.query(
            "SELECT calculation_date, count(DISTINCT symbol) AS n FROM symbol_factor_exposures "
            "WHERE symbol = ANY(:s) GROUP BY calculation_date ORDER BY 1",
            s=healthy,
        )
        assert [b["calculation_date"] for b in betas] == FIRST_DATES
        assert all(b["n"] == len(healthy) for b in betas)
        events = system.query(
            "SELECT status, count(*) AS n FROM batch_run_history WHERE job_type = 'symbol_batch' "
            "GROUP BY status"
        )
        assert {e["status"] for e in events} == {"partial"}

        # The portfolios holding the failing symbols still onboard and refresh every night.
        system.login("alice")
        for path in portfolio_files():
            status = system.wait_onboarded(system.upload(path, name=path.stem)["portfolio_id"])
            assert status["status"] in ("completed", "partial"), status
        system.trigger(SECOND_TARGET)
        system.wait_for_cycle(SECOND_DATES, portfolios=2)
        snapshots = system.query(
            "SELECT p.name, s.snapshot_date, s.stale_symbols FROM portfolio_snapshots s "
            "JOIN portfolios p ON p.id = s.portfolio_id WHERE s.is_complete "
            "AND s.snapshot_date = ANY(:d) ORDER BY 1, 2", d=SECOND_DATES)
        assert len(snapshots) == 2 * len(SECOND_DATES)
        # the symbols without any price are named on the snapshots of the portfolios holding them
        named = {s for row in snapshots for s in (row["stale_symbols"] or [])}
        assert named & {"VTI", "XLK"}, snapshots
    finally:
        system.stop_all()
