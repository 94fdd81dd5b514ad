"""Chaos for fault tests and game days: a provider that misbehaves for chosen symbols.

Configured by `SIGMABATCH_PROVIDER_FAULTS`, e.g. `VTI:timeout,XLK:garbage,BND:error`:
- `timeout`: any call that includes the symbol hangs (the guard's call timeout ends it);
- `garbage`: the symbol's bars come back with NaN, zero and negative prices;
- `error`: any call that includes the symbol raises.
`SIGMABATCH_PROVIDER_LATENCY` (seconds) delays every call, as a remote vendor would (bench
runs, and fault tests that must kill a process while it waits for the vendor);
`SIGMABATCH_PROVIDER_CALL_LOG` (a file) gets one line per call that reached the vendor:
`<unix time> <method> <symbols…>` (bench and process tests count calls with it).
Never set in production; `sigmabatch status` and the logs say when it is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

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
    def __init__(self, inner: MarketDataProvider, faults: dict[str, str], *,
                 latency_seconds: float = 0.0, call_log: Path | None = None) -> None:
        self.inner = inner
        self.name = f"{inner.name}+faults"
        self.faults = faults
        self.latency_seconds = latency_seconds
        self.call_log = call_log

    async def _misbehave(self, symbols: Sequence[str], method: str = "") -> None:
        if self.call_log is not None:
            line = f"{time.time():.6f} {method} {' '.join(symbols)}\n"
            with self.call_log.open("a") as f:  # one short append: atomic across processes
                f.write(line)
        if self.latency_seconds > 0:
            await asyncio.sleep(self.latency_seconds)
        kinds = {self.faults.get(s.upper()) for s in symbols}
        if "timeout" in kinds:
            await asyncio.sleep(3600)
        if "error" in kinds:
            raise ConnectionError("injected provider error")

    async def fetch_prices(self, symbols: Sequence[str], start: date, end: date) -> PriceResult:
        await self._misbehave(symbols, "prices")
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
        await self._misbehave(symbols, "profiles")
        return await self.inner.fetch_profiles(symbols, as_of)

    async def fetch_fundamentals(self, symbols: Sequence[str], as_of: date) -> FundamentalsResult:
        await self._misbehave(symbols, "fundamentals")
        return await self.inner.fetch_fundamentals(symbols, as_of)


def read_call_log(path: Path) -> list[tuple[float, str, list[str]]]:
    """The calls `SIGMABATCH_PROVIDER_CALL_LOG` recorded: (unix time, method, symbols)."""
    if not path.exists():
        return []
    calls = []
    for line in path.read_text().splitlines():
        stamp, method, *symbols = line.split()
        calls.append((float(stamp), method, symbols))
    return calls
