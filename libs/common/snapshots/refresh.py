"""The portfolio snapshot use case: claim, compute and complete (portfolio, date) slots.

Shared by portfolio_refresh's handlers (batch chunks, single-portfolio requests) and the
status API's in-process first snapshot of a `v2_instant` upload, so both run the same
transaction and a concurrent claimer of the same slot waits on its row and then skips it.
See services/portfolio_refresh/handlers.py for the flow around it and why nothing is done
twice, or half.

Layers: `SnapshotRefresh` decides (catch-up over missing dates, restatement from a date,
isolation of a poison portfolio by bisection) over the `SlotStore` port; `SqlSlotStore` is
PostgreSQL (`refresh_date`: one chunk on one date in one transaction, `snapshots.repository`
SQL); `compute_chunk` is the pure computation. The module functions `refresh_portfolios`,
`restate_portfolios` and `refresh_date_isolated` are `SnapshotRefresh` over `SqlSlotStore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import pandas as pd
import sqlalchemy.exc

from libs.common import partitions, pnl
from libs.common.analytics import repository as analytics_repo
from libs.common.analytics.chunk import analytics_of_refresh
from libs.common.db import raw_connection, session_scope
from libs.common.events import PortfolioRefreshRequested
from libs.common.exposures import ExposureResult, compute_exposures
from libs.common.jobs import JobLeaseLost, record_failed_job
from libs.common.snapshots import repository as repo

log = logging.getLogger(__name__)

# Job types of portfolio_refresh (batch_run_history.job_type); the status API reads them too.
JOB_PLAN = "portfolio_refresh"
JOB_CHUNK = "portfolio_refresh_chunk"
JOB_REQUEST = "portfolio_refresh_request"

# A failed `portfolio_refresh_request` (dead letter or isolated portfolio) is keyed
# `<portfolio>:<date>`, the handler's job key. Dead letters recorded before dead letters were
# keyed by job carry the request's message id instead, `refresh:<portfolio>:<date>`: readers
# look under both (the one rule for it, in Python and in SQL, is here).
LEGACY_REQUEST_KEY_PREFIX = "refresh:"


def request_job_key(portfolio_id: uuid.UUID, day: dt.date) -> str:
    """The job key of a refresh request for one (portfolio, date)."""
    return f"{portfolio_id}:{day.isoformat()}"


def request_job_keys(portfolio_id: uuid.UUID, day: dt.date) -> list[str]:
    """Every key a refresh request of (portfolio, date) may be recorded under: the job key,
    then the legacy message-id key."""
    key = request_job_key(portfolio_id, day)
    return [key, LEGACY_REQUEST_KEY_PREFIX + key]


def request_job_keys_sql(portfolio: str, day: str) -> str:
    """`request_job_keys` as SQL: two comma-separated expressions over the SQL expressions
    `portfolio` (uuid) and `day` (date, which the server renders ISO), for `job_key IN (...)`."""
    key = f"{portfolio} || ':' || {day}"
    return f"{key}, '{LEGACY_REQUEST_KEY_PREFIX}' || {key}"


@dataclass(frozen=True)
class DateOutcome:
    day: dt.date
    snapshots: int
    positions: int
    # Portfolios isolated as failing on this date, with the reason (see refresh_date_isolated).
    failed: dict[uuid.UUID, str] = field(default_factory=dict)


# Failures a retry of the same work may cure: the connection, the server, a lock conflict.
# Anything else raised by a chunk is a property of its data and is isolated by bisection.
_TRANSIENT: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,  # serialization failure, deadlock
    asyncpg.exceptions.LockNotAvailableError,
    ConnectionError,
    OSError,
    TimeoutError,
    JobLeaseLost,
)


def is_transient(exc: BaseException) -> bool:
    """True for failures of the infrastructure (retry the whole chunk later)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (*_TRANSIENT, sqlalchemy.exc.DisconnectionError)):
            return True
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        current = getattr(current, "orig", None) or current.__cause__
    return False


def compute_chunk(
    day: dt.date, inputs: repo.ChunkInputs, params: pnl.PricingParams
) -> tuple[pnl.RefreshResult, list[dict[str, Any]], list[str | None], ExposureResult]:
    """Pure part of a chunk: P&L, Decimal snapshot rows, model inputs, exposures.

    Weights are measured against each snapshot's equity (gross exposure when equity <= 0);
    the symbols without betas join the snapshot's data-quality lists.
    """
    result = pnl.compute_refresh(
        day, inputs.portfolios, inputs.positions, inputs.prices, inputs.previous, inputs.flows,
        params,
    )
    snapshot_rows = pnl.snapshot_records(result.snapshots)
    values = result.positions
    model_inputs = [
        None if inputs is None else json.dumps(inputs) for inputs in pnl.model_inputs_column(values)
    ]
    base = pd.DataFrame(
        {
            "portfolio_id": result.snapshots["portfolio_id"],
            "equity": result.snapshots["exposure_base_cents"] / 100.0,
        }
    )
    exposures = compute_exposures(values, inputs.betas, base, include_positions=False)
    for row in snapshot_rows:
        missing = exposures.missing_betas.get(row["portfolio_id"], [])
        row["data_quality"]["no_betas"] = list(missing)
        row["is_degraded"] = row["is_degraded"] or bool(missing)
    return result, snapshot_rows, model_inputs, exposures


# --- ports: where the slots live ----------------------------------------------------------


class SlotReads(Protocol):
    """The reads that plan a refresh, inside one transaction (`SlotStore.reads`)."""

    async def latest_complete_dates(self, portfolio_ids: Sequence[uuid.UUID],
                                    before: dt.date) -> dict[uuid.UUID, dt.date]: ...

    async def first_entry_dates(
        self, portfolio_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, dt.date]: ...

    async def batch_dates_between(self, after: dt.date, before: dt.date) -> list[dt.date]: ...

    async def first_complete_dates(
        self, portfolio_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, dt.date]: ...

    async def restatement_dates(self, day: dt.date,
                                portfolio_ids: Sequence[uuid.UUID]) -> list[dt.date]: ...


class SlotStore(Protocol):
    """The (portfolio, date) snapshot slots: the planning reads, the all-or-nothing refresh of
    one chunk on one date, and the record of one portfolio's failure. `SqlSlotStore` is the
    PostgreSQL one; `tests/test_refresh_unit.py` passes an in-memory fake."""

    def reads(self) -> AbstractAsyncContextManager[SlotReads]: ...

    async def refresh_date(
        self, day: dt.date, portfolio_ids: Sequence[uuid.UUID], params: pnl.PricingParams, *,
        skip_if_later: bool, require_holdings: bool = True,
        restate_degraded_before: dt.datetime | None = None, restate: bool = False,
    ) -> DateOutcome: ...

    async def record_portfolio_failure(self, portfolio_id: uuid.UUID, day: dt.date,
                                       reason: str) -> None: ...


# --- the SQL slot store -------------------------------------------------------------------


async def refresh_date(
    database_url: str,
    day: dt.date,
    portfolio_ids: Sequence[uuid.UUID],
    params: pnl.PricingParams,
    *,
    skip_if_later: bool,
    require_holdings: bool = True,
    restate_degraded_before: dt.datetime | None = None,
    restate: bool = False,
) -> DateOutcome:
    """Claim, compute, write and complete the slots of `portfolio_ids` on `day` atomically."""
    await ensure_partitions(database_url, day)
    async with session_scope(database_url) as session:
        conn = await raw_connection(session)
        claimed = await repo.claim_slots(
            conn, day, portfolio_ids, skip_if_later=skip_if_later,
            require_holdings=require_holdings, restate_degraded_before=restate_degraded_before,
            restate=restate,
        )
        if not claimed:
            return DateOutcome(day, 0, 0)
        inputs = await repo.load_chunk(conn, day, claimed)
        as_of = await analytics_repo.load_inputs(conn, day, inputs.positions, inputs.betas)
        # CPU-bound: off the event loop, so bus heartbeats keep flowing meanwhile.
        result, snapshot_rows, model_inputs, exposures = await asyncio.to_thread(
            compute_chunk, day, inputs, params
        )
        analytics = await asyncio.to_thread(
            analytics_of_refresh, result, inputs.positions, as_of, params
        )
        await analytics_repo.write_analytics(conn, day, claimed, analytics)
        await repo.write_position_snapshots(
            conn, day, result.positions, model_inputs, exposures.weights, inputs.beta_dates
        )
        await repo.write_factor_exposures(conn, day, claimed, exposures.portfolios)
        completed = await repo.complete_snapshots(conn, day, snapshot_rows)
        if completed != len(claimed):
            raise RuntimeError(f"{day}: completed {completed} of {len(claimed)} claimed slots")
    return DateOutcome(day, completed, len(result.positions))


async def ensure_partitions(database_url: str, day: dt.date) -> None:
    """The month partitions of `day` (and the next month) before a chunk writes into them.

    In a transaction of its own, so a chunk never holds the DDL's locks; a no-op without a
    round trip once this process has seen them (`partitions.ensure_snapshot_partitions`).
    """
    if partitions.known(database_url, day):
        return
    async with session_scope(database_url) as session:
        conn = await raw_connection(session)
        await partitions.ensure_snapshot_partitions(conn, day, key=database_url)


async def record_portfolio_failure(
    database_url: str, portfolio_id: uuid.UUID, day: dt.date, reason: str
) -> None:
    """Make one portfolio's failed date visible and re-drivable, in its own transaction.

    * the (portfolio, day) slot stays incomplete with `details.refresh_error` (so the date's
      completion does not wait for it, and the next refresh of the portfolio retries it);
    * an `error` line in the portfolio's onboarding activity (its status page);
    * a failed `portfolio_refresh_request` job keyed `<portfolio>:<day>` carrying the
      `portfolio.refresh.requested` to re-publish (`sigmabatch jobs retry ID`).
    """
    async with session_scope(database_url) as session:
        conn = await raw_connection(session)
        await repo.mark_slot_failed(conn, portfolio_id, day, reason)
        await conn.execute(
            "INSERT INTO onboarding_activity (portfolio_id, level, message) "
            "VALUES ($1, 'error', $2)",
            portfolio_id,
            f"snapshot of {day.isoformat()} failed: {reason}",
        )
    request = PortfolioRefreshRequested(portfolio_id=portfolio_id, as_of=day, reason="retry")
    await record_failed_job(
        database_url, JOB_REQUEST, request_job_key(portfolio_id, day), reason,
        subject=request.subject, payload=request.model_dump_json().encode(),
    )


class SqlSlotReads:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def latest_complete_dates(self, portfolio_ids: Sequence[uuid.UUID],
                                    before: dt.date) -> dict[uuid.UUID, dt.date]:
        return await repo.latest_complete_dates(self.conn, portfolio_ids, before)

    async def first_entry_dates(
            self, portfolio_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, dt.date]:
        return await repo.first_entry_dates(self.conn, portfolio_ids)

    async def batch_dates_between(self, after: dt.date, before: dt.date) -> list[dt.date]:
        return await repo.batch_dates_between(self.conn, after, before)

    async def first_complete_dates(
            self, portfolio_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, dt.date]:
        return await repo.first_complete_dates(self.conn, portfolio_ids)

    async def restatement_dates(self, day: dt.date,
                                portfolio_ids: Sequence[uuid.UUID]) -> list[dt.date]:
        return await repo.restatement_dates(self.conn, day, portfolio_ids)


class SqlSlotStore:
    """The slots in PostgreSQL (`snapshots.repository`); each call its own transaction."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    @contextlib.asynccontextmanager
    async def reads(self) -> AsyncIterator[SlotReads]:
        async with session_scope(self.database_url) as session:
            yield SqlSlotReads(await raw_connection(session))

    async def refresh_date(
        self, day: dt.date, portfolio_ids: Sequence[uuid.UUID], params: pnl.PricingParams, *,
        skip_if_later: bool, require_holdings: bool = True,
        restate_degraded_before: dt.datetime | None = None, restate: bool = False,
    ) -> DateOutcome:
        return await refresh_date(
            self.database_url, day, portfolio_ids, params, skip_if_later=skip_if_later,
            require_holdings=require_holdings, restate_degraded_before=restate_degraded_before,
            restate=restate)

    async def record_portfolio_failure(self, portfolio_id: uuid.UUID, day: dt.date,
                                       reason: str) -> None:
        await record_portfolio_failure(self.database_url, portfolio_id, day, reason)


# --- the use case ---------------------------------------------------------------------------


class SnapshotRefresh:
    """Which slots to refresh in which order, and how a failing chunk is isolated.

    The order and bisection rules live here, over a `SlotStore`; the module functions below
    (`refresh_portfolios`, ...) are this class over `SqlSlotStore`, for callers holding a
    database URL.
    """

    def __init__(self, store: SlotStore,
                 transient: Callable[[BaseException], bool] = is_transient) -> None:
        self.store = store
        self.transient = transient

    async def refresh_date_isolated(
        self,
        day: dt.date,
        portfolio_ids: Sequence[uuid.UUID],
        params: pnl.PricingParams,
        *,
        skip_if_later: bool,
        require_holdings: bool = True,
        restate: bool = False,
        restate_degraded_before: dt.datetime | None = None,
    ) -> DateOutcome:
        """`SlotStore.refresh_date`, with a failing chunk bisected until each bad portfolio is
        alone.

        One portfolio whose data breaks the computation or a write (a value out of any
        column's range, an inconsistent row) must not cost the others of its chunk their
        snapshot: the halves are retried as their own transactions, down to single
        portfolios, and each one that still fails is recorded (`record_portfolio_failure`)
        and reported in `failed`. Infrastructure failures (`is_transient`) propagate: the
        whole chunk is retried later. A chunk of n portfolios with one bad one costs about
        2·log2(n) extra transactions.
        """
        try:
            return await self.store.refresh_date(
                day, portfolio_ids, params,
                skip_if_later=skip_if_later, require_holdings=require_holdings,
                restate=restate, restate_degraded_before=restate_degraded_before,
            )
        except Exception as exc:
            if self.transient(exc):
                raise
            if len(portfolio_ids) == 1:
                reason = f"{type(exc).__name__}: {exc}"[:2000]
                log.error("refresh of portfolio %s on %s failed: %s", portfolio_ids[0], day,
                          reason, extra={"portfolio_id": str(portfolio_ids[0])})
                await self.store.record_portfolio_failure(portfolio_ids[0], day, reason)
                return DateOutcome(day, 0, 0, {portfolio_ids[0]: reason})
            log.warning("chunk of %d portfolios on %s failed (%s): bisecting",
                        len(portfolio_ids), day, type(exc).__name__)
        ordered = sorted(portfolio_ids)
        middle = len(ordered) // 2
        parts = [
            await self.refresh_date_isolated(
                day, half, params,
                skip_if_later=skip_if_later, require_holdings=require_holdings,
                restate=restate, restate_degraded_before=restate_degraded_before,
            )
            for half in (ordered[:middle], ordered[middle:])
        ]
        return DateOutcome(
            day,
            sum(p.snapshots for p in parts),
            sum(p.positions for p in parts),
            {k: v for p in parts for k, v in p.failed.items()},
        )

    async def refresh_portfolios(
        self,
        day: dt.date,
        portfolio_ids: Sequence[uuid.UUID],
        params: pnl.PricingParams,
        *,
        explicit: bool = False,
        max_backfill: int = 30,
        restate_degraded_before: dt.datetime | None = None,
    ) -> list[DateOutcome]:
        """Bring `portfolio_ids` through every batch date up to `day` they lack, oldest first.

        A portfolio rolls from its latest complete snapshot; one with none starts at the
        first batch date on or after its first entry (at most `max_backfill` dates back), so
        dates processed out of order or concurrently still chain correctly. `explicit` (one
        portfolio asked for at one date: onboarding's first snapshot, a manual refresh) makes
        that snapshot even under a later one and does not backfill a portfolio that has none
        yet. `restate_degraded_before` (the batch plan's time): a snapshot of `day` made
        before it with missing inputs is restated now that the date's batch has completed.
        """
        async with self.store.reads() as reads:
            latest = await reads.latest_complete_dates(portfolio_ids, day)
            starts = [d + dt.timedelta(days=1) for d in latest.values()]
            if not explicit:
                firsts = await reads.first_entry_dates(portfolio_ids)
                starts += [d for p, d in firsts.items() if p not in latest and d < day]
            catch_up = (
                await reads.batch_dates_between(min(starts) - dt.timedelta(days=1), day)
                if starts
                else []
            )
        # A portfolio that failed a date stops there for this run: its later dates would roll
        # over the hole (and could never be redone under them); it is retried from the failed
        # date by its next refresh.
        remaining = list(portfolio_ids)
        outcomes = []
        for d in catch_up[-max_backfill:]:
            outcome = await self.refresh_date_isolated(
                d, remaining, params, skip_if_later=True
            )
            outcomes.append(outcome)
            remaining = [p for p in remaining if p not in outcome.failed]
            if not remaining:
                return outcomes
        outcomes.append(
            await self.refresh_date_isolated(
                day, remaining, params,
                skip_if_later=not explicit, require_holdings=not explicit,
                restate_degraded_before=restate_degraded_before,
            )
        )
        return outcomes

    async def restate_portfolios(
        self,
        day: dt.date,
        portfolio_ids: Sequence[uuid.UUID],
        params: pnl.PricingParams,
    ) -> list[DateOutcome]:
        """Recompute the snapshots of `portfolio_ids` from `day` to their latest, in date order.

        The one restatement path: an operator's rerun of a date, a partial date whose failed
        symbols came back, a hole in the batch history filled late, a snapshot built with
        missing inputs. Each date is one transaction per chunk (like a refresh) that
        re-claims the complete slots and recomputes them from the (restated) snapshot before,
        so the equity chain, cumulative P&L and flows stay right; a portfolio is restated
        only from its first snapshot on (its history does not grow backwards), and a date
        between two of its snapshots that it lacks (a filled hole) is inserted. A portfolio
        failing a date stops there, recorded as failed (`refresh_date_isolated`).
        """
        async with self.store.reads() as reads:
            firsts = await reads.first_complete_dates(portfolio_ids)
            dates = await reads.restatement_dates(day, portfolio_ids)
        remaining = [p for p in portfolio_ids if p in firsts]
        outcomes: list[DateOutcome] = []
        for d in dates:
            members = [p for p in remaining if firsts[p] <= d]
            if not members:
                continue
            outcome = await self.refresh_date_isolated(
                d, members, params, skip_if_later=False, restate=True
            )
            outcomes.append(outcome)
            remaining = [p for p in remaining if p not in outcome.failed]
        return outcomes


# --- the same, for callers holding a database URL -------------------------------------------


async def refresh_date_isolated(
    database_url: str,
    day: dt.date,
    portfolio_ids: Sequence[uuid.UUID],
    params: pnl.PricingParams,
    *,
    skip_if_later: bool,
    require_holdings: bool = True,
    restate: bool = False,
    restate_degraded_before: dt.datetime | None = None,
) -> DateOutcome:
    """`SnapshotRefresh.refresh_date_isolated` on PostgreSQL."""
    return await SnapshotRefresh(SqlSlotStore(database_url)).refresh_date_isolated(
        day, portfolio_ids, params, skip_if_later=skip_if_later,
        require_holdings=require_holdings, restate=restate,
        restate_degraded_before=restate_degraded_before)


async def refresh_portfolios(
    database_url: str,
    day: dt.date,
    portfolio_ids: Sequence[uuid.UUID],
    params: pnl.PricingParams,
    *,
    explicit: bool = False,
    max_backfill: int = 30,
    restate_degraded_before: dt.datetime | None = None,
) -> list[DateOutcome]:
    """`SnapshotRefresh.refresh_portfolios` on PostgreSQL."""
    return await SnapshotRefresh(SqlSlotStore(database_url)).refresh_portfolios(
        day, portfolio_ids, params, explicit=explicit, max_backfill=max_backfill,
        restate_degraded_before=restate_degraded_before)


async def restate_portfolios(
    database_url: str,
    day: dt.date,
    portfolio_ids: Sequence[uuid.UUID],
    params: pnl.PricingParams,
) -> list[DateOutcome]:
    """`SnapshotRefresh.restate_portfolios` on PostgreSQL."""
    return await SnapshotRefresh(SqlSlotStore(database_url)).restate_portfolios(
        day, portfolio_ids, params)
