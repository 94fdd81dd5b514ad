"""Stress tests of many portfolios against a versioned scenario set, in matrix form.

Methods:

* **Factors**: the additive set of the factor model whose betas are univariate OLS fits on
  (roughly) independent returns — market (SPY), interest_rate (TLT) and the four spreads
  (VUG−VTV, MTUM−SPY, IWM−SPY, QUAL−SPY) — so their contributions add without counting the
  market twice. A scenario may also shock a style factor (e.g. low_volatility, USMV): it acts
  directly through that beta and is not used to condition the others.
* **Shocks** are factor returns as fractions; a rates shock is in basis points of yield and
  becomes a TLT-like return −D × Δy with D = 17 years (the effective duration of a 20+ year
  Treasury ETF; convexity ignored): +100 bp → −17 %. Rates up, bonds down.
* **Exposure**: a portfolio's dollar exposure to factor f is Σ β_f(risk symbol) × exposure,
  exposure being the market value or, for an option, Δ × qty × 100 × underlying price.
* **Direct impact** = Σ over shocked factors of exposure × shock, plus the options' gamma term.
* **Correlated impact**: the unshocked factors of the additive set move by their conditional
  expectation given the shocked ones, E[u | s] = Σ_us Σ_ss⁻¹ s (Gaussian, zero mean), with
  the covariance of the factors' daily returns over the 252 sessions up to the as-of date
  (sessions where every factor has a return; a factor with fewer than 60 is left out);
  impact = Σ over all factors of exposure × move, plus the gamma term at those moves.
* **Options by delta-gamma**: an option's delta is in its exposure; the gamma term adds
  ½ Γ × qty × 100 × (S × r_u)², r_u = Σ_f β_f(underlying) × move_f the underlying's return in
  the scenario.
* **% of equity** = correlated impact / equity when equity > 0, else null (a net-short or
  zero-equity book still gets dollar impacts; `impact_pct_of_gross` is over gross exposure).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from libs.common.factors import MARKET, RATES, SPREADS, Regressor

RATES_FACTOR = "interest_rate"
#: Years of duration turning a yield shock (bp) into the rates factor's (TLT-like) return.
RATES_DURATION_YEARS = 17.0
COVARIANCE_WINDOW = 252
COVARIANCE_MIN_OBS = 60
GAMMA_KEY = "option_gamma"
#: The additive set: factors whose contributions add and that condition one another.
CONDITIONING: tuple[Regressor, ...] = (*MARKET.regressors, *RATES.regressors, *SPREADS.regressors)
CONDITIONING_FACTORS: tuple[str, ...] = tuple(r.factor for r in CONDITIONING)


def shock_as_return(factor: str, value: float) -> float:
    """A scenario's shock as the factor's return: rates bp through the duration."""
    if factor == RATES_FACTOR:
        return -RATES_DURATION_YEARS * float(value) / 10_000.0
    return float(value)


def factor_returns(returns: pd.DataFrame, regressors: tuple[Regressor, ...] = CONDITIONING) -> pd.DataFrame:
    """Daily returns of each factor (an ETF's, or long minus short) from symbol returns."""
    out = {}
    for reg in regressors:
        if reg.long not in returns.columns or (reg.short and reg.short not in returns.columns):
            continue
        series = returns[reg.long]
        if reg.short is not None:
            series = series - returns[reg.short]
        out[reg.factor] = series
    return pd.DataFrame(out, index=returns.index)


def factor_covariance(returns: pd.DataFrame) -> pd.DataFrame:
    """Covariance of the conditioning factors over the as-of window (complete sessions)."""
    frame = factor_returns(returns.iloc[-COVARIANCE_WINDOW:])
    frame = frame.loc[:, frame.notna().sum() >= COVARIANCE_MIN_OBS]
    frame = frame.dropna()
    if len(frame) < COVARIANCE_MIN_OBS:
        return pd.DataFrame()
    return frame.cov()


@dataclass(frozen=True)
class ScenarioMoves:
    """Factor moves per scenario (rows) and factor (columns), direct and conditional."""

    scenarios: pd.DataFrame  # scenario_id, version, name, category, shocks (as given)
    factors: list[str]
    direct: np.ndarray  # (Sc, F) shocks, 0 where unshocked
    correlated: np.ndarray  # (Sc, F) shocks plus conditional moves of unshocked factors


def scenario_moves(scenarios: pd.DataFrame, covariance: pd.DataFrame) -> ScenarioMoves:
    """Direct shocks and conditional-expectation moves of every scenario."""
    named = {f for shocks in scenarios["shocks"] for f in shocks}
    factors = list(CONDITIONING_FACTORS) + sorted(named - set(CONDITIONING_FACTORS))
    position = {f: i for i, f in enumerate(factors)}
    n = len(scenarios)
    direct = np.zeros((n, len(factors)))
    correlated = np.zeros((n, len(factors)))
    cov_factors = list(covariance.columns)
    cov = covariance.to_numpy(dtype="float64")
    for row, shocks in enumerate(scenarios["shocks"]):
        for factor, value in shocks.items():
            direct[row, position[factor]] = shock_as_return(factor, value)
        correlated[row] = direct[row]
        shocked = [i for i, f in enumerate(cov_factors) if f in shocks]
        free = [i for i, f in enumerate(cov_factors) if f not in shocks]
        if shocked and free:
            s = np.array([direct[row, position[cov_factors[i]]] for i in shocked])
            sigma_ss = cov[np.ix_(shocked, shocked)]
            sigma_us = cov[np.ix_(free, shocked)]
            conditional = sigma_us @ np.linalg.lstsq(sigma_ss, s, rcond=None)[0]
            for i, value in zip(free, conditional, strict=True):
                correlated[row, position[cov_factors[i]]] = value
    return ScenarioMoves(scenarios.reset_index(drop=True), factors, direct, correlated)


@dataclass(frozen=True)
class StressResult:
    """(P, Sc) impacts and (P, Sc, F+1) contributions (the last column is the gamma term)."""

    portfolio_ids: pd.Index
    moves: ScenarioMoves
    direct: np.ndarray
    correlated: np.ndarray
    pct_of_equity: np.ndarray
    pct_of_gross: np.ndarray
    contributions: np.ndarray
    exposures: np.ndarray  # (P, F) factor dollar exposures


def beta_matrix(symbols: pd.Series, betas: pd.DataFrame, factors: list[str]) -> np.ndarray:
    """(len(symbols), F) betas of each symbol, 0 where it has none (last row wins)."""
    f_index = pd.Index(factors)
    fcol = f_index.get_indexer(betas["factor_name"])
    known = fcol >= 0
    s_codes, s_uniques = pd.factorize(betas["symbol"].to_numpy()[known])
    table = np.zeros((len(s_uniques), len(factors)))
    values = np.nan_to_num(betas["beta"].to_numpy(dtype="float64")[known], nan=0.0)
    table[s_codes, fcol[known]] = values
    rows = pd.Index(s_uniques).get_indexer(symbols.where(symbols.notna(), "").to_numpy())
    out = np.zeros((len(symbols), len(factors)))
    out[rows >= 0] = table[rows[rows >= 0]]
    return out


def stress(
    holdings: pd.DataFrame,
    portfolio_ids: pd.Index,
    equity: np.ndarray,
    betas: pd.DataFrame,
    moves: ScenarioMoves,
) -> StressResult:
    """Impacts of every scenario on every portfolio.

    holdings: portfolio_id, risk_symbol, exposure, market_value, and for options
    gamma_units (Γ × qty × 100) and spot (the underlying price); NaN elsewhere.
    """
    factors = moves.factors
    rows = portfolio_ids.get_indexer(holdings["portfolio_id"].astype(str))
    b = beta_matrix(holdings["risk_symbol"], betas, factors)  # (H, F)
    exposure = holdings["exposure"].to_numpy(dtype="float64")
    ok = rows >= 0
    p = len(portfolio_ids)
    owner = sparse.csr_matrix(
        (np.ones(int(ok.sum())), (rows[ok], np.flatnonzero(ok))), shape=(p, len(holdings))
    )
    factor_dollars = np.asarray(owner @ (b * exposure[:, None]))  # (P, F)

    gamma_units = np.nan_to_num(holdings.get("gamma_units", pd.Series(np.nan, index=holdings.index))
                                .to_numpy(dtype="float64"), nan=0.0)
    spot = np.nan_to_num(holdings.get("spot", pd.Series(np.nan, index=holdings.index))
                         .to_numpy(dtype="float64"), nan=0.0)
    has_gamma = gamma_units != 0
    gamma_direct = np.zeros((p, len(moves.scenarios)))
    gamma_corr = np.zeros((p, len(moves.scenarios)))
    if has_gamma.any():
        g = 0.5 * gamma_units[has_gamma] * spot[has_gamma] ** 2  # dollars per (return)^2
        bg = b[has_gamma]
        sub_owner = owner[:, np.flatnonzero(has_gamma)]
        gamma_direct = np.asarray(sub_owner @ (g[:, None] * (bg @ moves.direct.T) ** 2))
        gamma_corr = np.asarray(sub_owner @ (g[:, None] * (bg @ moves.correlated.T) ** 2))

    direct = factor_dollars @ moves.direct.T + gamma_direct
    correlated = factor_dollars @ moves.correlated.T + gamma_corr
    contributions = np.concatenate(
        [factor_dollars[:, None, :] * moves.correlated[None, :, :], gamma_corr[:, :, None]], axis=2
    )
    gross = np.asarray(owner @ np.abs(holdings["market_value"].to_numpy(dtype="float64")))
    with np.errstate(invalid="ignore", divide="ignore"):
        pct_equity = np.where(equity[:, None] > 0, correlated / equity[:, None], np.nan)
        pct_gross = np.where(gross[:, None] > 0, correlated / gross[:, None], np.nan)
    return StressResult(portfolio_ids, moves, direct, correlated, pct_equity, pct_gross,
                        contributions, factor_dollars)
