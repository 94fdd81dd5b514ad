"""The job tracker: the database admits one running job per type and key."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from libs.common.db import dispose_engines, session_scope
from libs.common.jobs import JobAlreadyRunning, JobLeaseLost, JobTracker


@pytest.fixture
async def tracker(database_url: str):
    yield JobTracker(database_url, worker_id="w1", stale_after_seconds=2.0)
    await dispose_engines()


async def test_two_concurrent_starts_of_one_job_exactly_one_wins(
    database_url: str, tracker
) -> None:
    trackers = [JobTracker(database_url, worker_id=f"w{i}") for i in range(8)]
    results = await asyncio.gather(
        *(t.start("symbol_batch", "2024-03-01") for t in trackers), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, JobAlreadyRunning)]
    assert len(winners) == 1 and len(losers) == 7


async def test_different_types_and_keys_run_together(tracker) -> None:
    a = await tracker.start("symbol_batch", "2024-03-01")
    b = await tracker.start("portfolio_refresh", "2024-03-01")
    c = await tracker.start("symbol_batch", "2024-03-04")
    assert len({a.id, b.id, c.id}) == 3


async def test_finished_job_can_run_again_as_a_new_row(tracker) -> None:
    job = await tracker.start("symbol_onboard", "NVDA")
    await tracker.finish(job, "failed", error="provider down")
    again = await tracker.start("symbol_onboard", "NVDA")
    assert again.id != job.id


async def test_stale_running_job_is_reclaimed_and_the_old_worker_is_fenced(
    database_url, tracker
) -> None:
    job = await tracker.start("symbol_batch", "2024-03-01")
    other = JobTracker(database_url, worker_id="w2", stale_after_seconds=2.0)
    with pytest.raises(JobAlreadyRunning):
        await other.start("symbol_batch", "2024-03-01")
    async with session_scope(database_url) as session:  # the first worker stops heartbeating
        await session.execute(
            text("UPDATE batch_run_history SET heartbeat_at = now() - interval '1 minute'")
        )
    reclaimed = await other.start("symbol_batch", "2024-03-01")
    assert reclaimed.id == job.id and reclaimed.reclaimed and reclaimed.attempts == 2
    with pytest.raises(JobLeaseLost):
        await tracker.progress(job, 5, 10)
    await other.finish(reclaimed, "completed")


async def test_phases_progress_and_finish_are_recorded(tracker) -> None:
    job = await tracker.start("symbol_batch", "2024-03-01", phases=["profiles", "prices"])
    await tracker.phase(job, "profiles", total=10, unit="symbols")
    await tracker.progress(job, 4)
    await tracker.phase(job, "prices", total=3, unit="chunks")
    await tracker.phase(job, "factors", total=2, unit="dates")  # a phase not declared up front
    await tracker.finish(job, "partial", result={"symbols_failed": 1})
    row = await tracker.latest("symbol_batch", "2024-03-01")
    assert row["status"] == "partial" and row["finished_at"] is not None
    assert [p["name"] for p in row["phases"]] == ["profiles", "prices", "factors"]
    assert all(p["status"] == "completed" for p in row["phases"])
    assert row["phases"][0]["total"] == 10 and row["phases"][0]["unit"] == "symbols"
    assert row["result"] == {"symbols_failed": 1}


async def test_run_context_marks_failure_with_the_error(tracker) -> None:
    with pytest.raises(ValueError):
        async with tracker.run("portfolio_refresh", "p1:2024-03-01", heartbeat_seconds=0.1):
            raise ValueError("price table empty")
    row = await tracker.latest("portfolio_refresh", "p1:2024-03-01")
    assert row["status"] == "failed" and "price table empty" in row["error"]


async def test_dead_letter_marks_the_running_job_failed(tracker) -> None:
    job = await tracker.start("symbol_onboard", "onboard:ZZZ")
    await tracker.record_dead_letter(
        "symbol_onboard", "onboard:ZZZ", "boom", b'{"symbol":"ZZZ"}', 5
    )
    row = await tracker.latest("symbol_onboard", "onboard:ZZZ")
    assert row["id"] == job.id and row["status"] == "failed" and row["error"] == "boom"
    assert row["result"]["dead_letter"] is True and row["result"]["deliveries"] == 5


# --- issue 12 finding 2: a dead owner is recognised by its liveness, not a 120 s silence ----

LEASE_HOLDER = """
import asyncio, sys
from libs.common.jobs import JobTracker

async def main():
    tracker = JobTracker(sys.argv[1], worker_id="doomed", stale_after_seconds=120)
    await tracker.start("portfolio_refresh_chunk", "2024-03-01:0/1:x")
    print("started", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_job_of_a_killed_worker_is_taken_over_at_once(database_url: str) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LEASE_HOLDER, database_url, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert (await holder.stdout.readline()).decode().strip() == "started"
        successor = JobTracker(database_url, worker_id="successor", stale_after_seconds=120)
        with pytest.raises(JobAlreadyRunning):  # the owner is alive: not reclaimable
            await successor.start("portfolio_refresh_chunk", "2024-03-01:0/1:x")
        holder.send_signal(signal.SIGKILL)
        await asyncio.wait_for(holder.wait(), timeout=10)
        loop = asyncio.get_running_loop()
        started = loop.time()
        job = None
        while job is None and loop.time() - started < 5:  # the server notices the dead socket
            try:
                job = await successor.start("portfolio_refresh_chunk", "2024-03-01:0/1:x")
            except JobAlreadyRunning:
                await asyncio.sleep(0.1)
        assert job is not None and job.reclaimed, "not taken over within 5 s (stale is 120 s)"
    finally:
        if holder.returncode is None:
            holder.kill()
    await dispose_engines()


async def test_cancelled_job_is_released_for_an_immediate_takeover(database_url: str) -> None:
    owner = JobTracker(database_url, worker_id="owner", stale_after_seconds=120)
    entered = asyncio.Event()

    async def work() -> None:
        async with owner.run("symbol_onboard", "NVDA"):
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(work())
    await entered.wait()
    task.cancel()  # SIGTERM past the grace
    with pytest.raises(asyncio.CancelledError):
        await task
    other = JobTracker(database_url, worker_id="other", stale_after_seconds=120)
    job = await other.start("symbol_onboard", "NVDA")  # the owner is alive, the row released
    assert job.reclaimed
    await dispose_engines()


async def test_a_row_left_running_by_a_failed_handler_is_taken_over_here_at_once(
    database_url: str,
) -> None:
    """PostgreSQL went away mid-job: the handler raised, and marking the row failed raised
    too, so the row stays `running` under this live worker. Nobody works on it any more, so
    the redelivery to this same process takes it over at once (not after the 120 s stale
    limit); a row a handler here still works on is not taken."""
    tracker = JobTracker(database_url, worker_id="w-down", stale_after_seconds=120)

    async def database_down(*_args: object, **_kwargs: object) -> None:
        raise ConnectionError("connection refused")

    busy = await tracker.start("portfolio_refresh", "2024-03-04")  # in hand here
    with pytest.raises(JobAlreadyRunning):
        await tracker.start("portfolio_refresh", "2024-03-04")

    tracker.finish = database_down  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="lost the connection"):
        async with tracker.run("portfolio_refresh", "2024-03-01") as job:
            raise RuntimeError("lost the connection")
    del tracker.finish
    async with session_scope(database_url) as session:
        status = (await session.execute(
            text("SELECT status FROM batch_run_history WHERE id = :id"), {"id": job.id}
        )).scalar_one()
    assert status == "running"  # the failure could not be written

    again = await tracker.start("portfolio_refresh", "2024-03-01")
    assert again.id == job.id and again.reclaimed and again.attempts == 2
    with pytest.raises(JobAlreadyRunning):  # still in hand: never taken from a live handler
        await tracker.start("portfolio_refresh", "2024-03-04")
    await tracker.finish(again)
    await tracker.finish(busy)
    await dispose_engines()


async def test_redelivery_waits_for_a_live_owner_instead_of_failing(database_url: str) -> None:
    owner = JobTracker(database_url, worker_id="owner", stale_after_seconds=120)
    waiter = JobTracker(database_url, worker_id="waiter", owner_wait_seconds=10)
    job = await owner.start("symbol_onboard", "AMD")

    async def finish_soon() -> None:
        await asyncio.sleep(1.0)
        await owner.finish(job)

    finisher = asyncio.create_task(finish_soon())
    second = await waiter.start("symbol_onboard", "AMD")
    await finisher
    assert second.id != job.id and not second.reclaimed
    await dispose_engines()


async def test_dead_letter_with_a_live_other_owner_leaves_its_row_alone(database_url: str) -> None:
    owner = JobTracker(database_url, worker_id="owner")
    other = JobTracker(database_url, worker_id="other")
    job = await owner.start("symbol_batch", "2024-03-01")
    await other.record_dead_letter("symbol_batch", "2024-03-01", "dup", b"{}", 5,
                                   subject="batch.nightly.requested")
    row = await owner.latest("symbol_batch", "2024-03-01")
    assert row["id"] == job.id and row["status"] == "running"
    await dispose_engines()


def test_shipped_retry_budget_outlasts_the_takeover_of_a_silent_owner() -> None:
    from libs.common.bus import ConsumerSpec
    from libs.common.config import Settings
    from libs.common.events import BatchNightlyRequested

    settings = Settings()
    assert (settings.ack_wait_seconds, settings.job_stale_after_seconds,
            settings.max_deliver) == (30.0, 120.0, 5)
    spec = ConsumerSpec("d", BatchNightlyRequested, "symbol_batch",
                        ack_wait_seconds=settings.ack_wait_seconds,
                        max_deliver=settings.max_deliver)
    budget = spec.retry_budget_seconds(owner_wait_seconds=settings.ack_wait_seconds)
    assert budget > settings.job_stale_after_seconds + settings.ack_wait_seconds
