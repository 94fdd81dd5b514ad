"""Benchmark: one date's refresh of 10,000 portfolios x 25 positions, DB reads and writes included.

Run: `.venv/bin/python -m bench.bench_refresh [--portfolios N] [--naive-sample K]`
(DATABASE_URL defaults to this machine's PostgreSQL; a scratch database is created and dropped.)

Both contenders run in the same process on the same data and date:
* set-based: `libs.common.snapshots.refresh.refresh_portfolios` chunk by chunk (the
  service's own code path: claim slots, six bulk reads, vectorised P&L and exposures, COPY
  writes, complete), 2 chunks in flight like two replicas;
* naive: the obvious ORM loop, per portfolio and per position (load positions, query today's
  and the previous price and the betas per position, add ORM rows, commit per portfolio),
  timed on a sample of portfolios and extrapolated linearly to all of them (it is linear:
  every portfolio costs the same queries), which the output says.
Goal (issue 13): set-based <= 15 s and >= 50x faster than the loop (issue 4 had <= 30 s,
>= 20x). Since migration 0009 position-level factor exposures are a view (no rows written):
the ORM loop writes what the schema now needs too (the weight columns of the position
snapshot and the portfolio's factor_exposures rows).
`--without-analytics` skips the risk-analytics step of the refresh (bench only: it patches
`refresh.analytics_of_refresh` / the analytics writes out) to time snapshots and exposures
alone, as earlier measurements did.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import os
import time
import uuid
from decimal import ROUND_HALF_UP, Decimal

import asyncpg
import numpy as np
import pandas as pd
from sqlalchemy import select

from libs.common import pnl
from libs.common.db import (
    asyncpg_dsn,
    dispose_engines,
    normalize_url,
    raw_connection,
    session_scope,
)
from libs.common.factor_definitions import seed_factor_definitions
from libs.common.factors import ALL_FACTORS
from libs.common.migrate import upgrade
from libs.common.models import (
    FactorExposure,
    MarketDataCache,
    Portfolio,
    PortfolioSnapshot,
    Position,
    PositionSnapshot,
    SymbolFactorExposure,
)
from libs.common.snapshots import repository as repo
from libs.common.snapshots.refresh import refresh_portfolios
from services.portfolio_refresh.handlers import plan_chunks

N_SYMBOLS = 1_000
N_UNDERLYINGS = 50
HISTORY_DAYS = 100
POSITIONS_PER_PORTFOLIO = 25
DAYS = [d.date() for d in pd.bdate_range("2025-01-02", periods=HISTORY_DAYS)]
PREV_DAY, DAY = DAYS[-2], DAYS[-1]
CENT = Decimal("0.01")


# --------------------------------------------------------------------------- data


async def create_database(admin_url: str) -> str:
    name = f"bench_refresh_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    base = normalize_url(admin_url)
    head, _, tail = base.rpartition("/")
    query = ""
    if "?" in tail:
        tail, query = tail.split("?", 1)
        query = "?" + query
    return f"{head}/{name}{query}"


async def drop_database(admin_url: str, url: str) -> None:
    name = normalize_url(url).rsplit("/", 1)[1].split("?")[0]
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


async def seed(url: str, n_portfolios: int) -> list[uuid.UUID]:
    """Prices, betas, portfolios and positions: 22 long stocks, 1 short, 1 option, 1 private."""
    rng = np.random.default_rng(42)
    async with session_scope(url) as session:
        await seed_factor_definitions(session)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        symbols = [f"S{i:04d}" for i in range(N_SYMBOLS)]
        paths = 20 + 200 * rng.random(N_SYMBOLS)[:, None] * np.exp(
            np.cumsum(rng.normal(0, 0.015, (N_SYMBOLS, HISTORY_DAYS)), axis=1)
        )
        missing = rng.random((N_SYMBOLS, HISTORY_DAYS)) < 0.002  # a few stale quotes
        missing[:, 0] = False
        records = [
            (symbols[i], DAYS[j], float(paths[i, j]), float(paths[i, j]), "bench")
            for i in range(N_SYMBOLS)
            for j in range(HISTORY_DAYS)
            if not missing[i, j]
        ]
        await conn.copy_records_to_table(
            "market_data_cache", columns=["symbol", "date", "close", "adj_close", "source"],
            records=records,
        )
        await conn.copy_records_to_table(
            "symbol_factor_exposures",
            columns=["symbol", "factor_name", "calculation_date", "beta", "n_obs", "quality"],
            records=[(s, f, d, float(rng.normal(1, 0.4)), 90, "full")
                     for s in symbols for f in ALL_FACTORS for d in (PREV_DAY, DAY)],
        )
        user = uuid.uuid4()
        await conn.execute("INSERT INTO users (id, username) VALUES ($1, 'bench')", user)
        ids = sorted(uuid.uuid4() for _ in range(n_portfolios))
        await conn.copy_records_to_table(
            "portfolios", columns=["id", "user_id", "name", "equity_balance"],
            records=[(p, user, f"bench {i}", Decimal(1_000_000)) for i, p in enumerate(ids)],
        )
        positions = []
        entry = DAYS[-30]
        for p in ids:
            picks = rng.choice(N_SYMBOLS, size=23, replace=False)
            for k, idx in enumerate(picks):
                qty = Decimal(int(rng.integers(1, 500))) * (-1 if k == 22 else 1)
                exit_date, exit_price = (None, None)
                if k == 21 and rng.random() < 0.05:
                    exit_date, exit_price = DAY, Decimal("100.00")
                positions.append((uuid.uuid4(), p, symbols[idx], qty, Decimal("100.00"), entry,
                                  exit_date, exit_price, "PUBLIC", None, None, None, None, 1))
            under = symbols[int(rng.integers(0, N_UNDERLYINGS))]
            strike = Decimal(int(rng.integers(20, 300)))
            positions.append((uuid.uuid4(), p, f"{under}_C{strike}", Decimal(int(rng.integers(1, 20))),
                              Decimal("5.00"), entry, None, None, "OPTIONS", under, strike,
                              dt.date(2025, 12, 19), "CALL", 100))
            positions.append((uuid.uuid4(), p, "PRIVATE_FUND_X", Decimal(1), Decimal("250000"),
                              entry, None, None, "PRIVATE", None, None, None, None, 1))
        await conn.copy_records_to_table(
            "positions",
            columns=["id", "portfolio_id", "symbol", "quantity", "entry_price", "entry_date",
                     "exit_date", "exit_price", "investment_class", "underlying_symbol",
                     "strike_price", "expiration_date", "option_type", "multiplier"],
            records=positions,
        )
        await conn.copy_records_to_table(
            "symbol_batch_dates", columns=["batch_date", "status", "symbols_total"],
            records=[(d, "completed", N_SYMBOLS) for d in (PREV_DAY, DAY)],
        )
        await conn.execute("ANALYZE")
        return ids
    finally:
        await conn.close()


# --------------------------------------------------------------------------- set-based


async def set_based(url: str, day: dt.date, chunk_size: int, in_flight: int) -> tuple[int, float]:
    started = time.perf_counter()
    async with session_scope(url) as session:
        conn = await raw_connection(session)
        eligible = await repo.eligible_portfolios(conn, day, dt.datetime.now(dt.UTC))
    chunks = plan_chunks(eligible, chunk_size)
    queue: asyncio.Queue[list[uuid.UUID]] = asyncio.Queue()
    for chunk in chunks:
        queue.put_nowait(chunk)
    made = 0

    async def worker() -> None:
        nonlocal made
        while not queue.empty():
            ids = queue.get_nowait()
            outcomes = await refresh_portfolios(url, day, ids, pnl.PricingParams())
            made += sum(o.snapshots for o in outcomes)

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return made, time.perf_counter() - started


# --------------------------------------------------------------------------- naive


def _bs_call_put(spot: float, strike: float, years: float, rate: float, vol: float,
                 is_call: bool) -> float:
    if years <= 0:
        return max(spot - strike, 0.0) if is_call else max(strike - spot, 0.0)
    d1 = (math.log(spot / strike) + (rate + vol * vol / 2) * years) / (vol * math.sqrt(years))
    d2 = d1 - vol * math.sqrt(years)
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    if is_call:
        return spot * cdf(d1) - strike * math.exp(-rate * years) * cdf(d2)
    return strike * math.exp(-rate * years) * cdf(-d2) - spot * cdf(-d1)


async def _last_price(session, symbol: str, on_or_before: dt.date) -> float | None:
    row = (
        await session.execute(
            select(MarketDataCache.close)
            .where(MarketDataCache.symbol == symbol, MarketDataCache.date <= on_or_before)
            .order_by(MarketDataCache.date.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    return row


async def naive(url: str, day: dt.date, portfolio_ids: list[uuid.UUID]) -> tuple[int, float]:
    """The per-portfolio, per-position ORM loop (one commit per portfolio)."""
    started = time.perf_counter()
    made = 0
    for pid in portfolio_ids:
        async with session_scope(url) as session:
            portfolio = await session.get(Portfolio, pid)
            prev = (
                await session.execute(
                    select(PortfolioSnapshot)
                    .where(PortfolioSnapshot.portfolio_id == pid,
                           PortfolioSnapshot.snapshot_date < day,
                           PortfolioSnapshot.is_complete.is_(True))
                    .order_by(PortfolioSnapshot.snapshot_date.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            prev_date = prev.snapshot_date if prev else day
            positions = (
                await session.execute(select(Position).where(Position.portfolio_id == pid))
            ).scalars().all()
            snapshot = PortfolioSnapshot(portfolio_id=pid, snapshot_date=day, is_complete=False)
            session.add(snapshot)
            await session.flush()
            total = long_v = short_v = pnl_sum = Decimal(0)
            count = 0
            values = []
            for pos in positions:
                if pos.entry_date > day or (pos.exit_date is not None and pos.exit_date <= prev_date):
                    continue
                mult = Decimal(pos.multiplier)
                if pos.investment_class == "PRIVATE":
                    price = base = float(pos.entry_price)
                elif pos.investment_class == "OPTIONS":
                    spot = await _last_price(session, pos.underlying_symbol, day)
                    spot_prev = await _last_price(session, pos.underlying_symbol, prev_date)
                    years = (pos.expiration_date - day).days / 365
                    years_prev = (pos.expiration_date - prev_date).days / 365
                    k = float(pos.strike_price)
                    price = _bs_call_put(spot, k, years, 0.04, 0.3, pos.option_type == "CALL")
                    base = _bs_call_put(spot_prev, k, years_prev, 0.04, 0.3, pos.option_type == "CALL")
                else:
                    price = await _last_price(session, pos.symbol, day)
                    base = await _last_price(session, pos.symbol, max(prev_date, pos.entry_date))
                qty = pos.quantity * mult
                exited = pos.exit_date is not None and pos.exit_date <= day
                end = pos.exit_price if exited else Decimal(repr(price))
                day_pnl = ((end - Decimal(repr(base))) * qty).quantize(CENT, ROUND_HALF_UP)
                pnl_sum += day_pnl
                mv = Decimal(0) if exited else (Decimal(repr(price)) * qty).quantize(CENT)
                if not exited:
                    count += 1
                    total += mv
                    long_v += max(mv, Decimal(0))
                    short_v += min(mv, Decimal(0))
                row = PositionSnapshot(
                    position_id=pos.id, snapshot_date=day, portfolio_id=pid,
                    price=None if exited else Decimal(repr(price)),
                    price_source="exited" if exited else "market", market_value=mv,
                    daily_pnl=day_pnl, realized_pnl=day_pnl if exited else Decimal(0))
                session.add(row)
                values.append((pos, mv, exited, row))
            equity_prev = prev.equity if prev else portfolio.equity_balance
            equity = equity_prev + pnl_sum
            sums: dict[str, list[float]] = {}
            for pos, mv, exited, row in values:
                if exited or pos.investment_class == "PRIVATE":
                    continue
                beta_symbol = pos.underlying_symbol if pos.investment_class == "OPTIONS" else pos.symbol
                betas = (
                    await session.execute(
                        select(SymbolFactorExposure).where(
                            SymbolFactorExposure.symbol == beta_symbol,
                            SymbolFactorExposure.calculation_date == day)
                    )
                ).scalars().all()
                # the position's exposure inputs (the position_factor_exposures view reads them)
                weight = float(mv / equity)
                row.beta_symbol, row.beta_date = beta_symbol, day
                row.exposure_value, row.weight = float(mv), weight
                for b in betas:
                    acc = sums.setdefault(b.factor_name, [0.0, 0.0])
                    acc[0] += b.beta * weight
                    acc[1] += b.beta * float(mv)
            for factor, (exposure, dollars) in sums.items():
                session.add(FactorExposure(
                    portfolio_id=pid, calculation_date=day, factor_name=factor,
                    exposure=exposure, exposure_dollar=Decimal(repr(dollars)).quantize(CENT)))
            snapshot.equity = equity
            snapshot.total_value = total
            snapshot.long_value = long_v
            snapshot.short_value = short_v
            snapshot.daily_pnl = pnl_sum
            snapshot.position_count = count
            snapshot.is_complete = True
            made += 1
    return made, time.perf_counter() - started


async def clear_day(url: str, day: dt.date) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for table, column in (("factor_exposures", "calculation_date"),
                              ("position_snapshots", "snapshot_date"),
                              ("portfolio_snapshots", "snapshot_date")):
            await conn.execute(f"DELETE FROM {table} WHERE {column} = $1", day)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def table_counts(url: str, day: dt.date) -> dict[str, int]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return {
            "portfolio_snapshots": await conn.fetchval(
                "SELECT count(*) FROM portfolio_snapshots WHERE snapshot_date = $1 AND is_complete", day),
            "position_snapshots": await conn.fetchval(
                "SELECT count(*) FROM position_snapshots WHERE snapshot_date = $1", day),
            "position_factor_exposures": await conn.fetchval(
                "SELECT count(*) FROM position_factor_exposures WHERE calculation_date = $1", day),
            "factor_exposures": await conn.fetchval(
                "SELECT count(*) FROM factor_exposures WHERE calculation_date = $1", day),
        }
    finally:
        await conn.close()


# --------------------------------------------------------------------------- main


def skip_analytics() -> None:
    """Patch the refresh's analytics step out (bench only, see the module docstring)."""
    from libs.common.snapshots import refresh as refresh_module

    class _NoAnalytics:
        @staticmethod
        async def load_inputs(*_args: object) -> None:
            return None

        @staticmethod
        async def write_analytics(*_args: object) -> None:
            return None

    refresh_module.analytics_of_refresh = lambda *_args: None  # type: ignore[assignment]
    refresh_module.analytics_repo = _NoAnalytics  # type: ignore[assignment]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--portfolios", type=int, default=10_000)
    parser.add_argument("--naive-sample", type=int, default=100)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--in-flight", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument(
        "--what-if-no-fk-checks", action="store_true",
        help="also time a second set-based run with FK triggers off (session_replication_role="
             "replica): what the schema would cost without FKs on the output tables; NOT the "
             "shipped configuration",
    )
    parser.add_argument(
        "--without-analytics", action="store_true",
        help="skip the refresh's risk-analytics step (snapshots and exposures only)",
    )
    args = parser.parse_args()
    if args.without_analytics:
        skip_analytics()
    admin = os.environ.get("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    url = await create_database(admin)
    try:
        await asyncio.to_thread(upgrade, url)
        t0 = time.perf_counter()
        ids = await seed(url, args.portfolios)
        n_positions = args.portfolios * POSITIONS_PER_PORTFOLIO
        print(f"seeded {args.portfolios:,} portfolios x {POSITIONS_PER_PORTFOLIO} positions "
              f"({n_positions:,}), {N_SYMBOLS:,} symbols x {HISTORY_DAYS} days in "
              f"{time.perf_counter() - t0:.1f}s")
        # the previous day's snapshots (untimed), so the timed date has real daily P&L
        await set_based(url, PREV_DAY, args.chunk_size, args.in_flight)

        sample = ids[: args.naive_sample]
        made_naive, naive_seconds = await naive(url, DAY, sample)
        naive_total = naive_seconds * len(ids) / len(sample)
        await clear_day(url, DAY)

        made, fast_seconds = await set_based(url, DAY, args.chunk_size, args.in_flight)
        counts = await table_counts(url, DAY)
        speedup = naive_total / fast_seconds
        print(f"set-based refresh of {DAY}: {made:,} snapshots in {fast_seconds:.2f}s "
              f"(chunks of {args.chunk_size}, {args.in_flight} in flight) "
              f"= {made / fast_seconds:,.0f} portfolios/s, {n_positions / fast_seconds:,.0f} positions/s")
        print("  rows written: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        print(f"naive ORM loop: {made_naive} portfolios in {naive_seconds:.2f}s "
              f"({naive_seconds / made_naive * 1000:.1f} ms/portfolio); extrapolated linearly to "
              f"{len(ids):,} portfolios: {naive_total:.0f}s (measured on a sample of {len(sample)})")
        goal_time = fast_seconds <= 15
        goal_speed = speedup >= 50
        print(f"speed-up {speedup:.1f}x  | goals: <=15s {'MET' if goal_time else 'MISSED'}, "
              f">=50x {'MET' if goal_speed else 'MISSED'}"
              + ("  (analytics skipped)" if args.without_analytics else ""))
        if args.what_if_no_fk_checks:
            await clear_day(url, DAY)
            name = normalize_url(url).rsplit("/", 1)[1].split("?")[0]
            conn = await asyncpg.connect(asyncpg_dsn(admin))
            await conn.execute(f'ALTER DATABASE "{name}" SET session_replication_role = replica')
            await conn.close()
            await dispose_engines()  # new connections pick the setting up
            made, what_if = await set_based(url, DAY, args.chunk_size, args.in_flight)
            print(f"what-if, FK triggers off (not shipped): {made:,} snapshots in {what_if:.2f}s "
                  f"({fast_seconds / what_if:.1f}x faster than with the FK checks)")
    finally:
        await dispose_engines()
        if not args.keep:
            await drop_database(admin, url)


if __name__ == "__main__":
    asyncio.run(main())
