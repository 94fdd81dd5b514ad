"""Black-Scholes price and Greeks (libs/common/domain/options) against textbook values,
put-call parity and finite differences computed here, independently of the analytic Greeks."""

from __future__ import annotations

import numpy as np
import pytest

from libs.common.domain import options
from libs.common.domain.options import OPTION_MULTIPLIER, black_scholes, black_scholes_greeks


def test_hull_example_prices() -> None:
    # Hull, Options Futures and Other Derivatives, example 15.6: S=42, K=40, r=10%, σ=20%, T=0.5.
    price = black_scholes(42.0, 40.0, 0.5, 0.10, 0.20, np.array([True, False]))
    assert price[0] == pytest.approx(4.76, abs=0.005)
    assert price[1] == pytest.approx(0.81, abs=0.005)


def test_hull_greeks_example() -> None:
    # Hull ch. 19: S=49, K=50, r=5%, σ=20%, T=20 weeks = 0.3846 years, a call.
    g = black_scholes_greeks(49.0, 50.0, 0.3846, 0.05, 0.20, True)
    assert float(g.price) == pytest.approx(2.40, abs=0.005)
    assert float(g.delta) == pytest.approx(0.522, abs=0.0005)
    assert float(g.gamma) == pytest.approx(0.066, abs=0.0005)
    assert float(g.theta) == pytest.approx(-4.31, abs=0.005)  # per year
    assert float(g.theta_per_day) == pytest.approx(-4.31 / 365, abs=1e-4)  # -0.0118
    assert float(g.vega) == pytest.approx(12.1, abs=0.05)  # per 1.00 of vol
    assert float(g.vega_per_pct) == pytest.approx(0.121, abs=0.0005)
    assert float(g.rho) == pytest.approx(8.91, abs=0.005)
    assert float(g.rho_per_pct) == pytest.approx(0.0891, abs=0.00005)


def test_textbook_at_the_money_one_year() -> None:
    price = black_scholes(100.0, 100.0, 1.0, 0.05, 0.2, np.array([True, False]))
    assert price[0] == pytest.approx(10.4506, abs=1e-4)
    assert price[1] == pytest.approx(5.5735, abs=1e-4)


def test_put_call_parity_over_a_grid() -> None:
    rng = np.random.default_rng(3)
    n = 500
    s = rng.uniform(20, 300, n)
    k = rng.uniform(20, 300, n)
    t = rng.uniform(0.01, 3, n)
    r = rng.uniform(0.0, 0.08, n)
    v = rng.uniform(0.05, 0.9, n)
    call = black_scholes_greeks(s, k, t, r, v, True)
    put = black_scholes_greeks(s, k, t, r, v, False)
    disc = np.exp(-r * t)
    np.testing.assert_allclose(call.price - put.price, s - k * disc, atol=1e-9)
    np.testing.assert_allclose(call.delta - put.delta, 1.0, atol=1e-12)
    np.testing.assert_allclose(call.gamma, put.gamma, rtol=1e-12)
    np.testing.assert_allclose(call.vega, put.vega, rtol=1e-12)
    np.testing.assert_allclose(call.rho - put.rho, k * t * disc, rtol=1e-9)
    assert (put.delta <= 0).all() and (call.delta >= 0).all()


@pytest.mark.parametrize("is_call", [True, False])
def test_greeks_match_finite_differences(is_call: bool) -> None:
    s, k, t, r, v = np.array([90.0, 100.0, 130.0]), 100.0, np.array([0.1, 0.5, 2.0]), 0.03, 0.25

    def price(**kw: float | np.ndarray) -> np.ndarray:
        args = {"spot": s, "strike": k, "years": t, "rate": r, "vol": v} | kw
        return black_scholes(args["spot"], args["strike"], args["years"], args["rate"],
                             args["vol"], is_call)

    g = black_scholes_greeks(s, k, t, r, v, is_call)
    hs, hv, hr, ht = 1e-3, 1e-5, 1e-5, 1e-5
    delta_fd = (price(spot=s + hs) - price(spot=s - hs)) / (2 * hs)
    gamma_fd = (price(spot=s + hs) - 2 * price() + price(spot=s - hs)) / hs**2
    vega_fd = (price(vol=v + hv) - price(vol=v - hv)) / (2 * hv)
    rho_fd = (price(rate=r + hr) - price(rate=r - hr)) / (2 * hr)
    # Theta is the change as calendar time passes: time to expiry falls.
    theta_fd = -(price(years=t + ht) - price(years=t - ht)) / (2 * ht)
    np.testing.assert_allclose(g.delta, delta_fd, atol=1e-7)
    np.testing.assert_allclose(g.gamma, gamma_fd, atol=1e-4)
    np.testing.assert_allclose(g.vega, vega_fd, rtol=1e-6)
    np.testing.assert_allclose(g.rho, rho_fd, rtol=1e-6)
    np.testing.assert_allclose(g.theta, theta_fd, rtol=1e-5)


def test_expired_options_are_intrinsic_with_zero_greeks() -> None:
    g = black_scholes_greeks(np.array([120.0, 120.0, 80.0]), 100.0, np.array([0.0, -0.5, 0.0]),
                             0.05, 0.2, np.array([True, False, False]))
    np.testing.assert_array_equal(g.price, [20.0, 0.0, 20.0])
    for greek in (g.delta, g.gamma, g.theta, g.vega, g.rho):
        np.testing.assert_array_equal(greek, 0.0)
    assert g.expired.all()


def test_zero_volatility_is_the_discounted_forward_limit() -> None:
    g = black_scholes_greeks(np.array([120.0, 80.0]), 100.0, 1.0, 0.05, 0.0, True)
    assert g.price[0] == pytest.approx(120 - 100 * np.exp(-0.05))
    assert g.price[1] == pytest.approx(0.0)
    np.testing.assert_allclose(g.delta, [1.0, 0.0])


def test_missing_input_stays_nan() -> None:
    g = black_scholes_greeks(np.array([np.nan, 100.0]), 100.0, 0.5, 0.05, 0.2, True)
    assert np.isnan(g.price[0]) and np.isnan(g.delta[0]) and not np.isnan(g.price[1])


def test_dollar_greeks_of_a_position() -> None:
    # Issue 9's case: 10 long SPY puts, S=K=500, 108 days, vol 0.2; equity 1M.
    g = black_scholes_greeks(500.0, 500.0, 108 / 365, 0.04, 0.2, False)
    dd = options.delta_dollars(g.delta, 10, 500.0)
    assert float(dd) == pytest.approx(float(g.delta) * 10 * OPTION_MULTIPLIER * 500)
    assert float(dd) / 1_000_000 == pytest.approx(-0.217, abs=0.005)
    gd = options.gamma_dollars(g.gamma, 10, 500.0)
    # Change of the position's delta (in shares of underlying, x S) for a 1% move of S.
    up = black_scholes_greeks(500.01, 500.0, 108 / 365, 0.04, 0.2, False)
    down = black_scholes_greeks(499.99, 500.0, 108 / 365, 0.04, 0.2, False)
    per_dollar = (up.delta - down.delta) / 0.02
    per_pct = per_dollar * 5.0 * 10 * OPTION_MULTIPLIER * 500.0  # 1% of 500 is 5 dollars
    assert float(gd) == pytest.approx(float(per_pct), rel=1e-3)
