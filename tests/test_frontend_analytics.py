"""The SigmaSight web frontend's analytics routes against the running API (real PostgreSQL and
NATS): shapes checked against the frontend's models, numbers against an independent
computation from the stored prices and the betas this test writes."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import text

from libs.common.db import session_scope
from libs.common.factor_definitions import seed_factor_definitions
from services.status_api.frontend_models import (
    AggregateBetaResponse,
    AggregateFactorExposuresResponse,
    AggregateOverviewResponse,
    BetaComparisonResponse,
    FactorExposuresResponse,
    PortfolioOverviewResponse,
    PositionFactorExposuresResponse,
    SpreadFactorsResponse,
)
from services.status_api.snapshots import default_snapshot_maker
from tests.test_api_helpers import (
    api_client,
    cent_values,
    csv_bytes,
    seed_known_symbols,
    token_for,
)

CREATE = "/api/v1/onboarding/create-portfolio"
EQUITY = 100_000.0
# symbol -> (quantity, betas by sigmabatch factor)
BOOK = {
    "AAPL": (30, {"market": 1.2, "value": -0.3, "growth": 0.5, "interest_rate": -0.1}),
    "MSFT": (20, {"market": 0.9, "value": 0.1, "growth": 0.4, "interest_rate": 0.05}),
    "NVDA": (-10, {"market": 1.8, "value": -0.6, "growth": 0.9, "interest_rate": -0.2}),
}


async def seed_book(database_url: str) -> tuple[dt.date, dict[str, float]]:
    """Prices, hand-set betas on the snapshot date; returns (date, closes on it)."""
    as_of = await seed_known_symbols(database_url, list(BOOK))
    async with session_scope(database_url) as session:
        await seed_factor_definitions(session)
        for symbol, (_, betas) in BOOK.items():
            for factor, beta in betas.items():
                await session.execute(text(
                    "INSERT INTO symbol_factor_exposures (symbol, factor_name, calculation_date, "
                    "beta, n_obs, quality) VALUES (:s, :f, :d, :b, 90, 'full')"),
                    {"s": symbol, "f": factor, "d": as_of, "b": beta})
        rows = await session.execute(text(
            "SELECT symbol, close FROM market_data_cache WHERE date = :d AND symbol = ANY(:s)"),
            {"d": as_of, "s": list(BOOK)})
        closes = {r.symbol: float(r.close) for r in rows}
    return as_of, closes


def book_csv() -> bytes:
    return csv_bytes(*[f"{s},{q},100.00,2025-06-30,PUBLIC,STOCK,,,,,," for s, (q, _) in
                       BOOK.items()])


async def create(client, headers, account: str = "Main", equity: float = EQUITY) -> str:
    response = await client.post(CREATE, headers=headers, files={
        "csv_file": ("p.csv", book_csv(), "text/csv")}, data={
        "portfolio_name": "Book", "account_name": account, "account_type": "taxable",
        "equity_balance": str(int(equity))})
    assert response.status_code == 201, response.text
    return response.json()["portfolio_id"]


async def test_overview_and_factor_exposures_match_an_independent_computation(settings):
    headers = await token_for(settings.database_url, "alice")
    as_of, closes = await seed_book(settings.database_url)
    async with api_client(settings, snapshot_maker=default_snapshot_maker(settings)) as client:
        pid = await create(client, headers)
        base = f"/api/v1/analytics/portfolio/{pid}"
        overview = await client.get(f"{base}/overview", headers=headers)
        factors = await client.get(f"{base}/factor-exposures?use_latest_successful=true",
                                   headers=headers)
        page = await client.get(f"{base}/positions/factor-exposures?limit=2", headers=headers)
        rest = await client.get(f"{base}/positions/factor-exposures?limit=2&offset=2",
                                headers=headers)
        only = await client.get(f"{base}/positions/factor-exposures?symbols=nvda,msft",
                                headers=headers)
    # market values as stored, to the cent (weights use them: issue 9)
    values = cent_values({s: q for s, (q, _) in BOOK.items()}, closes)
    long_v = sum(v for v in values.values() if v > 0)
    short_v = sum(v for v in values.values() if v < 0)
    body = PortfolioOverviewResponse.model_validate(overview.json())
    assert body.equity_balance == body.net_asset_value == body.total_value == EQUITY
    assert body.exposures.long_exposure == pytest.approx(long_v, abs=0.01)
    assert body.exposures.short_exposure == pytest.approx(short_v, abs=0.01)
    assert body.exposures.gross_exposure == pytest.approx(long_v - short_v, abs=0.01)
    assert body.exposures.net_exposure == pytest.approx(long_v + short_v, abs=0.01)
    assert body.cash_balance == pytest.approx(EQUITY - (long_v + short_v), abs=0.02)
    assert body.exposures.gross_percentage == round((long_v - short_v) / EQUITY * 100, 1)
    assert body.leverage == round((long_v - short_v) / EQUITY, 2)
    # First snapshot: P&L starts at 0 (no jump to the entry price).
    assert (body.pnl.total_pnl, body.pnl.ytd_pnl, body.pnl.mtd_pnl) == (0, 0, 0)
    assert (body.position_count.total_positions, body.position_count.long_count,
            body.position_count.short_count, body.position_count.option_count) == (3, 2, 1, 0)
    assert overview.json()["target_returns"] is None

    exposures = FactorExposuresResponse.model_validate(factors.json())
    assert exposures.available and exposures.calculation_date == as_of.isoformat()
    names = [f.name for f in exposures.factors]
    # The frontend's names, in its display order; factors without betas are absent.
    assert names == ["Market Beta (90D)", "Value", "Growth", "IR Beta"]
    expected = {
        name: sum(BOOK[s][1][factor] * values[s] for s in BOOK) / EQUITY
        for factor, name in (("market", "Market Beta (90D)"), ("value", "Value"),
                             ("growth", "Growth"), ("interest_rate", "IR Beta"))}
    for factor in exposures.factors:
        assert factor.beta == pytest.approx(expected[factor.name], abs=1e-9), factor.name
        assert factor.exposure_dollar == pytest.approx(expected[factor.name] * EQUITY, abs=0.05)

    first = PositionFactorExposuresResponse.model_validate(page.json())
    second = PositionFactorExposuresResponse.model_validate(rest.json())
    assert first.available and first.total == second.total == 3
    assert first.positions is not None and second.positions is not None
    assert [p.symbol for p in first.positions + second.positions] == ["AAPL", "MSFT", "NVDA"]
    assert first.positions[0].exposures["Market Beta (90D)"] == 1.2
    assert first.positions[0].exposures["IR Beta"] == -0.1
    filtered = only.json()
    assert [p["symbol"] for p in filtered["positions"]] == ["MSFT", "NVDA"]


async def test_no_data_shapes_and_tenancy(settings):
    alice = await token_for(settings.database_url, "alice")
    bob = await token_for(settings.database_url, "bob")
    async with api_client(settings) as client:
        pid = await create(client, alice)  # unknown symbols: onboarding, no snapshot yet
        base = f"/api/v1/analytics/portfolio/{pid}"
        overview = await client.get(f"{base}/overview", headers=alice)
        factors = await client.get(f"{base}/factor-exposures", headers=alice)
        positions = await client.get(f"{base}/positions/factor-exposures", headers=alice)
        foreign = [await client.get(f"{base}/{path}", headers=bob) for path in (
            "overview", "factor-exposures", "positions/factor-exposures")]
        missing = await client.get(f"/api/v1/analytics/portfolio/{uuid.uuid4()}/overview",
                                   headers=alice)
    body = PortfolioOverviewResponse.model_validate(overview.json())
    assert body.equity_balance == EQUITY and body.exposures.gross_exposure == 0
    assert body.cash_balance == EQUITY and body.position_count.total_positions == 3
    unavailable = FactorExposuresResponse.model_validate(factors.json())
    assert (unavailable.available, unavailable.factors) == (False, [])
    assert factors.json()["reason"] == "no_calculation_available"
    assert PositionFactorExposuresResponse.model_validate(positions.json()).available is False
    assert [r.status_code for r in foreign] == [404, 404, 404]
    assert missing.status_code == 404


async def test_all_accounts_aggregates_weight_portfolios_by_equity(settings):
    headers = await token_for(settings.database_url, "alice")
    other = await token_for(settings.database_url, "bob")
    as_of, closes = await seed_book(settings.database_url)
    async with api_client(settings, snapshot_maker=default_snapshot_maker(settings)) as client:
        first = await create(client, headers, "Main", 100_000)
        second = await create(client, headers, "IRA", 300_000)
        await create(client, other, "Bob's", 50_000)  # never in alice's view
        overview = await client.get("/api/v1/analytics/aggregate/overview", headers=headers)
        beta = await client.get("/api/v1/analytics/aggregate/beta", headers=headers)
        factors = await client.get("/api/v1/analytics/aggregate/factor-exposures",
                                   headers=headers)
        breakdown = await client.get("/api/v1/analytics/aggregate/breakdown", headers=headers)
        empty = await client.get("/api/v1/analytics/aggregate/beta",
                                 headers=await token_for(settings.database_url, "carol"))
    book = AggregateOverviewResponse.model_validate(overview.json())
    assert (book.total_value, book.portfolio_count) == (400_000, 2)
    assert {p.portfolio_id: p.weight for p in book.portfolios} == {first: 0.25, second: 0.75}
    assert book.calculation_date == as_of.isoformat()
    # market values as stored, to the cent (weights use them: issue 9)
    values = cent_values({s: q for s, (q, _) in BOOK.items()}, closes)
    # Both books hold the same positions: their dollar exposures add up over total equity.
    market = 2 * sum(BOOK[s][1]["market"] * values[s] for s in BOOK) / 400_000
    aggregate = AggregateBetaResponse.model_validate(beta.json())
    assert aggregate.aggregate_beta_90d == pytest.approx(market, abs=1e-9)
    assert aggregate.aggregate_beta_180d is None
    combined = AggregateFactorExposuresResponse.model_validate(factors.json())
    by_name = {f.name: f for f in combined.factors}
    assert by_name["Market Beta (90D)"].aggregate_beta == pytest.approx(market, abs=1e-9)
    assert by_name["Value"].aggregate_exposure_dollar == pytest.approx(
        2 * sum(BOOK[s][1]["value"] * values[s] for s in BOOK), abs=0.1)
    assert [p["metrics"]["beta_90d"] for p in breakdown.json()["portfolios"]] == [
        pytest.approx(market * 4 / 2 / 1, abs=1e-9), pytest.approx(market * 4 / 2 / 3, abs=1e-9)]
    nothing = AggregateBetaResponse.model_validate(empty.json())
    assert (nothing.portfolio_count, nothing.aggregate_beta_90d) == (0, None)


async def test_spread_factors_and_beta_comparison(settings):
    headers = await token_for(settings.database_url, "alice")
    as_of, closes = await seed_book(settings.database_url)
    spread = {"AAPL": 0.8, "MSFT": 0.3, "NVDA": 1.5}
    async with session_scope(settings.database_url) as session:
        for symbol, beta in spread.items():
            await session.execute(text(
                "INSERT INTO symbol_factor_exposures (symbol, factor_name, calculation_date, "
                "beta, r2, n_obs, quality) VALUES (:s, 'growth_value_spread', :d, :b, 0.4, 120, "
                "'full')"), {"s": symbol, "d": as_of, "b": beta})
        await session.execute(text(
            "INSERT INTO company_profiles (symbol, beta) VALUES ('AAPL', 1.25), ('NVDA', 2.0)"))
        await session.execute(text(
            "UPDATE symbol_factor_exposures SET r2 = 0.6 WHERE symbol = 'AAPL' "
            "AND factor_name = 'market'"))
    async with api_client(settings, snapshot_maker=default_snapshot_maker(settings)) as client:
        pid = await create(client, headers)
        spreads = await client.get(f"/api/v1/analytics/portfolio/{pid}/spread-factors",
                                   headers=headers)
        betas = await client.get(f"/api/v1/analytics/portfolio/{pid}/beta-comparison",
                                 headers=headers)
    # market values as stored, to the cent (weights use them: issue 9)
    values = cent_values({s: q for s, (q, _) in BOOK.items()}, closes)
    body = SpreadFactorsResponse.model_validate(spreads.json())
    assert [f.name for f in body.factors] == ["Growth-Value Spread"]
    factor = body.factors[0]
    assert factor.beta == pytest.approx(sum(spread[s] * values[s] for s in BOOK) / EQUITY,
                                        abs=1e-9)
    size = abs(factor.beta)
    assert factor.magnitude == ("Strong" if size > 0.5 else "Moderate" if size > 0.2 else "Mild")
    assert factor.direction == ("Growth" if factor.beta > 0 else "Value")
    comparison = BetaComparisonResponse.model_validate(betas.json())
    assert comparison.positions is not None
    by_symbol = {p.symbol: p for p in comparison.positions}
    assert (by_symbol["AAPL"].market_beta, by_symbol["AAPL"].calculated_beta,
            by_symbol["AAPL"].beta_r_squared) == (1.25, 1.2, 0.6)
    assert by_symbol["AAPL"].beta_difference == pytest.approx(1.2 - 1.25)
    assert by_symbol["MSFT"].market_beta is None and by_symbol["MSFT"].beta_difference is None
    assert by_symbol["NVDA"].observations == 90
    assert betas.json()["metadata"]["positions_with_market_beta"] == 2
