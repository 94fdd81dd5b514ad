"""Market data writes shared by symbol_batch (nightly, every symbol) and the onboarding worker
(one new symbol): prices, company profiles and symbol betas.

Every write is an idempotent set-based upsert under the caller's session/transaction, so a
redelivered or restarted run rewrites the same rows instead of adding any (price rows that did
not change are not even rewritten: IS DISTINCT FROM). Betas reference factor_definitions, which the
caller seeds first (`libs.common.factor_definitions.seed_factor_definitions`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.db import raw_connection
from libs.common.market_data.base import Profile


def _nullable(values: pd.Series) -> list[Any]:
    """A column as a list with NaN/NaT/None as None (asyncpg's NULL)."""
    return values.astype(object).where(values.notna(), None).tolist()


async def upsert_prices(session: AsyncSession, bars: pd.DataFrame) -> int:
    """Idempotent bulk upsert of daily bars; also advances symbol_universe.last_price_date."""
    if bars.empty:
        return 0
    connection = await raw_connection(session)
    await connection.execute(
        """
        INSERT INTO market_data_cache (symbol, date, open, high, low, close, adj_close, volume,
                                       source)
        SELECT * FROM unnest($1::text[], $2::date[], $3::float8[], $4::float8[], $5::float8[],
                             $6::float8[], $7::float8[], $8::int8[], $9::text[])
        ON CONFLICT (symbol, date) DO UPDATE SET open = EXCLUDED.open, high = EXCLUDED.high,
            low = EXCLUDED.low, close = EXCLUDED.close, adj_close = EXCLUDED.adj_close,
            volume = EXCLUDED.volume, source = EXCLUDED.source, updated_at = now()
        WHERE (market_data_cache.open, market_data_cache.high, market_data_cache.low,
               market_data_cache.close, market_data_cache.adj_close, market_data_cache.volume,
               market_data_cache.source)
              IS DISTINCT FROM
              (EXCLUDED.open, EXCLUDED.high, EXCLUDED.low, EXCLUDED.close, EXCLUDED.adj_close,
               EXCLUDED.volume, EXCLUDED.source)
        """,
        bars["symbol"].tolist(),
        bars["date"].tolist(),
        _nullable(bars["open"].astype(float)),
        _nullable(bars["high"].astype(float)),
        _nullable(bars["low"].astype(float)),
        bars["close"].astype(float).tolist(),
        bars["adj_close"].astype(float).tolist(),
        [None if v is None or pd.isna(v) else int(v) for v in bars["volume"]],
        bars["source"].tolist(),
    )
    latest = bars.groupby("symbol")["date"].max()
    await connection.execute(
        "UPDATE symbol_universe u SET last_price_date = t.d "
        "FROM unnest($1::text[], $2::date[]) AS t(s, d) "
        "WHERE u.symbol = t.s AND (u.last_price_date IS NULL OR u.last_price_date < t.d)",
        latest.index.tolist(),
        latest.tolist(),
    )
    return len(bars)


async def upsert_profiles(
    session: AsyncSession, profiles: Sequence[Profile], as_of: dt.date
) -> None:
    if not profiles:
        return
    connection = await raw_connection(session)
    await connection.execute(
        """
        INSERT INTO company_profiles (symbol, name, sector, industry, exchange, currency,
                                      market_cap, beta, source, as_of)
        SELECT s, n, sec, ind, ex, cur, cap, b, src, $10::date
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                    $7::float8[], $8::float8[], $9::text[]) AS t(s, n, sec, ind, ex, cur, cap, b, src)
        ON CONFLICT (symbol) DO UPDATE SET name = EXCLUDED.name, sector = EXCLUDED.sector,
            industry = EXCLUDED.industry, exchange = EXCLUDED.exchange,
            currency = EXCLUDED.currency, market_cap = EXCLUDED.market_cap, beta = EXCLUDED.beta,
            source = EXCLUDED.source, as_of = EXCLUDED.as_of, updated_at = now()
        """,
        [p.symbol for p in profiles],
        [p.name for p in profiles],
        [p.sector for p in profiles],
        [p.industry for p in profiles],
        [p.exchange for p in profiles],
        [p.currency for p in profiles],
        [p.market_cap for p in profiles],
        [p.beta for p in profiles],
        [p.source for p in profiles],
        as_of,
    )
    await connection.execute(
        "UPDATE symbol_universe u SET asset_type = t.a FROM unnest($1::text[], $2::text[]) "
        "AS t(s, a) WHERE u.symbol = t.s AND u.asset_type IS NULL AND t.a IS NOT NULL",
        [p.symbol for p in profiles],
        [p.asset_type for p in profiles],
    )


async def write_symbol_betas(session: AsyncSession, exposures: pd.DataFrame, day: dt.date) -> int:
    """Upsert one date's betas for every symbol: binary COPY into a temporary table, then one
    INSERT ... SELECT ... ON CONFLICT (idempotent; about twice as fast as unnest arrays)."""
    if exposures.empty:
        return 0
    connection = await raw_connection(session)
    await connection.execute(
        "CREATE TEMP TABLE IF NOT EXISTS symbol_factor_exposures_incoming "
        "(LIKE symbol_factor_exposures INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    await connection.copy_records_to_table(
        "symbol_factor_exposures_incoming",
        columns=["symbol", "factor_name", "calculation_date", "beta", "r2", "n_obs", "quality"],
        records=zip(
            exposures["symbol"].tolist(),
            exposures["factor"].tolist(),
            [day] * len(exposures),
            exposures["beta"].to_numpy(np.float64).tolist(),
            exposures["r2"].to_numpy(np.float64).tolist(),
            exposures["n_obs"].to_numpy(np.int64).tolist(),
            exposures["quality"].tolist(),
            strict=True,
        ),
    )
    await connection.execute(
        """
        INSERT INTO symbol_factor_exposures (symbol, factor_name, calculation_date, beta, r2,
                                             n_obs, quality)
        SELECT symbol, factor_name, calculation_date, beta, r2, n_obs, quality
        FROM symbol_factor_exposures_incoming
        ON CONFLICT (symbol, factor_name, calculation_date) DO UPDATE SET
            beta = EXCLUDED.beta, r2 = EXCLUDED.r2, n_obs = EXCLUDED.n_obs,
            quality = EXCLUDED.quality
        """
    )
    await connection.execute("TRUNCATE symbol_factor_exposures_incoming")
    return len(exposures)
