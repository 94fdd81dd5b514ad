"""The first-snapshot gatherer of portfolio_refresh, with a recording refresh (no I/O)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Sequence

import pytest

from libs.common.snapshots.refresh import DateOutcome
from services.portfolio_refresh.first_snapshots import FirstSnapshotGatherer

D1, D2 = dt.date(2026, 11, 27), dt.date(2026, 11, 30)


class RecordingRefresh:
    def __init__(self, fail: set[uuid.UUID] | None = None, error: Exception | None = None):
        self.calls: list[tuple[dt.date, list[uuid.UUID]]] = []
        self.fail = fail or set()
        self.error = error

    async def __call__(self, day: dt.date, ids: Sequence[uuid.UUID]) -> list[DateOutcome]:
        self.calls.append((day, list(ids)))
        await asyncio.sleep(0.01)
        if self.error:
            raise self.error
        failed = {p: "bad data" for p in ids if p in self.fail}
        return [DateOutcome(day, len(ids) - len(failed), 3 * len(ids), failed)]


def ids(n: int) -> list[uuid.UUID]:
    return sorted(uuid.uuid4() for _ in range(n))


async def test_requests_within_the_window_make_one_refresh_per_date():
    refresh = RecordingRefresh()
    gatherer = FirstSnapshotGatherer(refresh, max_size=32, window=0.05)
    first, second = ids(5), ids(3)
    results = await asyncio.gather(*[gatherer.snapshot(D1, p) for p in first],
                                   *[gatherer.snapshot(D2, p) for p in second])
    assert sorted(refresh.calls) == sorted([(D1, first), (D2, second)])
    assert all(r[0].snapshots == 5 for r in results[:5])
    assert all(r[0].snapshots == 3 for r in results[5:])


async def test_a_full_batch_goes_at_once_and_the_rest_waits_for_the_window():
    refresh = RecordingRefresh()
    gatherer = FirstSnapshotGatherer(refresh, max_size=4, window=10.0)
    portfolios = ids(4)
    done = await asyncio.wait_for(
        asyncio.gather(*[gatherer.snapshot(D1, p) for p in portfolios]), timeout=2.0)
    assert refresh.calls == [(D1, portfolios)] and len(done) == 4
    # One more: alone, it waits for the window (not flushed by a full batch).
    late = asyncio.create_task(gatherer.snapshot(D1, uuid.uuid4()))
    await asyncio.sleep(0.1)
    assert not late.done() and len(refresh.calls) == 1
    late.cancel()
    await gatherer.close()


async def test_a_failing_portfolio_is_reported_and_the_others_are_made():
    bad, *good = ids(4)
    refresh = RecordingRefresh(fail={bad})
    gatherer = FirstSnapshotGatherer(refresh, max_size=32, window=0.02)
    results = await asyncio.gather(*[gatherer.snapshot(D1, p) for p in [bad, *good]])
    assert len(refresh.calls) == 1
    # every request sees the shared outcome; the handler keeps only its own failure
    assert all(r[0].failed == {bad: "bad data"} and r[0].snapshots == 3 for r in results)


async def test_an_infrastructure_error_fails_every_request_of_the_group():
    refresh = RecordingRefresh(error=ConnectionError("database went away"))
    gatherer = FirstSnapshotGatherer(refresh, max_size=32, window=0.02)
    results = await asyncio.gather(*[gatherer.snapshot(D1, p) for p in ids(3)],
                                   return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionError] * 3


async def test_a_duplicate_request_shares_the_refresh_and_a_cancelled_caller_does_not_stop_it():
    refresh = RecordingRefresh()
    gatherer = FirstSnapshotGatherer(refresh, max_size=32, window=0.02)
    p, q = ids(2)
    cancelled = asyncio.create_task(gatherer.snapshot(D1, q))
    both = asyncio.gather(gatherer.snapshot(D1, p), gatherer.snapshot(D1, p))
    await asyncio.sleep(0)
    cancelled.cancel()
    first, again = await both
    assert first is again
    assert refresh.calls == [(D1, sorted([p, q]))]  # q's snapshot is still made
    with pytest.raises(asyncio.CancelledError):
        await cancelled


async def test_window_zero_means_each_request_on_its_own():
    refresh = RecordingRefresh()
    gatherer = FirstSnapshotGatherer(refresh, max_size=1, window=0.0)
    await asyncio.gather(*[gatherer.snapshot(D1, p) for p in ids(3)])
    assert [len(call[1]) for call in refresh.calls] == [1, 1, 1]
