"""Benchmark: risk analytics of 10,000 portfolios x 25 positions for one date, DB included.

Run: `.venv/bin/python -m bench.bench_analytics [--portfolios N] [--naive-sample K]`
(DATABASE_URL defaults to this machine's PostgreSQL; a scratch database is created and dropped.)

Measured in one process on the same data and date:
* analytics (the service's code): per chunk of 500 portfolios, the as-of reads
  (`analytics.repository.load_inputs`: ~300 sessions of closes, profiles, scenarios), the
  vectorised computation (`analytics.chunk.analytics_of_refresh`: Greeks, risk, correlations,
  stress) and the COPY writes of the four tables, each chunk one transaction; the P&L the
  analytics start from is computed beforehand and not timed (that is bench_refresh's figure);
* the whole refresh with analytics (`refresh_portfolios`, 2 chunks in flight) for context;
* a per-portfolio pandas loop computing the same metrics portfolio by portfolio from data
  already in memory (a generous baseline: no database time), timed on a sample and
  extrapolated linearly.
Goal (issue 10): analytics <= 10 s and >= 50x the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import time
import uuid
from decimal import Decimal

import asyncpg
import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from bench.bench_refresh import create_database, drop_database
from libs.common import pnl
from libs.common.analytics import repository as analytics_repo
from libs.common.analytics.chunk import analytics_of_refresh
from libs.common.analytics.stress import CONDITIONING_FACTORS, shock_as_return
from libs.common.db import asyncpg_dsn, dispose_engines, raw_connection, session_scope
from libs.common.factor_definitions import seed_factor_definitions
from libs.common.factors import ALL_FACTORS, FACTOR_ETFS
from libs.common.migrate import upgrade
from libs.common.snapshots import repository as repo
from libs.common.snapshots.refresh import compute_chunk, refresh_portfolios
from services.portfolio_refresh.handlers import plan_chunks

N_SYMBOLS = 1_000
N_UNDERLYINGS = 50
SESSIONS = 300
DAYS = [d.date() for d in pd.bdate_range("2024-09-02", periods=SESSIONS)]
DAY = DAYS[-1]
SECTORS = ["Technology", "Healthcare", "Financials", "Energy", "Industrials", "Utilities"]


async def seed(url: str, n_portfolios: int) -> list[uuid.UUID]:
    rng = np.random.default_rng(7)
    async with session_scope(url) as session:
        await seed_factor_definitions(session)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        symbols = [f"S{i:04d}" for i in range(N_SYMBOLS)]
        everything = symbols + list(FACTOR_ETFS)
        market = rng.normal(0.0003, 0.01, SESSIONS)
        loads = rng.normal(1.0, 0.3, len(everything))
        rets = loads[:, None] * market[None, :] + rng.normal(0, 0.012, (len(everything), SESSIONS))
        paths = (20 + 200 * rng.random(len(everything)))[:, None] * np.exp(np.cumsum(rets, axis=1))
        await conn.copy_records_to_table(
            "market_data_cache", columns=["symbol", "date", "close", "adj_close", "source"],
            records=[(everything[i], DAYS[j], float(paths[i, j]), float(paths[i, j]), "bench")
                     for i in range(len(everything)) for j in range(SESSIONS)])
        await conn.copy_records_to_table(
            "symbol_factor_exposures",
            columns=["symbol", "factor_name", "calculation_date", "beta", "n_obs", "quality"],
            records=[(s, f, DAY, float(rng.normal(1 if f == "market" else 0, 0.4)), 90, "full")
                     for s in everything for f in ALL_FACTORS])
        await conn.copy_records_to_table(
            "company_profiles", columns=["symbol", "sector", "beta"],
            records=[(s, SECTORS[i % len(SECTORS)], float(rng.normal(1, 0.3)))
                     for i, s in enumerate(symbols)])
        user = uuid.uuid4()
        await conn.execute("INSERT INTO users (id, username) VALUES ($1, 'bench')", user)
        ids = sorted(uuid.uuid4() for _ in range(n_portfolios))
        await conn.copy_records_to_table(
            "portfolios", columns=["id", "user_id", "name", "equity_balance"],
            records=[(p, user, f"bench {i}", Decimal(1_000_000)) for i, p in enumerate(ids)])
        positions = []
        entry = DAYS[-30]
        for p in ids:
            picks = rng.choice(N_SYMBOLS, size=23, replace=False)
            for k, idx in enumerate(picks):
                qty = Decimal(int(rng.integers(1, 500))) * (-1 if k == 22 else 1)
                positions.append((uuid.uuid4(), p, symbols[idx], qty, Decimal("100.00"), entry,
                                  "PUBLIC", None, None, None, None, 1))
            under = symbols[int(rng.integers(0, N_UNDERLYINGS))]
            strike = Decimal(int(rng.integers(20, 300)))
            positions.append((uuid.uuid4(), p, f"{under}_C{strike}", Decimal(int(rng.integers(1, 20))),
                              Decimal("5.00"), entry, "OPTIONS", under, strike,
                              DAY + dt.timedelta(days=200), "CALL", 100))
            positions.append((uuid.uuid4(), p, "PRIVATE_FUND_X", Decimal(1), Decimal("250000"),
                              entry, "PRIVATE", None, None, None, None, 1))
        await conn.copy_records_to_table(
            "positions",
            columns=["id", "portfolio_id", "symbol", "quantity", "entry_price", "entry_date",
                     "investment_class", "underlying_symbol", "strike_price", "expiration_date",
                     "option_type", "multiplier"],
            records=positions)
        await conn.copy_records_to_table(
            "symbol_batch_dates", columns=["batch_date", "status", "symbols_total"],
            records=[(DAY, "completed", N_SYMBOLS)])
        await conn.execute("ANALYZE")
        return ids
    finally:
        await conn.close()


async def analytics_only(url: str, ids: list[uuid.UUID], chunk_size: int) -> tuple[float, dict]:
    """Time the analytics of every chunk (reads + compute + writes), P&L done beforehand."""
    params = pnl.PricingParams()
    phases = {"read": 0.0, "compute": 0.0, "write": 0.0, "cpu": 0.0,
              "cpu_read": 0.0, "cpu_compute": 0.0, "cpu_write": 0.0}
    total = 0.0
    analytics_repo._CACHE.__init__()  # a cold cache, as a fresh process has
    for chunk in plan_chunks(ids, chunk_size):
        async with session_scope(url) as session:
            conn = await raw_connection(session)
            inputs = await repo.load_chunk(conn, DAY, chunk)
            result = (await asyncio.to_thread(compute_chunk, DAY, inputs, params))[0]
            t0 = time.perf_counter()
            c0 = time.process_time()
            as_of = await analytics_repo.load_inputs(conn, DAY, inputs.positions, inputs.betas)
            t1 = time.perf_counter()
            c1 = time.process_time()
            out = await asyncio.to_thread(analytics_of_refresh, result, inputs.positions, as_of,
                                          params)
            t2 = time.perf_counter()
            c2 = time.process_time()
            await analytics_repo.write_analytics(conn, DAY, chunk, out)
        t3 = time.perf_counter()  # commit included
        c3 = time.process_time()
        phases["cpu"] += c3 - c0
        phases["cpu_read"] += c1 - c0
        phases["cpu_compute"] += c2 - c1
        phases["cpu_write"] += c3 - c2
        phases["read"] += t1 - t0
        phases["compute"] += t2 - t1
        phases["write"] += t3 - t2
        total += t3 - t0
    return total, phases


async def whole_refresh(url: str, ids: list[uuid.UUID], chunk_size: int) -> tuple[int, float]:
    started = time.perf_counter()
    queue: asyncio.Queue[list[uuid.UUID]] = asyncio.Queue()
    for chunk in plan_chunks(ids, chunk_size):
        queue.put_nowait(chunk)
    made = 0

    async def worker() -> None:
        nonlocal made
        while not queue.empty():
            outcomes = await refresh_portfolios(url, DAY, queue.get_nowait(), pnl.PricingParams())
            made += sum(o.snapshots for o in outcomes)

    await asyncio.gather(worker(), worker())
    return made, time.perf_counter() - started


def naive_one(holdings: pd.DataFrame, equity: float, returns: pd.DataFrame,
              betas: pd.DataFrame, sectors: pd.Series, shocks: list[dict]) -> dict:
    """One portfolio's analytics, the obvious pandas way."""
    held = holdings.set_index("risk_symbol")["exposure"].dropna()
    held = held[held.index.isin(returns.columns)]
    series = (returns[held.index] * held).sum(axis=1) / equity
    out = {"vol21": series.iloc[-21:].std() * np.sqrt(252),
           "vol63": series.iloc[-63:].std() * np.sqrt(252),
           "ewma": np.sqrt((series.iloc[-252:] ** 2).ewm(alpha=0.06).mean().iloc[-1] * 252)}
    rolling = series.rolling(21).std().iloc[-252:]
    out["pct"] = (rolling <= rolling.iloc[-1]).mean()
    frame = pd.DataFrame({"y": series, "x": returns["SPY"]}).iloc[-90:].dropna()
    out["beta"] = frame.cov().loc["x", "y"] / frame["x"].var()
    gross = holdings.groupby("symbol")["market_value"].sum().abs()
    w = gross / gross.sum()
    out["hhi"] = (w ** 2).sum()
    out["top3"] = w.nlargest(3).sum()
    out["sectors"] = holdings.assign(sector=holdings["risk_symbol"].map(sectors)).groupby(
        "sector")["exposure"].agg(["sum", lambda s: s.abs().sum()])
    public = holdings[holdings["is_public"]].groupby("symbol")["market_value"].sum()
    window = returns[public.index].iloc[-90:]
    corr = window.corr(min_periods=30).fillna(0.0).to_numpy()
    values, vectors = np.linalg.eigh(corr)
    fixed = vectors @ np.diag(np.clip(values, 0, None)) @ vectors.T
    d = np.sqrt(np.diag(fixed))
    fixed = fixed / np.outer(d, d)
    dist = squareform(np.clip(1 - fixed, 0, None), checks=False)
    out["clusters"] = fcluster(linkage(dist, "single"), 0.3, "distance")
    factor_dollars = (betas.reindex(holdings["risk_symbol"]).fillna(0.0).to_numpy()
                      * holdings["exposure"].fillna(0.0).to_numpy()[:, None]).sum(axis=0)
    out["stress"] = [float(sum(factor_dollars[betas.columns.get_loc(f)] * shock_as_return(f, v)
                               for f, v in s.items() if f in betas.columns)) for s in shocks]
    return out


async def naive_loop(url: str, ids: list[uuid.UUID], sample: int) -> float:
    """Seconds per portfolio of the pandas loop (inputs loaded once, not timed)."""
    params = pnl.PricingParams()
    chunk = ids[:sample]
    async with session_scope(url) as session:
        conn = await raw_connection(session)
        inputs = await repo.load_chunk(conn, DAY, chunk)
        result = compute_chunk(DAY, inputs, params)[0]
        as_of = await analytics_repo.load_inputs(conn, DAY, inputs.positions, inputs.betas)
        await conn.execute("ROLLBACK; BEGIN")
    full = analytics_of_refresh(result, inputs.positions, as_of, params)  # for the holdings
    from libs.common.analytics.chunk import holdings_frame, option_greeks
    from libs.common.factors import daily_returns

    values = result.positions
    holdings = holdings_frame(values, option_greeks(values, as_of.closes, params))
    returns = daily_returns(as_of.closes)
    betas = as_of.betas.pivot_table(index="symbol", columns="factor_name", values="beta")
    betas = betas.reindex(columns=list(CONDITIONING_FACTORS))
    sectors = as_of.profiles.set_index("symbol")["sector"]
    shocks = list(as_of.scenarios["shocks"])
    equity = dict(zip(full.risk["portfolio_id"], full.risk["equity"], strict=True))
    groups = dict(tuple(holdings.groupby("portfolio_id")))
    started = time.perf_counter()
    cpu = time.process_time()
    for pid in list(groups)[:sample]:
        naive_one(groups[pid], equity[pid], returns, betas, sectors, shocks)
    done = min(sample, len(groups))
    print(f"  pandas loop CPU {(time.process_time() - cpu) / done * 1000:.1f} ms/portfolio")
    return (time.perf_counter() - started) / done


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--portfolios", type=int, default=10_000)
    parser.add_argument("--naive-sample", type=int, default=200)
    parser.add_argument("--chunk-size", type=int, default=500)
    args = parser.parse_args()
    admin = os.environ.get("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    url = await create_database(admin)
    try:
        await asyncio.to_thread(upgrade, url)
        t0 = time.perf_counter()
        ids = await seed(url, args.portfolios)
        print(f"seeded {len(ids):,} portfolios x 25 positions, {N_SYMBOLS:,} symbols x "
              f"{SESSIONS} sessions in {time.perf_counter() - t0:.1f} s")
        seconds, phases = await analytics_only(url, ids, args.chunk_size)
        print(f"analytics (reads + compute + writes, {args.chunk_size}/chunk): {seconds:.2f} s "
              f"= read {phases['read']:.2f} + compute {phases['compute']:.2f} + write "
              f"{phases['write']:.2f}; this process's CPU {phases['cpu']:.2f} s (read "
              f"{phases['cpu_read']:.2f} + compute {phases['cpu_compute']:.2f} + write "
              f"{phases['cpu_write']:.2f}: the database server's CPU not included); load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        made, whole = await whole_refresh(url, ids, args.chunk_size)
        print(f"whole refresh with analytics (snapshots {made:,}, 2 chunks in flight): "
              f"{whole:.2f} s")
        per = await naive_loop(url, ids, args.naive_sample)
        naive = per * len(ids)
        print(f"per-portfolio pandas loop: {per * 1000:.1f} ms/portfolio on {args.naive_sample} "
              f"portfolios, extrapolated to {len(ids):,}: {naive:.1f} s (data in memory)")
        print(f"SUMMARY analytics {seconds:.2f} s for {len(ids):,} portfolios (goal <= 10 s), "
              f"{naive / seconds:.0f}x the pandas loop (goal >= 50x)")
    finally:
        await dispose_engines()
        await drop_database(admin, url)


if __name__ == "__main__":
    asyncio.run(main())
