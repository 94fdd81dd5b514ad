"""Rate limiting, retries and a circuit breaker for vendor calls.

Vendors throttle bursts and fail transiently; a nightly batch over thousands of symbols must
space its calls and retry with jittered exponential backoff (jitter keeps replicas that failed
together from retrying in lockstep), then give up on the symbol, not on the run.
`RateLimiter` spaces one process's calls; `SharedTokenBucket` spaces the calls of every
replica together (the vendor's limit is per account); `CircuitBreaker` stops calling a vendor
that keeps failing and probes it after a cool-down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

T = TypeVar("T")

log = logging.getLogger(__name__)


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


class SharedTokenBucket:
    """A token bucket every replica draws from: one entry of a JetStream key-value bucket.

    The vendor's limit is per account, not per process, so an in-process `RateLimiter` per
    replica would let N replicas make N times the allowed calls. The entry holds
    ``{"tokens": t, "ts": seconds}``; a taker reads it, refills it at ``rate`` tokens per
    second up to ``capacity``, and writes it back with compare-and-set on the entry's revision
    (``kv.update(last=revision)``). Of two replicas that read the same revision only one write
    wins; the other re-reads. With ``capacity`` 1 (the default) two takes are never closer
    than ``1 / rate`` seconds apart, whichever replicas made them.

    Time is each replica's wall clock (``time.time``): replicas on one host or NTP-synced hosts
    agree to milliseconds; a replica whose clock runs behind only waits longer (a negative
    elapsed time refills nothing), so skew never lets calls through faster.
    """

    def __init__(self, js: Any, bucket: str, key: str, rate_per_second: float, *,
                 capacity: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.js = js
        self.bucket = bucket
        self.key = re.sub(r"[^A-Za-z0-9_=.-]", "_", key) or "provider"
        self.rate = rate_per_second
        self.capacity = max(capacity, 1.0)
        self.clock = clock
        self._kv: Any = None
        self._local = asyncio.Lock()  # one taker per process at a time: fewer CAS collisions
        self.conflicts = 0  # lost compare-and-set races (observability, tests)

    async def _store(self) -> Any:
        if self._kv is None:
            from nats.js.api import KeyValueConfig
            from nats.js.errors import BucketNotFoundError

            try:
                self._kv = await self.js.key_value(self.bucket)
            except BucketNotFoundError:
                # Two replicas creating it at once is fine: same config, the second is a no-op.
                self._kv = await self.js.create_key_value(
                    KeyValueConfig(bucket=self.bucket, history=1,
                                   description="sigmabatch shared provider rate limits"))
        return self._kv

    async def acquire(self) -> None:
        """Wait until a token is taken from the shared bucket."""
        if self.rate <= 0:
            return
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        kv = await self._store()
        async with self._local:
            while True:
                now = self.clock()
                try:
                    entry = await kv.get(self.key)
                except KeyNotFoundError:
                    entry = None
                if entry is None or not entry.value:
                    tokens, stamp, revision = self.capacity, now, None
                else:
                    state = json.loads(entry.value)
                    tokens, stamp, revision = float(state["tokens"]), float(state["ts"]), entry.revision
                available = min(self.capacity, tokens + (now - stamp) * self.rate)
                if available < 1.0:
                    await asyncio.sleep((1.0 - available) / self.rate)
                    continue
                value = json.dumps({"tokens": available - 1.0, "ts": now}).encode()
                try:
                    if revision is None:
                        await kv.create(self.key, value)
                    else:
                        await kv.update(self.key, value, last=revision)
                    return
                except KeyWrongLastSequenceError:
                    self.conflicts += 1  # another replica took a token first: read again
                except Exception as exc:
                    # create() of a key another replica created meanwhile says so differently
                    # across server versions; anything else (NATS down) propagates.
                    if revision is not None or "wrong last sequence" not in str(exc).lower():
                        raise
                    self.conflicts += 1


class CircuitOpenError(Exception):
    """The provider's circuit is open: no call is made until ``retry_after`` seconds pass."""

    def __init__(self, provider: str, retry_after: float) -> None:
        super().__init__(f"provider {provider} circuit open: retry in {retry_after:.1f}s")
        self.retry_after = retry_after


class CircuitBreaker:
    """Stop calling a vendor that keeps failing, and probe it again after a cool-down.

    closed: calls go through; ``failure_threshold`` consecutive failures open it.
    open: every call is refused at once (`CircuitOpenError`) for ``cooldown_seconds``, so a
    burst of jobs does not hammer a vendor that is down (and burn their retries on it).
    half-open: after the cool-down one probe call goes through; its success closes the
    circuit, its failure opens it for another cool-down.

    Per process: each replica learns the vendor's state from its own calls (N replicas make at
    most N probes per cool-down).
    """

    def __init__(self, name: str = "provider", *, failure_threshold: int = 5,
                 cooldown_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.failure_threshold = max(failure_threshold, 1)
        self.cooldown_seconds = cooldown_seconds
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False
        self.transitions: list[str] = []  # "open", "half_open", "closed": for logs and tests

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self._probing or self.clock() - self.opened_at >= self.cooldown_seconds:
            return "half_open"
        return "open"

    def retry_after(self) -> float:
        """Seconds until a call may go through (0 when one may go now)."""
        if self.opened_at is None:
            return 0.0
        left = self.opened_at + self.cooldown_seconds - self.clock()
        if left > 0:
            return left
        # Cool-down over: one probe at a time; the others wait a moment for its answer.
        return min(1.0, self.cooldown_seconds) if self._probing else 0.0

    def before_call(self) -> bool:
        """Raise `CircuitOpenError` unless a call may go now; True when it is the probe."""
        wait = self.retry_after()
        if wait > 0:
            raise CircuitOpenError(self.name, wait)
        if self.opened_at is not None:
            self._probing = True
            self._transition("half_open")
            return True
        return False

    def record_success(self) -> None:
        self.failures = 0
        self._probing = False
        if self.opened_at is not None:
            self.opened_at = None
            self._transition("closed")

    def record_failure(self) -> None:
        self.failures += 1
        probe_failed = self._probing
        self._probing = False
        if probe_failed or (self.opened_at is None and self.failures >= self.failure_threshold):
            self.opened_at = self.clock()
            self._transition("open")

    def release_probe(self) -> None:
        """The probe was cancelled before it answered: let another call probe."""
        self._probing = False

    def _transition(self, state: str) -> None:
        self.transitions.append(state)
        log.warning("provider %s circuit %s", self.name, state.replace("_", "-"))
