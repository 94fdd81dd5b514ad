"""Benchmark: the factor phase for 5,000 symbols x 12 factors on 252 sessions, one date.

Three figures, measured in the same run on the same data:
1. the vectorised engine (libs.common.factors.compute_exposures), all symbols at once;
2. the baseline the original system used: a per-symbol loop of statsmodels OLS fits (market,
   rates, four spreads) and a scikit-learn StandardScaler + Ridge fit (six styles). The loop is
   timed on a sample of symbols and extrapolated linearly to the full count (said so in the
   output); the sample's results are checked equal to the engine's;
3. the whole phase against PostgreSQL: read the 252-session price window of every symbol from
   market_data_cache, compute, upsert the betas into symbol_factor_exposures (in a scratch
   database created on DATABASE_URL's server, or the local one, and dropped afterwards).

Goals: engine >= 50x faster than the loop; whole phase <= 3 s.

    .venv/bin/python -m bench.bench_factors [--symbols 5000] [--loop-sample 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
import warnings
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np
import pandas as pd

from libs.common import calendar, market_store
from libs.common import factors as fx
from libs.common.db import asyncpg_dsn, dispose_engines, normalize_url, session_scope
from libs.common.factor_definitions import seed_factor_definitions
from libs.common.migrate import upgrade
from services.symbol_batch import store

SESSIONS = 252
AS_OF = pd.Timestamp("2025-06-30")
DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def synthetic_prices(n_symbols: int, seed: int = 42) -> pd.DataFrame:
    """Factor-model prices for the factor ETFs and n stocks, with realistic gaps."""
    rng = np.random.default_rng(seed)
    dates = pd.DatetimeIndex(
        calendar.sessions_between(calendar.lookback_start(AS_OF.date(), SESSIONS - 1), AS_OF.date())
    )
    t = len(dates)
    latent = rng.normal(0, [0.011, 0.008, 0.005, 0.006, 0.006, 0.003, 0.004], size=(t, 7))
    etf_loadings = {
        "SPY": [1, 0, 0, 0, 0, 0, 0],
        "TLT": [-0.25, 1, 0, 0, 0, 0, 0],
        "VTV": [0.95, 0, -0.5, 0, 0, 0, 0],
        "VUG": [1.05, 0, 0.5, 0, 0, 0, 0],
        "MTUM": [1, 0, 0, 1, 0, 0, 0],
        "QUAL": [1, 0, 0, 0, 0, 1, 0],
        "IWM": [1.1, 0, 0, 0, 1, 0, 0],
        "USMV": [0.75, 0, 0, 0, 0, 0, 1],
    }
    etf_returns = {
        k: latent @ np.array(v) + rng.normal(0, 0.0008, t) for k, v in etf_loadings.items()
    }
    loadings = rng.normal(0, [0.3, 0.2, 0.5, 0.3, 0.4, 0.3, 0.3], size=(n_symbols, 7))
    loadings[:, 0] += 1.0
    idio = rng.uniform(0.01, 0.025, n_symbols)
    stock_returns = latent @ loadings.T + rng.standard_normal((t, n_symbols)) * idio
    returns = np.column_stack([*etf_returns.values(), stock_returns])
    prices = 50.0 * np.cumprod(1.0 + returns, axis=0)
    names = list(etf_loadings) + [f"S{i:05d}" for i in range(n_symbols)]
    frame = pd.DataFrame(prices, index=dates, columns=names)
    stocks = frame.columns[len(etf_loadings) :]
    holes = rng.random((t, n_symbols)) < 0.01  # 1% missing bars
    frame[stocks] = frame[stocks].mask(holes)
    young = rng.choice(n_symbols, n_symbols // 20, replace=False)  # 5% listed recently
    for i in young:
        frame.iloc[: rng.integers(100, 200), len(etf_loadings) + i] = np.nan
    return frame


def loop_baseline(returns: pd.DataFrame, symbols: list[str]) -> pd.DataFrame:
    """One symbol at a time, one statsmodels / sklearn fit per model: the original approach."""
    import statsmodels.api as sm
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    rows = []
    for symbol in symbols:
        for model in fx.FACTOR_MODELS:
            window = returns.loc[:AS_OF].iloc[-model.window :]
            if model.method == "ridge":
                cols = [r.long for r in model.regressors]
                data = pd.concat([window[symbol].rename("__y"), window[cols]], axis=1).dropna()
                if len(data) < model.min_obs:
                    continue
                scaler = StandardScaler().fit(data[cols].to_numpy())
                x = scaler.transform(data[cols].to_numpy())
                ridge = Ridge(alpha=model.alpha).fit(x, data["__y"].to_numpy())
                r2 = ridge.score(x, data["__y"].to_numpy())
                for reg, beta in zip(model.regressors, ridge.coef_ / scaler.scale_, strict=True):
                    rows.append((symbol, reg.factor, float(np.clip(beta, -5, 5)), r2, len(data)))
                continue
            for reg in model.regressors:
                x = window[reg.long] if reg.short is None else window[reg.long] - window[reg.short]
                data = pd.concat([window[symbol].rename("__y"), x.rename("__x")], axis=1).dropna()
                if len(data) < model.min_obs:
                    continue
                fit = sm.OLS(data["__y"].to_numpy(), sm.add_constant(data["__x"].to_numpy())).fit()
                rows.append(
                    (
                        symbol,
                        reg.factor,
                        float(np.clip(fit.params[1], -5, 5)),
                        fit.rsquared,
                        len(data),
                    )
                )
    return pd.DataFrame(rows, columns=["symbol", "factor", "beta", "r2", "n_obs"])


def timed(fn, repeat: int = 5) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(normalize_url(url))
    return urlunsplit(parts._replace(path=f"/{name}"))


async def database_phase(prices: pd.DataFrame, admin_url: str, repeat: int = 3) -> dict[str, float]:
    """Load prices into a scratch database, then time read + compute + upsert for one date."""
    name = f"bench_factors_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_dsn(admin_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(admin_url, name)
    try:
        await asyncio.to_thread(upgrade, url)
        long = prices.stack().rename("adj_close").reset_index()
        long.columns = ["date", "symbol", "adj_close"]
        connection = await asyncpg.connect(asyncpg_dsn(url))
        try:
            await connection.copy_records_to_table(
                "market_data_cache",
                columns=["symbol", "date", "close", "adj_close", "source"],
                records=zip(
                    long["symbol"],
                    long["date"].dt.date,
                    long["adj_close"],
                    long["adj_close"],
                    ["bench"] * len(long),
                    strict=True,
                ),
            )
            await connection.execute("ANALYZE market_data_cache")
        finally:
            await connection.close()
        async with session_scope(url) as session:
            await seed_factor_definitions(session)
        symbols = list(prices.columns)
        figures: dict[str, list[float]] = {"read": [], "compute": [], "write": [], "total": []}
        rows_read = 0
        # Three successive nights (the last three sessions), each a fresh date to write, as in
        # production. The phase reads the factors' lookback window (181 sessions), not all 252.
        for as_of in prices.index[-repeat:]:
            end = prices.index.get_loc(as_of) + 1
            sessions = pd.DatetimeIndex(prices.index[max(0, end - fx.LOOKBACK_SESSIONS) : end])
            t0 = time.perf_counter()
            async with session_scope(url) as session:
                closes = await store.load_closes(session, symbols, sessions)
            t1 = time.perf_counter()
            exposures = fx.compute_exposures(fx.daily_returns(closes), as_of, symbols)
            t2 = time.perf_counter()
            async with session_scope(url) as session:
                written = await market_store.write_symbol_betas(session, exposures, as_of.date())
            t3 = time.perf_counter()
            for key, value in zip(figures, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                figures[key].append(value)
            rows_read = int(np.isfinite(closes.to_numpy()).sum())
        out = {k: statistics.median(v) for k, v in figures.items()}
        out["rows_read"] = float(rows_read)
        out["rows_written"] = float(written)
        return out
    finally:
        await dispose_engines()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=5000)
    parser.add_argument("--loop-sample", type=int, default=300)
    parser.add_argument("--no-db", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    prices = synthetic_prices(args.symbols)
    returns = fx.daily_returns(prices)
    n_factors = len(fx.ALL_FACTORS)
    print(
        f"data: {args.symbols} symbols + {len(fx.FACTOR_ETFS)} factor ETFs x {len(prices)} sessions, "
        f"{n_factors} factors, as of {AS_OF.date()} (1% missing bars, 5% recent listings)"
    )

    engine_s, exposures = timed(lambda: fx.compute_exposures(returns, AS_OF), repeat=9)
    print(f"vectorised engine:   {engine_s * 1000:8.1f} ms  ({len(exposures)} betas, median of 9)")

    rng = np.random.default_rng(0)
    stock_cols = [c for c in prices.columns if c not in fx.FACTOR_ETFS]
    sample = list(rng.choice(stock_cols, min(args.loop_sample, len(stock_cols)), replace=False))
    start = time.perf_counter()
    baseline = loop_baseline(returns, sample)
    loop_sample_s = time.perf_counter() - start
    loop_full_s = loop_sample_s / len(sample) * (args.symbols + len(fx.FACTOR_ETFS))
    print(
        f"per-symbol loop:     {loop_sample_s:8.2f} s for a sample of {len(sample)} symbols "
        f"(statsmodels OLS x6 + sklearn Ridge x1 per symbol)"
    )
    print(
        f"                     {loop_full_s:8.1f} s extrapolated linearly to "
        f"{args.symbols + len(fx.FACTOR_ETFS)} symbols (the full loop was not run)"
    )
    merged = baseline.merge(exposures, on=["symbol", "factor"], suffixes=("_loop", "_engine"))
    assert len(merged) == len(baseline), "engine and loop disagree on which betas exist"
    max_diff = float(np.max(np.abs(merged.beta_loop - merged.beta_engine)))
    max_r2_diff = float(np.max(np.abs(merged.r2_loop - merged.r2_engine)))
    print(
        f"agreement on the sample: max |beta diff| = {max_diff:.2e}, max |r2 diff| = {max_r2_diff:.2e}"
    )
    speedup = loop_full_s / engine_s
    print(
        f"speed-up engine vs loop: {speedup:,.0f}x  (goal >= 50x: {'met' if speedup >= 50 else 'NOT met'})"
    )

    if args.no_db:
        return
    admin_url = os.environ.get("DATABASE_URL") or DEFAULT_URL
    figures = asyncio.run(database_phase(prices, admin_url))
    print(
        f"whole phase with PostgreSQL ({urlsplit(admin_url).hostname}): "
        f"{figures['total']:.3f} s  = read {figures['read']:.3f} s "
        f"({int(figures['rows_read']):,} price rows) + compute {figures['compute']:.3f} s "
        f"+ upsert {figures['write']:.3f} s ({int(figures['rows_written']):,} betas), median of 3 nights"
    )
    print(f"goal <= 3 s for the whole phase: {'met' if figures['total'] <= 3.0 else 'NOT met'}")
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
        "(shared with other work: figures are wall-clock)"
    )
    print(f"speed-up whole phase vs loop compute alone: {loop_full_s / figures['total']:,.0f}x")


if __name__ == "__main__":
    main()
