"""Risk analytics end to end: refresh writes them in the snapshot's slot, the API serves them.

The example portfolios (with sample-provider prices and real factor betas) plus two books
built here: one holding a live SPY call and a put (Greeks), one net short with negative
equity. Every number checked here is recomputed independently from the stored prices.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from decimal import Decimal

import asyncpg
import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from libs.common.db import asyncpg_dsn, dispose_engines
from libs.common.snapshots.refresh import refresh_portfolios
from tests.test_api_helpers import api_client, token_for
from tests.test_portfolio_refresh import FIXTURE_DAY, NEXT_DAY, PARAMS, seed_fixture_portfolios

BASE = "/api/v1/portfolios"


async def _add_portfolio(conn: asyncpg.Connection, user: uuid.UUID, name: str, equity: str,
                         rows: list[tuple]) -> uuid.UUID:
    pid = uuid.uuid4()
    await conn.execute("INSERT INTO portfolios (id, user_id, name, equity_balance) "
                       "VALUES ($1, $2, $3, $4)", pid, user, name, Decimal(equity))
    await conn.copy_records_to_table(
        "positions",
        columns=["id", "portfolio_id", "symbol", "quantity", "entry_price", "entry_date",
                 "investment_class", "underlying_symbol", "strike_price", "expiration_date",
                 "option_type", "multiplier"],
        records=[(uuid.uuid4(), pid, *r) for r in rows])
    return pid


def _bs(s: float, k: float, t: float, r: float, v: float, call: bool) -> tuple[float, float]:
    """Textbook Black-Scholes delta and gamma (Hull), written here independently."""
    d1 = (math.log(s / k) + (r + v * v / 2) * t) / (v * math.sqrt(t))
    delta = norm.cdf(d1) if call else norm.cdf(d1) - 1
    return delta, norm.pdf(d1) / (s * v * math.sqrt(t))


async def test_refresh_writes_analytics_and_every_endpoint_answers(database_url, settings):
    ids = await seed_fixture_portfolios(database_url)
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        owner = await conn.fetchval("SELECT user_id FROM portfolios WHERE id = $1",
                                    ids["small_test_portfolio"])
        username = await conn.fetchval("SELECT username FROM users WHERE id = $1", owner)
        entry = dt.date(2026, 11, 2)
        ids["options_book"] = await _add_portfolio(conn, owner, "options_book", "100000", [
            ("SPY", Decimal(100), Decimal(500), entry, "PUBLIC", None, None, None, None, 1),
            ("SPY_C", Decimal(2), Decimal(10), entry, "OPTIONS", "SPY", Decimal(600),
             dt.date(2027, 6, 18), "CALL", 100),
            ("SPY_P", Decimal(-3), Decimal(10), entry, "OPTIONS", "SPY", Decimal(550),
             dt.date(2027, 3, 19), "PUT", 100),
        ])
        ids["net_short"] = await _add_portfolio(conn, owner, "net_short", "-5000", [
            ("AAPL", Decimal(-200), Decimal(150), entry, "PUBLIC", None, None, None, None, 1),
            ("MSFT", Decimal(20), Decimal(300), entry, "PUBLIC", None, None, None, None, 1),
        ])
    finally:
        await conn.close()
    for day in (FIXTURE_DAY, NEXT_DAY):
        await refresh_portfolios(database_url, day, list(ids.values()), PARAMS)

    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        closes = pd.DataFrame.from_records(
            [tuple(r) for r in await conn.fetch(
                "SELECT symbol, date, adj_close FROM market_data_cache WHERE date <= $1",
                NEXT_DAY)], columns=["symbol", "date", "close"]).pivot(
            index="date", columns="symbol", values="close").sort_index()
        exposures = {(r["portfolio_id"], r["factor_name"]): float(r["exposure_dollar"])
                     for r in await conn.fetch(
                         "SELECT * FROM factor_exposures WHERE calculation_date = $1", NEXT_DAY)}
        equity = {r["portfolio_id"]: float(r["equity"]) for r in await conn.fetch(
            "SELECT portfolio_id, equity FROM portfolio_snapshots WHERE snapshot_date = $1",
            NEXT_DAY)}
    finally:
        await conn.close()

    headers = await token_for(database_url, username)
    other = await token_for(database_url, "mallory")
    q = {"date": NEXT_DAY.isoformat()}
    async with api_client(settings) as client:
        for name, pid in ids.items():
            for path in ("risk", "correlations", "stress-tests", "positions"):
                r = await client.get(f"{BASE}/{pid}/{path}", headers=headers, params=q)
                assert r.status_code == 200, (name, path, r.text)
                assert (await client.get(f"{BASE}/{pid}/{path}", headers=other,
                                         params=q)).status_code == 404
            missing = await client.get(f"{BASE}/{pid}/risk", headers=headers,
                                       params={"date": "2026-11-20"})
            assert missing.status_code == 404
            assert "no complete snapshot" in missing.json()["detail"]

        # Realized volatility of a plain stock book vs pandas on the stored closes.
        small = ids["small_test_portfolio"]
        risk = (await client.get(f"{BASE}/{small}/risk", headers=headers, params=q)).json()
        positions = (await client.get(f"{BASE}/{small}/positions", headers=headers,
                                      params=q)).json()
        mv = pd.Series({p["symbol"]: float(p["market_value"]) for p in positions})
        returns = closes[mv.index].pct_change(fill_method=None).iloc[-63:]
        series = (returns * mv).sum(axis=1) / equity[small]
        assert risk["volatility_21d"] == pytest.approx(series.iloc[-21:].std() * np.sqrt(252),
                                                       rel=1e-6)
        assert risk["volatility_63d"] == pytest.approx(series.std() * np.sqrt(252), rel=1e-6)
        assert risk["volatility_method"].startswith("EWMA lambda=0.94")
        assert 0 <= risk["volatility_percentile"] <= 1
        w = mv.abs() / mv.abs().sum()
        assert risk["hhi"] == pytest.approx(float((w ** 2).sum()), rel=1e-6)  # MV in cents
        assert risk["beta_regression"]["n_obs"] == 90
        # Exposure-weighted beta = the factor exposure table's market dollars over equity.
        assert risk["beta_exposure_weighted"] == pytest.approx(
            exposures[(small, "market")] / equity[small], rel=1e-6)

        # Stress: −20% market on a book without options = −0.2 × its market dollar exposure.
        stress = (await client.get(f"{BASE}/{small}/stress-tests", headers=headers,
                                   params=q)).json()
        by_id = {s["scenario"]: s for s in stress}
        assert by_id["market_down_20"]["direct_impact"] == pytest.approx(
            -0.2 * exposures[(small, "market")], rel=1e-6)
        assert by_id["rates_up_100"]["shocks"] == {"interest_rate": 100}
        assert by_id["hist_covid_crash_2020"]["category"] == "historical"
        assert by_id["market_down_20"]["impact_pct_of_equity"] == pytest.approx(
            by_id["market_down_20"]["correlated_impact"] / equity[small], rel=1e-9)

        # Correlations: symmetric, unit diagonal, PSD; counts symmetric.
        for pid in ids.values():
            c = (await client.get(f"{BASE}/{pid}/correlations", headers=headers,
                                  params=q)).json()
            m = np.array(c["matrix"])
            if m.size:
                np.testing.assert_allclose(m, m.T, atol=1e-12)
                np.testing.assert_allclose(np.diag(m), 1.0)
                assert np.linalg.eigvalsh(m).min() >= -1e-8
                assert np.array_equal(np.array(c["observations"]),
                                      np.array(c["observations"]).T)
                assert sorted(s for cl in c["clusters"] for s in cl) == sorted(c["symbols"])

        # Greeks of live options vs the textbook formula on the returned model inputs.
        book = ids["options_book"]
        rows = (await client.get(f"{BASE}/{book}/positions", headers=headers, params=q)).json()
        options = [p for p in rows if p["investment_class"] == "OPTIONS"]
        assert len(options) == 2
        total_delta = 0.0
        for p in options:
            mi, g = p["model_inputs"], p["greeks"]
            delta, gamma = _bs(mi["underlying_price"], mi["strike"], mi["years"], mi["rate"],
                               mi["volatility"], p["option_type"] == "CALL")
            assert g["delta"] == pytest.approx(delta, rel=1e-9)
            assert g["gamma"] == pytest.approx(gamma, rel=1e-9)
            qty = float(p["quantity"])
            assert g["delta_dollars"] == pytest.approx(delta * qty * 100 * mi["underlying_price"])
            total_delta += delta * qty * 100
        risk = (await client.get(f"{BASE}/{book}/risk", headers=headers, params=q)).json()
        assert risk["portfolio_greeks"]["delta"] == pytest.approx(total_delta, rel=1e-9)
        assert risk["portfolio_greeks"]["theta"] < 0 or risk["portfolio_greeks"]["theta"] > 0

        # Net short with negative equity: returns on gross, no % of equity, shorts gain in a fall.
        short = ids["net_short"]
        risk = (await client.get(f"{BASE}/{short}/risk", headers=headers, params=q)).json()
        assert risk["return_basis"] == "gross" and risk["volatility_21d"] > 0
        stress = {s["scenario"]: s for s in (await client.get(
            f"{BASE}/{short}/stress-tests", headers=headers, params=q)).json()}
        assert stress["market_down_20"]["impact_pct_of_equity"] is None
        assert stress["market_down_20"]["direct_impact"] > 0
    await dispose_engines()


async def test_redo_of_a_half_slot_gives_the_same_analytics(database_url):
    ids = await seed_fixture_portfolios(database_url)
    pids = list(ids.values())
    await refresh_portfolios(database_url, FIXTURE_DAY, pids, PARAMS)

    async def digest() -> dict[str, list]:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            return {t: [tuple(r) for r in await conn.fetch(
                f"SELECT * FROM {t} ORDER BY portfolio_id")] for t in (
                "portfolio_risk_metrics", "portfolio_correlations", "portfolio_stress_results")}
        finally:
            await conn.close()

    before = await digest()
    assert all(len(v) == len(pids) for v in before.values())
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:  # a half slot, as a crash between claim and completion would leave it
        await conn.execute("UPDATE portfolio_snapshots SET is_complete = false "
                           "WHERE portfolio_id = $1", pids[0])
    finally:
        await conn.close()
    await refresh_portfolios(database_url, FIXTURE_DAY, pids, PARAMS)
    assert await digest() == before
    await dispose_engines()
