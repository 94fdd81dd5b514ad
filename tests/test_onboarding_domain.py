"""Pure onboarding rules: progress figures, default equity, final status."""

from __future__ import annotations

from decimal import Decimal

from libs.common.domain.equity import net_entry_value as default_equity
from libs.common.domain.onboarding import progress
from libs.common.domain.statuses import onboarding_final_status as final_status
from libs.common.portfolio_csv import parse_portfolio_csv
from tests.test_api_helpers import csv_bytes


def test_progress_while_symbols_are_fetched():
    p = progress(symbols_total=4, symbols_settled=1, snapshot_requested=False,
                 snapshot_done=False)
    assert (p.current_phase, p.phases_completed, p.percent) == (2, 1, 28.8)
    assert (p.phase_current, p.phase_total, p.phase_unit) == (1, 4, "symbols")
    assert p.phase_states == ("completed", "running", "pending")


def test_progress_instant_and_done():
    waiting = progress(symbols_total=0, symbols_settled=0, snapshot_requested=True,
                       snapshot_done=False)
    assert (waiting.current_phase, waiting.percent, waiting.phase_unit) == (3, 85.0, "snapshots")
    done = progress(symbols_total=3, symbols_settled=3, snapshot_requested=True,
                    snapshot_done=True)
    assert (done.phases_completed, done.percent, done.phase_current) == (3, 100.0, 1)


def test_progress_failed_snapshot():
    p = progress(symbols_total=1, symbols_settled=1, snapshot_requested=True,
                 snapshot_done=False, failed=True)
    assert p.phase_states == ("completed", "completed", "failed") and p.current_phase == 3


def test_default_equity_is_net_entry_value_with_option_multiplier():
    parsed = parse_portfolio_csv(csv_bytes(
        "AAPL,10,100.00,2025-06-30,,,,,,,,", "MSFT,-4,50.00,2025-06-30,,,,,,,,",
        ",2,3.10,2025-06-30,OPTIONS,,AAPL,200,2025-08-15,CALL,,"))
    assert default_equity(parsed.positions) == Decimal("1420.00")  # 1000 - 200 + 2*3.10*100


def test_final_status():
    assert final_status([]) == "completed"
    assert final_status(["HZNP"]) == "partial"
    assert final_status([], snapshot_failed=True) == "failed"
