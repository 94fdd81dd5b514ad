"""Read functions of the risk analytics (docs/design.md §10), one statement each.

Each returns the JSON-ready document its endpoint shows, or raises `NoAnalytics` with the
reason when the date has none (no complete snapshot then, or none at all yet). `on=None`
means the latest date with data. The caller checks ownership first (another user's
portfolio is 404 before any of these run). Adapters (e.g. the SigmaSight frontend's shapes)
build on these functions rather than on the tables.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.analytics import risk as risk_methods
from libs.common.analytics import stress as stress_methods
from libs.common.analytics.correlation import CLUSTER_DISTANCE, CLUSTER_LINKAGE, MIN_OBS
from services.status_api.queries import PRICE_SOURCE_SQL


class NoAnalytics(LookupError):
    """No data for this portfolio on the asked date; the message says why."""


def _num(value: Any) -> float | None:
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


async def _resolve_date(session: AsyncSession, table: str, date_column: str,
                        portfolio_id: uuid.UUID, on: dt.date | None, what: str) -> dt.date:
    """The date to show: ``on`` if it has rows, else raise with the reason; None = latest."""
    row = (await session.execute(text(
        f"SELECT (SELECT max({date_column}) FROM {table} WHERE portfolio_id = :p) AS latest, "
        f"EXISTS (SELECT 1 FROM {table} WHERE portfolio_id = :p "
        f"        AND {date_column} = CAST(:d AS date)) AS present"),
        {"p": portfolio_id, "d": on})).mappings().one()
    latest = row["latest"]
    if latest is None:
        raise NoAnalytics(f"No {what} for this portfolio yet: it has no complete snapshot.")
    if on is None:
        return latest
    if not row["present"]:
        raise NoAnalytics(
            f"No {what} on {on.isoformat()}: that date has no complete snapshot for this "
            f"portfolio (not a batch date, before its first snapshot, or after the latest, "
            f"{latest.isoformat()}).")
    return on


async def positions_on(session: AsyncSession, portfolio_id: uuid.UUID,
                       on: dt.date | None) -> list[dict[str, Any]]:
    """Positions valued on the date: price, source, value, daily P&L, Greeks, model inputs."""
    day = await _resolve_date(session, "position_snapshots", "snapshot_date", portfolio_id, on,
                              "position valuations")
    rows = await session.execute(text(
        """
        SELECT p.id AS position_id, p.source_row, p.symbol, p.quantity, p.entry_price,
               p.entry_date, p.exit_date, p.exit_price, p.investment_class,
               p.investment_subtype, p.underlying_symbol, p.strike_price,
               p.expiration_date, p.option_type, p.multiplier,
               ps.snapshot_date AS valuation_date, ps.price,
               """ + PRICE_SOURCE_SQL + """ AS price_source,
               ps.market_value, ps.daily_pnl, ps.realized_pnl, ps.model_inputs::text AS recorded,
               g.delta, g.gamma, g.theta, g.vega, g.rho, g.delta_dollars, g.gamma_dollars,
               g.underlying_price, g.strike, g.years, g.volatility, g.rate,
               g.position_id IS NOT NULL AS has_greeks
        FROM position_snapshots ps
        JOIN positions p ON p.id = ps.position_id
        LEFT JOIN position_greeks g ON g.portfolio_id = ps.portfolio_id
             AND g.calculation_date = ps.snapshot_date AND g.position_id = ps.position_id
        WHERE ps.portfolio_id = :p AND ps.snapshot_date = :d
        ORDER BY p.source_row NULLS LAST, p.symbol
        """), {"p": portfolio_id, "d": day})
    out = []
    for r in rows.mappings():
        doc = {k: r[k] for k in (
            "position_id", "source_row", "symbol", "quantity", "entry_price", "entry_date",
            "exit_date", "exit_price", "investment_class", "investment_subtype",
            "underlying_symbol", "strike_price", "expiration_date", "option_type", "multiplier",
            "valuation_date", "price", "price_source", "market_value", "daily_pnl",
            "realized_pnl")}
        doc["greeks"] = None
        doc["model_inputs"] = None
        if r["has_greeks"]:
            doc["greeks"] = {k: _num(r[k]) for k in (
                "delta", "gamma", "theta", "vega", "rho", "delta_dollars", "gamma_dollars")}
            doc["model_inputs"] = {
                "underlying_price": _num(r["underlying_price"]), "strike": _num(r["strike"]),
                "years": _num(r["years"]), "volatility": _num(r["volatility"]),
                "rate": _num(r["rate"]),
                "details": json.loads(r["recorded"]) if r["recorded"] else None,
            }
        elif r["recorded"]:
            recorded = json.loads(r["recorded"])
            doc["model_inputs"] = {
                "underlying_price": recorded.get("underlying_price"),
                "strike": recorded.get("strike"), "years": recorded.get("years_to_expiry"),
                "volatility": recorded.get("volatility"), "rate": recorded.get("risk_free_rate"),
                "details": recorded,
            }
        out.append(doc)
    return out


async def risk(session: AsyncSession, portfolio_id: uuid.UUID,
               on: dt.date | None) -> dict[str, Any]:
    """The risk document of a date (volatility, beta, concentration, sectors, Greeks)."""
    day = await _resolve_date(session, "portfolio_risk_metrics", "calculation_date",
                              portfolio_id, on, "risk analytics")
    r = (await session.execute(text(
        "SELECT m.*, m.sectors::text AS sectors_json FROM portfolio_risk_metrics m "
        "WHERE portfolio_id = :p AND calculation_date = :d"),
        {"p": portfolio_id, "d": day})).mappings().one()
    return {
        "date": day,
        "volatility_21d": _num(r["volatility_21d"]),
        "volatility_63d": _num(r["volatility_63d"]),
        "volatility_forecast": _num(r["volatility_forecast"]),
        "volatility_method": risk_methods.VOLATILITY_METHOD,
        "volatility_percentile": _num(r["volatility_percentile"]),
        "beta_regression": {"beta": _num(r["beta_regression"]), "r2": _num(r["beta_r2"]),
                            "n_obs": int(r["beta_n_obs"]),
                            "benchmark": risk_methods.MARKET_SYMBOL,
                            "window_sessions": risk_methods.BETA_WINDOW},
        "beta_exposure_weighted": _num(r["beta_exposure_weighted"]),
        "beta_provider": _num(r["beta_provider"]),
        "beta_provider_coverage": _num(r["beta_provider_coverage"]),
        "hhi": _num(r["hhi"]),
        "effective_positions": _num(r["effective_positions"]),
        "top3_weight": _num(r["top3_weight"]),
        "top10_weight": _num(r["top10_weight"]),
        "sectors": json.loads(r["sectors_json"]),
        "unclassified_symbols": list(r["unclassified_symbols"] or []),
        "portfolio_greeks": {k: _num(r[k]) for k in (
            "delta", "gamma", "theta", "vega", "rho", "delta_dollars", "gamma_dollars")},
        "return_basis": r["return_basis"],
        "history_sessions": int(r["history_sessions"]),
    }


async def correlations(session: AsyncSession, portfolio_id: uuid.UUID,
                       on: dt.date | None) -> dict[str, Any]:
    """The correlation document of a date: full symmetric matrices rebuilt from the rows."""
    day = await _resolve_date(session, "portfolio_correlations", "calculation_date",
                              portfolio_id, on, "correlations")
    r = (await session.execute(text(
        "SELECT * FROM portfolio_correlations WHERE portfolio_id = :p AND calculation_date = :d"),
        {"p": portfolio_id, "d": day})).mappings().one()
    symbols = list(r["symbols"])
    k = len(symbols)
    matrix = np.eye(k)
    upper = np.triu_indices(k, 1)
    matrix[upper] = np.frombuffer(r["correlations"], dtype="<f8")
    matrix.T[upper] = matrix[upper]
    counts = np.zeros((k, k), dtype="int64")
    upper_diag = np.triu_indices(k, 0)
    counts[upper_diag] = np.frombuffer(r["observations"], dtype="<i4")
    counts.T[upper_diag] = counts[upper_diag]
    labels = list(r["cluster_labels"])
    clusters: dict[int, list[str]] = {}
    for symbol, label in zip(symbols, labels, strict=True):
        clusters.setdefault(label, []).append(symbol)
    return {
        "date": day,
        "symbols": symbols,
        "matrix": [[round(float(v), 10) for v in row] for row in matrix],
        "observations": counts.tolist(),
        "window_sessions": int(r["window_sessions"]),
        "min_observations": MIN_OBS,
        "average_correlation": _num(r["average_correlation"]),
        "diversification_ratio": _num(r["diversification_ratio"]),
        "effective_bets": _num(r["effective_bets"]),
        "effective_bets_method": "exp(entropy of the normalised eigenvalues)",
        "clusters": sorted(clusters.values(), key=lambda c: (-len(c), c)),
        "cluster_method": f"{CLUSTER_LINKAGE} linkage on 1 - rho, cut at {CLUSTER_DISTANCE}",
        "excluded_symbols": list(r["excluded_symbols"] or []),
    }


async def stress_tests(session: AsyncSession, portfolio_id: uuid.UUID,
                       on: dt.date | None) -> list[dict[str, Any]]:
    """One entry per scenario: shocks, direct and correlated impact, % of equity, contributions."""
    day = await _resolve_date(session, "portfolio_stress_results", "calculation_date",
                              portfolio_id, on, "stress tests")
    r = (await session.execute(text(
        "SELECT * FROM portfolio_stress_results WHERE portfolio_id = :p AND calculation_date = :d"),
        {"p": portfolio_id, "d": day})).mappings().one()
    defs = (await session.execute(text(
        "SELECT scenario_id, version, name, category, shocks::text AS shocks, description "
        "FROM stress_scenarios WHERE (scenario_id, version) IN "
        "(SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:versions AS int[])))"),
        {"ids": list(r["scenario_ids"]), "versions": list(r["scenario_versions"])})).mappings()
    by_key = {(d["scenario_id"], d["version"]): d for d in defs}
    factors = list(r["factors"])
    n_f = len(factors)
    n_s = len(r["scenario_ids"])
    all_contributions = np.frombuffer(r["contributions"], dtype="<f8").reshape(n_s, n_f)
    all_moves = np.frombuffer(r["factor_moves"], dtype="<f8").reshape(n_s, n_f - 1)
    out = []
    for i, (sid, version) in enumerate(zip(r["scenario_ids"], r["scenario_versions"],
                                           strict=True)):
        d: Mapping[Any, Any] = by_key.get((sid, version), {})
        contributions = all_contributions[i].tolist()
        moves = all_moves[i].tolist()
        out.append({
            "date": day,
            "scenario": sid,
            "name": d.get("name"),
            "category": d.get("category"),
            "version": int(version),
            "shocks": json.loads(d["shocks"]) if d.get("shocks") else {},
            "direct_impact": _num(r["direct_impact"][i]),
            "correlated_impact": _num(r["correlated_impact"][i]),
            "impact_pct_of_equity": _num(r["impact_pct_of_equity"][i]),
            "impact_pct_of_gross": _num(r["impact_pct_of_gross"][i]),
            "contributions": {f: _num(v) for f, v in zip(factors, contributions, strict=True)},
            "factor_moves": {f: _num(v) for f, v in zip(factors[:-1], moves, strict=True)},
            "equity": _num(r["equity"]),
            "rates_duration_years": stress_methods.RATES_DURATION_YEARS,
        })
    return out
