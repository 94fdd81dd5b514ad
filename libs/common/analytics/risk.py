"""Snapshot risk of many portfolios at once: return series, volatility, beta, concentration.

Methods (stated once here; docs/design.md §10 repeats them):

* **Holdings-based return series**: today's holdings applied to past sessions. A holding's
  dollar exposure is its market value, or for an option Δ × qty × 100 × underlying price
  (delta-adjusted, moving with the underlying); carried assets (private, cash) have no
  returns. Daily P&L_s = Σ exposure_i × r_i,s (simple returns on adjusted closes; a missing
  return counts 0, as a stale price would) and the return is P&L_s / base, where base is the
  snapshot's equity when positive, else the gross exposure (a net-short or zero-equity book
  gets a return on what it has at risk, never a sign flip; `return_basis` says which).
  One sparse (portfolios × symbols) × (symbols × sessions) product for the whole chunk.
* **Realized volatility**: sample std (ddof 1) of the last 21 / 63 returns × √252; null with
  fewer sessions than the window.
* **Forecast volatility**: EWMA (RiskMetrics) with λ = 0.94 on zero-mean squared returns over
  the last 252 sessions, weights normalised to sum 1 (pandas' ``ewm(alpha=0.06, adjust=True)``),
  annualised × √252: the next session's volatility.
* **Volatility percentile**: share of the 21-day realized volatilities ending on each of the
  last 252 sessions (today included) that are ≤ today's, as a fraction 0..1; null with fewer
  than 126 such values.
* **Regression beta**: OLS with intercept of the portfolio's return series on SPY's over the
  last 90 sessions (sessions where SPY has a return), with r² and n; null below 30.
* **Exposure-weighted beta**: Σ market beta × exposure / base; **provider beta**: the same
  with the company profiles' beta (positions without one skipped, coverage reported).
* **Concentration**: gross weights w = |MV| / Σ|MV| over the portfolio's holdings netted per
  symbol (two lots of one symbol are one position); HHI = Σw², effective positions 1/HHI,
  top-3 / top-10 = the largest 3 / 10 weights summed.
* **Sectors**: exposure (delta-adjusted for options, under the underlying's sector) summed per
  company-profile sector, net and gross, over base; holdings without a sector go to
  "Unclassified" and are listed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

TRADING_DAYS = 252
VOL_SHORT = 21
VOL_LONG = 63
EWMA_LAMBDA = 0.94
EWMA_WINDOW = 252
PERCENTILE_WINDOW = 252
PERCENTILE_MIN = 126
BETA_WINDOW = 90
BETA_MIN_OBS = 30
MARKET_SYMBOL = "SPY"
UNCLASSIFIED = "Unclassified"
#: Sessions of returns the risk metrics need (percentile of a 21-day vol over a year).
HISTORY_SESSIONS = PERCENTILE_WINDOW + VOL_SHORT - 1
VOLATILITY_METHOD = (
    f"EWMA lambda={EWMA_LAMBDA} on zero-mean daily returns of today's holdings, last "
    f"{EWMA_WINDOW} sessions, annualised x sqrt({TRADING_DAYS})"
)


@dataclass(frozen=True)
class Book:
    """Holdings of a chunk of portfolios, one row per held position.

    holdings columns: portfolio_id, position_id, symbol (the position's own), risk_symbol
    (whose returns move it: the symbol, the underlying for an option, None when carried),
    market_value, exposure (dollars moving 1:1 with risk_symbol's return), is_public
    (a plain listed position: in the correlation matrix).
    base: per portfolio (index portfolio_id, in chunk order) the denominator of returns and
    weights; basis: "equity" or "gross".
    """

    holdings: pd.DataFrame
    portfolio_ids: pd.Index
    equity: np.ndarray
    base: np.ndarray
    basis: np.ndarray
    row: np.ndarray  # per holding: its portfolio's position in portfolio_ids (-1: not in it)


def make_book(holdings: pd.DataFrame, equity: pd.Series) -> Book:
    """Attach each portfolio's base: equity when positive, else gross exposure."""
    ids = pd.Index(equity.index.astype(str))
    eq = equity.to_numpy(dtype="float64")
    held = holdings.reset_index(drop=True)
    row = ids.get_indexer(held["portfolio_id"].astype(str))
    gross = _sum_by(row, np.abs(held["market_value"].to_numpy(dtype="float64")), len(ids))
    positive = eq > 0
    base = np.where(positive, eq, np.where(gross > 0, gross, np.nan))
    basis = np.where(positive, "equity", np.where(gross > 0, "gross", "none")).astype(object)
    return Book(held, ids, eq, base, basis, row)


def _sum_by(row: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Σ values per portfolio position (rows outside the chunk, -1, are ignored)."""
    ok = row >= 0
    return np.bincount(row[ok], weights=values[ok], minlength=n).astype("float64")


def exposure_matrix(book: Book, symbols: pd.Index) -> sparse.csr_matrix:
    """(portfolios × symbols) dollar exposures; rows follow book.portfolio_ids."""
    h = book.holdings
    rows = book.row
    cols = symbols.get_indexer(h["risk_symbol"].where(h["risk_symbol"].notna(), ""))
    ok = (rows >= 0) & (cols >= 0)
    return sparse.csr_matrix(
        (h["exposure"].to_numpy(dtype="float64")[ok], (rows[ok], cols[ok])),
        shape=(len(book.portfolio_ids), len(symbols)),
    )


def portfolio_returns(book: Book, returns: pd.DataFrame) -> np.ndarray:
    """(portfolios × sessions) holdings-based returns over the rows of ``returns``."""
    matrix = exposure_matrix(book, returns.columns)
    r = np.nan_to_num(returns.to_numpy(dtype="float64"), nan=0.0)  # (S, U)
    pnl = np.asarray(matrix @ r.T)  # (P, S)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pnl / book.base[:, None]


def realized_vol(series: np.ndarray, window: int) -> np.ndarray:
    """Annualised sample std of the last ``window`` columns; NaN when shorter."""
    if series.shape[1] < window:
        return np.full(series.shape[0], np.nan)
    return series[:, -window:].std(axis=1, ddof=1) * np.sqrt(TRADING_DAYS)


def ewma_vol(series: np.ndarray, lam: float = EWMA_LAMBDA, window: int = EWMA_WINDOW) -> np.ndarray:
    """Next-session EWMA volatility, annualised (weights λ^k on r²_{t-k}, normalised)."""
    tail = series[:, -window:]
    n = tail.shape[1]
    if n == 0:
        return np.full(series.shape[0], np.nan)
    weights = lam ** np.arange(n - 1, -1, -1, dtype="float64")
    weights /= weights.sum()
    return np.sqrt((tail * tail) @ weights * TRADING_DAYS)


def vol_percentile(series: np.ndarray) -> np.ndarray:
    """Fraction of the rolling 21-session vols of the last year that are ≤ today's."""
    p, s = series.shape
    count = min(PERCENTILE_WINDOW, s - VOL_SHORT + 1)
    if count < PERCENTILE_MIN:
        return np.full(p, np.nan)
    tail = series[:, -(count + VOL_SHORT - 1):]
    # Rolling sums via cumulative sums: window k ends at column k + VOL_SHORT - 1.
    c1 = np.concatenate([np.zeros((p, 1)), np.cumsum(tail, axis=1)], axis=1)
    c2 = np.concatenate([np.zeros((p, 1)), np.cumsum(tail * tail, axis=1)], axis=1)
    s1 = c1[:, VOL_SHORT:] - c1[:, :-VOL_SHORT]
    s2 = c2[:, VOL_SHORT:] - c2[:, :-VOL_SHORT]
    var = np.maximum((s2 - s1 * s1 / VOL_SHORT) / (VOL_SHORT - 1), 0.0)
    vols = np.sqrt(var)
    today = vols[:, -1:]
    # Ties within float noise count as ≤ (today's own value always does).
    pct = (vols <= today * (1 + 1e-12) + 1e-18).mean(axis=1)
    return np.where(np.isfinite(today[:, 0]), pct, np.nan)


def regression_beta(
    series: np.ndarray, market: np.ndarray, window: int = BETA_WINDOW, min_obs: int = BETA_MIN_OBS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OLS with intercept of each row of ``series`` on ``market`` (last ``window`` sessions)."""
    y = series[:, -window:]
    x = market[-window:]
    ok = np.isfinite(x)
    n = int(ok.sum())
    p = series.shape[0]
    if n < min_obs:
        return np.full(p, np.nan), np.full(p, np.nan), np.full(p, n)
    xs = x[ok] - x[ok].mean()
    ys = y[:, ok] - y[:, ok].mean(axis=1, keepdims=True)
    sxx = xs @ xs
    sxy = ys @ xs
    syy = np.einsum("ps,ps->p", ys, ys)
    with np.errstate(invalid="ignore", divide="ignore"):
        beta = sxy / sxx
        r2 = np.where(syy > 0, sxy * sxy / (sxx * syy), np.nan)
    return beta, r2, np.full(p, n)


def weighted_beta(book: Book, betas: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Σ beta(risk_symbol) × exposure / base, and the gross share of exposure with a beta."""
    h = book.holdings
    found = pd.Index(betas.index).get_indexer(h["risk_symbol"].to_numpy())
    b = np.append(betas.to_numpy(dtype="float64"), np.nan)[found]  # -1 (unknown) -> NaN
    exposure = h["exposure"].to_numpy(dtype="float64")
    has = np.isfinite(b)
    n = len(book.portfolio_ids)
    beta_dollars = _sum_by(book.row, np.where(has, b * exposure, 0.0), n)
    covered = _sum_by(book.row, np.where(has, np.abs(exposure), 0.0), n)
    gross = _sum_by(book.row, np.abs(exposure), n)
    any_beta = _sum_by(book.row, has.astype("float64"), n)
    with np.errstate(invalid="ignore", divide="ignore"):
        beta = np.where(any_beta > 0, beta_dollars / book.base, np.nan)
        coverage = np.where(gross > 0, covered / gross, np.nan)
    return beta, coverage


def concentration(book: Book) -> pd.DataFrame:
    """HHI, effective positions, top-3 and top-10 gross weights per portfolio."""
    h = book.holdings
    n = len(book.portfolio_ids)
    codes, uniques = pd.factorize(h["symbol"])
    ok = book.row >= 0
    key = book.row[ok].astype("int64") * max(len(uniques), 1) + codes[ok]
    keys, inverse = np.unique(key, return_inverse=True)
    net = np.bincount(inverse, weights=h["market_value"].to_numpy(dtype="float64")[ok])
    owner = keys // max(len(uniques), 1)
    gross = np.abs(net)
    owner, gross = owner[gross > 0], gross[gross > 0]
    total = np.bincount(owner, weights=gross, minlength=n)
    w = gross / total[owner]
    order = np.lexsort((-w, owner))
    owner, w = owner[order], w[order]
    first = np.concatenate([[0], np.flatnonzero(np.diff(owner)) + 1]) if len(owner) else owner
    counts = np.diff(np.concatenate([first, [len(owner)]]))
    rank = np.arange(len(owner)) - np.repeat(first, counts)
    hhi = np.bincount(owner, weights=w * w, minlength=n)
    present = np.bincount(owner, minlength=n) > 0
    out = pd.DataFrame(
        {"hhi": np.where(present, hhi, np.nan),
         "top3": np.where(present, np.bincount(owner, weights=w * (rank < 3), minlength=n),
                          np.nan),
         "top10": np.where(present, np.bincount(owner, weights=w * (rank < 10), minlength=n),
                           np.nan)},
        index=book.portfolio_ids,
    )
    out["effective_positions"] = 1.0 / out["hhi"]
    return out


def sector_exposures(book: Book, sectors: pd.Series) -> tuple[pd.DataFrame, pd.Series]:
    """Long frame: portfolio_id, sector, net_weight, gross_weight, symbols (unclassified)."""
    h = book.holdings
    key = h["risk_symbol"].where(h["risk_symbol"].notna(), h["symbol"]).to_numpy()
    found = pd.Index(sectors.index).get_indexer(key)
    sector = np.append(sectors.to_numpy(dtype=object), [None])[found]  # -1 (unknown) -> None
    sector = np.where(pd.isna(sector) | (sector == ""), UNCLASSIFIED, sector).astype(object)
    ok = book.row >= 0
    row, sector, key = book.row[ok], sector[ok], key[ok]
    net = h["exposure"].to_numpy(dtype="float64")[ok]
    codes, names = pd.factorize(sector, sort=True)
    n_sec = max(len(names), 1)
    keys, inverse = np.unique(row.astype("int64") * n_sec + codes, return_inverse=True)
    net_sum = np.bincount(inverse, weights=net)
    gross_sum = np.bincount(inverse, weights=np.abs(net))
    owner = keys // n_sec
    denominator = book.base[owner]
    grouped = pd.DataFrame({
        "portfolio_id": book.portfolio_ids[owner],
        "sector": np.asarray(names, dtype=object)[keys % n_sec],
        "net": net_sum, "gross": gross_sum,
        "net_weight": net_sum / denominator, "gross_weight": gross_sum / denominator,
    })
    lost = sector == UNCLASSIFIED
    pairs = pd.DataFrame({"row": row[lost], "symbol": key[lost]}).drop_duplicates()
    pairs = pairs.sort_values(["row", "symbol"], kind="stable")
    unclassified: dict[str, list[str]] = {}
    for r, symbol in zip(pairs["row"].to_numpy(), pairs["symbol"].to_numpy(), strict=True):
        unclassified.setdefault(book.portfolio_ids[r], []).append(symbol)
    return grouped, pd.Series(unclassified, dtype=object)
