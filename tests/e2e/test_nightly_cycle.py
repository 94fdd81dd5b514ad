"""The whole nightly cycle as four real processes: trigger → backfill → refresh."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from tests.e2e.harness import System
from tests.e2e.scenario import FIRST_DATES, SECOND_DATES, run_scenario
from tests.e2e.test_faults import assert_integrity

pytestmark = pytest.mark.e2e


def test_trigger_backfills_every_missed_session_and_snapshots_every_portfolio(
    system: System, reference_digest
) -> None:
    digest = run_scenario(system)
    assert digest == reference_digest  # deterministic: the sample provider and the math

    dates = [row[0] for row in digest["batch_dates"]]
    assert dates == FIRST_DATES + SECOND_DATES  # weekend skipped, nothing twice
    assert_integrity(system)

    # Betas for every date; every portfolio has one complete snapshot per date from its first.
    assert [row[0] for row in digest["betas"]] == dates
    snapshots = system.query(
        "SELECT p.name, s.snapshot_date, s.equity, s.daily_pnl, s.cumulative_pnl, s.is_complete "
        "FROM portfolio_snapshots s JOIN portfolios p ON p.id = s.portfolio_id "
        "ORDER BY p.name, s.snapshot_date"
    )
    by_portfolio: dict[str, list[dict]] = {}
    for row in snapshots:
        by_portfolio.setdefault(row["name"], []).append(row)
    assert len(by_portfolio) == 2
    for rows in by_portfolio.values():
        assert [r["snapshot_date"] for r in rows] == [FIRST_DATES[-1], *SECOND_DATES]
        assert all(r["is_complete"] for r in rows)
        assert rows[0]["daily_pnl"] == 0  # first day: no jump to the entry price
        for previous, current in zip(rows, rows[1:], strict=False):  # equity roll-forward
            assert current["equity"] == previous["equity"] + current["daily_pnl"]
            assert current["cumulative_pnl"] == previous["cumulative_pnl"] + current["daily_pnl"]
        assert rows[-1]["daily_pnl"] != Decimal(0)

    # Exposures at both levels for the last date.
    last = SECOND_DATES[-1]
    assert any(r[1] == last for r in digest["portfolio_exposures"])
    assert dict(digest["position_exposures"]).get(last, 0) > 0

    # Every job of the cycle is visible, none left running.
    jobs = system.query("SELECT job_type, status FROM batch_run_history")
    assert {"symbol_batch"} <= {j["job_type"] for j in jobs}
    assert not [j for j in jobs if j["status"] == "running"]
    assert isinstance(dates[0], dt.date)
