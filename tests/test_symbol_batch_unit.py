"""symbol_batch's decisions on in-memory ports (no PostgreSQL, no NATS; about a second a test,
mostly the offline sample provider and the factor regressions).

`tests/test_symbol_batch.py` runs the same `SymbolBatch` on the real servers (the SQL, the
advisory lock, redelivery after a kill); here a fake repository holds `symbol_batch_dates`
and the job history in dicts, with the same rules as the SQL (`store.record_date_complete`:
a date done before is replaced only by `always`, or by `if_changed` when its outcome
changed), and the fake bus drops a repeated message id like JetStream's duplicate window.
What is checked is the use case's own part: which dates a trigger processes and in what
order, what a repeat or a rerun does, and what is announced.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import pandas as pd
import pytest

from libs.common import calendar
from libs.common.bus import TransientError
from libs.common.events import BatchNightlyRequested, Message, SymbolBatchCompleted
from libs.common.factors import FACTOR_ETFS, LOOKBACK_SESSIONS
from libs.common.jobs import COMPLETED, FAILED, PARTIAL, RUNNING, Job
from libs.common.market_data.base import Fundamentals, PriceResult, Profile
from libs.common.market_data.sample import SampleProvider, synthetic_universe
from services.symbol_batch.handlers import (
    CHUNKS_IN_FLIGHT,
    PRICE_CHUNK,
    BatchSettings,
    SymbolBatch,
    price_starts,
)
from services.symbol_batch.store import JOB_TYPE, CompletedDate

D = dt.date
NOW = dt.datetime(2026, 1, 15, 23, 0, tzinfo=dt.UTC)  # every date below is final by then
STOCKS = ["AAPL", "MSFT", "KO"]


@dataclass
class DateRow:
    status: str
    run_id: uuid.UUID | None
    symbols_total: int
    failures: dict[str, str]


@dataclass
class JobRow:
    key: str
    status: str
    phases: list[str] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)


class World:
    """The database of the fakes: batch dates, job history, market data written."""

    def __init__(self) -> None:
        self.universe: list[tuple[str, str | None]] = [(s, None) for s in STOCKS]
        self.dates: dict[dt.date, DateRow] = {}
        self.jobs: dict[uuid.UUID, JobRow] = {}  # insertion order = start order
        self.latest_snapshot: dt.date | None = None
        self.bars: list[pd.DataFrame] = []
        self.betas_written: list[dt.date] = []
        self.journal: list[str] = []
        self.progress: list[tuple[str, int]] = []  # every (phase, progress) report, in order

    def done(self, day: dt.date, status: str = COMPLETED, key: str | None = None) -> None:
        """A date completed earlier (by a run of trigger `key`, if given)."""
        run_id = uuid.uuid4()
        if key is not None:
            self.jobs[run_id] = JobRow(key, status)
        self.dates[day] = DateRow(status, run_id, len(STOCKS), {})


class FakeRepository:
    def __init__(self, world: World) -> None:
        self.w = world

    async def ensure_seeded(self, etfs: Sequence[str], synthetic: Sequence[str]) -> None:
        known = {s for s, _ in self.w.universe}
        self.w.universe += [(s, "etf") for s in etfs if s not in known]

    async def batched_dates(self) -> dict[dt.date, str]:
        return {d: r.status for d, r in self.w.dates.items()}

    async def latest_job_status(self, job_key: str) -> str | None:
        rows = [j for j in self.w.jobs.values() if j.key == job_key]
        return rows[-1].status if rows else None

    async def active_universe(self) -> list[tuple[str, str | None]]:
        return sorted(self.w.universe)

    async def last_price_dates(self, symbols: Sequence[str]) -> dict[str, dt.date]:
        if not self.w.bars:
            return {}
        last = pd.concat(self.w.bars).groupby("symbol")["date"].max()
        return {s: pd.Timestamp(last[s]).date() for s in symbols if s in last.index}

    async def profiles_due(self, symbols: Sequence[str], as_of: dt.date,
                           max_age_days: int) -> list[str]:
        return list(symbols)

    async def fundamentals_due(self, symbols: Sequence[str], as_of: dt.date,
                               max_age_days: int) -> list[str]:
        return []

    async def upsert_profiles(self, profiles: Sequence[Profile], as_of: dt.date) -> None:
        pass

    async def upsert_prices(self, bars: pd.DataFrame) -> None:
        self.w.bars.append(bars)

    async def upsert_fundamentals(self, items: Sequence[Fundamentals]) -> None:
        pass

    async def seed_factor_definitions(self) -> None:
        pass

    async def load_closes(self, symbols: Sequence[str],
                          sessions: pd.DatetimeIndex) -> pd.DataFrame:
        bars = pd.concat(self.w.bars) if self.w.bars else pd.DataFrame(
            columns=["symbol", "date", "adj_close"])
        wide = bars.assign(date=pd.to_datetime(bars["date"])).pivot_table(
            index="date", columns="symbol", values="adj_close")
        return wide.reindex(index=sessions, columns=list(symbols)).astype(float)

    async def write_symbol_betas(self, exposures: pd.DataFrame, day: dt.date) -> None:
        self.w.betas_written.append(day)

    async def record_date_complete(self, day: dt.date, *, status: str, run_id: uuid.UUID,
                                   symbols_total: int, failures: dict[str, str],
                                   redo: str = "no") -> bool:
        old = self.w.dates.get(day)
        replace = old is None or (old.run_id != run_id and (
            redo == "always"
            or (redo == "if_changed" and (old.status != status or old.failures != failures))))
        if replace:
            self.w.dates[day] = DateRow(status, run_id, symbols_total, dict(failures))
        return replace

    async def dates_of_key(self, job_key: str) -> list[CompletedDate]:
        runs = {i for i, j in self.w.jobs.items() if j.key == job_key}
        return [CompletedDate(d, r.status, r.symbols_total, len(r.failures), r.run_id)
                for d, r in sorted(self.w.dates.items())
                if r.run_id is not None and r.run_id in runs]

    async def latest_snapshot_date(self) -> dt.date | None:
        return self.w.latest_snapshot


class FakeUnitOfWork:
    def __init__(self, world: World) -> None:
        self.world = world
        self.batch = FakeRepository(world)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.world.journal.append("rollback" if exc_type else "commit")


class FakeJobs:
    """JobTracker's rules: a body that raises fails the job, one that returns completes it."""

    def __init__(self, world: World) -> None:
        self.w = world

    @contextlib.asynccontextmanager
    async def run(self, job_type: str, job_key: str, *, correlation_id: str | None = None,
                  phases: Sequence[str] = (), heartbeat_seconds: float = 10.0,
                  ) -> AsyncIterator[Job]:
        assert job_type == JOB_TYPE
        job = Job(uuid.uuid4(), job_type, job_key, 1, False)
        self.w.jobs[job.id] = JobRow(job_key, RUNNING)
        self.w.journal.append(f"job {job_key}")
        try:
            yield job
        except Exception:
            self.w.jobs[job.id].status = FAILED
            raise
        if self.w.jobs[job.id].status == RUNNING:
            self.w.jobs[job.id].status = COMPLETED

    async def phase(self, job: Job, name: str, *, total: int = 0, unit: str | None = None,
                    current: int = 0) -> None:
        self.w.jobs[job.id].phases.append(name)

    async def progress(self, job: Job, current: int, total: int | None = None) -> None:
        self.w.progress.append((self.w.jobs[job.id].phases[-1], current))

    async def finish(self, job: Job, status: str = COMPLETED, *,
                     result: dict[str, Any] | None = None, error: str | None = None) -> None:
        self.w.jobs[job.id].status = status
        self.w.jobs[job.id].result = result or {}


class FlakyProvider(SampleProvider):
    """The offline sample provider, with the prices of `failing` symbols refused."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: set[str] = set()
        self.price_windows: list[tuple[dt.date, dt.date]] = []

    async def fetch_prices(self, symbols: Sequence[str], start: dt.date,
                           end: dt.date) -> PriceResult:
        self.price_windows.append((start, end))
        result = await super().fetch_prices([s for s in symbols if s not in self.failing],
                                            start, end)
        return PriceResult(result.bars, {**result.failures,
                                         **{s: "refused" for s in symbols if s in self.failing}})


class Harness:
    def __init__(self, max_backfill: int = 30) -> None:
        self.world = World()
        self.provider = FlakyProvider()
        self.published: dict[str, SymbolBatchCompleted] = {}  # the bus: one per message id
        self.lock_available = True
        self.batch = SymbolBatch(
            lambda: FakeUnitOfWork(self.world), self.lock, FakeJobs(self.world), self.publish,
            self.provider,
            BatchSettings(max_backfill=max_backfill, settle_delay=dt.timedelta(minutes=60),
                          heartbeat_seconds=10.0),
            clock=lambda: NOW,
        )

    @contextlib.asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        if not self.lock_available:
            raise TransientError("another symbol batch run holds the lock")
        self.world.journal.append("lock")
        try:
            yield
        finally:
            self.world.journal.append("unlock")

    async def publish(self, message: Message) -> bool:
        assert isinstance(message, SymbolBatchCompleted)
        self.world.journal.append(f"publish {message.batch_date}")
        if message.message_id() in self.published:
            return False  # JetStream's duplicate window
        self.published[message.message_id()] = message
        return True

    async def trigger(self, day: dt.date, **kwargs: Any) -> None:
        await self.batch.handle(BatchNightlyRequested(target_date=day, **kwargs), None)  # type: ignore[arg-type]

    def announced(self) -> list[tuple[dt.date, bool]]:
        return [(m.batch_date, m.restate) for m in self.published.values()]

    def runs(self) -> list[tuple[str, str, list[str]]]:
        return [(j.key, j.status, j.result.get("dates", [])) for j in self.world.jobs.values()
                if j.result]


async def test_first_run_does_the_target_only_and_a_repeat_does_nothing() -> None:
    h = Harness()
    await h.trigger(D(2025, 11, 26))
    assert sorted(h.world.dates) == [D(2025, 11, 26)]
    assert h.world.betas_written == [D(2025, 11, 26)]
    assert h.runs() == [("2025-11-26", COMPLETED, ["2025-11-26"])]
    assert h.announced() == [(D(2025, 11, 26), False)]
    # the factor ETFs joined the universe, and the betas' window starts before the date
    assert set(FACTOR_ETFS) <= {s for s, _ in h.world.universe}
    assert h.provider.price_windows[0][0] < D(2025, 10, 1)

    journal_before = list(h.world.journal)
    await h.trigger(D(2025, 11, 26))  # a second trigger of the same night
    assert h.runs() == [("2025-11-26", COMPLETED, ["2025-11-26"])]
    assert h.world.betas_written == [D(2025, 11, 26)]
    assert len(h.published) == 1
    new = h.world.journal[len(journal_before):]
    assert "job 2025-11-26" not in new and not any(e.startswith("publish") for e in new)


async def test_holes_are_backfilled_oldest_first_within_the_per_run_cap() -> None:
    h = Harness(max_backfill=3)
    h.world.done(D(2025, 11, 17))
    h.world.done(D(2025, 11, 19))  # 11-18 is a hole
    await h.trigger(D(2025, 11, 26))
    # Thursday 20, Friday 21 (weekend skipped), Monday 24: no further than the cap
    assert h.world.betas_written == [D(2025, 11, 18), D(2025, 11, 20), D(2025, 11, 21)]
    assert sum(e.startswith("publish") for e in h.world.journal) == 3  # one per date
    # the next trigger of the same night carries on where the cap stopped
    await h.trigger(D(2025, 11, 26))
    # it announces every date of its key again (a resumed run must), the bus keeps one each
    assert sum(e.startswith("publish") for e in h.world.journal) == 3 + 6
    assert h.world.betas_written[3:] == [D(2025, 11, 24), D(2025, 11, 25), D(2025, 11, 26)]
    assert [r[2] for r in h.runs()] == [["2025-11-18", "2025-11-20", "2025-11-21"],
                                       ["2025-11-24", "2025-11-25", "2025-11-26"]]
    # every date once on the bus, oldest first; none restated (no snapshot yet)
    assert h.announced() == [(d, False) for d in sorted(h.world.betas_written)]
    await h.trigger(D(2025, 11, 26))
    assert len(h.world.betas_written) == 6 and len(h.published) == 6


async def test_a_hole_filled_under_an_existing_snapshot_is_announced_as_a_restatement() -> None:
    h = Harness()
    h.world.done(D(2025, 11, 17))
    h.world.done(D(2025, 11, 19))
    h.world.latest_snapshot = D(2025, 11, 19)
    await h.trigger(D(2025, 11, 20))
    assert h.announced() == [(D(2025, 11, 18), True), (D(2025, 11, 20), False)]


async def test_a_partial_date_is_redone_by_the_next_night_not_by_a_repeat() -> None:
    h = Harness()
    h.provider.failing = {"MSFT"}
    await h.trigger(D(2025, 11, 24))
    assert h.world.dates[D(2025, 11, 24)].status == PARTIAL
    assert h.world.dates[D(2025, 11, 24)].failures == {"MSFT": "prices: refused"}
    first_run = h.world.dates[D(2025, 11, 24)].run_id

    h.provider.failing = set()
    await h.trigger(D(2025, 11, 24))  # a repeat: partial dates wait for the next night
    assert h.world.dates[D(2025, 11, 24)].run_id == first_run
    assert h.world.betas_written == [D(2025, 11, 24)]

    await h.trigger(D(2025, 11, 25))
    assert h.world.betas_written == [D(2025, 11, 24), D(2025, 11, 24), D(2025, 11, 25)]
    redone = h.world.dates[D(2025, 11, 24)]
    assert (redone.status, redone.failures) == (COMPLETED, {})
    assert redone.run_id != first_run
    # the redone date is announced again, as a restatement (its own message id)
    assert h.announced() == [(D(2025, 11, 24), False), (D(2025, 11, 24), True),
                             (D(2025, 11, 25), False)]


async def test_a_partial_date_still_failing_the_same_way_keeps_its_record() -> None:
    h = Harness()
    h.provider.failing = {"MSFT"}
    await h.trigger(D(2025, 11, 24))
    first_run = h.world.dates[D(2025, 11, 24)].run_id
    await h.trigger(D(2025, 11, 25))
    assert h.world.dates[D(2025, 11, 24)].run_id == first_run  # outcome unchanged
    assert h.announced() == [(D(2025, 11, 24), False), (D(2025, 11, 25), False)]


async def test_a_rerun_replaces_the_date_once_per_token_and_announces_a_restatement() -> None:
    h = Harness()
    await h.trigger(D(2025, 11, 24))
    first_run = h.world.dates[D(2025, 11, 24)].run_id
    await h.trigger(D(2025, 11, 24), rerun=True, rerun_token="t1")
    assert h.world.betas_written == [D(2025, 11, 24), D(2025, 11, 24)]
    assert h.world.dates[D(2025, 11, 24)].run_id != first_run
    assert h.runs()[-1][:2] == ("2025-11-24:rerun:t1", COMPLETED)
    assert h.announced() == [(D(2025, 11, 24), False), (D(2025, 11, 24), True)]
    # the same rerun delivered again does nothing; another token reruns again
    await h.trigger(D(2025, 11, 24), rerun=True, rerun_token="t1")
    assert len(h.world.betas_written) == 2
    await h.trigger(D(2025, 11, 24), rerun=True, rerun_token="t2")
    assert len(h.world.betas_written) == 3 and len(h.published) == 3


async def test_a_rerun_does_not_backfill_other_dates() -> None:
    h = Harness()
    h.world.done(D(2025, 11, 17))
    await h.trigger(D(2025, 11, 20), rerun=True, rerun_token="t")
    assert h.world.betas_written == [D(2025, 11, 20)]


async def test_a_run_killed_after_its_dates_is_resumed_by_announcing_them_only() -> None:
    h = Harness()
    h.world.done(D(2025, 11, 21), key="2025-11-24")
    h.world.done(D(2025, 11, 24), key="2025-11-24")
    for row in h.world.jobs.values():  # the worker died: its job was failed
        row.status = FAILED
    await h.trigger(D(2025, 11, 24))
    assert h.world.betas_written == []  # completed dates are not redone
    assert h.announced() == [(D(2025, 11, 21), False), (D(2025, 11, 24), False)]
    assert h.runs() == [("2025-11-24", COMPLETED, [])]


async def test_the_run_happens_under_the_lock_and_publishes_after_the_commits() -> None:
    h = Harness()
    await h.trigger(D(2025, 11, 24))
    journal = h.world.journal
    assert journal[0] == "lock" and journal[-1] == "unlock"
    assert "rollback" not in journal
    last_commit = max(i for i, e in enumerate(journal) if e == "commit")
    assert journal.index("publish 2025-11-24") > last_commit


async def test_a_held_lock_leaves_everything_untouched_for_a_redelivery() -> None:
    h = Harness()
    h.lock_available = False
    with pytest.raises(TransientError):
        await h.trigger(D(2025, 11, 24))
    assert h.world.jobs == {} and h.world.dates == {} and h.published == {}


async def test_a_provider_crash_fails_the_job_and_announces_nothing() -> None:
    h = Harness()

    async def broken(symbols: Sequence[str], start: dt.date, end: dt.date) -> PriceResult:
        raise RuntimeError("vendor down")

    h.provider.fetch_prices = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await h.trigger(D(2025, 11, 24))
    assert [j.status for j in h.world.jobs.values()] == [FAILED]
    assert h.world.dates == {} and h.published == {}
    del h.provider.fetch_prices  # the vendor is back: the redelivery runs the date
    await h.trigger(D(2025, 11, 24))
    assert [j.status for j in h.world.jobs.values()] == [FAILED, COMPLETED]
    assert h.announced() == [(D(2025, 11, 24), False)]


async def test_a_rerun_and_the_nightly_runs_around_it_do_not_redo_each_other() -> None:
    h = Harness()
    h.provider.failing = {"MSFT"}
    await h.trigger(D(2025, 11, 24))  # partial
    h.provider.failing = set()
    await h.trigger(D(2025, 11, 24), rerun=True, rerun_token="t")  # an operator redoes it
    rerun_id = h.world.dates[D(2025, 11, 24)].run_id
    assert h.world.dates[D(2025, 11, 24)].status == COMPLETED
    await h.trigger(D(2025, 11, 24))  # the night's own trigger again: already ran
    await h.trigger(D(2025, 11, 25))  # the next night: 11-24 is no longer partial
    assert h.world.betas_written == [D(2025, 11, 24), D(2025, 11, 24), D(2025, 11, 25)]
    assert h.world.dates[D(2025, 11, 24)].run_id == rerun_id
    assert h.announced() == [(D(2025, 11, 24), False), (D(2025, 11, 24), True),
                             (D(2025, 11, 25), False)]


def test_price_starts_fetch_only_what_each_symbol_lacks_plus_the_overlap() -> None:
    window_start, first = D(2024, 11, 25), D(2025, 11, 26)  # Wednesday
    last = {"WARM": D(2025, 11, 25), "BEHIND": D(2025, 11, 14), "LATER": D(2025, 11, 28),
            "SILENT": D(2024, 6, 3)}
    starts = price_starts(["NEW", "WARM", "BEHIND", "LATER", "SILENT"], last, window_start, first)
    assert starts == {
        "NEW": window_start,  # never priced: the whole factor window
        "SILENT": window_start,  # nothing inside the window
        "WARM": D(2025, 11, 18),  # 5 sessions before its last bar (Tue 25th)
        "BEHIND": D(2025, 11, 7),  # 5 sessions before Fri 14th: its gap is covered
        "LATER": D(2025, 11, 19),  # a rerun of an older date: 5 sessions before that date
    }


async def test_the_next_night_fetches_a_few_sessions_not_the_whole_window() -> None:
    h = Harness()
    await h.trigger(D(2025, 11, 25))
    assert {w for w in h.provider.price_windows} == {
        (calendar.lookback_start(D(2025, 11, 25), LOOKBACK_SESSIONS), D(2025, 11, 25))}
    h.provider.price_windows.clear()
    await h.trigger(D(2025, 11, 26))
    # every symbol has bars up to the 25th: from 5 sessions before it, one call per chunk
    assert set(h.provider.price_windows) == {(D(2025, 11, 18), D(2025, 11, 26))}
    assert h.world.betas_written == [D(2025, 11, 25), D(2025, 11, 26)]


async def test_price_chunks_overlap_two_at_a_time_and_a_failing_chunk_fails_the_run() -> None:
    h = Harness()
    h.world.universe += [(s, None) for s in synthetic_universe(2 * PRICE_CHUNK + 50)]
    in_flight, most = 0, 0
    fetch = h.provider.fetch_prices

    async def slow(symbols: Sequence[str], start: dt.date, end: dt.date) -> PriceResult:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            await asyncio.sleep(0.05)  # the vendor's latency: the next chunk's fetch overlaps
            return await fetch(symbols, start, end)
        finally:
            in_flight -= 1

    h.provider.fetch_prices = slow  # type: ignore[method-assign]
    await h.trigger(D(2025, 11, 24))
    assert most == CHUNKS_IN_FLIGHT == 2
    universe = len(h.world.universe)
    written = set(pd.concat(h.world.bars)["symbol"])
    assert written == {s for s, _ in h.world.universe}  # every chunk written once
    prices = [n for phase, n in h.world.progress if phase == "prices"]
    assert prices == [PRICE_CHUNK, 2 * PRICE_CHUNK, universe]  # in order, never back

    calls = 0

    async def second_chunk_breaks(symbols: Sequence[str], start: dt.date,
                                  end: dt.date) -> PriceResult:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("vendor reset the connection")
        return await fetch(symbols, start, end)

    h.provider.fetch_prices = second_chunk_breaks  # type: ignore[method-assign]
    with pytest.raises(ConnectionError, match="vendor reset"):  # the error itself, not a group
        await h.trigger(D(2025, 11, 25))
    assert h.world.jobs[list(h.world.jobs)[-1]].status == FAILED
    assert D(2025, 11, 25) not in h.world.dates
