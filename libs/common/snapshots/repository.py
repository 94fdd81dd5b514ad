"""SQL of portfolio snapshots: set-based reads and writes for a whole chunk of portfolios.

Every function takes the asyncpg connection under the caller's session (`db.raw_connection`)
so one chunk-date is one transaction: claim the slots, read, write, complete, commit.
A handful of statements per chunk whatever its size; nothing here loops over rows in SQL
round trips. Money read for the roll-forward (equity, cumulative P&L, flows) stays Decimal;
the quantities and prices feeding vectorised math are read as float8.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import numpy as np
import pandas as pd

from libs.common.pnl import VOL_WINDOW

#: How far back betas may be to be used for a date (the factor batch runs daily).
BETA_MAX_AGE_DAYS = 10
#: Calendar days of underlying history loaded for the option-volatility window.
VOL_HISTORY_DAYS = int(VOL_WINDOW * 365 / 252) + 10

POSITION_FRAME_COLUMNS = [
    "position_id", "portfolio_id", "symbol", "quantity", "entry_price", "entry_date", "exit_date",
    "exit_price", "investment_class", "investment_subtype", "underlying_symbol", "strike_price",
    "expiration_date", "option_type", "manual_value",
]


@dataclass(frozen=True)
class ChunkInputs:
    """Everything the pure P&L and exposure functions need for one chunk on one date."""

    portfolios: pd.DataFrame  # portfolio_id, equity_balance (Decimal)
    positions: pd.DataFrame
    previous: pd.DataFrame  # portfolio_id, snapshot_date, equity, cumulative_pnl (Decimal)
    flows: pd.DataFrame  # portfolio_id, flow_date, amount (Decimal)
    prices: pd.DataFrame  # symbol, date, price
    betas: pd.DataFrame  # symbol, factor_name, beta
    # symbol -> calculation_date of its betas above (position_snapshots.beta_date)
    beta_dates: dict[str, dt.date] = field(default_factory=dict)


# --------------------------------------------------------------------------- eligibility

_ELIGIBLE = """
    FROM portfolios p
    WHERE p.is_active AND p.created_at <= $2
      AND NOT EXISTS (SELECT 1 FROM portfolio_onboarding o
                      WHERE o.portfolio_id = p.id AND o.status = 'running')
      AND EXISTS (SELECT 1 FROM positions x WHERE x.portfolio_id = p.id AND x.entry_date <= $1)
      AND NOT EXISTS (SELECT 1 FROM portfolio_snapshots s
                      WHERE s.portfolio_id = p.id AND s.snapshot_date >= $1 AND s.is_complete
                        -- made with missing inputs before this plan: restate it
                        AND NOT (s.snapshot_date = $1 AND s.is_degraded
                                 AND s.completed_at < $2))
      AND NOT EXISTS (SELECT 1 FROM portfolio_snapshots f
                      WHERE f.portfolio_id = p.id AND f.snapshot_date <= $1
                        AND NOT f.is_complete AND f.details ? 'refresh_error'
                        AND f.claimed_at >= $2)
"""


async def eligible_portfolios(
    conn: asyncpg.Connection, day: dt.date, created_before: dt.datetime
) -> list[uuid.UUID]:
    """Active portfolios holding something on `day` with no complete snapshot on or after it.

    A complete snapshot of `day` made with missing prices or betas (`is_degraded`) before
    `created_before` (the plan's time) does not count: the date's batch has now brought its
    inputs, so it is restated (once per plan: the restated row is completed after it).

    A portfolio already snapshotted on a later date is left alone: inserting an earlier
    snapshot under a later one would count the P&L between them twice. A portfolio still
    onboarding is left to onboarding, which requests its first snapshot itself. A portfolio
    whose refresh failed (isolated, `mark_slot_failed`) since `created_before` (the plan) does
    not hold the date up; the plan of a later date retries it.
    """
    rows = await conn.fetch(f"SELECT p.id {_ELIGIBLE} ORDER BY p.id", day, created_before)
    return [r["id"] for r in rows]


async def count_eligible(
    conn: asyncpg.Connection, day: dt.date, created_before: dt.datetime
) -> int:
    return await conn.fetchval(f"SELECT count(*) {_ELIGIBLE}", day, created_before)


async def count_failed(conn: asyncpg.Connection, day: dt.date, since: dt.datetime) -> int:
    """Portfolios whose refresh up to `day` failed since `since` (they are not waited for)."""
    return await conn.fetchval(
        "SELECT count(DISTINCT portfolio_id) FROM portfolio_snapshots "
        "WHERE snapshot_date <= $1 AND NOT is_complete AND details ? 'refresh_error' "
        "AND claimed_at >= $2",
        day,
        since,
    )


async def mark_slot_failed(
    conn: asyncpg.Connection, portfolio_id: uuid.UUID, day: dt.date, reason: str
) -> None:
    """Leave the (portfolio, day) slot incomplete with the reason its refresh failed.

    The next claim of the slot (a later night, a retry) re-claims and redoes it; success
    overwrites `details`, so the error disappears with the cause.
    """
    await conn.execute(
        """
        INSERT INTO portfolio_snapshots AS s (id, portfolio_id, snapshot_date, is_complete,
                                              details, claimed_at)
        VALUES (gen_random_uuid(), $1, $2, false,
                jsonb_build_object('refresh_error', $3::text, 'failed_at', now()), now())
        ON CONFLICT (portfolio_id, snapshot_date) DO UPDATE
        SET details = s.details || EXCLUDED.details, claimed_at = now()
        WHERE NOT s.is_complete
        """,
        portfolio_id,
        day,
        reason,
    )


async def count_complete(conn: asyncpg.Connection, day: dt.date) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM portfolio_snapshots WHERE snapshot_date = $1 AND is_complete", day
    )


async def latest_complete_dates(
    conn: asyncpg.Connection, portfolio_ids: Sequence[uuid.UUID], before: dt.date
) -> dict[uuid.UUID, dt.date]:
    rows = await conn.fetch(
        """
        SELECT portfolio_id, max(snapshot_date) AS last
        FROM portfolio_snapshots
        WHERE portfolio_id = ANY($1::uuid[]) AND snapshot_date < $2 AND is_complete
        GROUP BY portfolio_id
        """,
        list(portfolio_ids),
        before,
    )
    return {r["portfolio_id"]: r["last"] for r in rows}


async def first_entry_dates(
    conn: asyncpg.Connection, portfolio_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dt.date]:
    rows = await conn.fetch(
        "SELECT portfolio_id, min(entry_date) AS first FROM positions "
        "WHERE portfolio_id = ANY($1::uuid[]) GROUP BY portfolio_id",
        list(portfolio_ids),
    )
    return {r["portfolio_id"]: r["first"] for r in rows}


async def batch_dates_between(
    conn: asyncpg.Connection, after: dt.date, before: dt.date
) -> list[dt.date]:
    """Dates the symbol batch finished strictly between `after` and `before`, in order."""
    rows = await conn.fetch(
        "SELECT batch_date FROM symbol_batch_dates WHERE batch_date > $1 AND batch_date < $2 "
        "ORDER BY batch_date",
        after,
        before,
    )
    return [r["batch_date"] for r in rows]


async def restatable_portfolios(
    conn: asyncpg.Connection, day: dt.date, created_before: dt.datetime
) -> list[uuid.UUID]:
    """Active portfolios with a complete snapshot on or after `day` (what a restatement of
    `day` recomputes), in id order."""
    rows = await conn.fetch(
        """
        SELECT p.id FROM portfolios p
        WHERE p.is_active AND p.created_at <= $2
          AND EXISTS (SELECT 1 FROM portfolio_snapshots s
                      WHERE s.portfolio_id = p.id AND s.snapshot_date >= $1 AND s.is_complete)
        ORDER BY p.id
        """,
        day,
        created_before,
    )
    return [r["id"] for r in rows]


async def first_complete_dates(
    conn: asyncpg.Connection, portfolio_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dt.date]:
    rows = await conn.fetch(
        "SELECT portfolio_id, min(snapshot_date) AS first FROM portfolio_snapshots "
        "WHERE portfolio_id = ANY($1::uuid[]) AND is_complete GROUP BY portfolio_id",
        list(portfolio_ids),
    )
    return {r["portfolio_id"]: r["first"] for r in rows}


async def restatement_dates(
    conn: asyncpg.Connection, day: dt.date, portfolio_ids: Sequence[uuid.UUID]
) -> list[dt.date]:
    """`day`, then every later date that is a batch date or holds a complete snapshot of one
    of `portfolio_ids` (an explicit snapshot between batch dates), in order."""
    rows = await conn.fetch(
        """
        SELECT batch_date AS d FROM symbol_batch_dates WHERE batch_date > $1
        UNION
        SELECT snapshot_date FROM portfolio_snapshots
        WHERE portfolio_id = ANY($2::uuid[]) AND snapshot_date > $1 AND is_complete
        ORDER BY 1
        """,
        day,
        list(portfolio_ids),
    )
    return [day, *[r["d"] for r in rows]]


async def latest_price_date(conn: asyncpg.Connection, portfolio_id: uuid.UUID) -> dt.date | None:
    """The last date with a quote for any symbol the portfolio needs (onboarding's default)."""
    return await conn.fetchval(
        """
        SELECT max(m.date) FROM market_data_cache m
        WHERE m.symbol IN (
            SELECT symbol FROM positions WHERE portfolio_id = $1
            UNION SELECT underlying_symbol FROM positions
                  WHERE portfolio_id = $1 AND underlying_symbol IS NOT NULL)
        """,
        portfolio_id,
    ) or await conn.fetchval("SELECT max(batch_date) FROM symbol_batch_dates")


# --------------------------------------------------------------------------- slots


async def claim_slots(
    conn: asyncpg.Connection,
    day: dt.date,
    portfolio_ids: Sequence[uuid.UUID],
    *,
    skip_if_later: bool,
    require_holdings: bool = True,
    restate_degraded_before: dt.datetime | None = None,
    restate: bool = False,
) -> list[uuid.UUID]:
    """Claim the (portfolio, day) slots of this transaction; returns the ones it owns.

    `restate` re-claims complete slots too (a restatement recomputes them in place).

    A new slot is inserted with is_complete=false; a half slot left incomplete is re-claimed
    (redone); a complete one is skipped, unless it is degraded (made with missing inputs) and
    was completed before `restate_degraded_before`: then it is redone (restated). The inserted/updated rows stay locked until commit,
    so a concurrent claimer of the same slot waits and then sees it complete. Rows are taken
    in portfolio-id order, so two overlapping claimers lock in the same order (no deadlock).
    """
    rows = await conn.fetch(
        """
        INSERT INTO portfolio_snapshots AS s (id, portfolio_id, snapshot_date, is_complete)
        SELECT gen_random_uuid(), p.id, $2, false
        FROM portfolios p
        WHERE p.id = ANY($1::uuid[]) AND p.is_active
          AND (NOT $3 OR NOT EXISTS (
                SELECT 1 FROM portfolio_snapshots l
                WHERE l.portfolio_id = p.id AND l.snapshot_date > $2 AND l.is_complete))
          AND (NOT $4 OR EXISTS (
                SELECT 1 FROM positions x WHERE x.portfolio_id = p.id AND x.entry_date <= $2))
        ORDER BY p.id
        ON CONFLICT (portfolio_id, snapshot_date)
        DO UPDATE SET claimed_at = now()
        WHERE s.is_complete = false OR $6 OR (s.is_degraded AND s.completed_at < $5)
        RETURNING s.portfolio_id
        """,
        list(portfolio_ids),
        day,
        skip_if_later,
        require_holdings,
        restate_degraded_before,
        restate,
    )
    return sorted(r["portfolio_id"] for r in rows)


# --------------------------------------------------------------------------- reads


async def load_chunk(
    conn: asyncpg.Connection, day: dt.date, portfolio_ids: Sequence[uuid.UUID]
) -> ChunkInputs:
    """Portfolios, positions, previous snapshots, flows, prices and betas: six queries."""
    ids = list(portfolio_ids)
    portfolios = _frame(
        await conn.fetch(
            "SELECT id AS portfolio_id, equity_balance FROM portfolios WHERE id = ANY($1::uuid[])",
            ids,
        ),
        ["portfolio_id", "equity_balance"],
    )
    previous = _frame(
        await conn.fetch(
            """
            SELECT DISTINCT ON (portfolio_id) portfolio_id, snapshot_date, equity, cumulative_pnl
            FROM portfolio_snapshots
            WHERE portfolio_id = ANY($1::uuid[]) AND snapshot_date < $2 AND is_complete
            ORDER BY portfolio_id, snapshot_date DESC
            """,
            ids,
            day,
        ),
        ["portfolio_id", "snapshot_date", "equity", "cumulative_pnl"],
    )
    # Every base date lies in [earliest previous snapshot (or day), day].
    earliest_base = min([day, *previous["snapshot_date"].tolist()])
    positions = _frame(
        await conn.fetch(
            """
            SELECT id, portfolio_id, symbol, quantity::float8, entry_price::float8, entry_date,
                   exit_date, exit_price::float8, investment_class, investment_subtype,
                   underlying_symbol, strike_price::float8, expiration_date, option_type,
                   manual_value::float8
            FROM positions
            WHERE portfolio_id = ANY($1::uuid[]) AND entry_date <= $2
              AND (exit_date IS NULL OR exit_date > $3)
            """,
            ids,
            day,
            earliest_base,
        ),
        POSITION_FRAME_COLUMNS,
    )
    flows = _frame(
        await conn.fetch(
            """
            SELECT portfolio_id, flow_date, amount FROM capital_flows
            WHERE portfolio_id = ANY($1::uuid[]) AND flow_date <= $2 AND flow_date >= $3
            """,
            ids,
            day,
            earliest_base,
        ),
        ["portfolio_id", "flow_date", "amount"],
    )
    symbols = sorted(set(positions["symbol"].dropna()) | set(positions["underlying_symbol"].dropna()))
    underlyings = sorted(set(positions["underlying_symbol"].dropna()))
    expired = positions.loc[
        positions["underlying_symbol"].notna()
        & positions["expiration_date"].notna()
        & (positions["expiration_date"] < earliest_base),
        ["underlying_symbol", "expiration_date"],
    ].drop_duplicates()
    prices = _frame(
        await conn.fetch(
            """
            WITH wanted AS (SELECT unnest($1::text[]) AS symbol)
            SELECT m.symbol, m.date, m.close
            FROM market_data_cache m JOIN wanted w ON w.symbol = m.symbol
            WHERE m.date >= $2 AND m.date <= $3
            UNION ALL
            SELECT w.symbol, l.date, l.close
            FROM wanted w CROSS JOIN LATERAL (
                SELECT date, close FROM market_data_cache
                WHERE symbol = w.symbol AND date < $2 ORDER BY date DESC LIMIT 1) l
            UNION ALL
            SELECT m.symbol, m.date, m.close FROM market_data_cache m
            WHERE m.symbol = ANY($4::text[]) AND m.date < $2 AND m.date >= $5
            UNION ALL
            -- an option that expired before the window is worth its intrinsic value at expiry
            SELECT e.symbol, l.date, l.close
            FROM unnest($6::text[], $7::date[]) AS e(symbol, expiry)
            CROSS JOIN LATERAL (
                SELECT date, close FROM market_data_cache
                WHERE symbol = e.symbol AND date <= e.expiry ORDER BY date DESC LIMIT 1) l
            """,
            symbols,
            earliest_base,
            day,
            underlyings,
            earliest_base - dt.timedelta(days=VOL_HISTORY_DAYS),
            expired["underlying_symbol"].tolist(),
            expired["expiration_date"].tolist(),
        ),
        ["symbol", "date", "price"],
    )
    beta_rows = _frame(
        await conn.fetch(
            """
            -- all of a symbol's betas from one date: its latest <= the day (within the age)
            WITH latest AS (
                SELECT symbol, max(calculation_date) AS d FROM symbol_factor_exposures
                WHERE symbol = ANY($1::text[]) AND calculation_date <= $2
                  AND calculation_date >= $3
                GROUP BY symbol)
            SELECT e.symbol, e.factor_name, e.beta, e.calculation_date
            FROM symbol_factor_exposures e JOIN latest l
              ON e.symbol = l.symbol AND e.calculation_date = l.d
            """,
            symbols,
            day,
            day - dt.timedelta(days=BETA_MAX_AGE_DAYS),
        ),
        ["symbol", "factor_name", "beta", "calculation_date"],
    )
    betas = beta_rows.loc[:, ["symbol", "factor_name", "beta"]]
    beta_dates = dict(
        zip(beta_rows["symbol"].tolist(), beta_rows["calculation_date"].tolist(), strict=True)
    )
    return ChunkInputs(portfolios, positions, previous, flows, prices, betas, beta_dates)


def _frame(rows: list[asyncpg.Record], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame.from_records([tuple(r) for r in rows], columns=columns)


# --------------------------------------------------------------------------- writes


async def complete_snapshots(
    conn: asyncpg.Connection, day: dt.date, records: list[dict[str, Any]]
) -> int:
    """Fill the claimed slots and mark them complete (one UPDATE ... FROM unnest)."""
    if not records:
        return 0
    col = {k: [r[k] for r in records] for k in records[0]}
    result = await conn.execute(
        """
        UPDATE portfolio_snapshots s SET
            equity = u.equity, total_value = u.total_value, long_value = u.long_value,
            short_value = u.short_value, gross_exposure = u.gross_exposure,
            net_exposure = u.net_exposure, daily_pnl = u.daily_pnl,
            daily_unrealized_pnl = u.daily_unrealized_pnl,
            daily_realized_pnl = u.daily_realized_pnl, daily_return = u.daily_return,
            cumulative_pnl = u.cumulative_pnl, capital_flow = u.capital_flow,
            position_count = u.position_count, has_stale_prices = u.has_stale_prices,
            stale_symbols = ARRAY(SELECT jsonb_array_elements_text(u.stale_symbols::jsonb)),
            has_model_prices = u.has_model_prices, details = u.details::jsonb,
            equity_source = u.equity_source, valuation_adjustment = u.valuation_adjustment,
            exposure_basis = u.exposure_basis, data_quality = u.data_quality::jsonb,
            is_degraded = u.is_degraded,
            is_complete = true, completed_at = now()
        FROM unnest($2::uuid[], $3::numeric[], $4::numeric[], $5::numeric[], $6::numeric[],
                    $7::numeric[], $8::numeric[], $9::numeric[], $10::numeric[], $11::numeric[],
                    $12::numeric[], $13::numeric[], $14::numeric[], $15::int[], $16::bool[],
                    $17::text[], $18::bool[], $19::text[], $20::text[], $21::numeric[],
                    $22::text[], $23::text[], $24::bool[])
             AS u(portfolio_id, equity, total_value, long_value, short_value, gross_exposure,
                  net_exposure, daily_pnl, daily_unrealized_pnl, daily_realized_pnl,
                  daily_return, cumulative_pnl, capital_flow, position_count, has_stale_prices,
                  stale_symbols, has_model_prices, details, equity_source,
                  valuation_adjustment, exposure_basis, data_quality, is_degraded)
        WHERE s.portfolio_id = u.portfolio_id AND s.snapshot_date = $1
        """,
        day,
        col["portfolio_id"],
        col["equity"],
        col["total_value"],
        col["long_value"],
        col["short_value"],
        col["gross_exposure"],
        col["net_exposure"],
        col["daily_pnl"],
        col["daily_unrealized_pnl"],
        col["daily_realized_pnl"],
        col["daily_return"],
        col["cumulative_pnl"],
        col["capital_flow"],
        col["position_count"],
        col["has_stale_prices"],
        [json.dumps(s) for s in col["stale_symbols"]],
        col["has_model_prices"],
        [json.dumps(d) for d in col["details"]],
        col["equity_source"],
        col["valuation_adjustment"],
        col["exposure_basis"],
        [json.dumps(d) for d in col["data_quality"]],
        col["is_degraded"],
    )
    return int(result.split()[-1])


async def _stage(
    conn: asyncpg.Connection, staging: str, staging_columns: str, records: list[tuple[Any, ...]]
) -> None:
    """Fill a transaction-scoped temp table with binary COPY."""
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {staging} ({staging_columns}) ON COMMIT DELETE ROWS"
    )
    await conn.execute(f"TRUNCATE {staging}")
    await conn.copy_records_to_table(staging, records=records)


async def _copy_via_staging(
    conn: asyncpg.Connection,
    staging: str,
    staging_columns: str,
    records: list[tuple[Any, ...]],
    insert_sql: str,
) -> None:
    """COPY float rows into a temp table, then one INSERT ... SELECT rounding money to cents.

    Binary COPY of floats is several times faster than encoding Python Decimals row by row;
    the server casts and rounds (half away from zero, like the Decimal path) in one pass.
    """
    await _stage(conn, staging, staging_columns, records)
    await conn.execute(insert_sql)


async def write_position_snapshots(
    conn: asyncpg.Connection,
    day: dt.date,
    values: pd.DataFrame,
    model_inputs: list[str | None],
    weights: pd.DataFrame | None = None,
    beta_dates: dict[str, dt.date] | None = None,
) -> None:
    """Per-position marks of the claimed portfolios (replacing any left by a half slot).

    With them what the position's factor exposures derive from (the position_factor_exposures
    view): `weights` (`exposures.position_weights`: beta_symbol, exposure_value, weight of the
    held positions with a finite weight) and `beta_dates` (symbol -> date of the betas the
    chunk used). One row per position instead of one per position and factor.
    """
    portfolio_ids = list(pd.unique(values["portfolio_id"]))
    await conn.execute(
        "DELETE FROM position_snapshots WHERE portfolio_id = ANY($1::uuid[]) AND snapshot_date = $2",
        portfolio_ids,
        day,
    )
    if values.empty:
        return
    n = len(values)
    symbol_of = np.full(n, None, dtype=object)
    exposure_of = np.full(n, np.nan)
    weight_of = np.full(n, np.nan)
    if weights is not None and not weights.empty:
        rows = pd.Index(values["position_id"]).get_indexer(weights["position_id"])
        symbol_of[rows] = weights["beta_symbol"].to_numpy(dtype=object)
        exposure_of[rows] = weights["exposure_value"].to_numpy(dtype="float64")
        weight_of[rows] = weights["weight"].to_numpy(dtype="float64")
    date_of = pd.Series(symbol_of, dtype=object).map(beta_dates or {})
    beta_symbol = symbol_of.tolist()
    beta_date = [d if isinstance(d, dt.date) else None for d in date_of.tolist()]
    exposure_value = [None if np.isnan(x) else x for x in exposure_of.tolist()]
    weight = [None if np.isnan(x) else x for x in weight_of.tolist()]
    active = values["is_active"].to_numpy()
    price = np.where(active, values["price"].to_numpy(dtype="float64"), np.nan)
    source = np.where(active, values["price_source"].to_numpy(dtype=object), "exited")
    records = list(
        zip(
            values["position_id"].tolist(),
            values["portfolio_id"].tolist(),
            [None if np.isnan(p) else p for p in price.tolist()],
            source.tolist(),
            values["market_value"].to_numpy(dtype="float64").tolist(),
            values["daily_pnl"].to_numpy(dtype="float64").tolist(),
            values["realized_pnl"].to_numpy(dtype="float64").tolist(),
            values["valuation_adjustment"].to_numpy(dtype="float64").tolist(),
            [None if not a or np.isnan(d) else d
             for d, a in zip(values["delta"].to_numpy(dtype="float64").tolist(), active.tolist(),
                             strict=True)],
            values["is_expired"].astype(bool).tolist(),
            model_inputs,
            beta_symbol,
            beta_date,
            exposure_value,
            weight,
            strict=True,
        )
    )
    await _copy_via_staging(
        conn,
        "refresh_position_values",
        "position_id uuid, portfolio_id uuid, price float8, price_source text, "
        "market_value float8, daily_pnl float8, realized_pnl float8, "
        "valuation_adjustment float8, delta float8, is_expired bool, model_inputs text, "
        "beta_symbol text, beta_date date, exposure_value float8, weight float8",
        records,
        f"""
        INSERT INTO position_snapshots (position_id, snapshot_date, portfolio_id, price,
            price_source, market_value, daily_pnl, realized_pnl, valuation_adjustment, delta,
            is_expired, model_inputs, beta_symbol, beta_date, exposure_value, weight)
        SELECT position_id, DATE '{day.isoformat()}', portfolio_id, round(price::numeric, 6),
               price_source, round(market_value::numeric, 2), round(daily_pnl::numeric, 2),
               round(realized_pnl::numeric, 2), round(valuation_adjustment::numeric, 2), delta,
               is_expired, model_inputs::jsonb, beta_symbol, beta_date, exposure_value, weight
        FROM refresh_position_values
        """,
    )


async def write_factor_exposures(
    conn: asyncpg.Connection,
    day: dt.date,
    portfolio_ids: Sequence[uuid.UUID],
    portfolio_rows: pd.DataFrame,
) -> None:
    """Portfolio-level exposures of the claimed portfolios for `day`.

    Position-level exposures are not written: the position_factor_exposures view derives
    them from the weights `write_position_snapshots` stores and the symbols' betas.
    """
    await conn.execute(
        "DELETE FROM factor_exposures WHERE portfolio_id = ANY($1::uuid[]) "
        "AND calculation_date = $2",
        list(portfolio_ids),
        day,
    )
    if not portfolio_rows.empty:
        records = list(
            zip(
                portfolio_rows["portfolio_id"].tolist(),
                portfolio_rows["factor_name"].tolist(),
                portfolio_rows["exposure"].to_numpy(dtype="float64").tolist(),
                portfolio_rows["exposure_dollar"].to_numpy(dtype="float64").tolist(),
                strict=True,
            )
        )
        await _copy_via_staging(
            conn,
            "refresh_portfolio_exposures",
            "portfolio_id uuid, factor_name text, exposure float8, exposure_dollar float8",
            records,
            f"""
            INSERT INTO factor_exposures (portfolio_id, calculation_date, factor_name, exposure,
                exposure_dollar)
            SELECT portfolio_id, DATE '{day.isoformat()}', factor_name, exposure,
                   round(exposure_dollar::numeric, 2)
            FROM refresh_portfolio_exposures
            """,
        )
