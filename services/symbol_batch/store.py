"""symbol_batch's reads and set-based writes (asyncpg under the caller's session/transaction).

Every write is an idempotent upsert of whole arrays (`INSERT ... SELECT FROM unnest(...)
ON CONFLICT`), so a redelivered or restarted run rewrites the same rows instead of adding any.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.db import raw_connection
from libs.common.market_data.base import Fundamentals

JOB_TYPE = "symbol_batch"


async def watermark(session: AsyncSession) -> dt.date | None:
    connection = await raw_connection(session)
    return await connection.fetchval("SELECT max(batch_date) FROM symbol_batch_dates")


async def batched_dates(session: AsyncSession) -> dict[dt.date, str]:
    """Every completed batch date with its status (completed / partial)."""
    connection = await raw_connection(session)
    rows = await connection.fetch("SELECT batch_date, status FROM symbol_batch_dates")
    return {r["batch_date"]: r["status"] for r in rows}


async def latest_snapshot_date(session: AsyncSession) -> dt.date | None:
    """The latest complete portfolio snapshot: a date redone on or before it is restated."""
    connection = await raw_connection(session)
    return await connection.fetchval(
        "SELECT max(snapshot_date) FROM portfolio_snapshots WHERE is_complete"
    )


async def ensure_seeded(
    session: AsyncSession, etfs: Sequence[str], synthetic: Sequence[str] = ()
) -> None:
    """The factor ETFs belong to the universe whatever was seeded (docs/design.md §5); so do
    the sample provider's synthetic tickers when SIGMABATCH_SAMPLE_UNIVERSE asks for them.
    Idempotent: existing rows (and their is_active) are left as they are."""
    connection = await raw_connection(session)
    symbols = list(etfs) + list(synthetic)
    kinds = ["etf"] * len(etfs) + ["stock"] * len(synthetic)
    added_by = ["factor_etf"] * len(etfs) + ["sample_universe"] * len(synthetic)
    await connection.execute(
        "INSERT INTO symbol_universe (symbol, asset_type, added_by) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) "
        "ON CONFLICT (symbol) DO NOTHING",
        symbols,
        kinds,
        added_by,
    )


async def active_universe(session: AsyncSession) -> list[tuple[str, str | None]]:
    connection = await raw_connection(session)
    rows = await connection.fetch(
        "SELECT symbol, asset_type FROM symbol_universe WHERE is_active ORDER BY symbol"
    )
    return [(r["symbol"], r["asset_type"]) for r in rows]


async def last_price_dates(session: AsyncSession, symbols: Sequence[str]) -> dict[str, dt.date]:
    """The latest stored bar of each symbol (`symbol_universe.last_price_date`, advanced by
    every price upsert); symbols never priced are absent."""
    connection = await raw_connection(session)
    rows = await connection.fetch(
        "SELECT symbol, last_price_date FROM symbol_universe "
        "WHERE symbol = ANY($1::text[]) AND last_price_date IS NOT NULL",
        list(symbols),
    )
    return {r["symbol"]: r["last_price_date"] for r in rows}


async def profiles_due(
    session: AsyncSession, symbols: Sequence[str], as_of: dt.date, max_age_days: int
) -> list[str]:
    """Symbols with no profile, or one older than ``max_age_days`` (profiles change slowly)."""
    connection = await raw_connection(session)
    rows = await connection.fetch(
        """
        SELECT s FROM unnest($1::text[]) AS s
        LEFT JOIN company_profiles p ON p.symbol = s
        WHERE p.symbol IS NULL OR p.as_of IS NULL OR p.as_of < $2::date - $3::int
        ORDER BY s
        """,
        list(symbols),
        as_of,
        max_age_days,
    )
    return [r["s"] for r in rows]


async def fundamentals_due(
    session: AsyncSession, symbols: Sequence[str], as_of: dt.date, max_age_days: int
) -> list[str]:
    """Symbols whose earnings window is due: never fetched, the announced next earnings date
    has passed, or (no earnings calendar, e.g. funds) the last fetch is older than max_age."""
    connection = await raw_connection(session)
    rows = await connection.fetch(
        """
        SELECT s FROM unnest($1::text[]) AS s
        LEFT JOIN LATERAL (
            SELECT as_of_date, next_earnings_date FROM fundamentals f
            WHERE f.symbol = s ORDER BY as_of_date DESC LIMIT 1
        ) last ON true
        WHERE last.as_of_date IS NULL
           OR (last.next_earnings_date IS NOT NULL AND last.next_earnings_date <= $2::date
               AND last.as_of_date < last.next_earnings_date)
           OR (last.next_earnings_date IS NULL AND last.as_of_date < $2::date - $3::int)
        ORDER BY s
        """,
        list(symbols),
        as_of,
        max_age_days,
    )
    return [r["s"] for r in rows]


async def upsert_fundamentals(session: AsyncSession, items: Sequence[Fundamentals]) -> None:
    if not items:
        return
    connection = await raw_connection(session)
    await connection.execute(
        """
        INSERT INTO fundamentals (symbol, as_of_date, last_earnings_date, next_earnings_date,
                                  data, source)
        SELECT s, a, l, n, d::jsonb, src
        FROM unnest($1::text[], $2::date[], $3::date[], $4::date[], $5::text[], $6::text[])
             AS t(s, a, l, n, d, src)
        ON CONFLICT (symbol, as_of_date) DO UPDATE SET
            last_earnings_date = EXCLUDED.last_earnings_date,
            next_earnings_date = EXCLUDED.next_earnings_date, data = EXCLUDED.data,
            source = EXCLUDED.source
        """,
        [i.symbol for i in items],
        [i.as_of for i in items],
        [i.last_earnings_date for i in items],
        [i.next_earnings_date for i in items],
        [json.dumps(i.data, default=str) for i in items],
        [i.source for i in items],
    )


# One row of `COPY (SELECT int4, int4, float8) TO STDOUT (FORMAT binary)`: field count, then
# (length, value) per field, all big-endian; every field is NOT NULL, so rows are fixed-width.
_CLOSE_ROW = np.dtype(
    [
        ("n", ">i2"),
        ("l1", ">i4"),
        ("col", ">i4"),
        ("l2", ">i4"),
        ("day", ">i4"),
        ("l3", ">i4"),
        ("value", ">f8"),
    ]
)
_BINARY_HEADER = 19  # signature (11) + flags (4) + header extension length (4)


async def load_closes(
    session: AsyncSession, symbols: Sequence[str], sessions: pd.DatetimeIndex
) -> pd.DataFrame:
    """Adjusted closes as a (session x symbol) float matrix, NaN where no bar.

    The server numbers each row's symbol (its position in ``symbols``) and day (offset from the
    first session) and streams fixed-width binary COPY rows that numpy reads in place: no
    per-row Python objects and no text parsing, which for a million rows is most of the cost.
    """
    connection = await raw_connection(session)
    buffer = io.BytesIO()
    first, last = sessions[0].date(), sessions[-1].date()
    await connection.copy_from_query(
        "SELECT u.ord::int4 - 1, (m.date - $2::date)::int4, m.adj_close "
        "FROM unnest($1::text[]) WITH ORDINALITY AS u(symbol, ord) "
        "JOIN market_data_cache m ON m.symbol = u.symbol AND m.date BETWEEN $2 AND $3",
        list(symbols),
        first,
        last,
        output=buffer,
        format="binary",
    )
    raw = buffer.getbuffer()
    count = (len(raw) - _BINARY_HEADER - 2) // _CLOSE_ROW.itemsize
    rows = np.frombuffer(raw, dtype=_CLOSE_ROW, count=count, offset=_BINARY_HEADER)
    day_to_row = np.full((last - first).days + 1, -1, dtype=np.int64)
    day_to_row[(sessions - sessions[0]).days.to_numpy()] = np.arange(len(sessions))
    row = day_to_row[rows["day"].astype(np.int64)]
    ok = row >= 0  # a bar on a non-session day (rare vendor artefact) is ignored
    matrix = np.full((len(sessions), len(symbols)), np.nan)
    matrix[row[ok], rows["col"][ok].astype(np.int64)] = rows["value"][ok].astype(np.float64)
    del rows, raw
    return pd.DataFrame(matrix, index=sessions, columns=list(symbols))


async def record_date_complete(
    session: AsyncSession,
    day: dt.date,
    *,
    status: str,
    run_id: uuid.UUID,
    symbols_total: int,
    failures: dict[str, str],
    redo: str = "no",
) -> bool:
    """The watermark: the date is complete (written in the factors' own transaction).

    A first completion inserts. A date done before is replaced when `redo` is "always" (an
    operator's rerun) or "if_changed" (a partial date retried: only when its status or its
    failures changed), so the run that redid it announces it. Returns whether the row is
    now this run's.
    """
    connection = await raw_connection(session)
    row = await connection.fetchval(
        """
        INSERT INTO symbol_batch_dates AS d (batch_date, status, run_id, symbols_total,
                                             symbols_failed, failures)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb)
        ON CONFLICT (batch_date) DO UPDATE SET
            status = EXCLUDED.status, run_id = EXCLUDED.run_id,
            symbols_total = EXCLUDED.symbols_total, symbols_failed = EXCLUDED.symbols_failed,
            failures = EXCLUDED.failures
        WHERE d.run_id IS DISTINCT FROM EXCLUDED.run_id AND (
            $7 = 'always'
            OR ($7 = 'if_changed'
                AND (d.status <> EXCLUDED.status OR d.failures <> EXCLUDED.failures)))
        RETURNING batch_date
        """,
        day,
        status,
        run_id,
        symbols_total,
        len(failures),
        json.dumps(failures),
        redo,
    )
    return row is not None


@dataclass(frozen=True)
class CompletedDate:
    batch_date: dt.date
    status: str
    symbols_total: int
    symbols_failed: int
    run_id: uuid.UUID


async def dates_of_key(session: AsyncSession, job_key: str) -> list[CompletedDate]:
    """Dates completed by any run of this trigger key, oldest first (what to announce)."""
    connection = await raw_connection(session)
    rows = await connection.fetch(
        """
        SELECT batch_date, status, symbols_total, symbols_failed, run_id
        FROM symbol_batch_dates
        WHERE run_id IN (SELECT id FROM batch_run_history WHERE job_type = $1 AND job_key = $2)
        ORDER BY batch_date
        """,
        JOB_TYPE,
        job_key,
    )
    return [CompletedDate(**dict(r)) for r in rows]


async def latest_job_status(session: AsyncSession, job_key: str) -> str | None:
    connection = await raw_connection(session)
    return await connection.fetchval(
        "SELECT status FROM batch_run_history WHERE job_type = $1 AND job_key = $2 "
        "ORDER BY started_at DESC LIMIT 1",
        JOB_TYPE,
        job_key,
    )
