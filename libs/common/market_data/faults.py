"""Chaos for fault tests and game days: a provider that misbehaves for chosen symbols.

Configured by `SIGMABATCH_PROVIDER_FAULTS`, e.g. `VTI:timeout,XLK:garbage,BND:error`:
- `timeout`: any call that includes the symbol hangs (the guard's call timeout ends it);
- `garbage`: the symbol's bars come back with NaN, zero and negative prices;
- `error`: any call that includes the symbol raises.
Never set in production; `sigmabatch status` and the logs say when it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import date

import numpy as np

from libs.common.market_data.base import (
    FundamentalsResult,
    MarketDataProvider,
    PriceResult,
    ProfileResult,
)

FAULT_KINDS = ("timeout", "garbage", "error")


def parse_faults(spec: str) -> dict[str, str]:
    faults: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        symbol, _, kind = item.partition(":")
        if kind not in FAULT_KINDS:
            raise ValueError(
                f"SIGMABATCH_PROVIDER_FAULTS: {item!r}: kind must be one of {FAULT_KINDS}"
            )
        faults[symbol.strip().upper()] = kind
    return faults


class FaultInjectingProvider:
    def __init__(self, inner: MarketDataProvider, faults: dict[str, str]) -> None:
        self.inner = inner
        self.name = f"{inner.name}+faults"
        self.faults = faults

    async def _misbehave(self, symbols: Sequence[str]) -> None:
        kinds = {self.faults.get(s.upper()) for s in symbols}
        if "timeout" in kinds:
            await asyncio.sleep(3600)
        if "error" in kinds:
            raise ConnectionError("injected provider error")

    async def fetch_prices(self, symbols: Sequence[str], start: date, end: date) -> PriceResult:
        await self._misbehave(symbols)
        result = await self.inner.fetch_prices(symbols, start, end)
        garbage = [s for s, kind in self.faults.items() if kind == "garbage"]
        bars = result.bars.copy()
        rows = bars["symbol"].isin(garbage).to_numpy()
        if rows.any():
            bars["close"] = bars["close"].astype("float64")
            bars["adj_close"] = bars["adj_close"].astype("float64")
            noise = np.resize(np.array([np.nan, 0.0, -1.0]), int(rows.sum()))
            bars.loc[rows, "adj_close"] = noise
        return PriceResult(bars=bars, failures=result.failures)

    async def fetch_profiles(self, symbols: Sequence[str], as_of: date) -> ProfileResult:
        await self._misbehave(symbols)
        return await self.inner.fetch_profiles(symbols, as_of)

    async def fetch_fundamentals(self, symbols: Sequence[str], as_of: date) -> FundamentalsResult:
        await self._misbehave(symbols)
        return await self.inner.fetch_fundamentals(symbols, as_of)
