"""Read models: one SQL statement per endpoint where possible (the status endpoint is polled).

Every portfolio read is scoped by owner in SQL (`user_id = :user_id`), so another user's
portfolio is indistinguishable from a missing one.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.auth import Caller
from libs.common.domain.onboarding import PHASES, progress
from libs.common.domain.statuses import (
    OnboardingStatus,
    onboarding_final_status,
)
from libs.common.snapshots.refresh import JOB_REQUEST as REFRESH_REQUEST_JOB
from libs.common.snapshots.refresh import request_job_keys_sql

# The activity log is in time order: a line's timestamp is its transaction's start, so a
# long transaction (a symbol fetch) may insert after a later-started one; ids alone would
# list its line out of order.
# Plain asyncpg SQL: the status endpoint is polled by every open browser tab, so it runs as
# one autocommit statement on a raw pool (no ORM session, no BEGIN/COMMIT round trips).
ONBOARDING_SQL = """
    SELECT p.id AS portfolio_id, po.status, po.mode, po.started_at, po.finished_at,
           po.snapshot_requested_at, po.snapshot_date, po.failed_symbols, po.error,
           (SELECT count(*) FROM portfolio_onboarding_symbols s
             WHERE s.portfolio_id = p.id) AS symbols_total,
           (SELECT count(*) FROM portfolio_onboarding_symbols s
             JOIN symbol_onboarding so ON so.symbol = s.symbol
             WHERE s.portfolio_id = p.id AND so.status IN ('ready', 'failed')) AS symbols_settled,
           CASE WHEN po.status = 'running' AND po.snapshot_requested_at IS NOT NULL THEN
               (SELECT j.error FROM batch_run_history j
                 WHERE j.job_type = $3 AND j.status = 'failed'
                   AND j.job_key IN (""" + request_job_keys_sql("p.id", "po.snapshot_date") + """)
                 ORDER BY j.started_at DESC LIMIT 1) END AS snapshot_error,
           EXISTS (SELECT 1 FROM portfolio_snapshots ps
                    WHERE ps.portfolio_id = p.id AND ps.snapshot_date = po.snapshot_date
                      AND ps.is_complete) AS snapshot_done,
           (SELECT COALESCE(json_agg(json_build_object(
                       'timestamp', a.timestamp, 'level', a.level, 'message', a.message)
                       ORDER BY a.timestamp, a.id), '[]'::json)
              FROM (SELECT * FROM onboarding_activity oa WHERE oa.portfolio_id = p.id
                    ORDER BY oa.timestamp DESC, oa.id DESC LIMIT 100) a) AS activity
    FROM portfolios p
    LEFT JOIN portfolio_onboarding po ON po.portfolio_id = p.id
    WHERE p.id = $1 AND p.user_id = $2
"""


async def onboarding_status(
    pool: asyncpg.Pool, portfolio_id: uuid.UUID, user_id: uuid.UUID
) -> dict[str, Any] | None:
    """The onboarding status document, or None when the caller has no such portfolio.

    Read-only: an outcome that arrived but is not recorded yet is derived from the same row
    (the onboarding coordinator records it); `finished_at` says whether it is recorded."""
    row = await pool.fetchrow(ONBOARDING_SQL, portfolio_id, user_id, REFRESH_REQUEST_JOB)
    if row is None:
        return None
    if row["status"] is None:
        # Every field present (as null/empty): the web frontend's progress page reads them.
        return {"portfolio_id": portfolio_id, "status": OnboardingStatus.NOT_FOUND, "mode": None,
                "started_at": None, "elapsed_seconds": 0, "overall_progress": None,
                "current_phase_progress": None, "phases": [], "activity_log": [],
                "snapshot_date": None, "failed_symbols": [], "error": None,
                "finished_at": None}
    status, error = row["status"], row["error"]
    if status == OnboardingStatus.RUNNING and row["snapshot_done"]:
        # Made since the last look; the onboarding coordinator records it within a second.
        status = onboarding_final_status(row["failed_symbols"] or [])
    elif status == OnboardingStatus.RUNNING and row["snapshot_error"]:
        # Dead-lettered: no retry will come (recorded by the coordinator).
        status = OnboardingStatus.FAILED
        error = f"the first snapshot could not be made: {row['snapshot_error']}"
    now = dt.datetime.now(dt.UTC)
    finished = row["finished_at"] or (now if status == OnboardingStatus.RUNNING else None)
    snapshot_done = bool(row["snapshot_done"]) or status in (
        OnboardingStatus.COMPLETED, OnboardingStatus.PARTIAL)
    prog = progress(
        symbols_total=row["symbols_total"],
        symbols_settled=row["symbols_settled"],
        snapshot_requested=row["snapshot_requested_at"] is not None,
        snapshot_done=snapshot_done,
        failed=status == OnboardingStatus.FAILED,
    )
    durations = _phase_durations(row)
    phases = [
        {
            "phase_id": f"phase_{i + 1}",
            "phase_name": name,
            "status": prog.phase_states[i],
            **_phase_counts(key, row, snapshot_done),
            "duration_seconds": durations[key],
        }
        for i, (key, name) in enumerate(PHASES)
    ]
    activity = row["activity"]
    if isinstance(activity, str):  # json (not jsonb) may come back as text
        activity = json.loads(activity)
    return {
        "portfolio_id": portfolio_id,
        "status": status,
        "mode": row["mode"],
        "started_at": row["started_at"],
        # Whole seconds: the web frontend prints it as "Xm Ys".
        "elapsed_seconds": int(((finished or now) - row["started_at"]).total_seconds()),
        "overall_progress": {
            "current_phase": f"phase_{prog.current_phase}",
            "current_phase_name": prog.phase_name,
            "phases_completed": prog.phases_completed,
            "phases_total": len(PHASES),
            "percent_complete": prog.percent,
        },
        "current_phase_progress": {"current": prog.phase_current, "total": prog.phase_total,
                                   "unit": prog.phase_unit},
        "phases": phases,
        "activity_log": activity,
        "snapshot_date": row["snapshot_date"],
        "failed_symbols": list(row["failed_symbols"] or []),
        "error": error,
        # Set once the outcome is recorded; a document with it never changes again.
        "finished_at": row["finished_at"],
    }


def _phase_durations(row: Any) -> dict[str, int | None]:
    """Whole seconds each finished phase took, from the onboarding row's timestamps: the
    upload is stored in its request (0), symbols until the snapshot was requested, the
    snapshot until the onboarding finished. None while a phase has not finished."""
    requested = row["snapshot_requested_at"]
    return {
        "upload": 0,
        "symbols": (None if requested is None
                    else int((requested - row["started_at"]).total_seconds())),
        "snapshot": (None if requested is None or row["finished_at"] is None
                     else int((row["finished_at"] - requested).total_seconds())),
    }


def _phase_counts(key: str, row: Any, snapshot_done: bool) -> dict[str, Any]:
    if key == "symbols":
        return {"current": row["symbols_settled"], "total": row["symbols_total"],
                "unit": "symbols"}
    if key == "snapshot":
        return {"current": 1 if snapshot_done else 0, "total": 1, "unit": "snapshots"}
    return {"current": 1, "total": 1, "unit": "files"}


JOB_COLUMNS = """
    id, job_type, job_key, status, current_phase, phases, progress_current, progress_total,
    progress_unit, started_at, heartbeat_at, finished_at, attempts, error, worker_id,
    correlation_id, result
"""


def job_document(row: Any) -> dict[str, Any]:
    end = row["finished_at"] or dt.datetime.now(dt.UTC)
    return {
        **{k: row[k] for k in ("id", "job_type", "job_key", "status", "current_phase", "phases",
                               "started_at", "heartbeat_at", "finished_at", "attempts", "error",
                               "worker_id", "correlation_id", "result")},
        "progress": {"current": row["progress_current"], "total": row["progress_total"],
                     "unit": row["progress_unit"]},
        "duration_seconds": round((end - row["started_at"]).total_seconds(), 3),
    }


# Jobs a non-admin may see (docs/design.md §9): those of their own portfolios (a job keyed
# `<portfolio_id>:...`, e.g. a portfolio_refresh_request) and those of their uploads (the
# symbol_onboard job of a symbol one of their portfolios waited for). Nightly batches and
# refresh plans/chunks span every user's portfolios: admins only.
VISIBLE_TO_USER = """
    (CAST(:admin AS boolean)
     OR split_part(job_key, ':', 1) IN (
            SELECT CAST(p.id AS text) FROM portfolios p WHERE p.user_id = :user_id)
     OR (job_type = 'symbol_onboard' AND job_key IN (
            SELECT pos.symbol FROM portfolio_onboarding_symbols pos
            JOIN portfolios p ON p.id = pos.portfolio_id WHERE p.user_id = :user_id)))
"""
ERROR_CHARS_SHOWN = 200


def redact_job(document: dict[str, Any]) -> dict[str, Any]:
    """A job as a non-admin sees it: no worker or message ids, no raw stack, no payloads.

    `error` keeps its first line (the reason, not the traceback), `result` only its numbers,
    flags and dates (a dead letter's payload names the user who asked, and other users share
    a symbol's job).
    """
    error = document.get("error")
    if error:
        first = error.strip().splitlines()[0] if error.strip() else ""
        if first.startswith("Traceback"):
            first = "failed (details for admins)"
        error = first[:ERROR_CHARS_SHOWN]
    result = {
        key: value for key, value in (document.get("result") or {}).items()
        if isinstance(value, bool | int | float) or (isinstance(value, str) and _is_date(value))
    }
    return {**document, "error": error, "result": result, "worker_id": None,
            "correlation_id": None}


def _is_date(value: str) -> bool:
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


async def jobs(session: AsyncSession, status: str | None, job_type: str | None,
               limit: int, viewer: Caller) -> list[dict[str, Any]]:
    """Newest first; only the jobs `viewer` may see, redacted unless an admin."""
    rows = await session.execute(
        text(
            f"SELECT {JOB_COLUMNS} FROM batch_run_history "
            "WHERE (CAST(:status AS text) IS NULL OR status = :status) "
            "AND (CAST(:job_type AS text) IS NULL OR job_type = :job_type) "
            f"AND {VISIBLE_TO_USER} "
            "ORDER BY started_at DESC LIMIT :limit"
        ),
        {"status": status, "job_type": job_type, "limit": limit,
         "admin": viewer.is_admin, "user_id": viewer.user_id},
    )
    documents = [job_document(r) for r in rows.mappings()]
    return documents if viewer.is_admin else [redact_job(d) for d in documents]


async def job(session: AsyncSession, job_id: uuid.UUID, viewer: Caller) -> dict[str, Any] | None:
    """One job, or None when missing or not `viewer`'s (the two are indistinguishable)."""
    row = (await session.execute(
        text(f"SELECT {JOB_COLUMNS} FROM batch_run_history WHERE id = :id AND {VISIBLE_TO_USER}"),
        {"id": job_id, "admin": viewer.is_admin, "user_id": viewer.user_id},
    )).mappings().first()
    if row is None:
        return None
    document = job_document(row)
    return document if viewer.is_admin else redact_job(document)


PORTFOLIO_SQL = """
    SELECT p.id AS portfolio_id, p.name, p.equity_balance, p.equity_source, p.currency,
           p.created_at,
           (SELECT count(*) FROM positions x WHERE x.portfolio_id = p.id) AS position_count,
           po.status AS onboarding_status,
           (SELECT max(snapshot_date) FROM portfolio_snapshots s
             WHERE s.portfolio_id = p.id AND s.is_complete) AS latest_snapshot_date
    FROM portfolios p LEFT JOIN portfolio_onboarding po ON po.portfolio_id = p.id
    WHERE p.user_id = :user_id AND p.is_active
"""

SNAPSHOT_COLUMNS = """
    snapshot_date, equity, total_value, long_value, short_value, gross_exposure, net_exposure,
    daily_pnl, daily_unrealized_pnl, daily_realized_pnl, daily_return, cumulative_pnl,
    capital_flow, position_count, has_stale_prices, stale_symbols, has_model_prices,
    equity_source, valuation_adjustment, exposure_basis, data_quality, is_degraded
"""


async def portfolios(session: AsyncSession, user_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await session.execute(text(PORTFOLIO_SQL + " ORDER BY p.created_at DESC"),
                                 {"user_id": user_id})
    return [dict(r) for r in rows.mappings()]


async def portfolio(session: AsyncSession, user_id: uuid.UUID,
                    portfolio_id: uuid.UUID) -> dict[str, Any] | None:
    row = (await session.execute(text(PORTFOLIO_SQL + " AND p.id = :portfolio_id"),
                                 {"user_id": user_id, "portfolio_id": portfolio_id})
           ).mappings().first()
    return dict(row) if row else None


async def snapshots(session: AsyncSession, portfolio_id: uuid.UUID, start: dt.date | None,
                    end: dt.date | None, limit: int | None = None,
                    newest_first: bool = False) -> list[dict[str, Any]]:
    order = "DESC" if newest_first else "ASC"
    rows = await session.execute(
        text(
            f"SELECT {SNAPSHOT_COLUMNS} FROM portfolio_snapshots "
            "WHERE portfolio_id = :portfolio_id AND is_complete "
            "AND (CAST(:start AS date) IS NULL OR snapshot_date >= :start) "
            "AND (CAST(:end AS date) IS NULL OR snapshot_date <= :end) "
            f"ORDER BY snapshot_date {order}" + (" LIMIT :limit" if limit else "")
        ),
        {"portfolio_id": portfolio_id, "start": start, "end": end, "limit": limit},
    )
    return [{**r, "stale_symbols": list(r["stale_symbols"] or []),
             "data_quality": _json(r["data_quality"]) or {}} for r in rows.mappings()]


def _json(value: Any) -> Any:
    """A json/jsonb value as Python (text() results may come back as a string)."""
    return json.loads(value) if isinstance(value, str) else value


# A position's price_source as the API states it (schemas.PriceSource): what the valuation
# stored, except that a "market" quote which is a generated sample-provider bar says
# "synthetic". `ps` is the position_snapshots row, `p` the position.
PRICE_SOURCE_SQL = """
    CASE WHEN ps.price_source = 'market' AND EXISTS (
             SELECT 1 FROM market_data_cache m
             WHERE m.symbol = p.symbol AND m.date = ps.snapshot_date
               AND m.source LIKE '%synthetic%')
         THEN 'synthetic' ELSE ps.price_source END"""


async def positions(session: AsyncSession, portfolio_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            """
            WITH latest AS (
                SELECT max(snapshot_date) AS d FROM portfolio_snapshots
                WHERE portfolio_id = :portfolio_id AND is_complete)
            SELECT p.id AS position_id, p.source_row, p.symbol, p.quantity, p.entry_price,
                   p.entry_date, p.exit_date, p.exit_price, p.investment_class,
                   p.investment_subtype, p.underlying_symbol, p.strike_price,
                   p.expiration_date, p.option_type, p.multiplier,
                   ps.snapshot_date AS valuation_date, ps.price,
                   """ + PRICE_SOURCE_SQL + """ AS price_source,
                   ps.market_value, ps.delta, COALESCE(ps.is_expired, false) AS is_expired
            FROM positions p
            LEFT JOIN position_snapshots ps ON ps.position_id = p.id
                 AND ps.snapshot_date = (SELECT d FROM latest)
            WHERE p.portfolio_id = :portfolio_id
            ORDER BY p.source_row NULLS LAST, p.symbol
            """
        ),
        {"portfolio_id": portfolio_id},
    )
    return [dict(r) for r in rows.mappings()]


async def factor_exposures(session: AsyncSession, portfolio_id: uuid.UUID,
                           on: dt.date | None) -> dict[str, Any]:
    day = (await session.execute(
        text("SELECT max(calculation_date) FROM factor_exposures "
             "WHERE portfolio_id = :p AND (CAST(:d AS date) IS NULL OR calculation_date <= :d)"),
        {"p": portfolio_id, "d": on})).scalar_one_or_none()
    factors: list[dict[str, Any]] = []
    if day is not None:
        rows = await session.execute(
            text(
                """
                SELECT fe.factor_name AS factor, fd.display_name, fe.exposure, fe.exposure_dollar
                FROM factor_exposures fe
                LEFT JOIN factor_definitions fd ON fd.name = fe.factor_name
                WHERE fe.portfolio_id = :p AND fe.calculation_date = :d
                ORDER BY fd.sort_order NULLS LAST, fe.factor_name
                """
            ),
            {"p": portfolio_id, "d": day},
        )
        factors = [dict(r) for r in rows.mappings()]
    return {"portfolio_id": portfolio_id, "calculation_date": day, "factors": factors}


async def symbol_known(session: AsyncSession, symbol: str) -> bool:
    return bool((await session.execute(
        text("SELECT EXISTS (SELECT 1 FROM symbol_universe WHERE symbol = :s) "
             "OR EXISTS (SELECT 1 FROM market_data_cache WHERE symbol = :s)"),
        {"s": symbol})).scalar_one())


async def prices(session: AsyncSession, symbol: str, start: dt.date | None,
                 end: dt.date | None) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            "SELECT date, close, adj_close, source FROM market_data_cache WHERE symbol = :s "
            "AND (CAST(:start AS date) IS NULL OR date >= :start) "
            "AND (CAST(:end AS date) IS NULL OR date <= :end) ORDER BY date"
        ),
        {"s": symbol, "start": start, "end": end},
    )
    return [dict(r) for r in rows.mappings()]


async def symbol_factors(session: AsyncSession, symbol: str,
                         on: dt.date | None) -> list[dict[str, Any]]:
    rows = await session.execute(
        text(
            """
            SELECT e.factor_name AS factor, e.beta, e.r2, e.n_obs, e.quality, e.calculation_date
            FROM symbol_factor_exposures e
            LEFT JOIN factor_definitions fd ON fd.name = e.factor_name
            WHERE e.symbol = :s AND e.calculation_date = (
                SELECT max(calculation_date) FROM symbol_factor_exposures
                WHERE symbol = :s AND (CAST(:d AS date) IS NULL OR calculation_date <= :d))
            ORDER BY fd.sort_order NULLS LAST, e.factor_name
            """
        ),
        {"s": symbol, "d": on},
    )
    return [dict(r) for r in rows.mappings()]


BATCH_DATES_SQL = """
    SELECT d.batch_date, d.status, d.symbols_total, d.symbols_failed, d.failures,
           d.completed_at, d.run_id,
           j.job_key AS run_key, j.status AS run_status, j.started_at AS run_started_at,
           j.finished_at AS run_finished_at, j.phases AS run_phases, j.attempts AS run_attempts,
           r.status AS refresh_status, r.progress_current AS refresh_done,
           r.progress_total AS refresh_total,
           (SELECT count(*) FROM portfolio_snapshots s
             WHERE s.snapshot_date = d.batch_date AND s.is_complete) AS snapshots
    FROM symbol_batch_dates d
    LEFT JOIN batch_run_history j ON j.id = d.run_id
    LEFT JOIN LATERAL (
        SELECT status, progress_current, progress_total FROM batch_run_history
        WHERE job_type = :refresh_plan AND job_key = CAST(d.batch_date AS text)
        ORDER BY started_at DESC LIMIT 1) r ON true
    WHERE CAST(:before AS date) IS NULL OR d.batch_date < :before
    ORDER BY d.batch_date DESC
    LIMIT :limit
"""


def _run_phase_seconds(phases: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    out = []
    for phase in phases or []:
        seconds = None
        if phase.get("started_at") and phase.get("finished_at"):
            seconds = round((dt.datetime.fromisoformat(phase["finished_at"])
                             - dt.datetime.fromisoformat(phase["started_at"])).total_seconds(), 3)
        out.append({"name": phase.get("name"), "status": phase.get("status"),
                    "current": phase.get("current"), "total": phase.get("total"),
                    "unit": phase.get("unit"), "seconds": seconds})
    return out


async def batch_dates(session: AsyncSession, limit: int,
                      before: dt.date | None) -> list[dict[str, Any]]:
    """The symbol batch per trading date, newest first: its run, phases, failures, refresh."""
    from libs.common.snapshots.refresh import JOB_PLAN

    rows = await session.execute(text(BATCH_DATES_SQL),
                                 {"limit": limit, "before": before, "refresh_plan": JOB_PLAN})
    out = []
    for r in rows.mappings():
        failures = r["failures"] or {}
        run = None
        if r["run_id"] is not None and r["run_key"] is not None:
            end = r["run_finished_at"] or dt.datetime.now(dt.UTC)
            run = {"id": r["run_id"], "job_key": r["run_key"], "status": r["run_status"],
                   "started_at": r["run_started_at"], "finished_at": r["run_finished_at"],
                   "attempts": r["run_attempts"],
                   "duration_seconds": round((end - r["run_started_at"]).total_seconds(), 3),
                   "phases": _run_phase_seconds(r["run_phases"])}
        refresh = None
        if r["refresh_status"] is not None:
            refresh = {"status": r["refresh_status"], "planned": r["refresh_total"]}
        out.append({
            "batch_date": r["batch_date"], "status": r["status"],
            "symbols_total": r["symbols_total"], "symbols_failed": r["symbols_failed"],
            "failures": [{"symbol": s, "reason": str(reason)}
                         for s, reason in sorted(failures.items())],
            "completed_at": r["completed_at"], "run": run, "refresh": refresh,
            "snapshots": r["snapshots"],
        })
    return out
