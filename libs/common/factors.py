"""Vectorised factor engine (docs/design.md §6): every symbol of a date in one pass, no I/O.

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
coefficients of the joint ridge), n_obs the days used. quality is ``full`` when the symbol was
observed on every session of the window its regressors were (a day the factor ETFs lack, e.g.
one missing ETF quote, is nobody's fault and does not make every symbol ``limited``) and the
regressors themselves miss at most ``REGRESSOR_GAP_TOLERANCE`` sessions; ``limited`` otherwise.
Below ``min_obs`` no row is produced at all (a missing beta is honest, a zero would read as "no
exposure"), and neither for a symbol without a return in the last ``STALE_SYMBOL_SESSIONS``
sessions (delisted or suspended: its old window would pass for fresh betas).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from functools import cached_property
from typing import Literal

import numpy as np
import pandas as pd

BETA_CAP = 5.0
#: Sessions of the window the factor ETFs may lack and betas still count as full history.
REGRESSOR_GAP_TOLERANCE = 2
#: A symbol with no return in this many latest sessions gets no fresh betas.
STALE_SYMBOL_SESSIONS = 5
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
    values = ordered.to_numpy(np.float64)
    returns = np.full_like(values, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        returns[1:] = values[1:] / values[:-1] - 1.0
    # One float block: slicing a window and taking its values later is a view, not a copy.
    return pd.DataFrame(returns, index=ordered.index, columns=ordered.columns)


@dataclass(frozen=True)
class _Fit:
    beta: np.ndarray  # (n_symbols, n_factors)
    r2: np.ndarray  # (n_symbols, n_factors)
    n_obs: np.ndarray  # (n_symbols, n_factors)
    sessions: np.ndarray  # (n_factors,) rows of the window where the regressor(s) had a value


def _window(returns: pd.DataFrame, as_of: date | pd.Timestamp, length: int) -> pd.DataFrame:
    end = returns.index.searchsorted(pd.Timestamp(as_of), side="right")
    if end == 0 or returns.index[end - 1] != pd.Timestamp(as_of):
        raise KeyError(f"{as_of} is not a row of the returns frame")
    return returns.iloc[max(0, end - length) : end]


@dataclass(frozen=True)
class _Response:
    """The symbols' returns over one set of rows, centred per symbol on its own valid days.

    Centring y exactly (two-pass) is what keeps the cross-products free of cancellation; the
    regressors then only need a global shift, and every per-symbol sum becomes one BLAS
    matrix product over all symbols instead of a loop.
    """

    weight: np.ndarray  # (T, N) 1.0 where the symbol and the regressors have a value
    n: np.ndarray  # (N,)
    centred: np.ndarray  # (T, N), zero where weight is 0

    @classmethod
    def of(cls, y: np.ndarray, valid: np.ndarray) -> _Response:
        weight = valid.astype(np.float64)
        n = weight.sum(axis=0)
        centred = np.where(valid, y, 0.0)
        centred -= centred.sum(axis=0) / np.where(n > 0, n, 1.0)
        centred *= weight
        return cls(weight, n, centred)

    @cached_property
    def sum_squares(self) -> np.ndarray:
        return np.einsum("tn,tn->n", self.centred, self.centred)


def _shifted(x: np.ndarray, row_ok: np.ndarray) -> np.ndarray:
    """Regressor(s) minus their mean over the usable rows, zero on unusable rows."""
    centre = x[row_ok].mean(axis=0) if row_ok.any() else 0.0
    return np.where(row_ok.reshape(row_ok.shape + (1,) * (x.ndim - 1)), x - centre, 0.0)


def _ols_univariate(x: np.ndarray, response: _Response) -> tuple[np.ndarray, np.ndarray]:
    """OLS with intercept of every symbol on one regressor x (T,), each on its own days.

    With xg = x - c: Sxx_i = sum w xg^2 - (sum w xg)^2 / n_i and Sxy_i = sum xg * yc_i
    (yc_i sums to zero, so the shift c drops out). Returns beta and r2 per symbol.
    """
    xg = _shifted(x, ~np.isnan(x))
    w, n = response.weight, np.where(response.n > 0, response.n, 1.0)
    sx = xg @ w
    sxx = (xg * xg) @ w - sx * sx / n
    sxy = xg @ response.centred
    syy = response.sum_squares
    with np.errstate(divide="ignore", invalid="ignore"):
        beta = np.where(sxx > 0, sxy / sxx, np.nan)
        r2 = np.where((sxx > 0) & (syy > 0), np.minimum(sxy * sxy / (sxx * syy), 1.0), 0.0)
    return beta, r2


def _ridge_standardised(
    x: np.ndarray, row_ok: np.ndarray, response: _Response, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with intercept on standardised regressors (T, K), every symbol at once.

    For symbol i with valid days, centred Gram matrix G_i, cross-products b_i and population
    variances s2_i = diag(G_i)/n_i: (G_i + alpha*diag(s2_i)) beta_i = b_i, which is
    scikit-learn's Ridge on StandardScaler output with the coefficients divided back by the
    scale. The K*K Gram entries of all symbols come from one (K*K, T) x (T, N) product, the
    systems are solved in one batched call.
    """
    t, k = x.shape
    xg = _shifted(x, row_ok)
    w = response.weight
    n = np.where(response.n > 0, response.n, 1.0)
    sx = (xg.T @ w).T  # (N, K)
    outer = (xg[:, :, None] * xg[:, None, :]).reshape(t, k * k)
    gram = (outer.T @ w).T.reshape(-1, k, k) - sx[:, :, None] * sx[:, None, :] / n[:, None, None]
    xty = (xg.T @ response.centred).T  # (N, K)
    variance = np.diagonal(gram, axis1=1, axis2=2) / n[:, None]
    variance = np.where(variance > 0, variance, 1.0)  # StandardScaler leaves constant columns as is
    system = gram + alpha * variance[:, :, None] * np.eye(k)[None, :, :]
    beta = np.linalg.solve(system, xty[:, :, None])[:, :, 0]
    ss_tot = response.sum_squares
    ss_res = (
        ss_tot
        - 2.0 * np.einsum("nk,nk->n", beta, xty)
        + np.einsum("nk,nkl,nl->n", beta, gram, beta)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, 0.0)
    return beta, r2


def _fit_model(
    model: FactorModel,
    etf: dict[str, np.ndarray],
    y: np.ndarray,
    responses: dict[tuple[int, bytes], _Response],
) -> _Fit | None:
    """Fit one model on the last ``model.window`` rows; ``etf`` maps ETF -> its return column.

    ``responses`` is shared by the models of one date: fits over the same rows (market, rates
    and styles use the same 90 sessions) centre the symbols' returns once.
    """
    needed = {name for r in model.regressors for name in r.etfs}
    if not needed <= set(etf):
        return None
    length = min(model.window, y.shape[0])
    rows = slice(y.shape[0] - length, None)
    y = y[rows]

    def response_for(row_ok: np.ndarray) -> _Response:
        key = (length, row_ok.tobytes())
        if key not in responses:
            responses[key] = _Response.of(y, ~np.isnan(y) & row_ok[:, None])
        return responses[key]

    if model.method == "ols":
        betas, r2s, ns, sessions = [], [], [], []
        for reg in model.regressors:  # one univariate fit per regressor, all symbols at once
            x = etf[reg.long][rows]
            if reg.short is not None:
                x = x - etf[reg.short][rows]
            response = response_for(~np.isnan(x))
            beta, r2 = _ols_univariate(x, response)
            betas.append(beta)
            r2s.append(r2)
            ns.append(response.n)
            sessions.append(int((~np.isnan(x)).sum()))
        return _Fit(np.column_stack(betas), np.column_stack(r2s), np.column_stack(ns),
                    np.asarray(sessions))
    x = np.column_stack([etf[r.long][rows] for r in model.regressors])
    row_ok = ~np.isnan(x).any(axis=1)
    response = response_for(row_ok)
    beta, r2 = _ridge_standardised(x, row_ok, response, model.alpha)
    k = len(model.regressors)
    n = response.n
    return _Fit(beta, np.repeat(r2[:, None], k, axis=1), np.repeat(n[:, None], k, axis=1),
                np.full(k, int(row_ok.sum())))


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
    values = frame.to_numpy(np.float64)  # one conversion; everything below is numpy
    position = frame.columns.get_indexer(symbols)
    y_all = np.full((len(frame), len(symbols)), np.nan)
    y_all[:, position >= 0] = values[:, position[position >= 0]]
    etf_position = frame.columns.get_indexer(list(FACTOR_ETFS))
    etf = {e: values[:, i] for e, i in zip(FACTOR_ETFS, etf_position, strict=True) if i >= 0}
    symbol_names = np.asarray(symbols, dtype=object)
    # Sessions since each symbol's last return (the whole window if none): stale ones get no betas.
    observed = ~np.isnan(y_all)
    since_last = np.where(observed.any(axis=0), np.argmax(observed[::-1], axis=0), len(frame))
    fresh = since_last < STALE_SYMBOL_SESSIONS
    pieces = []
    responses: dict[tuple[int, bytes], _Response] = {}
    for model in models:
        fit = _fit_model(model, etf, y_all, responses)
        if fit is None:
            continue
        n_obs = fit.n_obs.astype(np.int64)
        keep = (n_obs >= model.min_obs) & np.isfinite(fit.beta) & fresh[:, None]
        complete = (n_obs >= fit.sessions[None, :]) & (
            fit.sessions[None, :] >= model.window - REGRESSOR_GAP_TOLERANCE
        )
        sym_idx, fac_idx = np.nonzero(keep)
        factor_names = np.asarray(model.factors, dtype=object)
        pieces.append(
            pd.DataFrame(
                {
                    "symbol": symbol_names[sym_idx],
                    "factor": factor_names[fac_idx],
                    "beta": np.clip(fit.beta[keep], -BETA_CAP, BETA_CAP),
                    "r2": fit.r2[keep],
                    "n_obs": n_obs[keep],
                    "quality": np.where(complete[keep], QUALITY_FULL, QUALITY_LIMITED).astype(
                        object
                    ),
                }
            )
        )
    if not pieces:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in EXPOSURE_COLUMNS})
    return pd.concat(pieces, ignore_index=True)
