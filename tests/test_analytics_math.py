"""Risk analytics math against independent computations (pandas/numpy/scipy written here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from libs.common.analytics import correlation as cm
from libs.common.analytics import risk, stress

RNG = np.random.default_rng(7)


def _returns(n_sessions: int, symbols: list[str], seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    market = rng.normal(0, 0.01, n_sessions)
    data = {s: 0.8 * market + rng.normal(0, 0.012, n_sessions) for s in symbols}
    data["SPY"] = market
    return pd.DataFrame(data, index=pd.bdate_range("2024-01-01", periods=n_sessions))


def _book(rows: list[tuple[str, str, float]], equity: dict[str, float]) -> risk.Book:
    holdings = pd.DataFrame(
        [
            {"portfolio_id": p, "position_id": f"{p}-{i}", "symbol": s, "risk_symbol": s,
             "market_value": mv, "exposure": mv, "is_public": True}
            for i, (p, s, mv) in enumerate(rows)
        ]
    )
    return risk.make_book(holdings, pd.Series(equity))


# --------------------------------------------------------------------------- volatility & beta


def test_volatility_and_beta_match_pandas_on_the_same_series():
    symbols = ["A", "B", "C"]
    rets = _returns(300, symbols)
    mv = {"A": 50_000.0, "B": -20_000.0, "C": 30_000.0}
    book = _book([("p1", s, v) for s, v in mv.items()], {"p1": 100_000.0})
    series = risk.portfolio_returns(book, rets)[0]

    # Independent: the same holdings over the same sessions with pandas.
    expected = (rets[symbols] * pd.Series(mv)).sum(axis=1) / 100_000.0
    np.testing.assert_allclose(series, expected.to_numpy(), rtol=1e-12)
    s = expected
    assert risk.realized_vol(series[None], 21)[0] == pytest.approx(
        s.iloc[-21:].std() * np.sqrt(252), rel=1e-10)
    assert risk.realized_vol(series[None], 63)[0] == pytest.approx(
        s.iloc[-63:].std() * np.sqrt(252), rel=1e-10)
    ewm = (s.iloc[-252:] ** 2).ewm(alpha=1 - 0.94, adjust=True).mean().iloc[-1]
    assert risk.ewma_vol(series[None])[0] == pytest.approx(np.sqrt(ewm * 252), rel=1e-10)
    rolling = s.rolling(21).std().iloc[-252:]
    assert risk.vol_percentile(series[None])[0] == pytest.approx(
        (rolling <= rolling.iloc[-1]).mean(), abs=1e-12)

    beta, r2, n = risk.regression_beta(series[None], rets["SPY"].to_numpy())
    window = pd.DataFrame({"y": s, "x": rets["SPY"]}).iloc[-90:]
    expected_beta = window.cov().loc["x", "y"] / window["x"].var()
    assert beta[0] == pytest.approx(expected_beta, rel=1e-10)
    assert r2[0] == pytest.approx(window.corr().loc["x", "y"] ** 2, rel=1e-10)
    assert n[0] == 90


def test_short_history_gives_null_volatility_not_a_number_from_too_few_days():
    series = RNG.normal(0, 0.01, (2, 40))
    assert np.isnan(risk.realized_vol(series, 63)).all()
    assert np.isnan(risk.vol_percentile(series)).all()
    beta, _, n = risk.regression_beta(series, np.full(40, np.nan))
    assert np.isnan(beta).all() and (n == 0).all()


def test_net_short_and_zero_equity_use_gross_exposure_as_base():
    rets = _returns(100, ["A", "B"])
    book = _book([("short", "A", -60_000.0), ("short", "B", 20_000.0), ("zero", "A", 10_000.0)],
                 {"short": -40_000.0, "zero": 0.0})
    assert list(book.basis) == ["gross", "gross"]
    series = risk.portfolio_returns(book, rets)
    expected = (rets["A"] * -60_000 + rets["B"] * 20_000) / 80_000
    np.testing.assert_allclose(series[0], expected.to_numpy(), rtol=1e-12)
    # A short book's beta is negative (it loses when the market rises), never sign-flipped.
    beta, _, _ = risk.regression_beta(series, rets["SPY"].to_numpy())
    assert beta[0] < 0 and beta[1] > 0


# --------------------------------------------------------------------------- concentration


def test_hhi_hand_example_nets_lots_and_uses_gross_weights():
    # |MV|: A 50 (two lots 30+20), B 30 (short), C 20 -> w = .5, .3, .2
    book = _book([("p", "A", 30.0), ("p", "A", 20.0), ("p", "B", -30.0), ("p", "C", 20.0)],
                 {"p": 40.0})
    out = risk.concentration(book).loc["p"]
    assert out["hhi"] == pytest.approx(0.25 + 0.09 + 0.04)
    assert out["effective_positions"] == pytest.approx(1 / 0.38)
    assert out["top3"] == pytest.approx(1.0)
    assert out["top10"] == pytest.approx(1.0)
    book2 = _book([("q", s, float(v)) for s, v in zip("ABCDE", [40, 30, 10, 10, 10], strict=True)],
                  {"q": 100.0})
    assert risk.concentration(book2).loc["q", "top3"] == pytest.approx(0.8)


def test_sectors_net_and_gross_with_unclassified_listed():
    book = _book([("p", "A", 60.0), ("p", "B", -20.0), ("p", "X", 10.0)], {"p": 100.0})
    grouped, unclassified = risk.sector_exposures(book, pd.Series({"A": "Tech", "B": "Tech"}))
    tech = grouped[grouped["sector"] == "Tech"].iloc[0]
    assert tech["net_weight"] == pytest.approx(0.4)
    assert tech["gross_weight"] == pytest.approx(0.8)
    assert unclassified["p"] == ["X"]


# --------------------------------------------------------------------------- correlation


def _holdings(portfolio: str, mv: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"portfolio_id": portfolio, "position_id": f"{portfolio}{s}", "symbol": s,
          "risk_symbol": s, "market_value": v, "exposure": v, "is_public": True}
         for s, v in mv.items()]
    )


def test_correlation_matches_pandas_pairwise_complete_and_is_a_valid_matrix():
    symbols = list("ABCDEF")
    rets = _returns(120, symbols, seed=3)
    # Holes: B misses 40 sessions, F has only 20 returns (excluded), C/D overlap partly.
    rets.iloc[-60:-20, 1] = np.nan
    rets.iloc[:-20, 5] = np.nan
    rets.iloc[-90:-65, 2] = np.nan
    rets.iloc[-64:-40, 3] = np.nan
    mv = {"A": 40.0, "B": -10.0, "C": 25.0, "D": 15.0, "E": 5.0, "F": 5.0}
    holdings = pd.concat([_holdings("p1", mv), _holdings("p2", {"A": 1.0, "E": 2.0})])
    ids = pd.Index(["p1", "p2"])
    result = cm.correlate(holdings, ids, rets)

    k = result.n_members[0]
    got_symbols = list(result.symbols[0, :k])
    assert got_symbols == ["A", "C", "D", "B", "E"]  # by gross weight; F excluded (20 obs)
    assert result.excluded[0] == ["F"]
    window = rets.iloc[-90:][got_symbols]
    expected = window.corr(min_periods=30)
    counts = window.notna().astype(int).T @ window.notna().astype(int)
    c = result.corr[0, :k, :k]
    np.testing.assert_array_equal(result.observations[0, :k, :k], counts.to_numpy())
    # Pairs with >= 30 common sessions: close to pandas (repair moves them only slightly).
    raw, _ = cm.pairwise_complete(window.to_numpy()[None])
    enough = counts.to_numpy() >= 30
    assert not enough.all()  # C/D overlap too little: undefined, enters the repair as 0
    np.testing.assert_allclose(raw[0][enough], expected.to_numpy()[enough], atol=1e-12)
    assert np.isnan(expected.to_numpy()[~enough]).all()
    np.testing.assert_allclose(c, c.T, atol=0)
    np.testing.assert_allclose(np.diag(c), 1.0)
    assert np.linalg.eigvalsh(c).min() >= -1e-10
    # The second portfolio is independent of the first (padding does not leak).
    two = result.corr[1, :2, :2]
    assert two[0, 1] == pytest.approx(rets.iloc[-90:][["A", "E"]].corr().iloc[0, 1], abs=1e-9)


def test_repair_of_an_invalid_matrix_is_psd_with_unit_diagonal():
    bad = np.array([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]])
    assert np.linalg.eigvalsh(bad).min() < 0
    fixed = cm.repair_psd(bad[None])[0]
    assert np.linalg.eigvalsh(fixed).min() >= -1e-12
    np.testing.assert_allclose(np.diag(fixed), 1.0)
    np.testing.assert_allclose(fixed, fixed.T)


def test_summary_diversification_ratio_and_effective_bets_by_hand():
    # Two uncorrelated assets, equal weight and vol: DR = 2σ/(σ√2) = √2; ENB = 2.
    corr = np.eye(2)[None]
    assert cm.effective_bets(corr, np.array([[True, True]]))[0] == pytest.approx(2.0)
    # Perfectly correlated: one bet.
    ones = np.ones((1, 2, 2))
    assert cm.effective_bets(ones, np.array([[True, True]]))[0] == pytest.approx(1.0)
    rng = np.random.default_rng(5)
    rets = pd.DataFrame({"A": rng.normal(0, 0.01, 90), "B": rng.normal(0, 0.02, 90)},
                        index=pd.bdate_range("2024-01-01", periods=90))
    out = cm.correlate(_holdings("p", {"A": 60.0, "B": 40.0}), pd.Index(["p"]), rets)
    sigma = rets.std()
    rho = rets.corr().iloc[0, 1]
    w = np.array([0.6, 0.4])
    ws = w * sigma.to_numpy()
    port = np.sqrt(ws[0] ** 2 + ws[1] ** 2 + 2 * rho * ws[0] * ws[1])
    assert out.diversification_ratio[0] == pytest.approx(ws.sum() / port, rel=1e-9)
    assert out.average_correlation[0] == pytest.approx(rho, rel=1e-9)


def test_clusters_equal_scipy_single_linkage_at_the_stated_threshold():
    rng = np.random.default_rng(11)
    f1, f2 = rng.normal(0, 0.01, 90), rng.normal(0, 0.01, 90)
    data = {}
    for i in range(4):
        data[f"G{i}"] = f1 + rng.normal(0, 0.003, 90)
    for i in range(3):
        data[f"H{i}"] = f2 + rng.normal(0, 0.003, 90)
    data["Z"] = rng.normal(0, 0.01, 90)
    rets = pd.DataFrame(data, index=pd.bdate_range("2024-01-01", periods=90))
    mv = {s: float(10 - i) for i, s in enumerate(data)}
    out = cm.correlate(_holdings("p", mv), pd.Index(["p"]), rets)
    k = out.n_members[0]
    c = out.corr[0, :k, :k]
    d = squareform(np.clip(1 - c, 0, None), checks=False)
    ref = fcluster(linkage(d, "single"), cm.CLUSTER_DISTANCE, "distance")
    ours = out.labels[0, :k]
    # Same partition (labels may be numbered differently).
    assert len(set(zip(ours, ref, strict=True))) == len(set(ref)) == len(set(ours))
    groups = {frozenset(np.array(list(out.symbols[0, :k]))[ours == g]) for g in set(ours)}
    assert frozenset({"G0", "G1", "G2", "G3"}) in groups
    assert frozenset({"H0", "H1", "H2"}) in groups


# --------------------------------------------------------------------------- stress


def _scenarios(rows: list[tuple[str, dict]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"scenario_id": sid, "version": 1, "name": sid, "category": "test", "shocks": shocks}
         for sid, shocks in rows]
    )


def _stress_holdings(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"portfolio_id": p, "position_id": f"{p}{i}", "symbol": s, "risk_symbol": s,
          "market_value": mv, "exposure": mv, "is_public": True}
         for i, (p, s, mv) in enumerate(rows)]
    )


def test_one_factor_portfolio_market_minus_20_is_minus_02_times_market_dollars():
    betas = pd.DataFrame({"symbol": ["A", "B"], "factor_name": ["market", "market"],
                          "beta": [1.2, 0.7]})
    holdings = _stress_holdings([("p", "A", 100_000.0), ("p", "B", 50_000.0)])
    moves = stress.scenario_moves(_scenarios([("m20", {"market": -0.20})]), pd.DataFrame())
    out = stress.stress(holdings, pd.Index(["p"]), np.array([150_000.0]), betas, moves)
    market_dollars = 1.2 * 100_000 + 0.7 * 50_000
    assert out.direct[0, 0] == pytest.approx(-0.2 * market_dollars)
    assert out.correlated[0, 0] == pytest.approx(-0.2 * market_dollars)  # no covariance: same
    assert out.pct_of_equity[0, 0] == pytest.approx(-0.2 * market_dollars / 150_000)


def test_rates_shock_goes_through_duration_with_bonds_down_when_rates_rise():
    assert stress.shock_as_return("interest_rate", 100) == pytest.approx(-0.17)
    assert stress.shock_as_return("interest_rate", -25) == pytest.approx(0.0425)
    betas = pd.DataFrame({"symbol": ["TLTX"], "factor_name": ["interest_rate"], "beta": [1.0]})
    moves = stress.scenario_moves(_scenarios([("r", {"interest_rate": 100})]), pd.DataFrame())
    out = stress.stress(_stress_holdings([("p", "TLTX", 10_000.0)]), pd.Index(["p"]),
                        np.array([10_000.0]), betas, moves)
    assert out.direct[0, 0] == pytest.approx(-1_700.0)


def test_conditional_expectation_worked_by_hand():
    # Factors market (σ=2%) and size_spread (σ=1%) with ρ = 0.5: cov = [[4e-4, 1e-4],[1e-4, 1e-4]].
    # Shock market −10% → E[size | market] = (1e-4 / 4e-4) × −0.10 = −0.025.
    cov = pd.DataFrame([[4e-4, 1e-4], [1e-4, 1e-4]], index=["market", "size_spread"],
                       columns=["market", "size_spread"])
    moves = stress.scenario_moves(_scenarios([("m10", {"market": -0.10})]), cov)
    f = moves.factors
    assert moves.correlated[0, f.index("size_spread")] == pytest.approx(-0.025)
    assert moves.correlated[0, f.index("market")] == pytest.approx(-0.10)
    assert moves.direct[0, f.index("size_spread")] == 0.0
    betas = pd.DataFrame({"symbol": ["A", "A"], "factor_name": ["market", "size_spread"],
                          "beta": [1.0, 2.0]})
    out = stress.stress(_stress_holdings([("p", "A", 1_000.0)]), pd.Index(["p"]),
                        np.array([1_000.0]), betas, moves)
    assert out.direct[0, 0] == pytest.approx(-100.0)
    assert out.correlated[0, 0] == pytest.approx(-100.0 + 2.0 * 1_000 * -0.025)
    contributions = dict(zip([*f, stress.GAMMA_KEY], out.contributions[0, 0], strict=True))
    assert contributions["size_spread"] == pytest.approx(-50.0)
    assert contributions["market"] == pytest.approx(-100.0)


def test_conditional_on_two_shocks_matches_the_gaussian_formula():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(500, 3)) @ np.array([[1, 0.5, 0.2], [0, 1, 0.4], [0, 0, 1]])
    cov = pd.DataFrame(np.cov(a.T) * 1e-4, index=["market", "interest_rate", "size_spread"],
                       columns=["market", "interest_rate", "size_spread"])
    moves = stress.scenario_moves(
        _scenarios([("two", {"market": -0.1, "interest_rate": 100})]), cov)
    s = np.array([-0.1, -0.17])
    c = cov.to_numpy()
    expected = c[2, :2] @ np.linalg.inv(c[:2, :2]) @ s
    assert moves.correlated[0, moves.factors.index("size_spread")] == pytest.approx(expected)


def test_net_short_and_zero_equity_books_get_dollars_and_no_sign_flipped_percent():
    betas = pd.DataFrame({"symbol": ["A"], "factor_name": ["market"], "beta": [1.0]})
    holdings = _stress_holdings([("short", "A", -50_000.0), ("zero", "A", 0.0)])
    moves = stress.scenario_moves(_scenarios([("m10", {"market": -0.10})]), pd.DataFrame())
    out = stress.stress(holdings, pd.Index(["short", "zero"]), np.array([-20_000.0, 0.0]), betas,
                        moves)
    assert out.direct[0, 0] == pytest.approx(5_000.0)  # a short book gains when markets fall
    assert np.isnan(out.pct_of_equity[0, 0])  # no % of a negative equity
    assert out.pct_of_gross[0, 0] == pytest.approx(0.10)
    assert out.direct[1, 0] == 0.0 and np.isnan(out.pct_of_gross[1, 0])


def test_option_gamma_term_is_half_gamma_times_the_squared_move():
    betas = pd.DataFrame({"symbol": ["U"], "factor_name": ["market"], "beta": [1.5]})
    holdings = _stress_holdings([("p", "U", 2_000.0)])
    holdings["exposure"] = 5_000.0  # delta dollars
    holdings["gamma_units"] = 0.02 * 200  # Γ × qty × 100
    holdings["spot"] = 100.0
    moves = stress.scenario_moves(_scenarios([("m10", {"market": -0.10})]), pd.DataFrame())
    out = stress.stress(holdings, pd.Index(["p"]), np.array([10_000.0]), betas, moves)
    ds = 100.0 * 1.5 * -0.10
    assert out.direct[0, 0] == pytest.approx(1.5 * 5_000 * -0.10 + 0.5 * 4.0 * ds * ds)


def test_books_without_profiles_or_betas_get_nulls_not_errors():
    book = _book([("p", "A", 10.0), ("p", "B", -5.0)], {"p": 20.0})
    beta, coverage = risk.weighted_beta(book, pd.Series(dtype="float64"))
    assert np.isnan(beta[0]) and coverage[0] == 0.0
    grouped, unclassified = risk.sector_exposures(book, pd.Series(dtype=object))
    assert list(grouped["sector"]) == [risk.UNCLASSIFIED]
    assert unclassified["p"] == ["A", "B"]
    assert grouped["gross_weight"].iloc[0] == pytest.approx(15.0 / 20.0)
