"""First snapshots that arrive together are made together.

An onboarding asks for its portfolio's first snapshot with one `portfolio.refresh.requested`
each. Made one by one, every request pays the whole fixed cost of a refresh transaction (load
the price window, factor history and scenarios, compute, write) for a single portfolio:
10,000 uploads in a burst took hours. The consumer fetches requests in batches and settles
each on its own (`libs.common.bus.consume`); this gatherer holds the first-snapshot requests
of one date for at most `window` seconds (or until `max_size` wait) and makes their snapshots
in one `refresh_portfolios` call, which isolates a failing portfolio by bisection, so one bad
portfolio still fails alone. Each request's handler keeps its own job and settles its own
message with its own portfolio's outcome.

Only first snapshots are gathered: for those, the refresh makes exactly the snapshot asked
for (no catch-up of earlier dates), so making them together equals making them one by one.
A manual refresh of a portfolio with history runs alone, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Sequence

from libs.common.snapshots.refresh import DateOutcome

Refresh = Callable[[dt.date, Sequence[uuid.UUID]], Awaitable[list[DateOutcome]]]

#: How long the first request of a date waits for others: a quarter second costs a single
#: upload little next to its refresh (about a second), and a burst fills whole batches.
WINDOW_SECONDS = 0.25


class FirstSnapshotGatherer:
    """Gathers (date, portfolio) requests into one refresh per date and window."""

    def __init__(self, refresh: Refresh, *, max_size: int, window: float) -> None:
        self._refresh = refresh
        self.max_size = max(1, max_size)
        self.window = window
        self._pending: dict[dt.date, dict[uuid.UUID, asyncio.Future[list[DateOutcome]]]] = {}
        self._timers: dict[dt.date, asyncio.Task[None]] = {}
        self._running: set[asyncio.Task[None]] = set()

    async def snapshot(self, day: dt.date, portfolio_id: uuid.UUID) -> list[DateOutcome]:
        """The outcomes of the refresh that made `portfolio_id`'s snapshot on `day` (shared
        with the portfolios gathered with it). Cancelling the caller does not cancel that
        refresh: the others still get theirs, and a redelivery finds the slot complete."""
        group = self._pending.setdefault(day, {})
        future = group.get(portfolio_id)
        if future is None:  # a duplicate request of the same portfolio shares the future
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(_consume_exception)
            group[portfolio_id] = future
            if len(group) >= self.max_size:
                self._flush(day)
            elif day not in self._timers:
                self._timers[day] = asyncio.create_task(self._flush_later(day))
        return await asyncio.shield(future)

    async def _flush_later(self, day: dt.date) -> None:
        await asyncio.sleep(self.window)
        self._timers.pop(day, None)
        self._flush(day)

    def _flush(self, day: dt.date) -> None:
        timer = self._timers.pop(day, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        group = self._pending.pop(day, None)
        if group:
            task = asyncio.create_task(self._run(day, group))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(
        self, day: dt.date, group: dict[uuid.UUID, asyncio.Future[list[DateOutcome]]]
    ) -> None:
        try:
            outcomes = await self._refresh(day, sorted(group))
        except BaseException as exc:  # every request of the group fails the same way
            for future in group.values():
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for future in group.values():
            if not future.done():
                future.set_result(outcomes)

    async def close(self) -> None:
        """Cancel what has not started; wait for refreshes in flight (their transactions)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for group in self._pending.values():
            for future in group.values():
                future.cancel()
        self._pending.clear()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


def _consume_exception(future: asyncio.Future[list[DateOutcome]]) -> None:
    """A group's failure is raised in every waiting handler; when none waits any more
    (cancelled at shutdown), read it here so asyncio does not log it as unretrieved."""
    if not future.cancelled():
        with contextlib.suppress(BaseException):
            future.exception()
