"""The vectorised factor engine against per-symbol statsmodels OLS / scikit-learn Ridge fits.

Data: the real adjusted closes of tests/fixtures/prices. Proxies for the factor ETFs the
fixtures lack: SPY <- SP500 index, VTV <- VLUE, IWM <- SIZE (MTUM, QUAL, USMV are real); VUG and
TLT are not in the fixtures at all, so two real stock series (AAPL, PG) stand in for them here:
the comparison is numerical, and only needs real, realistically correlated series.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from libs.common import factors as fx

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "prices"
TOL = 1e-8
STOCKS = ["AMD", "BAC", "BBY", "CVX", "GE", "HD", "JNJ", "JPM", "KO", "LLY", "MRK", "MSFT", "XOM"]


def _fixture_dir() -> Path:
    assert FIXTURES.exists(), f"{FIXTURES} missing: the repository carries its fixtures"
    return FIXTURES


@pytest.fixture(scope="module")
def returns() -> pd.DataFrame:
    base = _fixture_dir()
    stocks = pd.read_csv(
        base / "sp500_stocks_and_index_daily.csv", index_col="date", parse_dates=True
    )
    etfs = pd.read_csv(base / "factor_etfs_daily.csv", index_col="date", parse_dates=True)
    prices = stocks.join(etfs, how="inner").loc["2021-01-01":]
    prices = prices.rename(columns={"SP500": "SPY", "VLUE": "VTV", "SIZE": "IWM"})
    prices["VUG"] = prices["AAPL"]
    prices["TLT"] = prices["PG"]
    frame = prices[STOCKS + list(fx.FACTOR_ETFS)].copy()
    rng = np.random.default_rng(7)
    # Holes inside the windows: a few symbols miss random days (never a factor ETF).
    for symbol, holes in (("AMD", 9), ("GE", 25), ("KO", 3)):
        frame.loc[frame.index[rng.choice(len(frame) - 1, holes, replace=False)], symbol] = np.nan
    # A recent listing: only 45 days of prices (enough for the 90d models, not for the 180d ones).
    frame["NEWCO"] = np.nan
    frame.iloc[-45:, frame.columns.get_loc("NEWCO")] = prices["HD"].iloc[-45:].to_numpy() * 0.5
    # Too short for anything.
    frame["TINY"] = np.nan
    frame.iloc[-20:, frame.columns.get_loc("TINY")] = prices["JPM"].iloc[-20:].to_numpy()
    return fx.daily_returns(frame)


@pytest.fixture(scope="module")
def as_of(returns: pd.DataFrame) -> pd.Timestamp:
    return returns.index[-1]


@pytest.fixture(scope="module")
def exposures(returns: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    return fx.compute_exposures(returns, as_of)


def _row(exposures: pd.DataFrame, symbol: str, factor: str) -> pd.Series:
    hit = exposures[(exposures.symbol == symbol) & (exposures.factor == factor)]
    assert len(hit) == 1, (symbol, factor, len(hit))
    return hit.iloc[0]


def _aligned(returns: pd.DataFrame, as_of, window: int, symbol: str, cols: list[str]):
    window_rows = returns.loc[:as_of].iloc[-window:]
    frame = pd.concat([window_rows[symbol].rename("__y__"), window_rows[cols]], axis=1).dropna()
    return frame["__y__"].to_numpy(), frame[cols].to_numpy()


def _symbols(returns: pd.DataFrame) -> list[str]:
    return [c for c in returns.columns if c != "TINY"]


def test_market_and_rates_betas_match_statsmodels_ols(returns, as_of, exposures):
    for symbol in _symbols(returns):
        for model in (fx.MARKET, fx.RATES):
            etf = model.regressors[0].long
            y, x = _aligned(returns, as_of, model.window, symbol, [etf])
            fit = sm.OLS(y, sm.add_constant(x[:, 0])).fit()
            row = _row(exposures, symbol, model.factors[0])
            assert row.beta == pytest.approx(np.clip(fit.params[1], -5, 5), abs=TOL)
            assert row.r2 == pytest.approx(fit.rsquared, abs=TOL)
            assert row.n_obs == len(y)


def test_style_betas_match_sklearn_ridge_on_standardised_regressors(returns, as_of, exposures):
    etfs = [r.long for r in fx.STYLE.regressors]
    for symbol in _symbols(returns):
        y, x = _aligned(returns, as_of, fx.STYLE.window, symbol, etfs)
        scaler = StandardScaler().fit(x)
        ridge = Ridge(alpha=1.0).fit(scaler.transform(x), y)
        expected = ridge.coef_ / scaler.scale_
        r2 = ridge.score(scaler.transform(x), y)
        for factor, beta in zip(fx.STYLE.factors, expected, strict=True):
            row = _row(exposures, symbol, factor)
            assert row.beta == pytest.approx(np.clip(beta, -5, 5), abs=TOL)
            assert row.r2 == pytest.approx(r2, abs=TOL)
            assert row.n_obs == len(y)


def test_spread_betas_are_univariate_ols_per_spread(returns, as_of, exposures):
    for symbol in [s for s in _symbols(returns) if s != "NEWCO"]:
        for reg in fx.SPREADS.regressors:
            window = returns.loc[:as_of].iloc[-fx.SPREADS.window :]
            frame = pd.DataFrame(
                {"y": window[symbol], "x": window[reg.long] - window[reg.short]}
            ).dropna()
            fit = sm.OLS(frame.y.to_numpy(), sm.add_constant(frame.x.to_numpy())).fit()
            row = _row(exposures, symbol, reg.factor)
            assert row.beta == pytest.approx(np.clip(fit.params[1], -5, 5), abs=TOL)
            assert row.r2 == pytest.approx(fit.rsquared, abs=TOL)
            assert row.n_obs == len(frame)


def test_spy_market_beta_is_one_with_r2_one(exposures):
    row = _row(exposures, "SPY", "market")
    assert row.beta == pytest.approx(1.0, abs=1e-12)
    assert row.r2 == pytest.approx(1.0, abs=1e-12)
    assert row.quality == fx.QUALITY_FULL


def test_quality_flags_and_minimum_observations(exposures):
    assert _row(exposures, "MSFT", "market").quality == fx.QUALITY_FULL
    assert _row(exposures, "AMD", "market").quality == fx.QUALITY_LIMITED  # holes in the window
    newco = exposures[exposures.symbol == "NEWCO"]
    assert set(newco.factor) == set(fx.MARKET.factors + fx.RATES.factors + fx.STYLE.factors)
    assert (newco.quality == fx.QUALITY_LIMITED).all()
    assert (newco.n_obs == 44).all()
    assert exposures[exposures.symbol == "TINY"].empty
    assert set(exposures.factor) == set(fx.ALL_FACTORS)
    assert len(fx.ALL_FACTORS) == 12


def test_betas_are_capped_at_five(returns, as_of):
    levered = returns.copy()
    levered["LEVER"] = returns["SPY"] * 9.0 + 0.0001
    levered["SHORTY"] = -returns["SPY"] * 7.0
    out = fx.compute_exposures(levered, as_of, symbols=["LEVER", "SHORTY"])
    assert _row(out, "LEVER", "market").beta == 5.0
    assert _row(out, "SHORTY", "market").beta == -5.0
    assert _row(out, "LEVER", "market").r2 == pytest.approx(1.0, abs=1e-12)


def test_result_for_one_symbol_does_not_depend_on_the_others(returns, as_of, exposures):
    alone = fx.compute_exposures(returns, as_of, symbols=["GE"])
    together = exposures[exposures.symbol == "GE"].reset_index(drop=True)
    pd.testing.assert_frame_equal(
        alone.sort_values("factor").reset_index(drop=True),
        together.sort_values("factor").reset_index(drop=True),
        check_exact=False,
        atol=1e-12,
    )


def test_missing_factor_etf_drops_only_its_models(returns, as_of):
    out = fx.compute_exposures(returns.drop(columns=["TLT"]), as_of, symbols=["MSFT"])
    assert "interest_rate" not in set(out.factor)
    assert "market" in set(out.factor)


def test_as_of_must_be_a_row(returns):
    with pytest.raises(KeyError):
        fx.compute_exposures(returns, pd.Timestamp("2022-12-25"))


def test_daily_returns_never_bridge_a_gap():
    prices = pd.DataFrame(
        {"A": [10.0, np.nan, 12.0, 13.2]}, index=pd.date_range("2024-01-01", periods=4)
    )
    r = fx.daily_returns(prices)["A"].to_numpy()
    assert np.isnan(r[:3]).all()
    assert r[3] == pytest.approx(0.1)


@settings(max_examples=40, deadline=None)
@given(
    slope=st.floats(-6.0, 6.0, allow_nan=False),
    intercept=st.floats(-0.01, 0.01, allow_nan=False),
    holes=st.integers(0, 50),
)
def test_an_exact_linear_symbol_gets_its_slope_capped_with_r2_one(
    returns, as_of, slope, intercept, holes
):
    frame = returns[list(fx.FACTOR_ETFS)].copy()
    y = intercept + slope * frame["SPY"]
    y.iloc[-1 - holes : -1 : 3] = np.nan  # some holes inside the window
    frame["LINEAR"] = y
    out = fx.compute_exposures(frame, as_of, symbols=["LINEAR"])
    market = _row(out, "LINEAR", "market")
    assert market.beta == pytest.approx(np.clip(slope, -5, 5), abs=1e-9)
    if abs(slope) > 1e-6:
        assert market.r2 == pytest.approx(1.0, abs=1e-9)
    assert market.n_obs == 90 - len(range(0, holes, 3))  # the holes all fall in the window


def test_one_missing_etf_day_does_not_make_every_symbol_limited(returns, as_of):
    gap = returns.copy()
    gap.loc[gap.index[-10], "SPY"] = np.nan  # the ETF lacks one session of the window
    out = fx.compute_exposures(gap, as_of, symbols=["MSFT", "AMD"])
    msft = _row(out, "MSFT", "market")
    assert msft.n_obs == 89 and msft.quality == fx.QUALITY_FULL
    assert _row(out, "AMD", "market").quality == fx.QUALITY_LIMITED  # its own holes still count
    # Many missing ETF sessions are thin data for everyone: limited.
    thin = returns.copy()
    thin.loc[thin.index[-30:-20], "SPY"] = np.nan
    assert _row(fx.compute_exposures(thin, as_of, symbols=["MSFT"]), "MSFT",
                "market").quality == fx.QUALITY_LIMITED


def test_a_symbol_without_recent_prices_gets_no_fresh_betas(returns, as_of):
    frame = returns.copy()
    frame["GONE"] = frame["MSFT"]
    frame.iloc[-fx.STALE_SYMBOL_SESSIONS:, frame.columns.get_loc("GONE")] = np.nan  # delisted
    frame["PAUSED"] = frame["MSFT"]
    frame.iloc[-(fx.STALE_SYMBOL_SESSIONS - 1):, frame.columns.get_loc("PAUSED")] = np.nan
    out = fx.compute_exposures(frame, as_of, symbols=["GONE", "PAUSED"])
    assert out[out.symbol == "GONE"].empty
    assert _row(out, "PAUSED", "market").n_obs == 90 - (fx.STALE_SYMBOL_SESSIONS - 1)
