"""portfolio_refresh: daily portfolio snapshots driven by events (docs/design.md §7).

Flow
----
`symbol.batch.completed` (date D, events stream, one durable shared by all replicas): the
replica that receives it *plans* D: it lists the eligible portfolios (active, holding
something on D, no complete snapshot on or after D, not still onboarding, created before the
plan), splits them in id order into chunks of `refresh_chunk_size`, and publishes one
`portfolio.refresh.chunk.requested` per chunk to the work-queue stream. Replicas share that
durable consumer, so the chunks of one date spread over every replica.

A chunk is one transaction per date: claim the (portfolio, D) slots
(`INSERT ... ON CONFLICT DO UPDATE ... WHERE NOT is_complete RETURNING`), load positions,
prices, previous snapshots, flows and betas for the claimed portfolios in six queries,
compute with the pure `libs.common.pnl` / `libs.common.exposures`, write snapshots, position
marks and both exposure tables with bulk statements, mark the slots complete, commit.

Why nothing is done twice, or half:
* A slot row inserted or re-claimed by a transaction stays locked until it commits; a second
  claimer (redelivery, overlapping chunk, `portfolio.refresh.requested`) waits on the row
  and then sees it complete and skips it. Complete slots are never recomputed.
* A crash (kill -9) rolls the transaction back: no half snapshot survives, JetStream
  redelivers the chunk after AckWait and the redo computes exactly what a clean run would
  (the computation is a pure function of the database). An incomplete slot left by any other
  writer is re-claimed and redone.
* Each chunk runs as a job (`portfolio_refresh_chunk`, keyed by date and chunk) whose
  uniqueness is enforced in batch_run_history, so one chunk never runs on two replicas at
  once; a dead worker's job is reclaimed once its heartbeat is stale.

Dates in order: before D, a chunk first brings its portfolios through every batch date
(`symbol_batch_dates`) they lack, oldest first: from their latest complete snapshot, or for
a portfolio with none from its first entry date (bounded by max_backfill_days). So a snapshot
always rolls from the one before it even when backfilled dates arrive together, out of
order, or race across replicas (a concurrent claimer of the same earlier slot waits on its
row lock, then sees it complete); a date with no batch is simply a gap, rolled over from the
latest earlier snapshot. The batch never writes a snapshot under a later complete one
(that would count the P&L between them twice). The chunk whose commit leaves no planned portfolio of D without a
snapshot publishes `portfolio.refresh.completed` (its Nats-Msg-Id dedups a concurrent
repeat).

`portfolio.refresh.requested` (onboarding's first snapshot, manual refresh) runs the same
chunk routine for one portfolio at `as_of` (default: its latest price date); it does not
publish `portfolio.refresh.completed`, whose key is the date of a whole batch.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import uuid
from collections.abc import Sequence

from libs.common import pnl
from libs.common.bootstrap import ROUTES
from libs.common.bootstrap import refresh_chunk_job_key as chunk_key
from libs.common.bootstrap import refresh_plan_job_key as plan_key
from libs.common.bus import Delivery, PermanentError, TransientError
from libs.common.db import raw_connection, session_scope
from libs.common.events import (
    PortfolioRefreshChunkRequested,
    PortfolioRefreshCompleted,
    PortfolioRefreshRequested,
    SymbolBatchCompleted,
)
from libs.common.jobs import COMPLETED, FAILED, PARTIAL, JobAlreadyRunning
from libs.common.service import ServiceContext
from libs.common.snapshots import repository as repo
from libs.common.snapshots.refresh import (
    JOB_CHUNK,
    JOB_PLAN,
    JOB_REQUEST,
    DateOutcome,
    SnapshotRefresh,
    SqlSlotStore,
    request_job_key,
)
from services.portfolio_refresh.first_snapshots import WINDOW_SECONDS, FirstSnapshotGatherer

log = logging.getLogger(__name__)


def plan_chunks(portfolio_ids: Sequence[uuid.UUID], chunk_size: int) -> list[list[uuid.UUID]]:
    ordered = sorted(portfolio_ids)
    n = max(1, math.ceil(len(ordered) / max(1, chunk_size)))
    size = math.ceil(len(ordered) / n) if ordered else 0
    return [ordered[i * size : (i + 1) * size] for i in range(n) if ordered[i * size : (i + 1) * size]]


def failures_of(outcomes: Sequence[DateOutcome]) -> dict[str, str]:
    """Isolated portfolio failures of a refresh, `{portfolio_id: "date: reason"}`."""
    return {
        str(pid): f"{o.day.isoformat()}: {reason}"
        for o in outcomes
        for pid, reason in o.failed.items()
    }


# --------------------------------------------------------------------------- handlers


class RefreshHandlers:
    """Thin adapters from bus messages to `libs.common.snapshots.refresh` (one per process)."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.params = pnl.PricingParams(risk_free_rate=ctx.settings.risk_free_rate)
        self.chunk_size = ctx.settings.refresh_chunk_size
        self.refresh = SnapshotRefresh(SqlSlotStore(ctx.database_url))
        fetched = next(r.batch for r in ROUTES if r.message_type is PortfolioRefreshRequested)
        self.first_snapshots = FirstSnapshotGatherer(
            self._refresh_explicit, max_size=fetched, window=WINDOW_SECONDS
        )

    async def _refresh_explicit(
        self, day: dt.date, portfolio_ids: Sequence[uuid.UUID]
    ) -> list[DateOutcome]:
        return await self.refresh.refresh_portfolios(
            day, portfolio_ids, self.params,
            explicit=True, max_backfill=self.ctx.settings.max_backfill_days,
        )

    async def on_symbol_batch_completed(self, event: SymbolBatchCompleted, _: Delivery) -> None:
        day = event.batch_date
        planned_at = dt.datetime.now(dt.UTC)
        restate_run = event.run_id if event.restate else None
        try:
            async with self.ctx.jobs.run(
                JOB_PLAN, plan_key(event), correlation_id=event.correlation_id
            ) as job:
                async with session_scope(self.ctx.database_url) as session:
                    conn = await raw_connection(session)
                    eligible = await repo.eligible_portfolios(conn, day, planned_at)
                    if restate_run:
                        restated = await repo.restatable_portfolios(conn, day, planned_at)
                        eligible = sorted(set(eligible) | set(restated))
                chunks = plan_chunks(eligible, self.chunk_size)
                # Progress in portfolios: how many have been handed to a chunk so far.
                await self.ctx.jobs.phase(job, "plan", total=len(eligible), unit="portfolios")
                handed = 0
                for index, ids in enumerate(chunks):
                    await self.ctx.publish(
                        PortfolioRefreshChunkRequested(
                            batch_date=day,
                            portfolio_ids=ids,
                            chunk_index=index,
                            chunk_count=len(chunks),
                            planned_at=planned_at,
                            restate_run=restate_run,
                            correlation_id=event.correlation_id,
                        )
                    )
                    handed += len(ids)
                    await self.ctx.jobs.progress(job, handed)
                await self.ctx.jobs.finish(
                    job, COMPLETED, result={"portfolios": len(eligible), "chunks": len(chunks)}
                )
        except JobAlreadyRunning as exc:
            raise TransientError(str(exc)) from exc
        log.info(
            "planned %s: %d portfolio(s) in %d chunk(s)%s",
            day, len(eligible), len(chunks),
            "" if eligible else " (portfolios still onboarding get their first snapshot "
                                "from onboarding, not from this plan)",
            extra={"correlation_id": event.correlation_id},
        )
        if not eligible:
            await self._publish_if_done(day, planned_at, event.correlation_id)

    async def on_chunk(self, command: PortfolioRefreshChunkRequested, _: Delivery) -> None:
        day = command.batch_date
        key = chunk_key(command)
        try:
            async with self.ctx.jobs.run(
                JOB_CHUNK, key, correlation_id=command.correlation_id
            ) as job:
                await self.ctx.jobs.phase(
                    job, "refresh", total=len(command.portfolio_ids), unit="portfolios")
                outcomes = await self.refresh.refresh_portfolios(
                    day, command.portfolio_ids, self.params,
                    max_backfill=self.ctx.settings.max_backfill_days,
                    restate_degraded_before=command.planned_at or dt.datetime.now(dt.UTC),
                )
                if command.restate_run:
                    # After the catch-up of those that lacked the date: restate the others.
                    outcomes += await self.refresh.restate_portfolios(
                        day, command.portfolio_ids, self.params
                    )
                failed = failures_of(outcomes)
                await self.ctx.jobs.finish(
                    job,
                    PARTIAL if failed else COMPLETED,
                    result={
                        "portfolios": len(command.portfolio_ids),
                        "snapshots": {o.day.isoformat(): o.snapshots for o in outcomes},
                        **({"failed_portfolios": failed} if failed else {}),
                    },
                )
        except JobAlreadyRunning as exc:
            raise TransientError(str(exc)) from exc
        made = sum(o.snapshots for o in outcomes)
        log.info(
            "chunk %s done: %d snapshot(s)",
            key, made,
            extra={"correlation_id": command.correlation_id, "job_type": JOB_CHUNK},
        )
        planned_at = command.planned_at or dt.datetime.now(dt.UTC)
        await self._publish_if_done(day, planned_at, command.correlation_id)

    async def on_refresh_requested(
        self, command: PortfolioRefreshRequested, delivery: Delivery
    ) -> None:
        async with session_scope(self.ctx.database_url) as session:
            conn = await raw_connection(session)
            found = await conn.fetchrow(
                "SELECT EXISTS (SELECT 1 FROM portfolio_snapshots s WHERE s.portfolio_id = p.id "
                "AND s.is_complete) AS has_snapshot FROM portfolios p WHERE p.id = $1",
                command.portfolio_id,
            )
            exists = found is not None
            first = exists and not found["has_snapshot"]
            day = command.as_of or await repo.latest_price_date(conn, command.portfolio_id)
        if not exists:
            raise PermanentError(f"portfolio {command.portfolio_id} does not exist")
        if day is None:
            raise TransientError(f"no price date yet for portfolio {command.portfolio_id}")
        key = request_job_key(command.portfolio_id, day)
        if delivery is not None:  # a direct call (tests) has no delivery
            delivery.job_key = key
        try:
            async with self.ctx.jobs.run(
                JOB_REQUEST, key, correlation_id=command.correlation_id
            ) as job:
                await self.ctx.jobs.phase(job, "refresh", total=1, unit="portfolios")
                if first:  # gathered with the other first snapshots of the moment
                    outcomes = await self.first_snapshots.snapshot(day, command.portfolio_id)
                else:
                    outcomes = await self._refresh_explicit(day, [command.portfolio_id])
                mine = str(command.portfolio_id)
                failed = {k: v for k, v in failures_of(outcomes).items() if k == mine}
                retry = PortfolioRefreshRequested(
                    portfolio_id=command.portfolio_id, as_of=day, reason="retry"
                )
                await self.ctx.jobs.finish(
                    job,
                    FAILED if failed else COMPLETED,
                    error="; ".join(failed.values()) if failed else None,
                    result={
                        "reason": command.reason,
                        # made by the refresh this request was part of (first snapshots
                        # gathered together share one)
                        "snapshots": {o.day.isoformat(): o.snapshots for o in outcomes},
                        # what `sigmabatch jobs retry` re-publishes
                        **(
                            {"subject": retry.subject, "payload": retry.model_dump_json()}
                            if failed
                            else {}
                        ),
                    },
                )
        except JobAlreadyRunning as exc:
            raise TransientError(str(exc)) from exc
        log.info(
            "refreshed portfolio %s on %s (%s)", command.portfolio_id, day, command.reason,
            extra={"portfolio_id": str(command.portfolio_id),
                   "correlation_id": command.correlation_id},
        )

    async def _publish_if_done(
        self, day: dt.date, planned_at: dt.datetime, correlation_id: str
    ) -> None:
        async with session_scope(self.ctx.database_url) as session:
            conn = await raw_connection(session)
            remaining = await repo.count_eligible(conn, day, planned_at)
            total = await repo.count_complete(conn, day)
            failed = await repo.count_failed(conn, day, planned_at)
        if remaining == 0:
            await self.ctx.publish(
                PortfolioRefreshCompleted(
                    batch_date=day, portfolios_total=total, failed=failed,
                    correlation_id=correlation_id,
                )
            )
            log.info("date %s refreshed: every planned portfolio is done; %d complete "
                     "snapshot(s) on the date in all (first snapshots of onboardings included)",
                     day, total,
                     extra={"correlation_id": correlation_id})
