"""The domain rulebook (libs/common/domain): each rule defined once, and used everywhere."""

from __future__ import annotations

import datetime as dt
import pathlib
import re

import pandas as pd

from libs.common import pnl
from libs.common.domain.statuses import (
    JobStatus,
    OnboardingStatus,
    batch_final_status,
    onboarding_final_status,
)
from libs.common.domain.symbols import (
    InvestmentClass,
    detect_investment_class,
    market_data_symbol,
    provider_exclusion,
)
from libs.common.portfolio_csv import parse_portfolio_csv
from tests.test_api_helpers import csv_bytes

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_explicit_public_class_beats_the_name_heuristic() -> None:
    # REIT / FUND are real tickers; uploaded as PUBLIC they are fetched and priced.
    parsed = parse_portfolio_csv(csv_bytes(
        "REIT,10,20.00,2025-06-30,PUBLIC,,,,,,,", "FUND,5,8.00,2025-06-30,PUBLIC,,,,,,,",
        "PRIVATE_FUND_A,1,50000,2025-06-30,,,,,,,,"))
    assert parsed.ok, parsed.problems
    reit, fund, private = parsed.positions
    assert reit.investment_class is InvestmentClass.PUBLIC and reit.market_data_symbol == "REIT"
    assert fund.market_data_symbol == "FUND"
    assert private.investment_class is InvestmentClass.PRIVATE
    assert private.market_data_symbol is None
    # Blank class: the name heuristic still detects private holdings.
    assert detect_investment_class("BLACKSTONE_REIT", False) is InvestmentClass.PRIVATE
    assert detect_investment_class("SPAXX", False) is InvestmentClass.PUBLIC  # cash, not private


def test_public_reit_is_priced_by_pnl_not_carried() -> None:
    day1, day2 = dt.date(2025, 7, 1), dt.date(2025, 7, 2)
    positions = pd.DataFrame([{
        "position_id": "r", "portfolio_id": "P", "symbol": "REIT", "quantity": 10,
        "entry_price": 20.0, "entry_date": day1, "exit_date": None, "exit_price": None,
        "investment_class": "PUBLIC",
    }])
    prices = pd.DataFrame({"symbol": ["REIT", "REIT"], "date": [day1, day2],
                           "price": [21.0, 22.5]})
    ports = pd.DataFrame({"portfolio_id": ["P"], "equity_balance": [1000]})
    first = pnl.compute_refresh(day1, ports, positions, prices)
    previous = pd.DataFrame({"portfolio_id": ["P"], "snapshot_date": [day1],
                             "equity": [1000], "cumulative_pnl": [0]})
    second = pnl.compute_refresh(day2, ports, positions, prices, previous)
    row = second.positions.iloc[0]
    assert first.positions.iloc[0]["price_source"] == pnl.SOURCE_MARKET
    assert row["price_source"] == pnl.SOURCE_MARKET and row["daily_pnl"] == 15.0  # 1.5 × 10


def test_never_sent_to_a_provider() -> None:
    for symbol in ("PRIVATE_FUND_A", "SPY_C450_20240315", "CASH", "SPAXX", "AAPL250815P00200000"):
        assert provider_exclusion(symbol) is not None, symbol
    assert provider_exclusion("BLACKSTONE", "PRIVATE") == "private asset"
    assert provider_exclusion("REIT", "PUBLIC") is None
    assert market_data_symbol("X", "OPTIONS", None, "SPY") == "SPY"
    assert market_data_symbol("VMFXX", "PUBLIC") is None
    assert market_data_symbol("ABC", "PUBLIC", "CASH") is None


def test_final_status_rules() -> None:
    assert onboarding_final_status([]) == OnboardingStatus.COMPLETED == "completed"
    assert onboarding_final_status(["X"]) == "partial"
    assert onboarding_final_status([], snapshot_failed=True) == "failed"
    assert batch_final_status(0) is JobStatus.COMPLETED and batch_final_status(2) == "partial"


def _sources() -> list[pathlib.Path]:
    return [p for d in ("libs", "services") for p in (ROOT / d).rglob("*.py")]


def test_each_rule_is_written_once() -> None:
    """The copies that drifted (cash pattern, private markers, multiplier, final status) are gone."""
    patterns = {
        r"\[A-Z\]\{3\}XX": "libs/common/domain/symbols.py",
        r"PRIVATE_MARKERS = \(": "libs/common/domain/symbols.py",
        r"OPTION_MULTIPLIER = 100": "libs/common/domain/options.py",
        r"class InvestmentClass\b": "libs/common/domain/symbols.py",
        r"\"partial\" if .* else \"completed\"": None,
        r"def provider_exclusion\b": "libs/common/domain/symbols.py",
    }
    for pattern, home in patterns.items():
        found = sorted(str(p.relative_to(ROOT)) for p in _sources()
                       if re.search(pattern, p.read_text()))
        assert found == ([home] if home else []), (pattern, found)


def test_an_expired_option_is_accepted_with_a_warning() -> None:
    parsed = parse_portfolio_csv(csv_bytes(
        ",10,5.00,2024-03-01,OPTIONS,,SPY,500,2024-06-21,CALL,,",
        ",10,5.00,2024-03-01,OPTIONS,,SPY,500,2024-06-21,PUT,2024-06-01,4.00",
        ",10,5.00,2024-03-01,OPTIONS,,SPY,500,2027-06-18,CALL,,"),
        today=dt.date(2026, 11, 27))
    assert parsed.ok, parsed.problems
    (warning,) = parsed.warnings  # the exited one and the live one are not warned about
    assert (warning.row, warning.column) == (2, "Expiration Date")
    assert "expired on 2024-06-21" in warning.message and "intrinsic" in warning.message
