"""SQL of the risk analytics: as-of reads and set-based writes (binary COPY) for a chunk, in its transaction.

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

from libs.common.analytics import copy_binary as cb
from libs.common.analytics import risk
from libs.common.analytics.chunk import AnalyticsInputs, AnalyticsResult
from libs.common.analytics.copy_binary import BinaryRows
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


#: Largest power of ten applied in one multiplication: 10**308 is the largest finite one;
#: the scale of a value below 1e-297 (a deep out-of-the-money option's gamma, a vanishing
#: stress contribution) is 10**309 or more and overflows float64 to inf.
_MAX_STEP = 308.0


def _round(values: Any) -> np.ndarray:
    """``values`` rounded to ``SIGNIFICANT`` significant digits; finite in, finite out.

    Why two steps: the scale 10**(digits - 1 - magnitude) of a value below 1e-297 overflows
    float64, and inf/inf turned such a legitimate number into NaN, which is NULL in the
    binary COPY and broke the NOT NULL Greek columns of ``portfolio_risk_metrics`` (the
    whole chunk failed and was bisected, one portfolio per deep out-of-the-money option
    recorded as failed). The scale is split into a factor of at most 10**308 and the rest;
    wherever the old single scale was finite the rest is 10**0 == 1, so those values round
    bit for bit as before.
    NaN and infinities pass through unchanged (NULL in scalar columns, NaN in arrays).
    """
    arr = np.asarray(values, dtype="float64")
    finite = np.isfinite(arr)
    safe = np.where(finite, arr, 0.0)
    with np.errstate(divide="ignore"):
        magnitude = np.floor(np.log10(np.abs(np.where(safe == 0, 1.0, safe))))
    exponent = SIGNIFICANT - 1 - magnitude
    first = np.minimum(exponent, _MAX_STEP)
    scale_first, scale_rest = 10.0 ** first, 10.0 ** (exponent - first)
    rounded = np.round(safe * scale_first * scale_rest) / scale_rest / scale_first
    return np.where(finite, rounded, arr)


#: The chunk's tables, deleted in one statement (one round trip) before the COPYs.
_TABLES = ("portfolio_risk_metrics", "position_greeks", "portfolio_correlations",
           "portfolio_stress_results")
_DELETE = "WITH " + ", ".join(
    f"d{i} AS (DELETE FROM {t} WHERE portfolio_id = ANY($1::uuid[]) AND calculation_date = $2 "
    "RETURNING 1)" for i, t in enumerate(_TABLES)) + " SELECT 1"

RISK_FLOATS = ["volatility_21d", "volatility_63d", "volatility_forecast", "volatility_percentile",
               "beta_regression", "beta_r2", "beta_exposure_weighted", "beta_provider",
               "beta_provider_coverage", "hhi", "effective_positions", "top3_weight",
               "top10_weight"]
GREEK_COLUMNS = ["delta", "gamma", "theta", "vega", "rho", "delta_dollars", "gamma_dollars"]
GREEK_INPUTS = ["underlying_price", "strike", "years", "volatility", "rate"]


def _kept(ids: pd.Index | pd.Series, as_uuid: dict[str, uuid.UUID]) -> np.ndarray:
    """Rows whose portfolio is one of the chunk's (the only ones the chunk may write)."""
    return np.asarray(pd.Index(ids).isin(list(as_uuid)), dtype=bool)


async def write_analytics(
    conn: asyncpg.Connection, day: dt.date, portfolio_ids: Sequence[uuid.UUID],
    result: AnalyticsResult,
) -> None:
    """Replace the chunk's analytics rows for ``day``: one DELETE, then a binary COPY per table.

    Floats are rounded to ``SIGNIFICANT`` digits; NaN/inf are NULL in scalar columns and kept
    as NaN inside the stress arrays (readers show null).
    """
    ids = list(portfolio_ids)
    as_uuid = {str(p): p for p in ids}
    await conn.execute(_DELETE, ids, day)

    r = result.risk[_kept(result.risk["portfolio_id"], as_uuid)]
    pids = r["portfolio_id"].tolist()
    rows = BinaryRows(len(r))
    rows.uuids([as_uuid[p] for p in pids])
    rows.date(day)
    rows.varlen([cb.text(b) for b in r["return_basis"]])
    rows.ints(r["history_sessions"].to_numpy())
    for c in RISK_FLOATS[:6]:
        rows.floats(_round(r[c]))
    rows.ints(r["beta_n_obs"].to_numpy())
    for c in RISK_FLOATS[6:]:
        rows.floats(_round(r[c]))
    rows.varlen([cb.jsonb(json.dumps(result.sectors.get(p, []))) for p in pids])
    rows.varlen([cb.text_array(result.unclassified.get(p, [])) for p in pids])
    for c in GREEK_COLUMNS:
        rows.floats(_round(np.nan_to_num(r[f"greek_{c}"].to_numpy(dtype="float64"))))
    await cb.copy_rows(
        conn, "portfolio_risk_metrics",
        ["portfolio_id", "calculation_date", "return_basis", "history_sessions",
         *RISK_FLOATS[:6], "beta_n_obs", *RISK_FLOATS[6:], "sectors", "unclassified_symbols",
         *GREEK_COLUMNS],
        rows,
    )

    g = result.greeks
    g = g[_kept(g["portfolio_id"], as_uuid)]
    rows = BinaryRows(len(g))
    rows.uuids([as_uuid[p] for p in g["portfolio_id"]])
    rows.date(day)
    rows.uuids([p if isinstance(p, uuid.UUID) else uuid.UUID(str(p)) for p in g["position_id"]])
    for c in [*GREEK_COLUMNS, *GREEK_INPUTS]:
        rows.floats(_round(g[c]))
    await cb.copy_rows(
        conn, "position_greeks",
        ["portfolio_id", "calculation_date", "position_id", *GREEK_COLUMNS, *GREEK_INPUTS], rows)

    cr = result.correlations
    keep = np.flatnonzero(_kept(cr.portfolio_ids, as_uuid))
    corr = _round(cr.corr[keep])
    triangles: dict[int, tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]] = {}
    packed_corr: list[bytes] = []
    packed_obs: list[bytes] = []
    symbols: list[bytes] = []
    labels: list[bytes] = []
    for at, row in enumerate(keep):
        k = int(cr.n_members[row])
        if k not in triangles:
            triangles[k] = (np.triu_indices(k, 1), np.triu_indices(k, 0))
        upper, upper_diag = triangles[k]
        packed_corr.append(corr[at, :k, :k][upper].astype("<f8").tobytes())
        packed_obs.append(cr.observations[row, :k, :k][upper_diag].astype("<i4").tobytes())
        symbols.append(cb.text_array(cr.symbols[row, :k].tolist()))
        labels.append(cb.int_array(cr.labels[row, :k]))
    rows = BinaryRows(len(keep))
    rows.uuids([as_uuid[cr.portfolio_ids[row]] for row in keep])
    rows.date(day)
    rows.ints(np.full(len(keep), cr.window_sessions))
    rows.varlen(symbols)
    rows.varlen(packed_corr)
    rows.varlen(packed_obs)
    rows.varlen(labels)
    rows.varlen([cb.text_array(cr.excluded[row]) for row in keep])
    rows.floats(_round(cr.average_correlation[keep]))
    rows.floats(_round(cr.diversification_ratio[keep]))
    rows.floats(_round(cr.effective_bets[keep]))
    await cb.copy_rows(
        conn, "portfolio_correlations",
        ["portfolio_id", "calculation_date", "window_sessions", "symbols", "correlations",
         "observations", "cluster_labels", "excluded_symbols", "average_correlation",
         "diversification_ratio", "effective_bets"],
        rows,
    )

    s = result.stress
    scen = s.moves.scenarios
    n = len(s.portfolio_ids)
    keep = np.flatnonzero(_kept(s.portfolio_ids, as_uuid))
    rows = BinaryRows(len(keep))
    rows.uuids([as_uuid[s.portfolio_ids[row]] for row in keep])
    rows.date(day)
    rows.floats(_round(result.risk["equity"].to_numpy(dtype="float64")[keep]))
    rows.constant(cb.text_array([str(x) for x in scen["scenario_id"]]))
    rows.constant(cb.int_array(np.asarray([int(v) for v in scen["version"]], dtype="int64")))
    rows.constant(cb.text_array([*s.moves.factors, GAMMA_KEY]))
    for matrix in (s.direct, s.correlated, s.pct_of_equity, s.pct_of_gross):
        rows.float_arrays(_round(matrix[keep]))
    rows.constant(_round(s.moves.correlated).astype("<f8").tobytes())
    contributions = _round(s.contributions.reshape(n, -1)[keep]).astype("<f8")
    rows.fixed(contributions.view(np.uint8).reshape(len(keep), contributions.shape[1] * 8), "u1")
    await cb.copy_rows(
        conn, "portfolio_stress_results",
        ["portfolio_id", "calculation_date", "equity", "scenario_ids", "scenario_versions",
         "factors", "direct_impact", "correlated_impact", "impact_pct_of_equity",
         "impact_pct_of_gross", "factor_moves", "contributions"],
        rows,
    )
