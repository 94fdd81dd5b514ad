"""Equity: the capital a portfolio's returns and factor weights are measured against.

``equity_t = equity_prev + daily P&L + capital flows + valuation adjustments``;
``daily_return = daily P&L / equity_prev``; a position's factor weight is its (delta-adjusted)
market value / equity. The first snapshot starts from the equity the upload states
(``equity_source = "stated"``) or, when it states none, from the net market value of the
positions on the first snapshot date (longs − shorts + option marks + carried assets;
``equity_source = "net_market_value"``), so an unlevered long-only book has weights summing
to 1. A book whose net value is ≤ 0 has no such default and must state its equity.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from enum import StrEnum
from typing import Protocol


class EquitySource(StrEnum):
    STATED = "stated"  # the upload's equity_balance
    NET_MARKET_VALUE = "net_market_value"  # net market value at the first snapshot date


class _Valued(Protocol):
    @property
    def entry_value(self) -> Decimal: ...


def net_entry_value(positions: Iterable[_Valued]) -> Decimal:
    """Σ signed entry value (longs − shorts, options × multiplier), to the cent.

    What the upload can know of the net market value before any price is fetched: a book
    that is net short or flat at entry is asked to state its equity.
    """
    total = sum((p.entry_value for p in positions), Decimal(0))
    return total.quantize(Decimal("0.01"))
