"""SQL of the risk analytics: as-of reads and set-based writes for a chunk, in its transaction.

Called by the snapshot use case between computing and completing the slots, so analytics are
written in the same transaction as the snapshot: a crash leaves neither, a redo rewrites
both (each write first deletes the chunk's rows for the date). Reads are as of the date:
closes dated on or before it, betas of the refresh (latest ≤ date), the active scenario set.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import numpy as np
import pandas as pd

from libs.common.analytics import risk
from libs.common.analytics.chunk import AnalyticsInputs, AnalyticsResult
from libs.common.analytics.stress import GAMMA_KEY
from libs.common.factors import FACTOR_ETFS

#: Calendar days of closes read for the longest window (272 returns ≈ 395 calendar days).
HISTORY_CALENDAR_DAYS = int((risk.HISTORY_SESSIONS + 1) * 365 / 252) + 10


class _HistoryCache:
    """Wide closes of one date, reused by the chunks of that date in this process.

    Keyed by the date and its symbol-batch run (a rerun restating prices gets a new key), it
    only ever holds rows dated on or before that date, read from the database; symbols a
    chunk needs that are not in it yet are read and added.
    """

    def __init__(self) -> None:
        self.key: tuple[dt.date, str] | None = None
        self.frame = pd.DataFrame()
        self.absent: set[str] = set()
        # Refreshes of one process run concurrently (gathered first snapshots, chunks): two
        # filling the same missing symbols at once would join the same columns twice.
        self._lock = asyncio.Lock()

    async def closes(self, conn: asyncpg.Connection, day: dt.date, symbols: list[str]) -> pd.DataFrame:
        async with self._lock:
            return await self._closes(conn, day, symbols)

    async def _closes(
        self, conn: asyncpg.Connection, day: dt.date, symbols: list[str]
    ) -> pd.DataFrame:
        run = await conn.fetchval(
            "SELECT coalesce(run_id::text, '') || ':' || status FROM symbol_batch_dates "
            "WHERE batch_date = $1", day)
        key = (day, run or "")
        if key != self.key:
            self.key, self.frame, self.absent = key, pd.DataFrame(), set()
        missing = sorted(set(symbols) - set(self.frame.columns) - self.absent)
        if missing:
            start = day - dt.timedelta(days=HISTORY_CALENDAR_DAYS)
            # One row per symbol with its closes as arrays (decoded in C, no row objects).
            rows = await conn.fetch(
                """
                SELECT symbol, array_agg((date - $3::date) ORDER BY date) AS offsets,
                       array_agg(adj_close ORDER BY date) AS closes
                FROM market_data_cache
                WHERE symbol = ANY($1::text[]) AND date <= $2 AND date > $3
                GROUP BY symbol
                """,
                missing, day, start,
            )
            span = (day - start).days + 1
            matrix = np.full((span, len(rows)), np.nan)
            for column, row in enumerate(rows):
                matrix[np.asarray(row["offsets"], dtype="int64"), column] = np.asarray(
                    row["closes"], dtype="float64")
            dates = pd.DatetimeIndex(pd.Timestamp(start) + pd.to_timedelta(np.arange(span), "D"))
            wide = pd.DataFrame(matrix, index=dates, columns=[r["symbol"] for r in rows])
            wide = wide[wide.notna().any(axis=1)]
            self.frame = self.frame.join(wide, how="outer") if len(self.frame.columns) else wide
            self.frame = self.frame.sort_index()
            self.absent |= set(missing) - set(wide.columns)
        present = [s for s in symbols if s in self.frame.columns]
        return self.frame.loc[:, present].astype("float64")


_CACHE = _HistoryCache()


async def load_inputs(
    conn: asyncpg.Connection, day: dt.date, positions: pd.DataFrame, betas: pd.DataFrame
) -> AnalyticsInputs:
    """Closes (≤ day), company profiles and the active scenarios for a chunk's positions."""
    symbols = set(positions["symbol"].dropna()) | set(positions["underlying_symbol"].dropna())
    wanted = sorted(symbols | set(FACTOR_ETFS))
    closes = await _CACHE.closes(conn, day, wanted)
    profiles = pd.DataFrame.from_records(
        [tuple(r) for r in await conn.fetch(
            "SELECT symbol, sector, beta FROM company_profiles WHERE symbol = ANY($1::text[])",
            sorted(symbols))],
        columns=["symbol", "sector", "beta"],
    )
    scenarios = await active_scenarios(conn)
    return AnalyticsInputs(closes=closes, profiles=profiles, scenarios=scenarios, betas=betas)


async def active_scenarios(conn: asyncpg.Connection) -> pd.DataFrame:
    """The latest version of every active scenario, in their seeded order."""
    rows = await conn.fetch(
        """
        SELECT scenario_id, version, name, category, shocks::text, description FROM (
            SELECT DISTINCT ON (scenario_id) * FROM stress_scenarios
            ORDER BY scenario_id, version DESC) latest
        WHERE is_active ORDER BY sort_order, scenario_id
        """
    )
    frame = pd.DataFrame.from_records(
        [tuple(r) for r in rows],
        columns=["scenario_id", "version", "name", "category", "shocks", "description"],
    )
    frame["shocks"] = [json.loads(s) for s in frame["shocks"]]
    return frame


#: Stored floats are rounded to 12 significant digits: a redo of a slot computes the same
#: numbers, but batched linear algebra over a different chunk (other padding, other BLAS
#: blocking) may differ in the last bits; rounding makes the stored rows identical.
SIGNIFICANT = 12


def _round(values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = np.floor(np.log10(np.abs(np.where(arr == 0, 1.0, arr))))
        scale = 10.0 ** (SIGNIFICANT - 1 - np.nan_to_num(magnitude, nan=0.0, posinf=0.0,
                                                           neginf=0.0))
        return np.where(np.isfinite(arr), np.round(arr * scale) / scale, arr)


def _f(values: Any) -> list[float | None]:
    """Floats for the database (rounded), NaN/inf as NULL."""
    arr = _round(values)
    return [None if not np.isfinite(v) else v for v in arr.tolist()]


def _array(values: np.ndarray) -> list[float | None]:
    return [None if v != v else v for v in _round(values).tolist()]  # NaN -> NULL element


async def _replace(
    conn: asyncpg.Connection, table: str, day: dt.date, ids: list[uuid.UUID],
    columns: list[str], records: list[tuple[Any, ...]],
) -> None:
    await conn.execute(
        f"DELETE FROM {table} WHERE portfolio_id = ANY($1::uuid[]) AND calculation_date = $2",
        ids, day)
    if records:
        await conn.copy_records_to_table(table, records=records, columns=columns)


async def write_analytics(
    conn: asyncpg.Connection, day: dt.date, portfolio_ids: Sequence[uuid.UUID],
    result: AnalyticsResult,
) -> None:
    """Replace the chunk's analytics rows for ``day`` (COPY, four tables)."""
    ids = list(portfolio_ids)
    as_uuid = {str(p): p for p in ids}
    r = result.risk
    keep = r["portfolio_id"].isin(as_uuid).to_numpy()
    r = r[keep]
    unclassified = result.unclassified
    risk_cols = ["volatility_21d", "volatility_63d", "volatility_forecast", "volatility_percentile",
                 "beta_regression", "beta_r2", "beta_exposure_weighted", "beta_provider",
                 "beta_provider_coverage", "hhi", "effective_positions", "top3_weight",
                 "top10_weight"]
    floats = {c: _f(r[c]) for c in risk_cols}
    greek_cols = ["delta", "gamma", "theta", "vega", "rho", "delta_dollars", "gamma_dollars"]
    greeks = {c: _round(np.nan_to_num(r[f"greek_{c}"].to_numpy(dtype="float64"))).tolist()
              for c in greek_cols}
    pids = r["portfolio_id"].tolist()
    basis = r["return_basis"].tolist()
    sessions = r["history_sessions"].astype(int).tolist()
    n_obs = r["beta_n_obs"].astype(int).tolist()
    records = [
        (
            as_uuid[pid], day, basis[i], sessions[i],
            *(floats[c][i] for c in risk_cols[:6]), n_obs[i],
            *(floats[c][i] for c in risk_cols[6:]),
            json.dumps(result.sectors.get(pid, [])), unclassified.get(pid, []),
            *(greeks[c][i] for c in greek_cols),
        )
        for i, pid in enumerate(pids)
    ]
    await _replace(
        conn, "portfolio_risk_metrics", day, ids,
        ["portfolio_id", "calculation_date", "return_basis", "history_sessions",
         *risk_cols[:6], "beta_n_obs", *risk_cols[6:], "sectors", "unclassified_symbols",
         *greek_cols],
        records,
    )

    g = result.greeks
    g = g[g["portfolio_id"].isin(as_uuid)]
    greek_value_cols = [*greek_cols, "underlying_price", "strike", "years", "volatility", "rate"]
    gvals = {c: _f(g[c]) for c in greek_value_cols}
    await _replace(
        conn, "position_greeks", day, ids,
        ["portfolio_id", "calculation_date", "position_id", *greek_value_cols],
        [
            (as_uuid[pid], day, pos, *(gvals[c][i] for c in greek_value_cols))
            for i, (pid, pos) in enumerate(zip(g["portfolio_id"], g["position_id"], strict=True))
        ],
    )

    c = result.correlations
    corr = _round(c.corr)
    summary = [_f(c.average_correlation), _f(c.diversification_ratio), _f(c.effective_bets)]
    corr_records = []
    triangles: dict[int, tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]] = {}
    for row, pid in enumerate(c.portfolio_ids):
        if pid not in as_uuid:
            continue
        k = int(c.n_members[row])
        if k not in triangles:
            triangles[k] = (np.triu_indices(k, 1), np.triu_indices(k, 0))
        upper, upper_diag = triangles[k]
        corr_records.append((
            as_uuid[pid], day, c.window_sessions, c.symbols[row, :k].tolist(),
            corr[row, :k, :k][upper].astype("<f8").tobytes(),
            c.observations[row, :k, :k][upper_diag].astype("<i4").tobytes(),
            c.labels[row, :k].tolist(), c.excluded[row],
            summary[0][row], summary[1][row], summary[2][row],
        ))
    await _replace(
        conn, "portfolio_correlations", day, ids,
        ["portfolio_id", "calculation_date", "window_sessions", "symbols", "correlations",
         "observations", "cluster_labels", "excluded_symbols", "average_correlation",
         "diversification_ratio", "effective_bets"],
        corr_records,
    )

    s = result.stress
    scen = s.moves.scenarios
    scenario_ids = scen["scenario_id"].tolist()
    versions = [int(v) for v in scen["version"]]
    factors = [*s.moves.factors, GAMMA_KEY]
    moves = _round(s.moves.correlated).astype("<f8").tobytes()
    equity = _f(result.risk["equity"])
    n = len(s.portfolio_ids)
    direct = _round(s.direct).tolist()
    correlated = _round(s.correlated).tolist()
    pct_equity = _round(s.pct_of_equity).tolist()
    pct_gross = _round(s.pct_of_gross).tolist()
    contributions = _round(s.contributions.reshape(n, -1)).astype("<f8")

    # NaN (an undefined percentage) is stored as NaN in the arrays; readers show null.
    stress_records = [
        (as_uuid[pid], day, equity[row], scenario_ids, versions, factors, direct[row],
         correlated[row], pct_equity[row], pct_gross[row], moves, contributions[row].tobytes())
        for row, pid in enumerate(s.portfolio_ids) if pid in as_uuid
    ]
    await _replace(
        conn, "portfolio_stress_results", day, ids,
        ["portfolio_id", "calculation_date", "equity", "scenario_ids", "scenario_versions",
         "factors", "direct_impact", "correlated_impact", "impact_pct_of_equity",
         "impact_pct_of_gross", "factor_moves", "contributions"],
        stress_records,
    )
