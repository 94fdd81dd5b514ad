"""Every provider behind the same guard: a call timeout, per-symbol isolation, bar screening.

Vendors misbehave in ways a batch must survive without losing the good symbols: a batched
call hangs or raises because of one ticker, or a ticker comes back with NaN, zero, negative
or non-numeric prices. The guard turns each of these into a per-symbol failure with a reason
(the run becomes `partial`), and never lets an invalid bar reach the database. A symbol with
any invalid bar is dropped whole: half a price history is worse than none, because the batch
would compute betas on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import date
from typing import TypeVar

import numpy as np
import pandas as pd

from libs.common.market_data.base import (
    FundamentalsResult,
    MarketDataProvider,
    PriceResult,
    ProfileResult,
    empty_prices,
)
from libs.common.market_data.throttle import CircuitOpenError, is_transient

R = TypeVar("R", PriceResult, ProfileResult, FundamentalsResult)

PRICE_FIELDS = ("close", "adj_close")


def screen_bars(result: PriceResult) -> PriceResult:
    """Drop every symbol that has a non-numeric, non-finite or non-positive close/adj close."""
    bars = result.bars
    failures = dict(result.failures)
    if bars.empty:
        return PriceResult(bars=bars, failures=failures)
    bad = pd.Series(False, index=bars.index)
    for column in PRICE_FIELDS:
        values = pd.to_numeric(bars[column], errors="coerce").to_numpy(dtype="float64")
        bad |= ~(np.isfinite(values) & (values > 0))
    dates = pd.to_datetime(bars["date"], errors="coerce")
    bad |= dates.isna().to_numpy()
    if not bad.any():
        return PriceResult(bars=bars, failures=failures)
    bad_symbols = bars.loc[bad, "symbol"].value_counts()
    for symbol, count in bad_symbols.items():
        failures[str(symbol)] = (
            f"provider returned invalid prices ({count} bar(s) with missing, non-numeric, "
            "zero or negative close); symbol skipped"
        )
    clean = bars[~bars["symbol"].isin(bad_symbols.index)].reset_index(drop=True)
    return PriceResult(bars=clean, failures=failures)


class GuardedProvider:
    """Wraps a provider: timeout per call, a failing chunk retried symbol by symbol."""

    def __init__(
        self, inner: MarketDataProvider, *, call_timeout_seconds: float = 120.0, parallel: int = 4,
        raise_transient_alone: bool = False,
    ) -> None:
        """``raise_transient_alone``: a one-symbol call that fails transiently (connection,
        timeout, 5xx) raises instead of becoming the symbol's failure, so a job that fetches
        one symbol (onboarding) retries rather than failing the symbol for a network blip."""
        self.inner = inner
        self.raise_transient_alone = raise_transient_alone
        self.name = inner.name
        self.call_timeout_seconds = call_timeout_seconds
        self.parallel = asyncio.Semaphore(parallel)

    async def _isolated(
        self,
        symbols: Sequence[str],
        call: Callable[[Sequence[str]], Awaitable[R]],
        merge: Callable[[list[R], dict[str, str]], R],
    ) -> R:
        try:
            async with asyncio.timeout(self.call_timeout_seconds):
                return await call(symbols)
        except CircuitOpenError:
            raise  # nobody's fault: the caller waits for the circuit to close
        except Exception as exc:
            if len(symbols) == 1:
                if self.raise_transient_alone and is_transient(exc):
                    raise  # a network blip is not the symbol's fault: retry the job
                return merge([], {symbols[0]: _reason(exc, self.call_timeout_seconds)})
            first_error = exc

        async def one(symbol: str) -> R:
            async with self.parallel:
                try:
                    async with asyncio.timeout(self.call_timeout_seconds):
                        return await call([symbol])
                except CircuitOpenError:
                    raise
                except Exception as exc:
                    return merge([], {symbol: _reason(exc, self.call_timeout_seconds)})

        parts = await asyncio.gather(*(one(s) for s in symbols))
        merged = merge(list(parts), {})
        if len(merged.failures) == len(
            symbols
        ):  # nothing worked alone either: not a symbol's fault
            raise first_error
        return merged

    async def fetch_prices(self, symbols: Sequence[str], start: date, end: date) -> PriceResult:
        result = await self._isolated(
            list(symbols), lambda s: self.inner.fetch_prices(s, start, end), _merge_prices
        )
        return screen_bars(result)

    async def fetch_profiles(self, symbols: Sequence[str], as_of: date) -> ProfileResult:
        return await self._isolated(
            list(symbols), lambda s: self.inner.fetch_profiles(s, as_of), _merge_profiles
        )

    async def fetch_fundamentals(self, symbols: Sequence[str], as_of: date) -> FundamentalsResult:
        return await self._isolated(
            list(symbols), lambda s: self.inner.fetch_fundamentals(s, as_of), _merge_fundamentals
        )


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"provider timed out after {timeout:g}s"
    return f"provider error: {type(exc).__name__}: {exc}"


def _merge_prices(parts: list[PriceResult], failures: dict[str, str]) -> PriceResult:
    frames = [p.bars for p in parts if not p.bars.empty]
    merged_failures = {k: v for p in parts for k, v in p.failures.items()} | failures
    if frames:
        return PriceResult(bars=pd.concat(frames, ignore_index=True), failures=merged_failures)
    return PriceResult(bars=empty_prices(), failures=merged_failures)


def _merge_profiles(parts: list[ProfileResult], failures: dict[str, str]) -> ProfileResult:
    return ProfileResult(
        profiles=[x for p in parts for x in p.profiles],
        failures={k: v for p in parts for k, v in p.failures.items()} | failures,
    )


def _merge_fundamentals(
    parts: list[FundamentalsResult], failures: dict[str, str]
) -> FundamentalsResult:
    return FundamentalsResult(
        items=[x for p in parts for x in p.items],
        failures={k: v for p in parts for k, v in p.failures.items()} | failures,
    )
