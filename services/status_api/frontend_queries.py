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

from libs.common.domain.statuses import JobStatus
from libs.common.snapshots.refresh import JOB_REQUEST as REFRESH_REQUEST_JOB
from libs.common.snapshots.refresh import request_job_keys

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
        # The running job's key, and the legacy key a dead letter may be recorded under.
        {"p": portfolio_id, "d": day, "job_type": REFRESH_REQUEST_JOB,
         "keys": [] if day is None else request_job_keys(portfolio_id, day)},
    )).mappings().one()
    if row["done"] or row["job_status"] in (JobStatus.COMPLETED, JobStatus.PARTIAL):
        status = JobStatus.COMPLETED
    elif row["job_status"] == JobStatus.FAILED:
        status = JobStatus.FAILED
    else:  # queued on the bus or being computed
        status = JobStatus.RUNNING
    return {"status": status, "started_at": row["started_at"], "finished_at": row["finished_at"]}


# --- analytics reads ----------------------------------------------------------------------


async def overview_figures(session: AsyncSession, portfolio_id: uuid.UUID) -> dict[str, Any]:
    """The latest complete snapshot, P&L sums over the snapshots (total split into
    unrealized/realized, year and month to date of that snapshot) and position counts."""
    row = (await session.execute(
        text(
            """
            WITH latest AS (
                SELECT * FROM portfolio_snapshots
                WHERE portfolio_id = :p AND is_complete
                ORDER BY snapshot_date DESC LIMIT 1)
            -- none stated: the first snapshot's starting equity (its net market value)
            SELECT COALESCE(p.equity_balance, (
                       SELECT (f.details->>'equity_start')::numeric FROM portfolio_snapshots f
                       WHERE f.portfolio_id = p.id AND f.is_complete
                       ORDER BY f.snapshot_date LIMIT 1)) AS starting_equity,
                   l.snapshot_date, l.completed_at, l.equity, l.long_value, l.short_value,
                   l.gross_exposure, l.net_exposure, l.cumulative_pnl,
                   s.unrealized, s.realized, s.ytd, s.mtd,
                   c.total, c.options, c.shorts, c.longs
            FROM portfolios p
            LEFT JOIN latest l ON true
            LEFT JOIN LATERAL (
                SELECT sum(daily_unrealized_pnl) AS unrealized,
                       sum(daily_realized_pnl) AS realized,
                       sum(daily_pnl) FILTER (WHERE snapshot_date
                           >= date_trunc('year', l.snapshot_date)) AS ytd,
                       sum(daily_pnl) FILTER (WHERE snapshot_date
                           >= date_trunc('month', l.snapshot_date)) AS mtd
                FROM portfolio_snapshots
                WHERE portfolio_id = :p AND is_complete AND snapshot_date <= l.snapshot_date
            ) s ON true
            LEFT JOIN LATERAL (
                SELECT count(*) AS total,
                       count(*) FILTER (WHERE x.investment_class = 'OPTIONS') AS options,
                       count(*) FILTER (WHERE x.investment_class <> 'OPTIONS'
                                          AND x.quantity < 0) AS shorts,
                       count(*) FILTER (WHERE x.investment_class <> 'OPTIONS'
                                          AND x.quantity > 0) AS longs
                FROM positions x
                WHERE x.portfolio_id = :p AND (
                    l.snapshot_date IS NULL OR EXISTS (
                        SELECT 1 FROM position_snapshots ps WHERE ps.position_id = x.id
                          AND ps.snapshot_date = l.snapshot_date))
            ) c ON true
            WHERE p.id = :p
            """
        ),
        {"p": portfolio_id},
    )).mappings().one()
    return dict(row)


async def position_factor_page(
    session: AsyncSession, portfolio_id: uuid.UUID, symbols: list[str] | None,
    limit: int, offset: int, factors: list[str],
) -> dict[str, Any]:
    """Positions with factor betas on the latest date that has any, by symbol; one page."""
    day = (await session.execute(
        text("SELECT max(calculation_date) FROM position_factor_exposures WHERE portfolio_id = :p"),
        {"p": portfolio_id})).scalar_one_or_none()
    if day is None:
        return {"calculation_date": None, "total": 0, "positions": []}
    params = {"p": portfolio_id, "d": day, "symbols": symbols, "factors": factors,
              "limit": limit, "offset": offset}
    rows = (await session.execute(
        text(
            """
            WITH held AS (
                SELECT DISTINCT e.position_id, x.symbol FROM position_factor_exposures e
                JOIN positions x ON x.id = e.position_id
                WHERE e.portfolio_id = :p AND e.calculation_date = :d
                  AND e.factor_name = ANY(CAST(:factors AS text[]))
                  AND (CAST(:symbols AS text[]) IS NULL OR x.symbol = ANY(CAST(:symbols AS text[])))),
            page AS (
                SELECT position_id, symbol, count(*) OVER () AS total FROM held
                ORDER BY symbol, position_id LIMIT :limit OFFSET :offset)
            SELECT page.position_id, page.symbol, page.total, e.factor_name, e.beta
            FROM page JOIN position_factor_exposures e ON e.position_id = page.position_id
                 AND e.calculation_date = :d AND e.factor_name = ANY(CAST(:factors AS text[]))
            ORDER BY page.symbol, page.position_id
            """
        ),
        params,
    )).mappings().all()
    if rows:
        total = rows[0]["total"]
    else:  # past the last page: the count alone
        total = (await session.execute(
            text(
                """
                SELECT count(DISTINCT e.position_id) FROM position_factor_exposures e
                JOIN positions x ON x.id = e.position_id
                WHERE e.portfolio_id = :p AND e.calculation_date = :d
                  AND e.factor_name = ANY(CAST(:factors AS text[]))
                  AND (CAST(:symbols AS text[]) IS NULL
                       OR x.symbol = ANY(CAST(:symbols AS text[])))
                """
            ),
            params,
        )).scalar_one()
    positions: dict[uuid.UUID, dict[str, Any]] = {}
    for r in rows:
        entry = positions.setdefault(r["position_id"], {
            "position_id": str(r["position_id"]), "symbol": r["symbol"], "exposures": {}})
        entry["exposures"][r["factor_name"]] = r["beta"]
    return {"calculation_date": day, "total": int(total), "positions": list(positions.values())}


async def caller_portfolios(session: AsyncSession, user_id: uuid.UUID) -> list[dict[str, Any]]:
    """The caller's active portfolios with their latest equity (the rolled-forward equity of
    the latest complete snapshot, else the starting equity), oldest first."""
    rows = await session.execute(
        text(
            """
            SELECT p.id AS portfolio_id, p.name, p.account_name, p.account_type,
                   l.snapshot_date, COALESCE(l.equity, p.equity_balance, 0) AS value
            FROM portfolios p
            LEFT JOIN LATERAL (
                SELECT snapshot_date, equity FROM portfolio_snapshots s
                WHERE s.portfolio_id = p.id AND s.is_complete
                ORDER BY snapshot_date DESC LIMIT 1) l ON true
            WHERE p.user_id = :u AND p.is_active
            ORDER BY p.created_at, p.id
            """
        ),
        {"u": user_id},
    )
    return [dict(r) for r in rows.mappings()]


async def latest_factor_exposures(session: AsyncSession, portfolio_ids: list[uuid.UUID]
                                  ) -> list[dict[str, Any]]:
    """Each portfolio's factor exposures on its latest calculation date."""
    rows = await session.execute(
        text(
            """
            SELECT fe.portfolio_id, fe.calculation_date, fe.factor_name, fe.exposure,
                   fe.exposure_dollar
            FROM factor_exposures fe
            JOIN (SELECT portfolio_id, max(calculation_date) AS d FROM factor_exposures
                  WHERE portfolio_id = ANY(CAST(:ids AS uuid[])) GROUP BY portfolio_id) m
              ON m.portfolio_id = fe.portfolio_id AND m.d = fe.calculation_date
            """
        ),
        {"ids": portfolio_ids},
    )
    return [dict(r) for r in rows.mappings()]


async def beta_comparison(session: AsyncSession, portfolio_id: uuid.UUID) -> list[dict[str, Any]]:
    """Public positions valued on the latest snapshot: the provider's beta (company profile)
    and sigmabatch's market beta (OLS on SPY) of the symbol, latest on or before that date."""
    rows = await session.execute(
        text(
            """
            WITH latest AS (
                SELECT max(snapshot_date) AS d FROM portfolio_snapshots
                WHERE portfolio_id = :p AND is_complete)
            SELECT x.id AS position_id, x.symbol, cp.beta AS market_beta,
                   e.beta AS calculated_beta, e.r2, e.n_obs, e.calculation_date
            FROM positions x
            JOIN position_snapshots ps ON ps.position_id = x.id
                 AND ps.snapshot_date = (SELECT d FROM latest)
            LEFT JOIN company_profiles cp ON cp.symbol = x.symbol
            LEFT JOIN LATERAL (
                SELECT beta, r2, n_obs, calculation_date FROM symbol_factor_exposures s
                WHERE s.symbol = x.symbol AND s.factor_name = 'market'
                  AND s.calculation_date <= (SELECT d FROM latest)
                ORDER BY s.calculation_date DESC LIMIT 1) e ON true
            WHERE x.portfolio_id = :p AND x.investment_class = 'PUBLIC'
            ORDER BY x.symbol, x.id
            """
        ),
        {"p": portfolio_id},
    )
    return [dict(r) for r in rows.mappings()]


async def scenario_descriptions(session: AsyncSession, keys: list[tuple[str, int]]
                                ) -> dict[tuple[str, int], str | None]:
    rows = await session.execute(
        text("SELECT scenario_id, version, description FROM stress_scenarios "
             "WHERE (scenario_id, version) IN (SELECT * FROM unnest(CAST(:ids AS text[]), "
             "CAST(:versions AS int[])))"),
        {"ids": [k[0] for k in keys], "versions": [k[1] for k in keys]})
    return {(r.scenario_id, r.version): r.description for r in rows}


async def snapshot_equity(session: AsyncSession, portfolio_id: uuid.UUID,
                          day: dt.date) -> float | None:
    value = (await session.execute(
        text("SELECT equity FROM portfolio_snapshots WHERE portfolio_id = :p "
             "AND snapshot_date = :d AND is_complete"), {"p": portfolio_id, "d": day})
    ).scalar_one_or_none()
    return None if value is None else float(value)


async def latest_holdings(session: AsyncSession, portfolio_ids: list[uuid.UUID]
                          ) -> list[dict[str, Any]]:
    """Every position valued on its portfolio's latest complete snapshot: symbol, value."""
    rows = await session.execute(
        text(
            """
            SELECT ps.portfolio_id, x.symbol, ps.market_value
            FROM position_snapshots ps
            JOIN positions x ON x.id = ps.position_id
            JOIN (SELECT portfolio_id, max(snapshot_date) AS d FROM portfolio_snapshots
                  WHERE portfolio_id = ANY(CAST(:ids AS uuid[])) AND is_complete
                  GROUP BY portfolio_id) l
              ON l.portfolio_id = ps.portfolio_id AND l.d = ps.snapshot_date
            """
        ),
        {"ids": portfolio_ids},
    )
    return [dict(r) for r in rows.mappings()]
