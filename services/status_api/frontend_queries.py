"""Read queries behind the SigmaSight web frontend's routes (docs/frontend.md).

The same tables sigmabatch's own endpoints read, scoped by owner in SQL like
`services.status_api.queries`; the routes shape what these return into the frontend's models.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.snapshots.refresh import JOB_REQUEST as REFRESH_REQUEST_JOB

MAX_LOG_LINES = 5000

# batch_run_id of `POST /portfolios/{id}/calculate`: the upload's onboarding when it is still
# running, else the refresh of the portfolio up to a date (or its latest price date).
ONBOARDING_RUN = "onboarding"
REFRESH_RUN = re.compile(r"^refresh-(\d{4}-\d{2}-\d{2}|latest)$")


async def activity_log(session: AsyncSession, portfolio_id: uuid.UUID,
                       limit: int = MAX_LOG_LINES) -> list[dict[str, Any]]:
    """The onboarding's activity lines, oldest first (the newest `limit`)."""
    rows = await session.execute(
        text(
            "SELECT timestamp, level, message FROM (SELECT id, timestamp, level, message "
            "FROM onboarding_activity WHERE portfolio_id = :p ORDER BY id DESC LIMIT :limit) a "
            "ORDER BY id"
        ),
        {"p": portfolio_id, "limit": limit},
    )
    return [dict(r) for r in rows.mappings()]


@dataclass(frozen=True)
class RefreshTarget:
    """What a recalculation brings the portfolio up to."""

    as_of: dt.date | None  # None: the portfolio's latest price date (the handler decides)
    onboarding_running: bool


async def refresh_target(session: AsyncSession, portfolio_id: uuid.UUID) -> RefreshTarget:
    row = (await session.execute(
        text(
            """
            SELECT po.status AS onboarding_status,
                   COALESCE((SELECT max(batch_date) FROM symbol_batch_dates),
                            (SELECT max(snapshot_date) FROM portfolio_snapshots s
                              WHERE s.portfolio_id = :p AND s.is_complete)) AS as_of
            FROM portfolios p LEFT JOIN portfolio_onboarding po ON po.portfolio_id = p.id
            WHERE p.id = :p
            """
        ),
        {"p": portfolio_id},
    )).mappings().one()
    return RefreshTarget(as_of=row["as_of"], onboarding_running=row["onboarding_status"] == "running")


async def run_status(session: AsyncSession, portfolio_id: uuid.UUID,
                     batch_run_id: str) -> dict[str, Any]:
    """{status idle|running|completed|failed, started_at, finished_at} of a calculate run."""
    if batch_run_id == ONBOARDING_RUN:
        row = (await session.execute(
            text("SELECT status, started_at, finished_at FROM portfolio_onboarding "
                 "WHERE portfolio_id = :p"), {"p": portfolio_id})).mappings().first()
        if row is None:
            return {"status": "idle", "started_at": None, "finished_at": None}
        status = {"running": "running", "failed": "failed"}.get(row["status"], "completed")
        return {"status": status, "started_at": row["started_at"],
                "finished_at": row["finished_at"]}
    match = REFRESH_RUN.match(batch_run_id)
    if match is None:
        return {"status": "idle", "started_at": None, "finished_at": None}
    try:
        day = None if match.group(1) == "latest" else dt.date.fromisoformat(match.group(1))
    except ValueError:  # shaped like a date, but not one: a run never handed out
        return {"status": "idle", "started_at": None, "finished_at": None}
    row = (await session.execute(
        text(
            """
            SELECT EXISTS (SELECT 1 FROM portfolio_snapshots s
                            WHERE s.portfolio_id = :p AND s.is_complete
                              AND (CAST(:d AS date) IS NULL OR s.snapshot_date = :d)) AS done,
                   j.status AS job_status, j.started_at, j.finished_at
            FROM (SELECT 1) one
            LEFT JOIN LATERAL (
                SELECT status, started_at, finished_at FROM batch_run_history
                WHERE job_type = :job_type AND job_key = ANY(CAST(:keys AS text[]))
                ORDER BY started_at DESC LIMIT 1) j ON true
            """
        ),
        # The running job's key, and the message id a dead letter may be recorded under.
        {"p": portfolio_id, "d": day, "job_type": REFRESH_REQUEST_JOB,
         "keys": [] if day is None else [f"{portfolio_id}:{day.isoformat()}",
                                         f"refresh:{portfolio_id}:{day.isoformat()}"]},
    )).mappings().one()
    if row["done"] or row["job_status"] in ("completed", "partial"):
        status = "completed"
    elif row["job_status"] == "failed":
        status = "failed"
    else:  # queued on the bus or being computed
        status = "running"
    return {"status": status, "started_at": row["started_at"], "finished_at": row["finished_at"]}
