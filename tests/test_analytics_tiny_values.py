"""A legitimately tiny analytics figure must be stored, never fail its portfolio's snapshot.

Found by `bench/bench_refresh.py` at 10,000 portfolios: a deep out-of-the-money call (strike
25x the underlying, a month to expiry) has a Black-Scholes gamma/delta near 1e-304. The
writes round floats to 12 significant digits with the scale 10**(11 - magnitude), which
overflowed to inf below ~1e-297; inf/inf gave NaN, NaN is NULL in the binary COPY, and the
NOT NULL Greek columns of `portfolio_risk_metrics` refused the row: the chunk failed, was
bisected, and the portfolio was recorded as failed. The smallest data: one portfolio, one
such option, one underlying with three closes (too few for a realised volatility, so the
model uses the default 30 %), real PostgreSQL, the refresh use case itself.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from decimal import Decimal

import numpy as np
import pandas as pd

from libs.common.analytics.repository import _round
from libs.common.db import dispose_engines
from libs.common.snapshots.refresh import refresh_portfolios
from tests.test_portfolio_refresh import (
    PARAMS,
    connect,
    insert_prices,
    insert_user,
    seed_factor_defs,
)

DAYS = [d.date() for d in pd.bdate_range("2024-03-01", periods=3)]
SPOT = 100.0
STRIKE = 2500.0
EXPIRY = DAYS[-1] + dt.timedelta(days=30)
QUANTITY = 2


def _independent_greeks(spot: float, strike: float, years: float, rate: float,
                        vol: float) -> tuple[float, float]:
    """Black-Scholes call delta and gamma per unit, with `math` only (not the project's code).

    Delta N(d1) via erfc (accurate in the far tail, where 1 - erf would be 0)."""
    d1 = (math.log(spot / strike) + (rate + vol * vol / 2) * years) / (vol * math.sqrt(years))
    pdf = math.exp(-d1 * d1 / 2) / math.sqrt(2 * math.pi)
    return 0.5 * math.erfc(-d1 / math.sqrt(2)), pdf / (spot * vol * math.sqrt(years))


def test_rounding_keeps_tiny_finite_values_finite_and_others_unchanged() -> None:
    tiny = np.array([1.234567890123456e-300, -7.654321098765432e-305, 2.2250738585072014e-308,
                     5e-324])
    got = _round(tiny)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[:3], [1.23456789012e-300, -7.65432109877e-305,
                                         2.22507385851e-308], rtol=1e-15)
    assert got[3] == 5e-324  # the smallest subnormal stays itself
    # NaN/inf pass through (NULL in scalar columns); normal values still to 12 digits.
    mixed = _round(np.array([np.nan, np.inf, -np.inf, 0.0, 1.23456789012345, -98765.4321098765,
                             1.7e308]))
    assert np.isnan(mixed[0]) and mixed[1] == np.inf and mixed[2] == -np.inf
    assert mixed[3:].tolist() == [0.0, 1.23456789012, -98765.4321099, 1.7e308]


async def test_deep_out_of_the_money_option_gets_its_snapshot_and_tiny_greeks(
        database_url: str) -> None:
    await seed_factor_defs(database_url)
    conn = await connect(database_url)
    try:
        user = await insert_user(conn)
        await insert_prices(conn, pd.DataFrame(
            {"symbol": "UND", "date": DAYS, "close": [SPOT] * len(DAYS)}))
        pid = uuid.uuid4()
        await conn.execute(
            "INSERT INTO portfolios (id, user_id, name, equity_balance) VALUES ($1, $2, 'otm', $3)",
            pid, user, Decimal(100_000))
        position = uuid.uuid4()
        await conn.execute(
            "INSERT INTO positions (id, portfolio_id, symbol, quantity, entry_price, entry_date, "
            "investment_class, underlying_symbol, strike_price, expiration_date, option_type) "
            "VALUES ($1, $2, 'UND_C2500', $3, 0.01, $4, 'OPTIONS', 'UND', $5, $6, 'CALL')",
            position, pid, Decimal(QUANTITY), DAYS[0], Decimal(STRIKE), EXPIRY)
        await conn.copy_records_to_table(
            "symbol_batch_dates", columns=["batch_date", "status", "symbols_total"],
            records=[(d, "completed", 1) for d in DAYS])
    finally:
        await conn.close()

    outcomes = await refresh_portfolios(database_url, DAYS[-1], [pid], PARAMS)
    await dispose_engines()
    assert [o.failed for o in outcomes] == [{}] * len(outcomes)

    conn = await connect(database_url)
    try:
        complete = await conn.fetchval(
            "SELECT is_complete FROM portfolio_snapshots WHERE portfolio_id = $1 "
            "AND snapshot_date = $2", pid, DAYS[-1])
        unit = await conn.fetchrow(
            "SELECT delta, gamma, years, volatility, rate FROM position_greeks "
            "WHERE position_id = $1 AND calculation_date = $2", position, DAYS[-1])
        book = await conn.fetchrow(
            "SELECT delta, gamma FROM portfolio_risk_metrics WHERE portfolio_id = $1 "
            "AND calculation_date = $2", pid, DAYS[-1])
    finally:
        await conn.close()

    assert complete is True
    years, rate, vol = 30 / 365, PARAMS.risk_free_rate, PARAMS.default_volatility
    assert math.isclose(unit["years"], years, rel_tol=1e-11)  # stored to 12 digits
    assert (unit["volatility"], unit["rate"]) == (vol, rate)
    delta, gamma = _independent_greeks(SPOT, STRIKE, years, rate, vol)
    assert 1e-310 < delta < 1e-300 and 1e-310 < gamma < 1e-300  # the range that overflowed
    assert math.isclose(unit["delta"], delta, rel_tol=1e-9)
    assert math.isclose(unit["gamma"], gamma, rel_tol=1e-9)
    units = QUANTITY * 100
    assert book is not None
    assert math.isclose(book["delta"], delta * units, rel_tol=1e-9)
    assert math.isclose(book["gamma"], gamma * units, rel_tol=1e-9)
