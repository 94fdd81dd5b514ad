"""Read models of the operator tool: the SQL behind `sigmabatch status` and the demo's waits
and summary (the CLI and the demo only shape what these return)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common import calendar

JOB_COLUMNS = (
    "job_type, job_key, status, current_phase, progress_current, progress_total, "
    "progress_unit, attempts, started_at, heartbeat_at, finished_at, error"
)


async def _rows(session: AsyncSession, sql: str, **params: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in (await session.execute(text(sql), params)).mappings()]


# -- sigmabatch status ---------------------------------------------------------------------


async def system_status(session: AsyncSession) -> dict[str, Any]:
    """The watermark, running/recent/latest jobs and the last day's job counts."""
    watermark = (await session.execute(text(
        "SELECT max(batch_date) FILTER (WHERE status = 'completed') AS completed, "
        "max(batch_date) AS latest, count(*) AS dates FROM symbol_batch_dates"))).one()
    counts = await session.execute(text(
        "SELECT status, count(*) AS n FROM batch_run_history "
        "WHERE started_at > now() - interval '1 day' GROUP BY status"))
    return {
        "watermark": {"last_completed_date": watermark.completed,
                      "last_date": watermark.latest, "dates_recorded": watermark.dates},
        "running": await _rows(session, f"SELECT {JOB_COLUMNS} FROM batch_run_history "
                                        "WHERE status = 'running' ORDER BY started_at"),
        "recent": await _rows(session, f"SELECT {JOB_COLUMNS} FROM batch_run_history "
                                       "WHERE status <> 'running' "
                                       "ORDER BY coalesce(finished_at, started_at) DESC LIMIT 10"),
        "latest_per_type": await _rows(session, f"SELECT DISTINCT ON (job_type) {JOB_COLUMNS} "
                                                "FROM batch_run_history "
                                                "ORDER BY job_type, started_at DESC"),
        "last_24h": {r.status: r.n for r in counts},
        # Sessions never batched between the first and the last batched one: the next runs
        # fill them, oldest first (no silent holes); partial dates are retried by them too.
        "holes": calendar.holes({r.batch_date for r in await session.execute(
            text("SELECT batch_date FROM symbol_batch_dates"))}),
        "partial_dates": await _rows(session, "SELECT batch_date, symbols_failed "
                                              "FROM symbol_batch_dates WHERE status = 'partial' "
                                              "ORDER BY batch_date DESC LIMIT 20"),
    }


# -- the demo ------------------------------------------------------------------------------


async def batch_watermark(session: AsyncSession) -> dt.date | None:
    """The last symbol batch date that finished (completed or partial)."""
    value = (await session.execute(text(
        "SELECT max(batch_date) FROM symbol_batch_dates "
        "WHERE status IN ('completed', 'partial')"))).scalar_one_or_none()
    return value


async def batch_date_recorded(session: AsyncSession, day: dt.date) -> bool:
    return bool((await session.execute(text(
        "SELECT EXISTS (SELECT 1 FROM symbol_batch_dates WHERE batch_date = :d)"),
        {"d": day})).scalar_one())


async def failed_jobs_since(session: AsyncSession, since: dt.datetime) -> list[dict[str, Any]]:
    """Failed jobs (with whether they were dead-lettered), oldest first."""
    return await _rows(
        session,
        "SELECT id, job_type, job_key, error, (result->>'dead_letter') = 'true' AS dead "
        "FROM batch_run_history WHERE status = 'failed' AND started_at >= :since "
        "ORDER BY started_at", since=since)


async def portfolios_of(session: AsyncSession, username: str) -> dict[str, uuid.UUID]:
    """name → id of a user's portfolios."""
    rows = await _rows(session, "SELECT p.name, p.id FROM portfolios p "
                                "JOIN users u ON u.id = p.user_id WHERE u.username = :user",
                       user=username)
    return {row["name"]: row["id"] for row in rows}


async def snapshot_progress(session: AsyncSession, ids: list[uuid.UUID],
                            day: dt.date) -> dict[str, Any]:
    """How many of the portfolios have a complete snapshot / factor exposures on `day`."""
    rows = await _rows(session, """
        SELECT count(*) FILTER (WHERE s.is_complete) AS snapshots,
               count(*) FILTER (WHERE EXISTS (
                   SELECT 1 FROM factor_exposures f
                   WHERE f.portfolio_id = s.portfolio_id
                     AND f.calculation_date = s.snapshot_date)) AS exposed,
               coalesce(sum(s.position_count), 0) AS positions_valued
        FROM portfolio_snapshots s
        WHERE s.portfolio_id = ANY(:ids) AND s.snapshot_date = :d
        """, ids=ids, d=day)
    return rows[0]


async def demo_summary(session: AsyncSession, ids: list[uuid.UUID],
                       day: dt.date) -> dict[str, Any]:
    """What the demo summary prints: batch dates, prices, betas, each portfolio's snapshot on
    `day`, and every job's phases."""
    dates = await _rows(session, """
        SELECT min(batch_date) AS first, max(batch_date) AS last, count(*) AS n,
               count(*) FILTER (WHERE status = 'partial') AS partial,
               max(symbols_total) AS symbols, sum(symbols_failed) AS failed
        FROM symbol_batch_dates""")
    prices = await _rows(session, """
        SELECT count(*) AS n, count(*) FILTER (WHERE source LIKE '%synthetic%') AS synthetic
        FROM market_data_cache""")
    betas = await _rows(session, """
        SELECT count(DISTINCT symbol) AS symbols FROM symbol_factor_exposures
        WHERE calculation_date = :d""", d=day)
    snapshots = await _rows(session, """
        SELECT p.name, s.position_count, s.total_value, s.gross_exposure, s.daily_pnl,
               s.daily_return, s.cumulative_pnl, s.has_stale_prices, s.has_model_prices,
               (SELECT count(*) FROM portfolio_snapshots a
                WHERE a.portfolio_id = p.id AND a.is_complete) AS snapshots,
               (SELECT count(*) FROM factor_exposures f
                WHERE f.portfolio_id = p.id AND f.calculation_date = :d) AS factors
        FROM portfolios p JOIN portfolio_snapshots s
          ON s.portfolio_id = p.id AND s.snapshot_date = :d
        WHERE p.id = ANY(:ids) ORDER BY p.name""", ids=ids, d=day)
    jobs = await _rows(session, """
        SELECT job_type, status, phases, started_at, finished_at FROM batch_run_history
        ORDER BY started_at""")
    return {"dates": dates[0], "prices": prices[0], "beta_symbols": betas[0]["symbols"],
            "snapshots": snapshots, "jobs": jobs}


# -- sigmabatch trigger nightly [--wait] -----------------------------------------------------


async def batch_date_row(session: AsyncSession, day: dt.date) -> dict[str, Any] | None:
    """The watermark table's row of one date (status, symbols total/failed), if batched."""
    rows = await _rows(session, "SELECT status, symbols_total, symbols_failed "
                                "FROM symbol_batch_dates WHERE batch_date = :d", d=day)
    return rows[0] if rows else None


async def running_symbol_batch(session: AsyncSession, job_type: str) -> dict[str, Any] | None:
    """The newest running symbol batch run (runs are serialised: at most one works)."""
    rows = await _rows(session, "SELECT job_key, current_phase, progress_current, "
                                "progress_total FROM batch_run_history WHERE job_type = :t "
                                "AND status = 'running' ORDER BY started_at DESC LIMIT 1",
                       t=job_type)
    return rows[0] if rows else None


async def symbol_batch_run(session: AsyncSession, job_type: str, key: str,
                           since: dt.datetime) -> dict[str, Any] | None:
    """The run of `key` that was running at or started after `since`."""
    rows = await _rows(session, "SELECT id, job_key, status, phases, started_at, finished_at, "
                                "error, result FROM batch_run_history WHERE job_type = :t "
                                "AND job_key = :k AND coalesce(finished_at, now()) >= :since "
                                "ORDER BY started_at DESC LIMIT 1", t=job_type, k=key,
                       since=since)
    return rows[0] if rows else None


async def run_dates(session: AsyncSession, run_id: uuid.UUID) -> list[dict[str, Any]]:
    """The dates a run completed, with their failures and reasons."""
    return await _rows(session, "SELECT batch_date, status, symbols_total, symbols_failed, "
                                "failures FROM symbol_batch_dates WHERE run_id = :id "
                                "ORDER BY batch_date", id=run_id)


async def date_refreshes(session: AsyncSession, plan_job_type: str,
                         days: list[dt.date]) -> list[dict[str, Any]]:
    """Per date: the refresh plan's status and planned portfolios, complete snapshots."""
    return await _rows(session, """
        SELECT d AS batch_date, p.status, p.progress_total AS planned,
               (SELECT count(*) FROM portfolio_snapshots s
                 WHERE s.snapshot_date = d AND s.is_complete) AS snapshots
        FROM unnest(CAST(:days AS date[])) AS d
        LEFT JOIN LATERAL (
            SELECT status, progress_total FROM batch_run_history
            WHERE job_type = :plan AND job_key = CAST(d AS text)
            ORDER BY started_at DESC LIMIT 1) p ON true
        """, plan=plan_job_type, days=days)
