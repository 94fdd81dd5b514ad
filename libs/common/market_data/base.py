"""The market data provider interface and the results every provider returns.

A provider answers for a batch of symbols and never raises for one bad symbol: what it could
not fetch comes back in ``failures`` with a reason, so the batch can finish the others and mark
the run ``partial`` (never silently complete).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from libs.common.domain.symbols import provider_exclusion

PRICE_COLUMNS = ["symbol", "date", "open", "high", "low", "close", "adj_close", "volume", "source"]

def empty_prices() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in PRICE_COLUMNS})


@dataclass
class PriceResult:
    """Daily bars in long form (``PRICE_COLUMNS``; ``date`` as datetime.date) and failures."""

    bars: pd.DataFrame
    failures: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    symbol: str
    name: str | None
    sector: str | None
    industry: str | None
    exchange: str | None
    currency: str | None
    market_cap: float | None
    beta: float | None
    asset_type: str | None
    source: str


@dataclass
class ProfileResult:
    profiles: list[Profile]
    failures: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Fundamentals:
    """Earnings calendar and headline figures as of a date (``data`` is provider-specific)."""

    symbol: str
    as_of: date
    last_earnings_date: date | None
    next_earnings_date: date | None
    data: dict[str, Any]
    source: str


@dataclass
class FundamentalsResult:
    items: list[Fundamentals]
    failures: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class MarketDataProvider(Protocol):
    """What symbol_batch and onboarding need from a vendor; one call covers many symbols."""

    name: str

    async def fetch_prices(self, symbols: Sequence[str], start: date, end: date) -> PriceResult:
        """Daily bars for every symbol, start <= date <= end, in one batched call per chunk."""
        ...

    async def fetch_profiles(self, symbols: Sequence[str], as_of: date) -> ProfileResult: ...

    async def fetch_fundamentals(
        self, symbols: Sequence[str], as_of: date
    ) -> FundamentalsResult: ...


def refuse_excluded(symbols: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Split requested symbols into sendable ones and refusals (a provider's last line of defence)."""
    allowed: list[str] = []
    refused: dict[str, str] = {}
    for sym in dict.fromkeys(s.strip().upper() for s in symbols):
        reason = provider_exclusion(sym)
        if reason is None:
            allowed.append(sym)
        else:
            refused[sym] = f"not sent to provider: {reason}"
    return allowed, refused
