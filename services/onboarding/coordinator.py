"""Onboarding coordinator: when a portfolio's last symbol settles, request its first snapshot;
when the snapshot is made (or can no longer be), record the onboarding's final outcome.

Runs on every `symbol.onboard.completed` and, as a reconciler, at start-up and periodically:
the reconciler re-publishes whatever the database says is still owed (symbols pending,
snapshots requested but not made), so a crash between a commit and its publish loses
nothing; the messages' business keys make the repeats harmless. The outcome of a first
snapshot is recorded by `record_outcomes`, which `watch_outcomes` runs every second (the
status endpoint only reads: until then it derives the outcome from the same rows).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from libs.common.bus import Delivery
from libs.common.events import SymbolOnboardCompleted, SymbolOnboardRequested
from libs.common.onboarding.snapshot_requests import (
    Publish,
    fallback_as_of,
    publish_snapshot_requests,
)
from libs.common.snapshots.refresh import JOB_REQUEST as REFRESH_REQUEST_JOB
from libs.common.uow import UnitOfWorkFactory

log = logging.getLogger(__name__)

RECONCILE_INTERVAL_SECONDS = 30.0
OUTCOME_INTERVAL_SECONDS = 1.0
# A request younger than this is surely still on the bus (or being handled).
REPUBLISH_AFTER_SECONDS = 60.0


class OnboardingCoordinator:
    def __init__(self, uow: UnitOfWorkFactory, publish: Publish, *,
                 republish_after_seconds: float = REPUBLISH_AFTER_SECONDS,
                 stale_after_seconds: float = 120.0) -> None:
        self.uow = uow
        self.publish = publish
        self.republish_after_seconds = republish_after_seconds
        self.stale_after_seconds = stale_after_seconds

    async def handle(self, message: SymbolOnboardCompleted, delivery: Delivery) -> None:
        async with self.uow() as work:
            requests = await work.onboarding.request_snapshot_if_ready(
                symbol=message.symbol.upper(), fallback_as_of=fallback_as_of())
        await publish_snapshot_requests(self.publish, requests, message.correlation_id)
        if requests:
            log.info("%s settled: first snapshot requested for %d portfolio(s)",
                     message.symbol, len(requests))

    async def reconcile(self) -> None:
        """Re-publish what is owed; mark onboardings whose snapshot is done."""
        async with self.uow() as work:
            symbols = await work.onboarding.unsettled_symbols(
                min_age_seconds=self.republish_after_seconds,
                stale_after_seconds=self.stale_after_seconds)
        await self.record_outcomes()
        for symbol in symbols:
            await self.publish(SymbolOnboardRequested(symbol=symbol, requested_by="reconciler"))
        async with self.uow() as work:
            ready = await work.onboarding.request_snapshot_if_ready(
                fallback_as_of=fallback_as_of())
        async with self.uow() as work:
            owed = await work.onboarding.unsettled_snapshot_requests()
        await publish_snapshot_requests(self.publish, owed)
        if symbols or ready:
            log.info("reconciled: %d symbol request(s) re-published, %d snapshot(s) requested",
                     len(symbols), len(ready))

    async def record_outcomes(self) -> int:
        """Mark onboardings whose first snapshot is complete as completed/partial, and those
        whose snapshot request was dead-lettered as failed (idempotent); returns how many."""
        async with self.uow() as work:
            finished = await work.onboarding.finish_completed_onboardings()
            failed = await work.onboarding.fail_dead_snapshot_onboardings(REFRESH_REQUEST_JOB)
        if finished or failed:
            log.info("onboarding outcomes recorded: %d finished, %d failed", finished, failed)
        return finished + failed

    async def watch_outcomes(self, stop: asyncio.Event,
                             interval: float = OUTCOME_INTERVAL_SECONDS) -> None:
        await self._every(interval, stop, self.record_outcomes, "recording outcomes")

    async def reconcile_forever(self, stop: asyncio.Event,
                                interval: float = RECONCILE_INTERVAL_SECONDS) -> None:
        await self._every(interval, stop, self.reconcile, "reconcile")

    @staticmethod
    async def _every(interval: float, stop: asyncio.Event,
                     work: Callable[[], Awaitable[object]], what: str) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                pass
            if stop.is_set():
                return
            try:
                await work()
            except Exception as exc:  # DB or NATS blip: the next round retries
                log.warning("%s failed: %s", what, exc)
