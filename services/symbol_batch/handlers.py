"""symbol_batch: the nightly prices, profiles, fundamentals and factor betas of every symbol.

Flow of one trigger (docs/design.md §5):
  target = the requested session, or the effective trading date (NYSE, US/Eastern, after close
  plus settle delay); dates = sessions after the last completed date up to target (first run:
  target only; at most ``max_backfill_days``); phase 0 profiles (once per run, latest date),
  1 prices (one provider call per symbol chunk covering all dates plus the factors' lookback),
  2 fundamentals for symbols whose earnings window is due, 3 factors per date, each date
  recorded complete in the transaction that writes its betas; then `symbol.batch.completed`
  per date in date order, then the job is finished (partial when any symbol failed).

Who runs: a run lock (a PostgreSQL advisory lock, `repository.AdvisoryRunLock`) serialises runs across replicas and cron hosts (released
by the server when a worker dies); under it the job tracker's row for the target date is
started or taken over, and the completed-date watermark decides what is left to do. A repeat
of a trigger therefore finds nothing to do, and a run killed mid-way is resumed by the
redelivered message: completed dates are not redone, their events are announced again (the
Nats-Msg-Id business key drops repeats).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from libs.common import calendar
from libs.common.bus import Delivery, Publish, TransientError
from libs.common.domain.statuses import batch_final_status
from libs.common.domain.symbols import InvestmentClass, provider_exclusion
from libs.common.events import BatchNightlyRequested, SymbolBatchCompleted
from libs.common.factors import FACTOR_ETFS, LOOKBACK_SESSIONS, compute_exposures, daily_returns
from libs.common.jobs import COMPLETED, PARTIAL, Job, JobAlreadyRunning, JobRunner, JobTracker
from libs.common.market_data.base import MarketDataProvider
from libs.common.market_data.sample import synthetic_universe
from libs.common.service import ServiceContext
from services.symbol_batch.repository import (
    AdvisoryRunLock,
    RunLock,
    SymbolBatchUnitOfWorkFactory,
    sql_unit_of_work,
)
from services.symbol_batch.store import JOB_TYPE

log = logging.getLogger(__name__)

PHASES = ("profiles", "prices", "fundamentals", "factors")
PRICE_CHUNK = 100
PROFILE_CHUNK = 100
PROFILE_MAX_AGE_DAYS = 7
FUNDAMENTALS_MAX_AGE_DAYS = 30
# Chunks of a phase in flight at once: one chunk's write overlaps the next one's fetch (the
# vendor call or sample generation runs in a thread, the write is PostgreSQL's work).
CHUNKS_IN_FLIGHT = 2
MAX_FAILURES_IN_RESULT = 500


# --- pure domain ------------------------------------------------------------------------


@dataclass(frozen=True)
class Universe:
    """Symbols the batch fetches (provider-eligible, factor ETFs included) and those it skips."""

    symbols: list[str]
    skipped: dict[str, str]


def build_universe(
    rows: Sequence[tuple[str, str | None]], etfs: Sequence[str] = FACTOR_ETFS
) -> Universe:
    """Active universe ∪ factor ETFs, minus private/synthetic/cash symbols (never sent out)."""
    symbols: set[str] = set(etfs)
    skipped: dict[str, str] = {}
    for symbol, asset_type in rows:
        klass = InvestmentClass.PRIVATE if (asset_type or "").upper() == InvestmentClass.PRIVATE else None
        reason = provider_exclusion(symbol, klass)
        if reason is None:
            symbols.add(symbol.strip().upper())
        else:
            skipped[symbol] = reason
    return Universe(sorted(symbols), skipped)


def resolve_target(
    requested: dt.date | None, now: dt.datetime, settle_delay: dt.timedelta
) -> dt.date:
    """The session to batch up to: never later than the last session whose data is final."""
    effective = calendar.effective_trading_date(now, settle_delay)
    if requested is None:
        return effective
    return min(calendar.session_on_or_before(requested), effective)


#: A partial date (some symbols failed) is retried by the runs of this many sessions after it.
REDO_PARTIAL_SESSIONS = 5
#: Sessions of bars fetched again before the first date of a run (and before a symbol's last
#: stored bar): a vendor's late corrections of recent bars are picked up, and a run never
#: leaves a gap. Only a symbol with no bars in the factor window fetches the whole window.
PRICE_OVERLAP_SESSIONS = 5


def price_starts(
    symbols: Sequence[str], last: dict[str, dt.date], window_start: dt.date, first: dt.date
) -> dict[str, dt.date]:
    """Where each symbol's price fetch starts for a run whose first date is `first`.

    A symbol with bars reaching into the factor window (last bar on or after `window_start`)
    needs only what it lacks plus the overlap: from PRICE_OVERLAP_SESSIONS sessions before
    the earlier of `first` and its last bar. Any other symbol (new, or silent since before
    the window) fetches the whole window. Re-fetching the whole window for every symbol every
    night cost ~100 s for 5,000 symbols (1.3 M bars upserted for one new date).
    """
    before: dict[dt.date, dt.date] = {}  # memo: few distinct dates, calendar lookups are slow

    def overlap_from(day: dt.date) -> dt.date:
        if day not in before:
            before[day] = calendar.lookback_start(day, PRICE_OVERLAP_SESSIONS)
        return before[day]

    out = {}
    for symbol in symbols:
        seen = last.get(symbol)
        if seen is None or seen < window_start:
            out[symbol] = window_start
        else:
            out[symbol] = max(window_start, overlap_from(min(first, seen)))
    return out


def rerun_key(target: dt.date, message: BatchNightlyRequested) -> str:
    """An operator's rerun is its own job (the date's first run stays in the history)."""
    return f"{target.isoformat()}:rerun:{message.rerun_token or message.correlation_id}"


def plan_dates(
    batched: dict[dt.date, str], target: dt.date, max_backfill: int, *, rerun: bool = False
) -> tuple[list[dt.date], dict[dt.date, str]]:
    """(dates to process oldest first, how each one already done is redone).

    * rerun: the target only, replacing its record whatever it was;
    * otherwise every session not yet done from the first done one up to the target (holes
      first), the oldest `max_backfill` of them (the rest go to the following runs), plus
      the partial dates of the last REDO_PARTIAL_SESSIONS sessions, whose failed symbols are
      retried (their record replaced only if the outcome changed).
    """
    if rerun:
        return [target], {target: "always"}
    done = set(batched)
    pending = calendar.missing_sessions(
        max(done) if done else None, target, max_backfill,
        done=done, first_completed=min(done) if done else None,
    )
    recent = set(calendar.sessions_between(
        calendar.lookback_start(target, REDO_PARTIAL_SESSIONS), target))
    partial = {d for d, status in batched.items() if status == PARTIAL and d in recent}
    dates = sorted(set(pending) | partial)
    return dates, {d: "if_changed" for d in partial}


def chunks(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


@dataclass
class RunOutcome:
    dates: list[dt.date]
    symbols_total: int
    failures: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return batch_final_status(len(self.failures))


# --- the use case -----------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSettings:
    """The deployment settings the batch reads (from `Settings` in `from_context`)."""

    max_backfill: int
    settle_delay: dt.timedelta
    heartbeat_seconds: float
    synthetic: list[str] = field(default_factory=list)  # sample provider's extra tickers


class SymbolBatch:
    """Consumer of `batch.nightly.requested`: plans the dates of a trigger and runs them.

    Built on ports (a unit of work over `SymbolBatchRepository`, a run lock, a job runner and
    a publish function), so the decisions below run on in-memory fakes in the unit tests;
    `from_context` is the production wiring (PostgreSQL, the advisory lock, NATS).
    """

    def __init__(
        self,
        uow: SymbolBatchUnitOfWorkFactory,
        run_lock: RunLock,
        jobs: JobRunner,
        publish: Publish,
        provider: MarketDataProvider,
        settings: BatchSettings,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.uow = uow
        self.run_lock = run_lock
        self.jobs = jobs
        self.publish = publish
        self.provider = provider
        self.settings = settings
        self.clock = clock

    @classmethod
    def from_context(
        cls,
        ctx: ServiceContext,
        provider: MarketDataProvider,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> SymbolBatch:
        settings = ctx.settings
        # The sample provider's synthetic universe (production-size runs offline); another
        # provider has no such tickers, so the setting is ignored there.
        synthetic = (
            synthetic_universe(settings.sample_universe)
            if provider.name.split("+")[0] == "sample"
            else []
        )
        if settings.sample_universe and not synthetic:
            log.warning("SIGMABATCH_SAMPLE_UNIVERSE ignored: provider %s", provider.name)
        # Under the advisory lock no live symbol_batch worker can own a running row, so a
        # running row found there belongs to a dead worker: take it over at once.
        jobs = JobTracker(
            ctx.database_url, worker_id=ctx.jobs.worker_id, stale_after_seconds=0.0
        )
        return cls(
            sql_unit_of_work(ctx.database_url),
            AdvisoryRunLock(ctx.database_url),
            jobs,
            ctx.publish,
            provider,
            BatchSettings(
                max_backfill=settings.max_backfill_days,
                settle_delay=dt.timedelta(minutes=settings.settle_delay_minutes),
                heartbeat_seconds=settings.job_heartbeat_seconds,
                synthetic=synthetic,
            ),
            clock=clock,
        )

    async def handle(self, message: BatchNightlyRequested, delivery: Delivery) -> None:
        target = resolve_target(message.target_date, self.clock(), self.settings.settle_delay)
        key = rerun_key(target, message) if message.rerun else target.isoformat()
        if delivery is not None:  # a direct call (tests) has no delivery
            delivery.job_key = key
        extra = {"correlation_id": message.correlation_id, "job_type": JOB_TYPE}
        async with self.run_lock():
            async with self.uow() as work:
                await work.batch.ensure_seeded(FACTOR_ETFS, self.settings.synthetic)
                batched = await work.batch.batched_dates()
                last_status = await work.batch.latest_job_status(key)
            dates, redo = plan_dates(batched, target, self.settings.max_backfill,
                                     rerun=message.rerun)
            if last_status in (COMPLETED, PARTIAL):
                # A repeat of a trigger that already ran: partial dates wait for the next one.
                dates = [d for d in dates if d not in redo]
                redo = {}
            if not dates and last_status in (COMPLETED, PARTIAL, None):
                log.info(
                    "symbol batch %s: nothing to do (last completed %s)",
                    key,
                    max(batched) if batched else None,
                    extra=extra,
                )
                return
            try:
                async with self.jobs.run(
                    JOB_TYPE,
                    key,
                    correlation_id=message.correlation_id,
                    phases=PHASES,
                    heartbeat_seconds=self.settings.heartbeat_seconds,
                ) as job:
                    extra["job_id"] = str(job.id)
                    log.info(
                        "symbol batch %s: %d dates %s",
                        key,
                        len(dates),
                        [d.isoformat() for d in dates],
                        extra=extra,
                    )
                    outcome = await self.run(job, dates, target, redo)
                    await self.announce(key, message.correlation_id, restate=set(redo))
                    await self.jobs.finish(
                        job,
                        outcome.status,
                        result={
                            "dates": [d.isoformat() for d in outcome.dates],
                            "symbols_total": outcome.symbols_total,
                            "symbols_failed": len(outcome.failures),
                            "failures": dict(
                                sorted(outcome.failures.items())[:MAX_FAILURES_IN_RESULT]
                            ),
                            "provider": self.provider.name,
                            "timings": outcome.timings,
                        },
                    )
                    log.info(
                        "symbol batch %s: %s (%d symbols, %d failed)",
                        key,
                        outcome.status,
                        outcome.symbols_total,
                        len(outcome.failures),
                        extra=extra,
                    )
            except JobAlreadyRunning as exc:
                raise TransientError(str(exc)) from exc

    async def run(
        self,
        job: Job,
        dates: list[dt.date],
        target: dt.date,
        redo: dict[dt.date, str] | None = None,
    ) -> RunOutcome:
        """Phases 0-3 for ``dates`` (possibly none: a resumed run that only has to announce)."""
        async with self.uow() as work:
            universe = build_universe(await work.batch.active_universe())
        outcome = RunOutcome(dates=dates, symbols_total=len(universe.symbols))
        if not dates:
            return outcome
        started = time.perf_counter()
        await self._profiles(job, universe.symbols, target, outcome)
        outcome.timings["profiles"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        window_start = calendar.lookback_start(dates[0], LOOKBACK_SESSIONS)
        async with self.uow() as work:
            last = await work.batch.last_price_dates(universe.symbols)
        starts = price_starts(universe.symbols, last, window_start, dates[0])
        await self._prices(job, starts, target, outcome)
        outcome.timings["prices"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        await self._fundamentals(job, universe.symbols, target, outcome)
        outcome.timings["fundamentals"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        await self._factors(job, universe.symbols, window_start, dates, outcome, redo or {})
        outcome.timings["factors"] = round(time.perf_counter() - started, 3)
        return outcome

    async def _profiles(
        self, job: Job, symbols: list[str], as_of: dt.date, outcome: RunOutcome
    ) -> None:
        async with self.uow() as work:
            due = await work.batch.profiles_due(symbols, as_of, PROFILE_MAX_AGE_DAYS)

        async def fetch_and_write(chunk: list[str]) -> dict[str, str]:
            result = await self.provider.fetch_profiles(chunk, as_of)
            async with self.uow() as work:
                await work.batch.upsert_profiles(result.profiles, as_of)
            return result.failures

        await self._in_chunks(job, "profiles", due, PROFILE_CHUNK, fetch_and_write,
                              outcome, "profile")

    async def _prices(
        self, job: Job, starts: dict[str, dt.date], end: dt.date, outcome: RunOutcome
    ) -> None:
        """Every date of the run at once, each symbol from its own start (`price_starts`);
        symbols are taken in start order, so a chunk makes one call per distinct start."""
        async def fetch_and_write(chunk: list[str]) -> dict[str, str]:
            bars, failures = [], {}
            for start in sorted({starts[s] for s in chunk}):
                result = await self.provider.fetch_prices(
                    [s for s in chunk if starts[s] == start], start, end)
                bars.append(result.bars)
                failures.update(result.failures)
            async with self.uow() as work:
                await work.batch.upsert_prices(pd.concat(bars) if len(bars) > 1 else bars[0])
            return failures

        ordered = sorted(starts, key=lambda s: (starts[s], s))
        # A price failure is the one that matters: it replaces an earlier profile failure.
        await self._in_chunks(job, "prices", ordered, PRICE_CHUNK, fetch_and_write,
                              outcome, "prices", replace=True)

    async def _fundamentals(
        self, job: Job, symbols: list[str], as_of: dt.date, outcome: RunOutcome
    ) -> None:
        async with self.uow() as work:
            due = await work.batch.fundamentals_due(symbols, as_of, FUNDAMENTALS_MAX_AGE_DAYS)

        async def fetch_and_write(chunk: list[str]) -> dict[str, str]:
            result = await self.provider.fetch_fundamentals(chunk, as_of)
            async with self.uow() as work:
                await work.batch.upsert_fundamentals(result.items)
            return result.failures

        await self._in_chunks(job, "fundamentals", due, PROFILE_CHUNK, fetch_and_write,
                              outcome, "fundamentals")

    async def _in_chunks(
        self,
        job: Job,
        phase: str,
        symbols: list[str],
        size: int,
        fetch_and_write: Callable[[list[str]], Awaitable[dict[str, str]]],
        outcome: RunOutcome,
        failure_label: str,
        *,
        replace: bool = False,
    ) -> None:
        """One phase: fetch and write `symbols` chunk by chunk, `CHUNKS_IN_FLIGHT` at a
        time, recording failures and progress; any chunk's error cancels the others and
        fails the phase (the job is redone from the watermark)."""
        await self.jobs.phase(job, phase, total=len(symbols), unit="symbols")
        done = 0
        slots = asyncio.Semaphore(CHUNKS_IN_FLIGHT)
        reporting = asyncio.Lock()  # progress rows written in order, never going back

        async def one(chunk: list[str]) -> None:
            nonlocal done
            async with slots:
                failures = await fetch_and_write(chunk)
            for symbol, reason in failures.items():
                if replace:
                    outcome.failures[symbol] = f"{failure_label}: {reason}"
                else:
                    outcome.failures.setdefault(symbol, f"{failure_label}: {reason}")
            done += len(chunk)
            async with reporting:
                await self.jobs.progress(job, done)

        try:
            async with asyncio.TaskGroup() as group:
                for chunk in chunks(symbols, size):
                    group.create_task(one(chunk))
        except BaseExceptionGroup as failed:  # the first error, as a sequential loop raised it
            raise failed.exceptions[0] from None

    async def _factors(
        self,
        job: Job,
        symbols: list[str],
        start: dt.date,
        dates: list[dt.date],
        outcome: RunOutcome,
        redo: dict[dt.date, str],
    ) -> None:
        await self.jobs.phase(job, "factors", total=len(dates), unit="dates")
        sessions = pd.DatetimeIndex(calendar.sessions_between(start, dates[-1]))
        async with self.uow() as work:
            closes = await work.batch.load_closes(symbols, sessions)
            await work.batch.seed_factor_definitions()
        returns = daily_returns(closes)
        for done, day in enumerate(dates, start=1):
            exposures = await asyncio.to_thread(compute_exposures, returns, day, symbols)
            # The date's betas and its watermark row commit together.
            async with self.uow() as work:
                await work.batch.write_symbol_betas(exposures, day)
                await work.batch.record_date_complete(
                    day,
                    status=outcome.status,
                    run_id=job.id,
                    symbols_total=outcome.symbols_total,
                    failures=outcome.failures,
                    redo=redo.get(day, "no"),
                )
            await self.jobs.progress(job, done)

    async def announce(
        self, key: str, correlation_id: str, *, restate: set[dt.date] | None = None
    ) -> None:
        """`symbol.batch.completed` for every date this trigger's runs completed, oldest first.

        A date redone (`restate`: a rerun, a partial date retried) or on or before the latest
        portfolio snapshot (a hole filled, a resumed redo) is announced as a restatement:
        portfolio_refresh restates the snapshots from it on.
        """
        async with self.uow() as work:
            completed = await work.batch.dates_of_key(key)
            latest_snapshot = await work.batch.latest_snapshot_date()
        for row in completed:
            redone = row.batch_date in (restate or set()) or (
                latest_snapshot is not None and row.batch_date <= latest_snapshot
            )
            await self.publish(
                SymbolBatchCompleted(
                    batch_date=row.batch_date,
                    status=row.status,
                    symbols_total=row.symbols_total,
                    symbols_failed=row.symbols_failed,
                    run_id=str(row.run_id),
                    restate=redone,
                    correlation_id=correlation_id,
                )
            )
