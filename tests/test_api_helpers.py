"""Helpers shared by the API and onboarding tests (no tests here).

`api_client` runs the real app in process (lifespan included) against this test's PostgreSQL
database and NATS prefix; `seed_known_symbols` puts symbols in the universe with a year of
prices from the sample provider, as the nightly batch would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from pathlib import Path

import httpx
from sqlalchemy import text

from libs.common.auth import create_user_token
from libs.common.calendar import effective_trading_date
from libs.common.config import Settings
from libs.common.db import session_scope
from libs.common.factors import FACTOR_ETFS
from libs.common.market_data.sample import SampleProvider
from libs.common.market_store import upsert_prices
from libs.common.onboarding.upload import SnapshotMaker
from services.status_api.app import create_app

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HEADER = ("Symbol,Quantity,Entry Price Per Share,Entry Date,Investment Class,"
          "Investment Subtype,Underlying Symbol,Strike Price,Expiration Date,Option Type,"
          "Exit Date,Exit Price Per Share")


def cent_values(quantities: Mapping[str, float], closes: Mapping[str, float]) -> dict[str, float]:
    """Each position's market value as a snapshot stores it, computed here by hand in Decimal.

    The snapshot rounds a portfolio's position values to cents so that they add up to the
    rounded exact total (largest remainder: floor every value to a cent, then give the cents
    still missing to the largest remainders), so a value can sit one cent away from its own
    rounding: 30 x 246.116822 = 7,383.50466 is stored as 7,383.51 when the book needs the cent.
    """
    exact = {s: Decimal(str(q)) * Decimal(str(closes[s])) * 100 for s, q in quantities.items()}
    total = sum(exact.values(), Decimal(0)).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    cents = {s: v.to_integral_value(rounding=ROUND_FLOOR) for s, v in exact.items()}
    missing = int(total - sum(cents.values(), Decimal(0)))
    for symbol in sorted(exact, key=lambda s: exact[s] - cents[s], reverse=True)[:missing]:
        cents[symbol] += 1
    return {s: float(c) / 100 for s, c in cents.items()}


def csv_bytes(*rows: str) -> bytes:
    return ("\n".join([HEADER, *rows]) + "\n").encode()


def stock_rows(symbols: Sequence[str], entry: str = "2025-06-30") -> list[str]:
    return [f"{s},{10 + i},{100 + i}.25,{entry},PUBLIC,STOCK,,,,,," for i, s in enumerate(symbols)]


async def token_for(database_url: str, user: str, admin: bool = False) -> dict[str, str]:
    async with session_scope(database_url) as session:
        token = await create_user_token(session, user, admin)
    return {"Authorization": f"Bearer {token}"}


@contextlib.asynccontextmanager
async def api_client(settings: Settings, snapshot_maker: SnapshotMaker | None = None
                     ) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, snapshot_maker=snapshot_maker)
    async with app.router.lifespan_context(app):
        deadline = time.monotonic() + 10
        while app.state.api.js is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


async def seed_known_symbols(database_url: str, symbols: Sequence[str],
                             end: dt.date | None = None, days: int = 400) -> dt.date:
    """Universe rows + sample prices (+ factor ETFs) up to `end`; returns `end`."""
    end = end or effective_trading_date(dt.datetime.now(dt.UTC))
    wanted = sorted(set(symbols) | set(FACTOR_ETFS))
    bars = (await SampleProvider().fetch_prices(wanted, end - dt.timedelta(days=days), end)).bars
    async with session_scope(database_url) as session:
        await upsert_prices(session, bars)
        await session.execute(
            text("INSERT INTO symbol_universe (symbol, added_by, last_price_date) "
                 "SELECT s, 'seed', :end FROM unnest(CAST(:symbols AS text[])) s "
                 "ON CONFLICT DO NOTHING"),
            {"symbols": list(symbols), "end": end})
    return end


async def count(database_url: str, table: str) -> int:
    async with session_scope(database_url) as session:
        return (await session.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()


async def poll_status(client: httpx.AsyncClient, headers: dict[str, str], portfolio_id: str,
                      until: Sequence[str], timeout: float = 60.0,
                      recorded: bool = False) -> list[dict]:
    """Poll the status endpoint until its status is in `until` (and, with `recorded`, the
    onboarding coordinator has recorded it: `finished_at` set); returns every answer seen."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.get(f"/api/v1/onboarding/status/{portfolio_id}", headers=headers)
        assert response.status_code == 200, response.text
        seen.append(response.json())
        if seen[-1]["status"] in until and not (recorded and seen[-1]["finished_at"] is None):
            return seen
        await asyncio.sleep(0.1)
    raise AssertionError(f"status never reached {until}: last {seen[-1] if seen else None}")
