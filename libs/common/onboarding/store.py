"""Onboarding state in PostgreSQL: set-based statements, each safe to repeat.

The database is the arbiter between users, replicas and restarts:
- `symbol_onboarding` holds one row per symbol ever requested, so a symbol in flight is
  waited on, never fetched twice (INSERT ... ON CONFLICT DO NOTHING decides who asked first);
- `portfolio_onboarding.snapshot_requested_at` flips from NULL exactly once, with a
  conditional UPDATE whose WHERE clause also checks that every symbol is settled, so however
  many handlers race, one of them requests the first snapshot.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.db import raw_connection
from libs.common.domain.equity import EquitySource
from libs.common.domain.statuses import OnboardingStatus, SymbolStatus
from libs.common.factors import FACTOR_ETFS
from libs.common.onboarding.limits import NewSymbolLimits, check_daily_quota, check_upload_size
from libs.common.portfolio_csv import ParsedPosition
from libs.common.snapshots.refresh import request_job_keys_sql


@dataclass(frozen=True)
class StoredUpload:
    portfolio_id: uuid.UUID
    positions_created: int
    symbols_known: list[str]
    symbols_queued: list[str]  # unknown symbols this portfolio waits for
    symbols_failed: list[str]  # unknown symbols that recently failed (not retried yet)


@dataclass(frozen=True)
class SnapshotRequest:
    portfolio_id: uuid.UUID
    as_of: dt.date
    failed_symbols: list[str]


async def store_upload(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    name: str,
    positions: Sequence[ParsedPosition],
    data_symbols: Sequence[str],
    equity_balance: Decimal | None,
    requested_by: str,
    retry_failed_after_seconds: float,
    account_name: str | None = None,
    account_type: str | None = None,
    new_symbol_limits: NewSymbolLimits | None = None,
) -> StoredUpload:
    """Portfolio, positions and onboarding state in the caller's transaction.

    NewSymbolLimitExceeded (before anything is written) when the upload's symbols unknown to
    the universe pass the user's limits.
    """
    known_rows = await session.execute(
        text(
            "SELECT symbol FROM symbol_universe WHERE is_active AND symbol = ANY(:symbols)"
        ),
        {"symbols": list(data_symbols)},
    )
    known = {r.symbol for r in known_rows} | (set(data_symbols) & set(FACTOR_ETFS))
    unknown = sorted(set(data_symbols) - known)
    if new_symbol_limits is not None:
        check_upload_size(unknown, new_symbol_limits)
        await check_daily_quota(session, user_id, unknown, new_symbol_limits)

    portfolio_id = uuid.uuid4()
    await session.execute(
        text(
            "INSERT INTO portfolios (id, user_id, name, equity_balance, equity_source, "
            "account_name, account_type) VALUES (:id, :user_id, :name, :equity, :source, "
            ":account_name, :account_type)"
        ),
        {"id": portfolio_id, "user_id": user_id, "name": name, "equity": equity_balance,
         "source": EquitySource.STATED if equity_balance is not None
         else EquitySource.NET_MARKET_VALUE,
         "account_name": account_name, "account_type": account_type},
    )
    await _insert_positions(session, portfolio_id, positions)
    failed: list[str] = []
    if unknown:
        # First asker creates the row; a failed symbol is asked again once its failure is old
        # enough for a new request to pass the bus's duplicate window.
        await session.execute(
            text(
                """
                INSERT INTO symbol_onboarding (symbol, status, requested_by)
                SELECT s, 'pending', :requested_by FROM unnest(CAST(:symbols AS text[])) AS s
                ON CONFLICT (symbol) DO UPDATE
                   SET status = 'pending', reason = NULL, finished_at = NULL,
                       requested_by = EXCLUDED.requested_by, requested_at = now()
                 WHERE symbol_onboarding.status = 'failed'
                   AND symbol_onboarding.finished_at
                       < now() - make_interval(secs => :retry_after)
                """
            ),
            {"symbols": unknown, "requested_by": requested_by,
             "retry_after": retry_failed_after_seconds},
        )
        # Rows marked ready while not (or no longer) in the universe are re-fetched too. Not
        # one a worker made ready (and put in the universe, in the same commit) after this
        # upload read the universe: reset to pending, its request would be dropped by the
        # bus as a duplicate of the one just handled, and it would wait for an hour (seen
        # with 100 concurrent uploads sharing symbols, bench_onboarding --burst).
        await session.execute(
            text(
                "UPDATE symbol_onboarding SET status = 'pending', finished_at = NULL "
                "WHERE symbol = ANY(:symbols) AND status = 'ready' "
                "AND NOT EXISTS (SELECT 1 FROM symbol_universe u "
                "WHERE u.symbol = symbol_onboarding.symbol AND u.is_active)"
            ),
            {"symbols": unknown},
        )
        failed = [
            r.symbol
            for r in await session.execute(
                text(
                    "SELECT symbol FROM symbol_onboarding "
                    "WHERE symbol = ANY(:symbols) AND status = 'failed' ORDER BY symbol"
                ),
                {"symbols": unknown},
            )
        ]
        await session.execute(
            text(
                "INSERT INTO portfolio_onboarding_symbols (portfolio_id, symbol) "
                "SELECT :portfolio_id, s FROM unnest(CAST(:symbols AS text[])) AS s"
            ),
            {"portfolio_id": portfolio_id, "symbols": unknown},
        )
    await session.execute(
        text(
            "INSERT INTO portfolio_onboarding (portfolio_id, status, mode) "
            "VALUES (:portfolio_id, 'running', :mode)"
        ),
        {"portfolio_id": portfolio_id, "mode": "v2_async" if unknown else "v2_instant"},
    )
    queued = [s for s in unknown if s not in failed]
    message = (
        f"Uploaded '{name}': {len(positions)} positions, {len(known)} symbols already known"
        + (f", {len(queued)} to fetch ({_short_list(queued)})" if queued else "")
        + (f", {len(failed)} failed recently ({_short_list(failed)})" if failed else "")
        + "."
    )
    await add_activity(session, [portfolio_id], message)
    return StoredUpload(portfolio_id, len(positions), sorted(known), queued, failed)


async def account_name_taken(session: AsyncSession, user_id: uuid.UUID, account_name: str) -> bool:
    return bool((await session.execute(
        text("SELECT EXISTS (SELECT 1 FROM portfolios "
             "WHERE user_id = :user_id AND account_name = :account_name)"),
        {"user_id": user_id, "account_name": account_name})).scalar_one())


async def _insert_positions(
    session: AsyncSession, portfolio_id: uuid.UUID, positions: Sequence[ParsedPosition]
) -> None:
    connection = await raw_connection(session)
    columns = list(zip(*(
        (
            p.row, p.symbol, p.quantity, p.entry_price, p.entry_date, p.exit_date, p.exit_price,
            p.investment_class.value, p.investment_subtype, p.underlying_symbol, p.strike_price,
            p.expiration_date, p.option_type, p.multiplier,
        )
        for p in positions
    ), strict=True))
    await connection.execute(
        """
        INSERT INTO positions (id, portfolio_id, source_row, symbol, quantity, entry_price,
            entry_date, exit_date, exit_price, investment_class, investment_subtype,
            underlying_symbol, strike_price, expiration_date, option_type, multiplier)
        SELECT gen_random_uuid(), $1, * FROM unnest(
            $2::int[], $3::text[], $4::numeric[], $5::numeric[], $6::date[], $7::date[],
            $8::numeric[], $9::text[], $10::text[], $11::text[], $12::numeric[], $13::date[],
            $14::text[], $15::int[])
        """,
        portfolio_id, *[list(c) for c in columns],
    )


async def add_activity(
    session: AsyncSession, portfolio_ids: Sequence[uuid.UUID], message: str, level: str = "info"
) -> None:
    if not portfolio_ids:
        return
    await session.execute(
        text(
            "INSERT INTO onboarding_activity (portfolio_id, level, message) "
            "SELECT p, :level, :message FROM unnest(CAST(:ids AS uuid[])) AS p"
        ),
        {"ids": list(portfolio_ids), "level": level, "message": message},
    )


async def request_snapshot_if_ready(
    session: AsyncSession,
    *,
    fallback_as_of: dt.date,
    portfolio_id: uuid.UUID | None = None,
    symbol: str | None = None,
) -> list[SnapshotRequest]:
    """Flip portfolios whose symbols are all ready/failed to 'snapshot requested', once.

    Scope: one portfolio (after its upload commits) or every portfolio waiting for `symbol`
    (on its completion event). The WHERE clause re-checks readiness under the row lock, so
    of any number of concurrent callers exactly one gets each portfolio back.
    as_of is the latest completed batch date, else the latest price of the portfolio's
    symbols, else `fallback_as_of` (a portfolio with no market data at all).
    """
    rows = await session.execute(
        text(
            """
            UPDATE portfolio_onboarding po
            SET snapshot_requested_at = now(),
                failed_symbols = ARRAY(
                    SELECT pos.symbol FROM portfolio_onboarding_symbols pos
                    JOIN symbol_onboarding so ON so.symbol = pos.symbol
                    WHERE pos.portfolio_id = po.portfolio_id AND so.status = 'failed'
                    ORDER BY pos.symbol),
                snapshot_date = COALESCE(
                    (SELECT max(batch_date) FROM symbol_batch_dates),
                    (SELECT max(m.date) FROM market_data_cache m
                     WHERE m.symbol IN (
                        SELECT CASE WHEN p.investment_class = 'OPTIONS'
                                    THEN p.underlying_symbol ELSE p.symbol END
                        FROM positions p WHERE p.portfolio_id = po.portfolio_id)),
                    CAST(:fallback AS date))
            WHERE po.status = 'running' AND po.snapshot_requested_at IS NULL
              AND (CAST(:portfolio_id AS uuid) IS NULL OR po.portfolio_id = :portfolio_id)
              AND (CAST(:symbol AS text) IS NULL OR po.portfolio_id IN (
                    SELECT portfolio_id FROM portfolio_onboarding_symbols WHERE symbol = :symbol))
              AND NOT EXISTS (
                    SELECT 1 FROM portfolio_onboarding_symbols pos
                    JOIN symbol_onboarding so ON so.symbol = pos.symbol
                    WHERE pos.portfolio_id = po.portfolio_id
                      AND so.status NOT IN ('ready', 'failed'))
            RETURNING po.portfolio_id, po.snapshot_date, po.failed_symbols
            """
        ),
        {"portfolio_id": portfolio_id, "symbol": symbol, "fallback": fallback_as_of},
    )
    requests = [SnapshotRequest(r.portfolio_id, r.snapshot_date, list(r.failed_symbols))
                for r in rows]
    for request in requests:
        failed = request.failed_symbols
        await add_activity(
            session, [request.portfolio_id],
            f"Requested the first snapshot for {request.as_of}"
            + (f" without {len(failed)} symbol(s) that could not be fetched: "
               f"{_short_list(failed)}" if failed else "")
            + ".",
            "warning" if failed else "info",
        )
    return requests


async def unsettled_snapshot_requests(session: AsyncSession) -> list[SnapshotRequest]:
    """Requested snapshots not yet made (to re-publish after a crash; the msg id dedups)."""
    rows = await session.execute(
        text(
            """
            SELECT po.portfolio_id, po.snapshot_date, po.failed_symbols
            FROM portfolio_onboarding po
            WHERE po.status = 'running' AND po.snapshot_requested_at IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM portfolio_snapshots s
                              WHERE s.portfolio_id = po.portfolio_id
                                AND s.snapshot_date = po.snapshot_date AND s.is_complete)
            """
        )
    )
    return [SnapshotRequest(r.portfolio_id, r.snapshot_date, list(r.failed_symbols)) for r in rows]


async def waiting_portfolios(session: AsyncSession) -> list[uuid.UUID]:
    """Running onboardings that have not requested their snapshot yet."""
    rows = await session.execute(
        text(
            "SELECT portfolio_id FROM portfolio_onboarding "
            "WHERE status = 'running' AND snapshot_requested_at IS NULL"
        )
    )
    return [r.portfolio_id for r in rows]


async def finish_completed_onboardings(
    session: AsyncSession, portfolio_id: uuid.UUID | None = None
) -> int:
    """Mark onboardings whose first snapshot is complete as completed/partial (idempotent)."""
    result = await session.execute(
        text(
            """
            WITH done AS (
                UPDATE portfolio_onboarding po
                SET status = CASE WHEN cardinality(po.failed_symbols) > 0
                                  THEN 'partial' ELSE 'completed' END,
                    finished_at = now()
                WHERE po.status = 'running' AND po.snapshot_requested_at IS NOT NULL
                  AND (CAST(:portfolio_id AS uuid) IS NULL OR po.portfolio_id = :portfolio_id)
                  AND EXISTS (SELECT 1 FROM portfolio_snapshots s
                              WHERE s.portfolio_id = po.portfolio_id
                                AND s.snapshot_date = po.snapshot_date AND s.is_complete)
                RETURNING po.portfolio_id, po.snapshot_date, po.status
            )
            INSERT INTO onboarding_activity (portfolio_id, level, message)
            SELECT portfolio_id, 'info',
                   'First snapshot for ' || snapshot_date || ' is ready: onboarding '
                   || status || '.'
            FROM done
            """
        ),
        {"portfolio_id": portfolio_id},
    )
    return result.rowcount or 0  # type: ignore[attr-defined]


async def fail_onboarding(session: AsyncSession, portfolio_id: uuid.UUID, error: str) -> None:
    await session.execute(
        text(
            "UPDATE portfolio_onboarding SET status = 'failed', finished_at = now(), "
            "error = :error WHERE portfolio_id = :id AND status = 'running'"
        ),
        {"id": portfolio_id, "error": error},
    )
    await add_activity(session, [portfolio_id], f"Onboarding failed: {error}", "error")


async def fail_dead_snapshot_onboardings(session: AsyncSession, refresh_job_type: str) -> int:
    """Fail running onboardings whose first-snapshot request was dead-lettered (no retry will
    come), saying why; returns how many (idempotent)."""
    # the job key dead letters carry, or the legacy message-id key (snapshots.refresh)
    keys = request_job_keys_sql("po.portfolio_id", "po.snapshot_date")
    rows = (await session.execute(
        text(
            f"""
            SELECT po.portfolio_id, j.error FROM portfolio_onboarding po
            JOIN LATERAL (
                SELECT error FROM batch_run_history
                WHERE job_type = :job_type AND status = 'failed'
                  AND job_key IN ({keys})
                ORDER BY started_at DESC LIMIT 1) j ON true
            WHERE po.status = 'running' AND po.snapshot_requested_at IS NOT NULL
            """
        ),
        {"job_type": refresh_job_type},
    )).all()
    for row in rows:
        await fail_onboarding(session, row.portfolio_id,
                              f"the first snapshot could not be made: {row.error}")
    return len(rows)


# --- symbols ----------------------------------------------------------------------------


async def symbol_status(session: AsyncSession, symbol: str) -> str | None:
    return (
        await session.execute(
            text("SELECT status FROM symbol_onboarding WHERE symbol = :s"), {"s": symbol}
        )
    ).scalar_one_or_none()


async def mark_symbol_running(session: AsyncSession, symbol: str) -> bool:
    """pending/running → running (attempt counted); False when already settled.

    Waiting portfolios get an activity line, with the attempt number on a retry.
    """
    row = (await session.execute(
        text(
            "UPDATE symbol_onboarding SET status = 'running', attempts = attempts + 1 "
            "WHERE symbol = :s AND status IN ('pending', 'running') RETURNING attempts"
        ),
        {"s": symbol},
    )).first()
    if row is None:
        return False
    retry = f" (attempt {row.attempts})" if row.attempts > 1 else ""
    await session.execute(
        text(
            """
            INSERT INTO onboarding_activity (portfolio_id, level, message)
            SELECT pos.portfolio_id, 'info', :message
            FROM portfolio_onboarding_symbols pos
            JOIN portfolio_onboarding po ON po.portfolio_id = pos.portfolio_id
            WHERE pos.symbol = :s AND po.status = 'running'
            """
        ),
        {"s": symbol, "message": f"Fetching a year of prices, the profile and factor betas "
                                 f"of {symbol}{retry}."},
    )
    return True


async def settle_symbol(
    session: AsyncSession, symbol: str, status: str, reason: str | None
) -> None:
    """ready/failed, plus one activity line on every portfolio waiting for the symbol."""
    assert status in (SymbolStatus.READY, SymbolStatus.FAILED)
    await session.execute(
        text(
            "UPDATE symbol_onboarding SET status = :status, reason = :reason, finished_at = now() "
            "WHERE symbol = :s"
        ),
        {"s": symbol, "status": status, "reason": reason},
    )
    message = (f"{symbol} is ready: {reason}." if status == SymbolStatus.READY
               else f"{symbol} could not be fetched: {reason}.")
    await session.execute(
        text(
            """
            INSERT INTO onboarding_activity (portfolio_id, level, message)
            SELECT pos.portfolio_id, :level, :message
            FROM portfolio_onboarding_symbols pos
            JOIN portfolio_onboarding po ON po.portfolio_id = pos.portfolio_id
            WHERE pos.symbol = :s AND po.status = :running
            """
        ),
        {"s": symbol, "level": "info" if status == SymbolStatus.READY else "warning", "message": message,
         "running": OnboardingStatus.RUNNING},
    )


async def unsettled_symbols(
    session: AsyncSession, *, min_age_seconds: float, stale_after_seconds: float
) -> list[str]:
    """Symbols whose request may have been lost: pending for a while, or running with no
    live worker (no job row with a fresh heartbeat). A fresh request is surely still on the
    bus, and a live worker will finish; re-publishing those would only add duplicates."""
    rows = await session.execute(
        text(
            """
            SELECT so.symbol FROM symbol_onboarding so
            WHERE (so.status = :pending
                   AND so.requested_at < now() - make_interval(secs => :min_age))
               OR (so.status = 'running' AND NOT EXISTS (
                    SELECT 1 FROM batch_run_history j
                    WHERE j.job_type = 'symbol_onboard' AND j.job_key = so.symbol
                      AND j.status = 'running'
                      AND j.heartbeat_at > now() - make_interval(secs => :stale)))
            """
        ),
        {"pending": SymbolStatus.PENDING, "min_age": min_age_seconds, "stale": stale_after_seconds},
    )
    return [r.symbol for r in rows]


def _short_list(symbols: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(symbols[:limit])
    return shown + (f" and {len(symbols) - limit} more" if len(symbols) > limit else "")


async def latest_closes(session: AsyncSession, symbols: Sequence[str]) -> dict[str, Decimal]:
    """Each symbol's latest cached close (symbols never fetched are absent)."""
    if not symbols:
        return {}
    rows = await session.execute(
        text(
            "SELECT DISTINCT ON (symbol) symbol, close FROM market_data_cache "
            "WHERE symbol = ANY(:symbols) AND close IS NOT NULL ORDER BY symbol, date DESC"
        ),
        {"symbols": list(symbols)},
    )
    return {r.symbol: Decimal(r.close) for r in rows}
