"""Vectorised factor engine (DESIGN §6): every symbol of a date in one pass, no I/O.

Input is a wide frame of daily simple returns (rows = trading sessions in ascending order,
columns = symbols, NaN where a symbol has no return that day) that also holds the factor ETFs'
columns. For one as-of date each regression runs for all symbols at once: per-symbol masks select
the days a symbol traded, masked sums give the per-symbol means, and centred cross-products are
formed with one batched matmul; ridge systems are solved with one batched ``np.linalg.solve``.
There is no Python loop over symbols, so a symbol with holes in its window is handled by the same
arithmetic as a complete one and the result equals a per-symbol fit on its own non-missing days.

Models (the factor set of the original system):

- Market: OLS with intercept of the symbol's return on SPY, 90 sessions, >= 30 observations.
- Interest Rate: OLS with intercept on TLT, 90 sessions, >= 30 observations.
- Style (Value, Growth, Momentum, Quality, Size, Low Volatility): one joint ridge regression on
  VTV, VUG, MTUM, QUAL, IWM, USMV, 90 sessions, >= 30 observations, alpha 1.0, intercept fitted
  and not penalised (scikit-learn's ``Ridge(fit_intercept=True)``). The regressors are
  standardised per fit (``StandardScaler``, population std) and the coefficients mapped back to
  return units, as the original system did: on raw daily returns (sum of squares ~1e-2) alpha 1.0
  would shrink every beta to ~0, whereas on standardised regressors it is a mild penalty against
  the style ETFs' collinearity (they all carry ~0.9 market correlation).
- Spreads (Growth-Value VUG-VTV, Momentum MTUM-SPY, Size IWM-SPY, Quality QUAL-SPY): one
  *univariate* OLS per spread, 180 sessions, >= 60 observations. Univariate on purpose: the
  spreads were introduced to escape multicollinearity, yet three of them share the -SPY leg and
  are correlated with each other; a joint regression would bring back unstable, sign-flipping
  partial coefficients, while the univariate beta reads as "how much does this symbol tilt with
  that spread" and matches how the original system stored them.

Every beta is capped at +/-5. r2 is the fit's in-sample R^2 (of the uncapped fit; shared by all
coefficients of the joint ridge), n_obs the days used. quality is ``full`` when every session of
the window was observed and ``limited`` otherwise; below ``min_obs`` no row is produced at all
(a missing beta is honest, a zero would read as "no exposure").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal

import numpy as np
import pandas as pd

BETA_CAP = 5.0
QUALITY_FULL = "full"
QUALITY_LIMITED = "limited"


@dataclass(frozen=True)
class Regressor:
    """One factor's explanatory series: an ETF's return, or a long-minus-short spread."""

    factor: str
    long: str
    short: str | None = None

    @property
    def etfs(self) -> tuple[str, ...]:
        return (self.long,) if self.short is None else (self.long, self.short)


@dataclass(frozen=True)
class FactorModel:
    """A regression family: ``ols`` fits each regressor alone, ``ridge`` fits them jointly."""

    name: str
    method: Literal["ols", "ridge"]
    regressors: tuple[Regressor, ...]
    window: int
    min_obs: int
    alpha: float = 0.0

    @property
    def factors(self) -> tuple[str, ...]:
        return tuple(r.factor for r in self.regressors)


MARKET = FactorModel("market", "ols", (Regressor("market", "SPY"),), window=90, min_obs=30)
RATES = FactorModel("rates", "ols", (Regressor("interest_rate", "TLT"),), window=90, min_obs=30)
STYLE = FactorModel(
    "style",
    "ridge",
    (
        Regressor("value", "VTV"),
        Regressor("growth", "VUG"),
        Regressor("momentum", "MTUM"),
        Regressor("quality", "QUAL"),
        Regressor("size", "IWM"),
        Regressor("low_volatility", "USMV"),
    ),
    window=90,
    min_obs=30,
    alpha=1.0,
)
SPREADS = FactorModel(
    "spread",
    "ols",
    (
        Regressor("growth_value_spread", "VUG", "VTV"),
        Regressor("momentum_spread", "MTUM", "SPY"),
        Regressor("size_spread", "IWM", "SPY"),
        Regressor("quality_spread", "QUAL", "SPY"),
    ),
    window=180,
    min_obs=60,
)
FACTOR_MODELS: tuple[FactorModel, ...] = (MARKET, RATES, STYLE, SPREADS)
FACTOR_ETFS: tuple[str, ...] = ("SPY", "TLT", "VTV", "VUG", "MTUM", "QUAL", "IWM", "USMV")
ALL_FACTORS: tuple[str, ...] = tuple(f for m in FACTOR_MODELS for f in m.factors)
# Sessions of price history the widest window needs before its as-of date (returns need one more).
LOOKBACK_SESSIONS = max(m.window for m in FACTOR_MODELS) + 1

EXPOSURE_COLUMNS = ["symbol", "factor", "beta", "r2", "n_obs", "quality"]


def daily_returns(prices: pd.DataFrame) -> pd.DataFrame:
    """Simple returns on adjusted closes; NaN unless both this and the previous row have a price.

    A gap is never bridged into a multi-day return, which would be misaligned with the factors'
    one-day returns.
    """
    ordered = prices.sort_index()
    return ordered / ordered.shift(1) - 1.0


@dataclass(frozen=True)
class _Fit:
    beta: np.ndarray  # (n_symbols, n_factors)
    r2: np.ndarray  # (n_symbols, n_factors)
    n_obs: np.ndarray  # (n_symbols, n_factors)


def _window(returns: pd.DataFrame, as_of: date | pd.Timestamp, length: int) -> pd.DataFrame:
    end = returns.index.searchsorted(pd.Timestamp(as_of), side="right")
    if end == 0 or returns.index[end - 1] != pd.Timestamp(as_of):
        raise KeyError(f"{as_of} is not a row of the returns frame")
    return returns.iloc[max(0, end - length) : end]


def _ols_univariate(x: np.ndarray, y: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, ...]:
    """OLS with intercept of every column of y on x, each over its own valid rows.

    Two-pass (centre then multiply) so nearly collinear series, e.g. SPY on SPY, keep full
    precision. Returns beta, r2, n per column.
    """
    w = valid.astype(np.float64)
    n = w.sum(axis=0)
    safe_n = np.where(n > 0, n, 1.0)
    x_col = np.where(valid, x[:, None], 0.0)
    y_col = np.where(valid, y, 0.0)
    xc = (x_col - x_col.sum(axis=0) / safe_n) * w
    yc = (y_col - y_col.sum(axis=0) / safe_n) * w
    sxx = np.einsum("tn,tn->n", xc, xc)
    sxy = np.einsum("tn,tn->n", xc, yc)
    syy = np.einsum("tn,tn->n", yc, yc)
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = np.where(sxx > 0, sxy / sxx, np.nan)
        r2 = np.where((sxx > 0) & (syy > 0), sxy * sxy / (sxx * syy), 0.0)
    return beta, r2, n


def _ridge_standardised(
    x: np.ndarray, y: np.ndarray, valid: np.ndarray, alpha: float
) -> tuple[np.ndarray, ...]:
    """Ridge with intercept on standardised regressors, every column of y at once.

    For symbol i with valid rows W_i, centred regressors Xc_i and response yc_i and population
    variances s2_i: (Xc_i'Xc_i + alpha*diag(s2_i)) beta_i = Xc_i'yc_i, which is scikit-learn's
    Ridge on StandardScaler output with the coefficients divided back by the scale.
    """
    w = valid.astype(np.float64).T  # (N, T)
    n = w.sum(axis=1)
    safe_n = np.where(n > 0, n, 1.0)
    mean_x = (w @ x) / safe_n[:, None]  # (N, K)
    xc = (x[None, :, :] - mean_x[:, None, :]) * w[:, :, None]  # (N, T, K)
    y_rows = np.where(valid, y, 0.0).T  # (N, T)
    yc = (y_rows - (y_rows.sum(axis=1) / safe_n)[:, None]) * w
    gram = np.matmul(xc.transpose(0, 2, 1), xc)  # (N, K, K)
    xty = np.matmul(xc.transpose(0, 2, 1), yc[:, :, None])  # (N, K, 1)
    variance = np.diagonal(gram, axis1=1, axis2=2) / safe_n[:, None]
    variance = np.where(variance > 0, variance, 1.0)  # StandardScaler leaves constant columns as is
    k = x.shape[1]
    system = gram + alpha * variance[:, :, None] * np.eye(k)[None, :, :]
    beta = np.linalg.solve(system, xty)[:, :, 0]
    resid = yc - np.matmul(xc, beta[:, :, None])[:, :, 0] * w
    ss_res = np.einsum("nt,nt->n", resid, resid)
    ss_tot = np.einsum("nt,nt->n", yc, yc)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, 0.0)
    return beta, r2, n


def _fit_model(model: FactorModel, window: pd.DataFrame, y: np.ndarray) -> _Fit | None:
    needed = {etf for r in model.regressors for etf in r.etfs}
    if not needed <= set(window.columns):
        return None
    symbol_present = ~np.isnan(y)
    if model.method == "ols":
        betas, r2s, ns = [], [], []
        for reg in model.regressors:  # one univariate fit per regressor, all symbols at once
            x = window[reg.long].to_numpy(np.float64)
            if reg.short is not None:
                x = x - window[reg.short].to_numpy(np.float64)
            valid = symbol_present & ~np.isnan(x)[:, None]
            beta, r2, n = _ols_univariate(x, y, valid)
            betas.append(beta)
            r2s.append(r2)
            ns.append(n)
        return _Fit(np.column_stack(betas), np.column_stack(r2s), np.column_stack(ns))
    x = window[[r.long for r in model.regressors]].to_numpy(np.float64)
    row_ok = ~np.isnan(x).any(axis=1)
    valid = symbol_present & row_ok[:, None]
    x = np.where(row_ok[:, None], x, 0.0)
    beta, r2, n = _ridge_standardised(x, y, valid, model.alpha)
    k = len(model.regressors)
    return _Fit(beta, np.repeat(r2[:, None], k, axis=1), np.repeat(n[:, None], k, axis=1))


def compute_exposures(
    returns: pd.DataFrame,
    as_of: date | pd.Timestamp,
    symbols: list[str] | None = None,
    models: tuple[FactorModel, ...] = FACTOR_MODELS,
) -> pd.DataFrame:
    """Factor betas of every symbol for one as-of date (a row of ``returns``).

    ``symbols`` defaults to every column of ``returns``, factor ETFs included (SPY's market beta
    is 1 with r2 1). A model whose ETFs are absent from the frame yields no rows; a symbol with
    fewer than the model's ``min_obs`` days yields no rows for that model.
    Returns a long frame with columns symbol, factor, beta, r2, n_obs, quality.
    """
    symbols = list(returns.columns) if symbols is None else list(symbols)
    longest = max(m.window for m in models)
    frame = _window(returns, as_of, longest)
    y_all = frame.reindex(columns=symbols).to_numpy(np.float64)
    pieces = []
    for model in models:
        window = frame.iloc[-model.window :]
        fit = _fit_model(model, window, y_all[-len(window) :])
        if fit is None:
            continue
        n_obs = fit.n_obs.astype(np.int64)
        keep = (n_obs >= model.min_obs) & np.isfinite(fit.beta)
        sym_idx, fac_idx = np.nonzero(keep)
        factor_names = np.asarray(model.factors, dtype=object)
        pieces.append(
            pd.DataFrame(
                {
                    "symbol": np.asarray(symbols, dtype=object)[sym_idx],
                    "factor": factor_names[fac_idx],
                    "beta": np.clip(fit.beta[keep], -BETA_CAP, BETA_CAP),
                    "r2": fit.r2[keep],
                    "n_obs": n_obs[keep],
                    "quality": np.where(
                        n_obs[keep] >= model.window, QUALITY_FULL, QUALITY_LIMITED
                    ).astype(object),
                }
            )
        )
    if not pieces:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in EXPOSURE_COLUMNS})
    return pd.concat(pieces, ignore_index=True)
