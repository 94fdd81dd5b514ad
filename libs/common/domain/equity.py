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

from collections.abc import Iterable, Mapping
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


class _Position(_Valued, Protocol):
    @property
    def market_data_symbol(self) -> str | None: ...

    @property
    def investment_class(self) -> str: ...

    @property
    def quantity(self) -> Decimal: ...


def estimated_net_value(
    positions: Iterable[_Position], latest_closes: Mapping[str, Decimal]
) -> Decimal:
    """The net market value an upload can know: latest known close × quantity for listed
    positions, entry value for the rest (options at their premium, carried assets, symbols
    not priced yet), to the cent. Used to refuse a default equity that would be ≤ 0."""
    total = Decimal(0)
    for p in positions:
        symbol = p.market_data_symbol
        close = latest_closes.get(symbol) if symbol and p.investment_class == "PUBLIC" else None
        total += p.quantity * close if close is not None else p.entry_value
    return total.quantize(Decimal("0.01"))
