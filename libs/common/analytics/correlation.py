"""Correlation matrices of many portfolios' public positions at once.

Methods:

* **Members**: a portfolio's plain listed positions (no options, no carried assets), netted
  per symbol; the 50 largest by gross weight when it holds more. A symbol with fewer than 30
  returns of its own in the window is left out (listed as excluded).
* **Matrix**: Pearson correlation of daily simple returns over the last 90 sessions,
  pairwise-complete (each pair over the sessions where both have a return, as pandas'
  ``DataFrame.corr(min_periods=30)``); a pair with fewer than 30 common observations is
  undefined and enters the repair as 0. The counts are kept.
* **PSD repair**: eigen-decomposition, eigenvalues clipped at 0, rebuilt and rescaled to a
  unit diagonal (C ← D^-½ C D^-½): the nearest-by-clipping valid correlation matrix.
* **Summary**: weighted average pairwise correlation Σ_{i≠j} g_i g_j ρ_ij / Σ_{i≠j} g_i g_j
  with gross weights g; diversification ratio Σ|w_i|σ_i / √(wᵀΣw) with signed weights and
  Σ = diag(σ) ρ diag(σ) (σ each symbol's daily std over the window); effective number of bets
  = exp(entropy of the repaired matrix's eigenvalues normalised to sum 1) (1 for a single
  bet, n for n uncorrelated ones).
* **Clusters**: hierarchical clustering on distance 1 − ρ, single linkage, cut at distance
  0.3 (every member reaches another at ρ ≥ 0.7 through a chain); computed as the connected
  components of the graph {1 − ρ_ij ≤ 0.3}, which is exactly scipy's
  ``fcluster(linkage(d, "single"), 0.3, "distance")``, for all portfolios in one call.

Everything is batched over portfolios: the pairwise statistics are computed once for the
chunk's distinct member symbols (four matrix products) and gathered into matrices padded to
the largest member count; the PSD repair only runs where an eigenvalue is negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse.csgraph import connected_components

WINDOW = 90
MIN_OBS = 30
MAX_MEMBERS = 50
CLUSTER_DISTANCE = 0.3
CLUSTER_LINKAGE = "single"


@dataclass(frozen=True)
class CorrelationResult:
    """Per portfolio (rows in ``portfolio_ids`` order), padded to K members.

    symbols: (P, K) object, None in padding; n_members (P,); corr (P, K, K) repaired;
    observations (P, K, K) int; labels (P, K) cluster label per member (-1 padding);
    average_correlation, diversification_ratio, effective_bets (P,); excluded: list per row.
    """

    portfolio_ids: pd.Index
    symbols: np.ndarray
    n_members: np.ndarray
    corr: np.ndarray
    observations: np.ndarray
    labels: np.ndarray
    average_correlation: np.ndarray
    diversification_ratio: np.ndarray
    effective_bets: np.ndarray
    excluded: list[list[str]]
    window_sessions: int


def pairwise_complete(x: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Correlation and common-observation counts of stacked (P, T, K) data with NaN holes.

    ``valid`` (P, K) marks real columns (the rest is padding, all NaN): portfolios whose real
    columns have no hole take the one-product path (the same numbers, a quarter of the work).
    """
    if valid is not None:
        finite = np.isfinite(x)
        complete = (finite | ~valid[:, None, :]).all(axis=(1, 2))
        if complete.any():
            corr = np.full((x.shape[0], x.shape[2], x.shape[2]), np.nan)
            n = np.zeros(corr.shape, dtype="int64")
            sub = np.where(finite[complete], x[complete], 0.0)
            centred = sub - sub.mean(axis=1, keepdims=True)
            centred *= valid[complete][:, None, :]
            cov = np.swapaxes(centred, 1, 2) @ centred
            d = np.sqrt(np.diagonal(cov, axis1=1, axis2=2))
            with np.errstate(invalid="ignore", divide="ignore"):
                c = cov / d[:, :, None] / d[:, None, :]
            both = valid[complete][:, :, None] & valid[complete][:, None, :]
            corr[complete] = np.where(both, np.clip(c, -1.0, 1.0), np.nan)
            n[complete] = np.where(both, x.shape[1], 0)
            if (~complete).any():
                corr[~complete], n[~complete] = pairwise_complete(x[~complete])
            return corr, n
    mask = np.isfinite(x)
    m = mask.astype("float64")
    x0 = np.where(mask, x, 0.0)
    xt = np.swapaxes(x0, 1, 2)
    n = np.swapaxes(m, 1, 2) @ m  # n[i, j] = common observations
    sx = xt @ m  # sx[i, j] = Σ x_i over sessions where j is present (i present by x0)
    sxx = (xt * xt) @ m
    sxy = xt @ x0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_ij = sx / n
        cov = sxy - sx * np.swapaxes(sx, 1, 2) / n
        var_i = sxx - sx * mean_ij
        var_j = np.swapaxes(var_i, 1, 2)
        corr = cov / np.sqrt(var_i * var_j)
    corr = np.where(n >= 2, np.clip(corr, -1.0, 1.0), np.nan)
    return corr, n.round().astype("int64")


def repair_psd(corr: np.ndarray) -> np.ndarray:
    """Clip eigenvalues at 0 and rescale to a unit diagonal (stacked (P, K, K))."""
    sym = 0.5 * (corr + np.swapaxes(corr, 1, 2))
    values, vectors = np.linalg.eigh(sym)
    values = np.maximum(values, 0.0)
    rebuilt = (vectors * values[:, None, :]) @ np.swapaxes(vectors, 1, 2)
    d = np.sqrt(np.diagonal(rebuilt, axis1=1, axis2=2))
    d = np.where(d > 0, d, 1.0)
    out = rebuilt / d[:, :, None] / d[:, None, :]
    k = out.shape[1]
    idx = np.arange(k)
    out[:, idx, idx] = 1.0
    return 0.5 * (out + np.swapaxes(out, 1, 2))


def symbol_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Pairwise-complete correlations, common counts and own daily std of (T, U) returns.

    The counts are None when no column has a hole (every pair has all T observations).

    Each column is first centred on its own mean (correlation is shift-invariant; centring
    keeps the sums of the pairwise formula from cancelling), so pairs without holes get the
    plain centred product, as a per-portfolio computation would.
    """
    present = np.isfinite(x)
    count = present.sum(axis=0)
    mean = np.where(present, x, 0.0).sum(axis=0) / np.maximum(count, 1)
    dev = np.where(present, x - mean[None, :], np.nan)
    sq = np.where(present, dev, 0.0)
    ss = (sq * sq).sum(axis=0)
    sigma = np.sqrt(ss / np.maximum(count - 1, 1))
    if present.all():
        # No holes: one product of the unit-normalised centred columns.
        with np.errstate(invalid="ignore", divide="ignore"):
            z = sq / np.sqrt(ss)[None, :]
        corr = np.clip(z.T @ z, -1.0, 1.0) if x.shape[0] >= 2 else np.full((x.shape[1],) * 2, np.nan)
        return corr, None, sigma
    corr3, n3 = pairwise_complete(dev[None])
    return corr3[0], n3[0], sigma


def repair_where_needed(corr: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`repair_psd` for the matrices with a negative eigenvalue; the others are already valid.

    A matrix with no negative eigenvalue is its own repair (clipping changes nothing and the
    diagonal is already 1): only symmetrised, which saves the eigenvectors and the rebuild of
    most portfolios (pairwise-complete matrices without holes are PSD by construction).
    The eigenvalues are those of each valid block (padding zeroed, as `effective_bets` takes
    them), so the summary reuses them: returns (matrices, (P, K) eigenvalues).
    """
    sym = 0.5 * (corr + np.swapaxes(corr, 1, 2))
    if not len(sym):
        return sym, np.zeros(valid.shape)
    both = valid[:, :, None] & valid[:, None, :]
    values = np.linalg.eigvalsh(np.where(both, sym, 0.0))
    needs = values.min(axis=1) < 0
    if needs.any():
        sym[needs] = repair_psd(sym[needs])
        block = np.where(both[needs], sym[needs], 0.0)
        k = sym.shape[1]
        block[:, np.arange(k), np.arange(k)] = np.where(valid[needs], 1.0, 0.0)
        values[needs] = np.linalg.eigvalsh(block)
    return sym, values


def effective_bets(corr: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """exp(entropy) of the normalised eigenvalues of each valid block (padding zeroed)."""
    block = np.where(valid[:, :, None] & valid[:, None, :], corr, 0.0)
    return _bets_of(np.linalg.eigvalsh(block))


def _bets_of(eigenvalues: np.ndarray) -> np.ndarray:
    values = np.clip(eigenvalues, 0.0, None)
    total = values.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = values / total
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return np.where(total[:, 0] > 0, np.exp(entropy), np.nan)


def cluster_labels(corr: np.ndarray, valid: np.ndarray, distance: float = CLUSTER_DISTANCE) -> np.ndarray:
    """Single-linkage clusters at ``distance`` (on 1 − ρ) for every portfolio in one call."""
    p, k, _ = corr.shape
    linked = (1.0 - corr <= distance) & valid[:, :, None] & valid[:, None, :]
    linked[:, np.arange(k), np.arange(k)] = False
    block, i, j = np.nonzero(linked)
    nodes = p * k
    graph = sparse.csr_matrix(
        (np.ones(len(block), dtype=np.int8), (block * k + i, block * k + j)), shape=(nodes, nodes)
    )
    _, labels = connected_components(graph, directed=False)
    labels = labels.reshape(p, k)
    # Relabel 0.. per portfolio in order of each cluster's first member; padding -1.
    flat = labels.ravel()
    members_at = np.flatnonzero(valid.ravel())
    first = np.full(int(flat.max()) + 1 if nodes else 0, k, dtype="int64")
    np.minimum.at(first, flat[members_at], members_at % k)
    first_member = first[labels]  # (P, K): column of the first member of each one's cluster
    is_first = (first_member == np.arange(k)[None, :]) & valid
    rank = np.cumsum(is_first, axis=1) - 1
    out = np.take_along_axis(rank, np.clip(first_member, 0, k - 1), axis=1)
    return np.where(valid, out, -1)


def members(holdings: pd.DataFrame, portfolio_ids: pd.Index, limit: int = MAX_MEMBERS) -> pd.DataFrame:
    """Public positions netted per symbol, the ``limit`` largest by gross weight per portfolio.

    Returns row (position in ``portfolio_ids``), portfolio_id, symbol, market_value, sorted
    by row, then gross weight descending, then symbol.
    """
    public = holdings[holdings["is_public"].astype(bool).to_numpy()]
    row = portfolio_ids.get_indexer(public["portfolio_id"].astype(str))
    keep = row >= 0
    codes, uniques = pd.factorize(public["symbol"].to_numpy()[keep], sort=True)
    n_sym = max(len(uniques), 1)
    key = row[keep].astype("int64") * n_sym + codes
    keys, inverse = np.unique(key, return_inverse=True)
    net = np.bincount(inverse, weights=public["market_value"].to_numpy(dtype="float64")[keep])
    owner, sym = keys // n_sym, keys % n_sym
    nonzero = net != 0
    owner, sym, net = owner[nonzero], sym[nonzero], net[nonzero]
    order = np.lexsort((sym, -np.abs(net), owner))
    owner, sym, net = owner[order], sym[order], net[order]
    first = np.concatenate([[0], np.flatnonzero(np.diff(owner)) + 1]) if len(owner) else owner
    counts = np.diff(np.concatenate([first, [len(owner)]]))
    rank = np.arange(len(owner)) - np.repeat(first, counts)
    top = rank < limit
    return pd.DataFrame({
        "row": owner[top], "portfolio_id": portfolio_ids[owner[top]],
        "symbol": np.asarray(uniques, dtype=object)[sym[top]], "market_value": net[top],
        "rank": rank[top],
    })


def correlate(
    holdings: pd.DataFrame, portfolio_ids: pd.Index, returns: pd.DataFrame,
    window: int = WINDOW, min_obs: int = MIN_OBS, limit: int = MAX_MEMBERS,
) -> CorrelationResult:
    """Everything the correlations endpoint shows, for every portfolio of the chunk."""
    window_returns = returns.iloc[-window:]
    values = window_returns.to_numpy(dtype="float64")  # (T, U)
    own_obs = np.isfinite(values).sum(axis=0)
    cols = pd.Index(window_returns.columns)
    mem = members(holdings, portfolio_ids, limit)
    col = cols.get_indexer(mem["symbol"])
    enough = (col >= 0) & (own_obs[np.clip(col, 0, None)] >= min_obs)
    excluded_by: dict[str, list[str]] = {}
    for pid, symbol in zip(mem["portfolio_id"].to_numpy()[~enough],
                           mem["symbol"].to_numpy()[~enough], strict=True):
        excluded_by.setdefault(pid, []).append(symbol)
    mem = mem[enough].copy()
    mem["col"] = col[enough]
    row = mem["row"].to_numpy()
    # Slot = rank among the kept members of the portfolio (rows are sorted by portfolio).
    first = np.concatenate([[0], np.flatnonzero(np.diff(row)) + 1]) if len(row) else row
    slot = np.arange(len(row)) - np.repeat(first, np.diff(np.concatenate([first, [len(row)]])))
    p = len(portfolio_ids)
    k = int(slot.max()) + 1 if len(slot) else 1
    index = np.full((p, k), -1, dtype="int64")
    index[row, slot] = mem["col"].to_numpy()
    symbols = np.full((p, k), None, dtype=object)
    symbols[row, slot] = mem["symbol"].to_numpy()
    signed = np.zeros((p, k))
    signed[row, slot] = mem["market_value"].to_numpy()
    valid = index >= 0
    n_members = valid.sum(axis=1)

    # Pairwise statistics depend on the two symbols only: computed once for the chunk's
    # distinct member symbols (one (U' x U') product set), then gathered per portfolio.
    used, local = np.unique(index[valid], return_inverse=True)
    sym_index = np.zeros((p, k), dtype="int64")  # padding points at symbol 0, masked below
    sym_index[valid] = local
    corr_u, obs_u, sigma_u = symbol_statistics(values[:, used])
    pairs = sym_index[:, :, None] * len(used) + sym_index[:, None, :]
    both = valid[:, :, None] & valid[:, None, :]
    raw = corr_u.ravel()[pairs] if len(used) else np.full((p, k, k), np.nan)
    if obs_u is None:  # no holes: every pair has the whole window
        observations = np.where(both, len(values), 0)
    else:
        observations = np.where(both, obs_u.ravel()[pairs], 0)
    defined = both & (observations >= min_obs) & np.isfinite(raw)
    eye = np.broadcast_to(np.eye(k, dtype=bool), (p, k, k))
    start = np.where(defined, raw, 0.0)
    start = np.where(eye, 1.0, start)
    corr, values_of_block = repair_where_needed(start, valid)
    corr = np.where(both | eye, corr, 0.0)
    corr = np.where(eye, 1.0, corr)

    # Summary statistics.
    gross = np.abs(signed)
    off = both & ~eye
    pair_w = gross[:, :, None] * gross[:, None, :] * off
    with np.errstate(invalid="ignore", divide="ignore"):
        average = (pair_w * corr).sum(axis=(1, 2)) / pair_w.sum(axis=(1, 2))
        sigma = np.where(valid, sigma_u[sym_index] if len(used) else 0.0, 0.0)
        total = gross.sum(axis=1, keepdims=True)
        w = signed / np.where(total > 0, total, 1.0)
        ws = w * sigma
        port_var = np.einsum("pi,pij,pj->p", ws, corr, ws)
        ratio = np.abs(ws).sum(axis=1) / np.sqrt(port_var)
    ratio = np.where((n_members >= 1) & (port_var > 0), ratio, np.nan)
    average = np.where(n_members >= 2, average, np.nan)
    bets = np.where(n_members >= 1, _bets_of(values_of_block), np.nan)
    labels = cluster_labels(corr, valid)
    excluded = [excluded_by.get(pid, []) for pid in portfolio_ids]
    return CorrelationResult(
        portfolio_ids=portfolio_ids, symbols=symbols, n_members=n_members, corr=corr,
        observations=observations, labels=labels, average_correlation=average,
        diversification_ratio=ratio, effective_bets=bets, excluded=excluded,
        window_sessions=int(min(window, len(window_returns))),
    )
