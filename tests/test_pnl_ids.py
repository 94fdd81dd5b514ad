"""Regression: portfolio ids of mixed Python types (str from one source, UUID from another,
an empty previous-snapshot frame) must not break the P&L merges."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pandas as pd

from libs.common.pnl import compute_refresh


def test_snapshot_with_string_ids_and_uuid_ids_in_previous_and_flows() -> None:
    portfolio = str(uuid.uuid4())
    positions = pd.DataFrame(
        {
            "position_id": [uuid.uuid4()],
            "portfolio_id": pd.array([portfolio], dtype="string"),
            "symbol": ["AAPL"],
            "quantity": [Decimal("10")],
            "entry_price": [Decimal("100")],
            "entry_date": [dt.date(2024, 1, 2)],
            "exit_date": [None],
            "exit_price": [None],
            "investment_class": ["PUBLIC"],
        }
    )
    portfolios = pd.DataFrame(
        {"portfolio_id": pd.array([portfolio], dtype="string"), "equity_balance": [Decimal("1000")]}
    )
    prices = pd.DataFrame(
        {"symbol": ["AAPL", "AAPL"], "date": [dt.date(2024, 1, 2), dt.date(2024, 1, 3)], "price": [100.0, 110.0]}
    )
    flows = pd.DataFrame(
        {"portfolio_id": [uuid.UUID(portfolio)], "flow_date": [dt.date(2024, 1, 3)], "amount": [Decimal("5")]}
    )
    previous = pd.DataFrame(
        {
            "portfolio_id": [uuid.UUID(portfolio)],
            "snapshot_date": [dt.date(2024, 1, 2)],
            "equity": [Decimal("1000")],
            "cumulative_pnl": [Decimal("0")],
        }
    )
    result = compute_refresh(dt.date(2024, 1, 3), portfolios, positions, prices, previous, flows)
    assert len(result.snapshots) == 1
    row = result.snapshots.iloc[0]
    assert row["daily_pnl_cents"] == 10_000  # (110 - 100) x 10
    assert row["equity_cents"] == 110_500  # 1000 + 100 + the 5 deposited
