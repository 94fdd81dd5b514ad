"""Load M portfolios of K positions for a few users through the upload use case the API uses.

    .venv/bin/python -m bench.load_portfolios [--portfolios 300] [--positions 10] [--users 5]
        [--symbols 300] [--entry-date YYYY-MM-DD]

Every portfolio is a CSV handed to `libs.common.onboarding.upload.upload_portfolio` (the
function behind `POST /api/v1/portfolios`): parsed, validated, stored in one transaction,
symbols new to the universe queued for onboarding, the first snapshot requested on the bus.
Nothing is INSERTed directly. Each portfolio holds, deterministically from its index: long
stocks drawn from the sample provider's synthetic universe (SY0001..; SIGMABATCH_SAMPLE_UNIVERSE
puts them in the nightly batch's universe), factor ETFs, one short stock and one call option
on one of its stocks. Uses DATABASE_URL / NATS_URL / SIGMABATCH_BUS_PREFIX like a service.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from libs.common.auth import ensure_user
from libs.common.config import Settings, get_settings
from libs.common.db import dispose_engines, session_scope
from libs.common.factors import FACTOR_ETFS
from libs.common.market_data.sample import synthetic_universe
from libs.common.onboarding.snapshot_requests import Publish
from libs.common.onboarding.upload import upload_portfolio
from libs.common.service import connect_context

HEADER = (
    "Symbol,Quantity,Entry Price Per Share,Entry Date,Investment Class,Investment Subtype,"
    "Underlying Symbol,Strike Price,Expiration Date,Option Type,Exit Date,Exit Price Per Share"
)
MIN_POSITIONS = 4  # a long stock, an ETF, a short, an option
CONCURRENCY = 4  # uploads in flight at once (the API serves several requests at a time)


@dataclass(frozen=True)
class Loaded:
    portfolio_ids: list[uuid.UUID]
    users: int
    seconds: float


def portfolio_csv(
    index: int, positions: int, stocks: Sequence[str], entry_date: dt.date
) -> bytes:
    """Portfolio ``index``: K-3 long stocks and ETFs (about one in five an ETF), one short
    stock and one call option on its first stock; the same bytes for the same arguments."""
    if positions < MIN_POSITIONS:
        raise ValueError(f"positions must be at least {MIN_POSITIONS}, got {positions}")
    rng = np.random.default_rng([index, 13])
    n_etfs = max(1, (positions - 2) // 5)
    n_stocks = positions - 2 - n_etfs  # longs; then the short and the option
    picked = rng.choice(len(stocks), size=min(len(stocks), n_stocks + 1), replace=False)
    names = [stocks[i] for i in picked]
    if len(names) < n_stocks + 1:
        raise ValueError(f"{positions} positions need at least {n_stocks + 1} stocks")
    longs, short = names[:n_stocks], names[n_stocks]
    etfs = [FACTOR_ETFS[i] for i in rng.choice(len(FACTOR_ETFS), size=n_etfs, replace=False)]
    day = entry_date.isoformat()
    rows = [f"{s},{int(rng.integers(10, 500))},{rng.uniform(20, 300):.2f},{day},PUBLIC,STOCK,,,,,,"
            for s in longs]
    rows += [f"{s},{int(rng.integers(10, 200))},{rng.uniform(40, 400):.2f},{day},PUBLIC,ETF,,,,,,"
             for s in etfs]
    rows.append(f"{short},-{int(rng.integers(5, 100))},{rng.uniform(20, 300):.2f},{day},"
                "PUBLIC,STOCK,,,,,,")
    expiry = (entry_date + dt.timedelta(days=730)).isoformat()
    rows.append(f",{int(rng.integers(1, 10))},{rng.uniform(1, 15):.2f},{day},OPTIONS,,"
                f"{longs[0]},100,{expiry},CALL,,")
    return ("\n".join([HEADER, *rows]) + "\n").encode()


async def load_portfolios(
    database_url: str,
    publish: Publish,
    *,
    portfolios: int,
    positions: int,
    users: int,
    stocks: Sequence[str],
    entry_date: dt.date,
    prefix: str = "bench",
) -> Loaded:
    """Upload ``portfolios`` portfolios round-robin over ``users`` users; raises on the first
    rejected upload (the loader's files are meant to be valid)."""
    started = time.perf_counter()
    callers = []
    async with session_scope(database_url) as session:
        for u in range(users):
            callers.append(await ensure_user(session, f"{prefix}-user-{u + 1}"))
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def one(index: int) -> uuid.UUID:
        caller = callers[index % len(callers)]
        async with semaphore:
            result = await upload_portfolio(
                database_url=database_url, publish=publish, user_id=caller.user_id,
                username=caller.username, name=f"{prefix} portfolio {index + 1}",
                data=portfolio_csv(index, positions, stocks, entry_date))
        return result.portfolio_id

    ids = await asyncio.gather(*(one(i) for i in range(portfolios)))
    return Loaded(list(ids), users, time.perf_counter() - started)


async def main(args: argparse.Namespace, settings: Settings) -> None:
    ctx = await connect_context("load_portfolios", settings)
    try:
        loaded = await load_portfolios(
            ctx.database_url, ctx.publish, portfolios=args.portfolios, positions=args.positions,
            users=args.users, stocks=synthetic_universe(args.symbols), entry_date=args.entry_date)
    finally:
        await ctx.nc.close()
        await dispose_engines()
    print(f"load_portfolios: {len(loaded.portfolio_ids)} portfolios x {args.positions} positions "
          f"for {loaded.users} users in {loaded.seconds:.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--portfolios", type=int, default=300)
    parser.add_argument("--positions", type=int, default=10)
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--symbols", type=int, default=300,
                        help="synthetic stocks to draw from (SY0001..)")
    parser.add_argument("--entry-date", type=dt.date.fromisoformat,
                        default=dt.date.today() - dt.timedelta(days=60))
    asyncio.run(main(parser.parse_args(), get_settings()))
