"""The portfolio snapshot use case: claim, compute and complete (portfolio, date) slots.

Shared by portfolio_refresh's handlers (batch chunks, single-portfolio requests) and the
status API's in-process first snapshot of a `v2_instant` upload, so both run the same
transaction and a concurrent claimer of the same slot waits on its row and then skips it.
See services/portfolio_refresh/handlers.py for the flow around it and why nothing is done
twice, or half.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from libs.common import pnl
from libs.common.analytics import repository as analytics_repo
from libs.common.analytics.chunk import analytics_of_refresh
from libs.common.db import raw_connection, session_scope
from libs.common.exposures import ExposureResult, compute_exposures
from libs.common.snapshots import repository as repo

# Job types of portfolio_refresh (batch_run_history.job_type); the status API reads them too.
JOB_PLAN = "portfolio_refresh"
JOB_CHUNK = "portfolio_refresh_chunk"
JOB_REQUEST = "portfolio_refresh_request"


@dataclass(frozen=True)
class DateOutcome:
    day: dt.date
    snapshots: int
    positions: int


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


async def refresh_date(
    database_url: str,
    day: dt.date,
    portfolio_ids: Sequence[uuid.UUID],
    params: pnl.PricingParams,
    *,
    skip_if_later: bool,
    require_holdings: bool = True,
    restate_degraded_before: dt.datetime | None = None,
) -> DateOutcome:
    """Claim, compute, write and complete the slots of `portfolio_ids` on `day` atomically."""
    async with session_scope(database_url) as session:
        conn = await raw_connection(session)
        claimed = await repo.claim_slots(
            conn, day, portfolio_ids, skip_if_later=skip_if_later,
            require_holdings=require_holdings, restate_degraded_before=restate_degraded_before,
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
        await repo.write_position_snapshots(conn, day, result.positions, model_inputs)
        await repo.write_factor_exposures(
            conn, day, claimed, exposures.weights, inputs.betas, exposures.portfolios
        )
        completed = await repo.complete_snapshots(conn, day, snapshot_rows)
        if completed != len(claimed):
            raise RuntimeError(f"{day}: completed {completed} of {len(claimed)} claimed slots")
    return DateOutcome(day, completed, len(result.positions))


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
    """Bring `portfolio_ids` through every batch date up to `day` they lack, oldest first.

    A portfolio rolls from its latest complete snapshot; one with none starts at the first
    batch date on or after its first entry (at most `max_backfill` dates back), so dates
    processed out of order or concurrently still chain correctly. `explicit` (one portfolio
    asked for at one date: onboarding's first snapshot, a manual refresh) makes that snapshot
    even under a later one and does not backfill a portfolio that has none yet.
    `restate_degraded_before` (the batch plan's time): a snapshot of `day` made before it
    with missing inputs is restated now that the date's batch has completed.
    """
    async with session_scope(database_url) as session:
        conn = await raw_connection(session)
        latest = await repo.latest_complete_dates(conn, portfolio_ids, day)
        starts = [d + dt.timedelta(days=1) for d in latest.values()]
        if not explicit:
            firsts = await repo.first_entry_dates(conn, portfolio_ids)
            starts += [d for p, d in firsts.items() if p not in latest and d < day]
        catch_up = (
            await repo.batch_dates_between(conn, min(starts) - dt.timedelta(days=1), day)
            if starts
            else []
        )
    outcomes = [
        await refresh_date(database_url, d, portfolio_ids, params, skip_if_later=True)
        for d in catch_up[-max_backfill:]
    ]
    outcomes.append(
        await refresh_date(
            database_url, day, portfolio_ids, params,
            skip_if_later=not explicit, require_holdings=not explicit,
            restate_degraded_before=restate_degraded_before,
        )
    )
    return outcomes
