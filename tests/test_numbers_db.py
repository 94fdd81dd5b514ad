"""Issue 9's numbers end to end on real PostgreSQL (and NATS for the API): default equity,
weights, restatement of degraded snapshots, one beta date per symbol, the new columns."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import numpy as np
from sqlalchemy import text

from libs.common import pnl
from libs.common.db import session_scope
from libs.common.factor_definitions import seed_factor_definitions
from libs.common.snapshots.refresh import refresh_portfolios
from services.status_api.snapshots import default_snapshot_maker
from tests.test_api_helpers import (
    api_client,
    csv_bytes,
    seed_known_symbols,
    token_for,
)

UPLOAD = "/api/v1/portfolios"
MARKET_BETAS = {"AAPL": 0.8, "MSFT": 1.1, "NVDA": 1.7}


async def insert_betas(database_url: str, day: dt.date, betas: dict[str, dict[str, float]]) -> None:
    async with session_scope(database_url) as session:
        await seed_factor_definitions(session)
        for symbol, by_factor in betas.items():
            for factor, beta in by_factor.items():
                await session.execute(text(
                    "INSERT INTO symbol_factor_exposures (symbol, factor_name, calculation_date, "
                    "beta, n_obs, quality) VALUES (:s, :f, :d, :b, 90, 'full')"),
                    {"s": symbol, "f": factor, "d": day, "b": beta})


async def rows(database_url: str, sql: str, **params: object) -> list[dict]:
    async with session_scope(database_url) as session:
        return [dict(r) for r in (await session.execute(text(sql), params)).mappings()]


async def test_long_only_upload_without_equity_weighs_one_and_averages_betas(settings) -> None:
    headers = await token_for(settings.database_url, "alice")
    as_of = await seed_known_symbols(settings.database_url, list(MARKET_BETAS))
    await insert_betas(settings.database_url, as_of,
                       {s: {"market": b, "size": 0.1 * i} for i, (s, b) in
                        enumerate(MARKET_BETAS.items())})
    book = csv_bytes("AAPL,100,150.00,2025-06-30,PUBLIC,STOCK,,,,,,",
                     "MSFT,40,240.00,2025-06-30,PUBLIC,STOCK,,,,,,",
                     "NVDA,25,90.00,2025-06-30,,,,,,,,")
    short_book = csv_bytes("AAPL,-100,150.00,2025-06-30,PUBLIC,STOCK,,,,,,")
    async with api_client(settings, snapshot_maker=default_snapshot_maker(settings)) as client:
        created = await client.post(UPLOAD, headers=headers,
                                    files={"file": ("p.csv", book, "text/csv")},
                                    data={"name": "long only"})
        assert created.status_code == 201, created.text
        pid = created.json()["portfolio_id"]
        detail = (await client.get(f"{UPLOAD}/{pid}", headers=headers)).json()
        snaps = (await client.get(f"{UPLOAD}/{pid}/snapshots", headers=headers)).json()
        refused = await client.post(UPLOAD, headers=headers,
                                    files={"file": ("s.csv", short_book, "text/csv")},
                                    data={"name": "net short"})
    assert detail["equity_source"] == "net_market_value" and detail["equity_balance"] is None
    (snap,) = snaps
    assert snap["equity_source"] == "net_market_value"
    assert Decimal(snap["equity"]) == Decimal(snap["total_value"]) > 0
    assert snap["exposure_basis"] == "equity" and snap["is_degraded"] is False
    assert snap["data_quality"]["no_betas"] == [] and snap["data_quality"]["no_price"] == []

    values = await rows(settings.database_url, "SELECT p.symbol, ps.market_value FROM "
                        "position_snapshots ps JOIN positions p ON p.id = ps.position_id "
                        "WHERE ps.portfolio_id = :p", p=uuid.UUID(pid))
    mv = np.array([float(r["market_value"]) for r in values])
    beta = np.array([MARKET_BETAS[r["symbol"]] for r in values])
    weights = await rows(settings.database_url, "SELECT sum(weight) AS w FROM "
                         "position_factor_exposures WHERE portfolio_id = :p AND "
                         "factor_name = 'market'", p=uuid.UUID(pid))
    (market,) = await rows(settings.database_url, "SELECT exposure FROM factor_exposures "
                           "WHERE portfolio_id = :p AND factor_name = 'market'",
                           p=uuid.UUID(pid))
    assert abs(weights[0]["w"] - 1.0) < 1e-9  # unlevered long-only: weights sum to 1
    assert abs(market["exposure"] - float(np.average(beta, weights=mv))) < 1e-9

    assert refused.status_code == 422
    assert "equity_balance" in refused.text and "net market value" in refused.text


async def test_degraded_snapshot_is_restated_and_betas_come_from_one_date(database_url) -> None:
    day = dt.date(2025, 7, 1)
    async with session_scope(database_url) as session:
        await seed_factor_definitions(session)
        user = uuid.uuid4()
        await session.execute(text("INSERT INTO users (id, username) VALUES (:u, 'bob')"),
                              {"u": user})
        pid = uuid.uuid4()
        await session.execute(text(
            "INSERT INTO portfolios (id, user_id, name, equity_balance, equity_source) "
            "VALUES (:p, :u, 'x', NULL, 'net_market_value')"), {"p": pid, "u": user})
        for symbol, qty, price in (("SPY", 10, 500.0), ("NEWCO", 100, 50.0)):
            await session.execute(text(
                "INSERT INTO positions (id, portfolio_id, symbol, quantity, entry_price, "
                "entry_date, investment_class) VALUES (gen_random_uuid(), :p, :s, :q, :e, "
                ":d, 'PUBLIC')"), {"p": pid, "s": symbol, "q": qty, "e": price,
                                   "d": day - dt.timedelta(days=7)})
        await session.execute(text(
            "INSERT INTO market_data_cache (symbol, date, close, adj_close, source) VALUES "
            "('SPY', :d, 500, 500, 'test'), ('SPY', :d2, 505, 505, 'test')"),
            {"d": day, "d2": day + dt.timedelta(days=1)})
    # An old date with two factors and a newer one with only "market": the newer date wins
    # whole (the old "size" must not be mixed in).
    await insert_betas(database_url, day - dt.timedelta(days=3), {"SPY": {"market": 0.9,
                                                                          "size": 0.4}})
    made_at = dt.datetime.now(dt.UTC)
    await refresh_portfolios(database_url, day, [pid], pnl.PricingParams(), explicit=True)
    (first,) = await rows(database_url, "SELECT * FROM portfolio_snapshots WHERE "
                          "portfolio_id = :p", p=pid)
    assert first["equity_source"] == "net_market_value"
    assert first["equity"] == Decimal("10000.00")  # 10 × 500 + 100 × 50 (NEWCO at entry)
    assert first["is_degraded"] and first["data_quality"]["no_price"] == ["NEWCO"]

    # The date's batch brings SPY's betas of that date: the degraded slot is restated.
    await insert_betas(database_url, day, {"SPY": {"market": 1.2}})
    await refresh_portfolios(database_url, day, [pid], pnl.PricingParams(),
                             restate_degraded_before=dt.datetime.now(dt.UTC))
    (again,) = await rows(database_url, "SELECT * FROM portfolio_snapshots WHERE "
                          "portfolio_id = :p", p=pid)
    assert again["completed_at"] > first["completed_at"] > made_at
    factors = await rows(database_url, "SELECT factor_name, exposure FROM factor_exposures "
                         "WHERE portfolio_id = :p", p=pid)
    assert {f["factor_name"] for f in factors} == {"market"}  # "size" came from an older date
    # 1.2 × 5,000 / 10,000
    assert abs(factors[0]["exposure"] - 0.6) < 1e-12

    # Next day NEWCO is first quoted at 80: a valuation adjustment, not P&L.
    async with session_scope(database_url) as session:
        await session.execute(text(
            "INSERT INTO market_data_cache (symbol, date, close, adj_close, source) VALUES "
            "('NEWCO', :d, 80, 80, 'test')"), {"d": day + dt.timedelta(days=1)})
    await refresh_portfolios(database_url, day + dt.timedelta(days=1), [pid],
                             pnl.PricingParams(), explicit=True)
    (second,) = await rows(database_url, "SELECT * FROM portfolio_snapshots WHERE "
                           "portfolio_id = :p AND snapshot_date = :d", p=pid,
                           d=day + dt.timedelta(days=1))
    assert second["daily_pnl"] == Decimal("50.00")  # SPY 10 × 5
    assert second["valuation_adjustment"] == Decimal("3000.00")  # NEWCO 100 × (80 − 50)
    assert second["equity"] == Decimal("13050.00")
    assert second["daily_return"] == Decimal("0.005")  # 50 / 10,000
    adjusted = await rows(database_url, "SELECT valuation_adjustment FROM position_snapshots "
                          "WHERE portfolio_id = :p AND snapshot_date = :d AND "
                          "valuation_adjustment <> 0", p=pid, d=day + dt.timedelta(days=1))
    assert [r["valuation_adjustment"] for r in adjusted] == [Decimal("3000.00")]
