"""Rate limiting and retries for vendor calls.

Vendors throttle bursts and fail transiently; a nightly batch over thousands of symbols must
space its calls and retry with jittered exponential backoff (jitter keeps replicas that failed
together from retrying in lockstep), then give up on the symbol, not on the run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

T = TypeVar("T")


class PermanentProviderError(Exception):
    """The vendor answered definitively (unknown ticker, bad request): retrying cannot help."""


def is_transient(error: BaseException) -> bool:
    """Network trouble, timeouts, rate limiting, vendor 5xx: worth another try."""
    if isinstance(error, PermanentProviderError):
        return False
    if isinstance(error, (ConnectionError, TimeoutError, OSError)):
        return True
    text = f"{type(error).__name__} {error}".lower()
    return any(
        marker in text
        for marker in (
            "rate limit",
            "too many requests",
            "timed out",
            "timeout",
            "temporar",
            "502",
            "503",
            "504",
        )
    )


class RateLimiter:
    """At most ``rate`` acquisitions per second, spaced evenly, shared by every task."""

    def __init__(self, rate_per_second: float) -> None:
        self.interval = 1.0 / rate_per_second if rate_per_second > 0 else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.interval == 0.0:
            return
        async with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + self.interval
        if wait > 0:
            await asyncio.sleep(wait)


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int = 4,
    base_seconds: float = 0.5,
    max_seconds: float = 8.0,
    limiter: RateLimiter | None = None,
) -> T:
    """Run ``call`` (rate-limited) until it succeeds, retrying transient errors only."""
    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=base_seconds, max=max_seconds),
        retry=retry_if_exception(is_transient),
        reraise=True,
    ):
        with attempt:
            if limiter is not None:
                await limiter.acquire()
            return await call()
    raise AssertionError("unreachable: tenacity reraises the last error")
