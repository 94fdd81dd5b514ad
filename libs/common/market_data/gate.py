"""What stands between a service and the vendor: a shared rate limit and a circuit breaker
(`GatedProvider`), and the batching of many small requests into few calls
(`CoalescingProvider`).

Onboarding under a burst (100 users uploading at once, each with a few new symbols) asks the
vendor for one symbol per job. Made as they come, those calls exceed the vendor's rate limit
and wait in line one by one. Coalescing makes one call for every symbol waiting at that
moment (the vendor answers many symbols per call); the gate keeps every replica together
under the per-account rate and stops calling a vendor that keeps failing.

Layering (services/onboarding): worker → CoalescingProvider → GuardedProvider (timeout,
per-symbol isolation, bar screening) → GatedProvider → vendor. The gate sits innermost so
that every call that reaches the vendor, including the guard's per-symbol retries, takes a
token and counts for the breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Protocol, TypeVar

from libs.common.market_data.base import (
    FundamentalsResult,
    MarketDataProvider,
    PriceResult,
    ProfileResult,
)
from libs.common.market_data.throttle import (
    CircuitBreaker,
    CircuitOpenError,
    PermanentProviderError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", PriceResult, ProfileResult, FundamentalsResult)


class Limiter(Protocol):
    async def acquire(self) -> None: ...


@dataclass
class ProviderGate:
    """A rate limiter (in-process or shared) and a circuit breaker for one vendor."""

    limiter: Limiter | None
    breaker: CircuitBreaker
    call_timeout_seconds: float = 120.0

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """Make one vendor call: refused while the circuit is open, else after a token."""
        wait = self.breaker.retry_after()  # fail fast, before waiting in line for a token
        if wait > 0:
            raise CircuitOpenError(self.breaker.name, wait)
        if self.limiter is not None:
            await self.limiter.acquire()
        probe = self.breaker.before_call()  # it may have opened while we waited
        try:
            # The timeout is here, not only in the guard: a hang counts for the breaker.
            async with asyncio.timeout(self.call_timeout_seconds):
                result = await call()
        except asyncio.CancelledError:
            if probe:
                self.breaker.release_probe()
            raise
        except PermanentProviderError:
            self.breaker.record_success()  # the vendor answered: it is up
            raise
        except Exception:
            self.breaker.record_failure()
            raise
        self.breaker.record_success()
        return result


class GatedProvider:
    """A provider whose every call goes through a `ProviderGate`."""

    def __init__(self, inner: MarketDataProvider, gate: ProviderGate) -> None:
        self.inner = inner
        self.name = inner.name
        self.gate = gate

    async def fetch_prices(self, symbols: Sequence[str], start: date, end: date) -> PriceResult:
        return await self.gate.run(lambda: self.inner.fetch_prices(symbols, start, end))

    async def fetch_profiles(self, symbols: Sequence[str], as_of: date) -> ProfileResult:
        return await self.gate.run(lambda: self.inner.fetch_profiles(symbols, as_of))

    async def fetch_fundamentals(self, symbols: Sequence[str], as_of: date) -> FundamentalsResult:
        return await self.gate.run(lambda: self.inner.fetch_fundamentals(symbols, as_of))


@dataclass
class _Request:
    symbols: list[str]
    future: asyncio.Future[Any]


@dataclass
class _Lane:
    """The requests waiting for one kind of call with the same arguments."""

    pending: list[_Request] = field(default_factory=list)
    drainer: asyncio.Task[None] | None = None
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))


class CoalescingProvider:
    """Many concurrent requests, few vendor calls: every request waiting when a call can be
    made joins it (up to ``max_symbols`` symbols), and each requester gets its own symbols'
    part of the answer.

    Requests of the same kind and arguments (prices for the same window, profiles as of the
    same day) share a lane. A lane makes at most ``parallel`` calls at a time; while they are
    in flight (waiting for a rate-limit token, or for the vendor) new requests accumulate, so
    the busier the vendor, the bigger the batches. The first request of an idle lane waits
    ``linger_seconds`` for the jobs pulled with it. ``max_symbols=1`` makes one call per
    symbol (the baseline of bench_onboarding). A failed call fails each of its requesters
    (each job retries on its own); a requester that is cancelled leaves the call to the
    others.
    """

    def __init__(self, inner: MarketDataProvider, *, max_symbols: int = 50,
                 linger_seconds: float = 0.02, parallel: int = 2) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_symbols = max(max_symbols, 1)
        self.linger_seconds = linger_seconds
        self.parallel = max(parallel, 1)
        self._lanes: dict[tuple[Any, ...], _Lane] = {}
        self.calls = 0  # vendor-bound calls made (observability, tests)

    async def fetch_prices(self, symbols: Sequence[str], start: date, end: date) -> PriceResult:
        return await self._submit(("prices", start, end), symbols,
                                  lambda s: self.inner.fetch_prices(s, start, end), _part_prices)

    async def fetch_profiles(self, symbols: Sequence[str], as_of: date) -> ProfileResult:
        return await self._submit(("profiles", as_of), symbols,
                                  lambda s: self.inner.fetch_profiles(s, as_of), _part_profiles)

    async def fetch_fundamentals(self, symbols: Sequence[str], as_of: date) -> FundamentalsResult:
        return await self._submit(("fundamentals", as_of), symbols,
                                  lambda s: self.inner.fetch_fundamentals(s, as_of),
                                  _part_fundamentals)

    async def _submit(self, key: tuple[Any, ...], symbols: Sequence[str],
                      call: Callable[[list[str]], Awaitable[R]],
                      part: Callable[[R, set[str]], R]) -> R:
        wanted = list(dict.fromkeys(s.strip().upper() for s in symbols))
        if not wanted:
            return await call([])
        lane = self._lanes.setdefault(key, _Lane(slots=asyncio.Semaphore(self.parallel)))
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        lane.pending.append(_Request(wanted, future))
        if lane.drainer is None or lane.drainer.done():
            lane.drainer = asyncio.create_task(self._drain(key, lane, call, part))
        return await future

    async def _drain(self, key: tuple[Any, ...], lane: _Lane,
                     call: Callable[[list[str]], Awaitable[R]],
                     part: Callable[[R, set[str]], R]) -> None:
        await asyncio.sleep(self.linger_seconds)
        calls: set[asyncio.Task[None]] = set()
        while True:
            await lane.slots.acquire()
            batch = self._take(lane)
            if not batch:
                lane.slots.release()
                break
            task = asyncio.create_task(self._call(batch, call, part))
            calls.add(task)

            def done(finished: asyncio.Task[None]) -> None:
                calls.discard(finished)
                lane.slots.release()

            task.add_done_callback(done)
        if not lane.pending and self._lanes.get(key) is lane and not calls:
            del self._lanes[key]

    def _take(self, lane: _Lane) -> list[_Request]:
        """Whole requests, oldest first, up to max_symbols distinct symbols (at least one)."""
        batch: list[_Request] = []
        symbols: set[str] = set()
        while lane.pending:
            request = lane.pending[0]
            if request.future.done():  # its requester was cancelled
                lane.pending.pop(0)
                continue
            joined = symbols | set(request.symbols)
            if batch and len(joined) > self.max_symbols:
                break
            batch.append(lane.pending.pop(0))
            symbols = joined
        return batch

    async def _call(self, batch: list[_Request], call: Callable[[list[str]], Awaitable[R]],
                    part: Callable[[R, set[str]], R]) -> None:
        symbols = list(dict.fromkeys(s for r in batch for s in r.symbols))
        self.calls += 1
        try:
            result = await call(symbols)
        except BaseException as exc:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for request in batch:
            if not request.future.done():
                request.future.set_result(part(result, set(request.symbols)))
        if len(batch) > 1:
            log.info("one provider call for %d symbols of %d requests", len(symbols), len(batch))

    async def aclose(self) -> None:
        """Cancel the calls in flight (tests, shutdown)."""
        for lane in list(self._lanes.values()):
            if lane.drainer is not None:
                lane.drainer.cancel()
                with contextlib.suppress(BaseException):
                    await lane.drainer


def _part_prices(result: PriceResult, symbols: set[str]) -> PriceResult:
    bars = result.bars
    if len(bars):
        bars = bars[bars["symbol"].astype(str).str.upper().isin(symbols)].reset_index(drop=True)
    return PriceResult(bars=bars, failures={k: v for k, v in result.failures.items()
                                            if k.upper() in symbols})


def _part_profiles(result: ProfileResult, symbols: set[str]) -> ProfileResult:
    return ProfileResult(profiles=[p for p in result.profiles if p.symbol.upper() in symbols],
                         failures={k: v for k, v in result.failures.items()
                                   if k.upper() in symbols})


def _part_fundamentals(result: FundamentalsResult, symbols: set[str]) -> FundamentalsResult:
    return FundamentalsResult(items=[i for i in result.items if i.symbol.upper() in symbols],
                              failures={k: v for k, v in result.failures.items()
                                        if k.upper() in symbols})

