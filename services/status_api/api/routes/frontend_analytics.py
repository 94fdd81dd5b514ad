"""The SigmaSight web frontend's analytics routes (`/api/v1/analytics/...`, docs/frontend.md).

Thin adapters: each reads what sigmabatch computed (snapshots, factor exposures, the risk
analytics' read functions) and shapes it as the frontend's types (frontend_models.py). No
number is computed here beyond unit and sign conventions (percentages of equity, the
frontend's factor display names, equity weights of the "All Accounts" view). "Not available"
is 200 with `available: false`, as the frontend expects; another user's portfolio is 404.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import Annotated, Any

import pandas as pd
from fastapi import HTTPException, Query

from libs.common.analytics import risk as risk_methods
from libs.common.factor_definitions import DISPLAY_NAMES
from services.status_api import analytics_queries, frontend_queries, queries
from services.status_api.api.deps import CallerDep, OwnedPortfolioDep, SessionDep
from services.status_api.api.responses import NOT_FOUND, resource_router
from services.status_api.frontend_models import (
    AggregateBetaResponse,
    AggregateBreakdownResponse,
    AggregateConcentrationResponse,
    AggregateCorrelationMatrixResponse,
    AggregateFactorExposuresResponse,
    AggregateOverviewResponse,
    AggregateSectorExposureResponse,
    AggregateStressTestResponse,
    AggregateVolatilityResponse,
    BetaComparisonResponse,
    ConcentrationResponse,
    CorrelationMatrixResponse,
    DiversificationScoreResponse,
    FactorExposuresResponse,
    PortfolioOverviewResponse,
    PositionFactorExposuresResponse,
    SectorExposureResponse,
    SpreadFactorsResponse,
    StressTestResponse,
    VolatilityResponse,
)
from services.status_api.schemas import ErrorResponse

router = resource_router("/analytics", "frontend analytics")

# sigmabatch factor -> the frontend's display name. The frontend looks factors up by these
# exact names ("Market Beta (90D)" is the portfolio beta of its command center) and shows
# them in this order; sigmabatch's market beta is the 90-session OLS beta on SPY and its rates
# beta the OLS beta on TLT (docs/design.md §6), the two the names describe.
STYLE_FACTOR_NAMES: dict[str, str] = {
    "market": "Market Beta (90D)",
    "momentum": DISPLAY_NAMES["momentum"],
    "value": DISPLAY_NAMES["value"],
    "growth": DISPLAY_NAMES["growth"],
    "quality": DISPLAY_NAMES["quality"],
    "size": DISPLAY_NAMES["size"],
    "low_volatility": DISPLAY_NAMES["low_volatility"],
    "interest_rate": "IR Beta",
}
PROVIDER_BETA = "Provider Beta (1Y)"
FACTOR_ORDER = (PROVIDER_BETA, *STYLE_FACTOR_NAMES.values())
FACTOR_MODEL = ("sigmabatch: OLS market (SPY) and rates (TLT) betas and ridge style betas over "
                "90 sessions, per symbol")
FACTOR_METHOD = ("Σ position beta × signed market value / equity (options delta-adjusted on "
                 "their underlying's betas)")


def _f(value: Decimal | float | None) -> float | None:
    return None if value is None else float(value)


def _money(value: Decimal | float | None) -> float:
    return round(float(value or 0), 2)


def _pct(value: float, base: float) -> float:
    return round(value / base * 100, 1) if base > 0 else 0.0


# --- A1 overview --------------------------------------------------------------------------


@router.get("/portfolio/{portfolio_id}/overview", response_model=PortfolioOverviewResponse,
            responses=NOT_FOUND, summary="Portfolio overview (the frontend's dashboard cards)")
async def overview(session: SessionDep, portfolio: OwnedPortfolioDep) -> dict[str, Any]:
    """Figures of the latest complete snapshot. Equity is the rolled-forward equity; cash is
    equity minus net market value; P&L is what sigmabatch measured from the first snapshot
    on (total split into unrealized and realized; year and month to date of that snapshot)."""
    pid = portfolio["portfolio_id"]
    row = await frontend_queries.overview_figures(session, pid)
    has_snapshot = row["snapshot_date"] is not None
    equity = _money(row["equity"] if has_snapshot else row["starting_equity"])
    long_v, short_v = _money(row["long_value"]), _money(row["short_value"])
    gross, net = _money(row["gross_exposure"]), _money(row["net_exposure"])
    stamp = row["completed_at"] or dt.datetime.now(dt.UTC)
    return {
        "portfolio_id": str(pid),
        "equity_balance": equity,
        "net_asset_value": equity,
        "total_value": equity,
        "cash_balance": round(equity - net, 2),
        "leverage": round(gross / equity, 2) if equity > 0 else 0.0,
        "exposures": {
            "long_exposure": long_v, "short_exposure": short_v,
            "gross_exposure": gross, "net_exposure": net,
            "long_percentage": _pct(long_v, equity), "short_percentage": _pct(-short_v, equity),
            "gross_percentage": _pct(gross, equity), "net_percentage": _pct(net, equity),
        },
        "pnl": {
            "total_pnl": _money(row["cumulative_pnl"]),
            "unrealized_pnl": _money(row["unrealized"]),
            "realized_pnl": _money(row["realized"]),
            "ytd_pnl": _money(row["ytd"]),
            "mtd_pnl": _money(row["mtd"]),
        },
        "position_count": {
            "total_positions": int(row["total"] or 0), "long_count": int(row["longs"] or 0),
            "short_count": int(row["shorts"] or 0), "option_count": int(row["options"] or 0),
        },
        "target_returns": None,
        "last_updated": stamp.isoformat(),
        "snapshot_date": row["snapshot_date"].isoformat() if has_snapshot else None,
    }


# --- A4 portfolio factor exposures --------------------------------------------------------


def _no_factor_data(pid: Any, positions_total: int, message: str) -> dict[str, Any]:
    return {
        "available": False, "portfolio_id": str(pid), "calculation_date": None, "factors": [],
        "data_quality": {"flag": "NO_FACTOR_CALCULATIONS", "message": message,
                         "positions_analyzed": 0, "positions_total": positions_total,
                         "positions_skipped": 0, "data_days": 0},
        "metadata": {"reason": "no_calculation_available", "detail": "no_factor_calculations"},
        "reason": "no_calculation_available",
    }


async def portfolio_factors(session: SessionDep, pid: Any) -> tuple[dt.date | None,
                                                                    list[dict[str, Any]]]:
    """(date, [{name, beta, exposure_dollar}]) in the frontend's names and order."""
    stored = await queries.factor_exposures(session, pid, None)
    factors = [
        {"name": STYLE_FACTOR_NAMES[f["factor"]], "beta": float(f["exposure"]),
         "exposure_dollar": _f(f["exposure_dollar"])}
        for f in stored["factors"] if f["factor"] in STYLE_FACTOR_NAMES
    ]
    risk = await _risk(session, pid)
    if not isinstance(risk, str) and risk["beta_provider"] is not None:
        # The exposure-weighted beta of the providers' (company profile) betas.
        equity = await frontend_queries.snapshot_equity(session, pid, risk["date"])
        factors.append({"name": PROVIDER_BETA, "beta": risk["beta_provider"],
                        "exposure_dollar": (round(risk["beta_provider"] * equity, 2)
                                            if equity is not None else None)})
    factors.sort(key=lambda f: FACTOR_ORDER.index(f["name"]))
    return stored["calculation_date"], factors


@router.get("/portfolio/{portfolio_id}/factor-exposures", response_model=FactorExposuresResponse,
            responses=NOT_FOUND, summary="Portfolio factor betas (the frontend's names)")
async def factor_exposures(
    session: SessionDep, portfolio: OwnedPortfolioDep,
    use_latest_successful: Annotated[bool, Query(
        description="Accepted for the frontend; sigmabatch always answers its latest date.")]
    = True,
) -> dict[str, Any]:
    pid = portfolio["portfolio_id"]
    day, factors = await portfolio_factors(session, pid)
    if day is None or not factors:
        return _no_factor_data(pid, portfolio["position_count"],
                               "No factor exposures for this portfolio yet (no snapshot with "
                               "factor betas).")
    latest = portfolio["latest_snapshot_date"]
    return {
        "available": True, "portfolio_id": str(pid), "calculation_date": day.isoformat(),
        "factors": factors,
        "data_quality": {
            "snapshot_date": latest.isoformat() if latest else None,
            "calculation_date": day.isoformat(),
            "is_current": latest == day, "is_stale": latest != day,
            "should_recalculate": latest != day,
        },
        "metadata": {
            "factor_model": FACTOR_MODEL, "calculation_method": FACTOR_METHOD,
            "completeness": ("full" if {f["name"] for f in factors} >= set(
                STYLE_FACTOR_NAMES.values()) else "partial"),
            "total_active_factors": len(FACTOR_ORDER),
            "factors_calculated": len(factors),
            "has_market_beta": any(f["name"] == STYLE_FACTOR_NAMES["market"] for f in factors),
            "is_latest": True, "is_fallback": False, "calculation_date": day.isoformat(),
        },
    }


# --- A5 position factor exposures ---------------------------------------------------------


@router.get("/portfolio/{portfolio_id}/positions/factor-exposures",
            response_model=PositionFactorExposuresResponse, responses=NOT_FOUND,
            summary="Per-position factor betas, a page of positions by symbol")
async def position_factor_exposures(
    session: SessionDep, portfolio: OwnedPortfolioDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    symbols: Annotated[str | None, Query(max_length=10_000,
                                         description="Comma-separated symbols")] = None,
) -> dict[str, Any]:
    pid = portfolio["portfolio_id"]
    wanted = sorted({s.strip().upper() for s in symbols.split(",") if s.strip()}) \
        if symbols else None
    page = await frontend_queries.position_factor_page(
        session, pid, wanted, limit, offset, list(STYLE_FACTOR_NAMES))
    if page["calculation_date"] is None:
        return {"available": False, "portfolio_id": str(pid), "calculation_date": None,
                "total": 0, "limit": limit, "offset": offset, "positions": None,
                "data_quality": None, "metadata": {"reason": "no_calculation_available"}}
    for position in page["positions"]:
        position["exposures"] = {STYLE_FACTOR_NAMES[k]: v
                                 for k, v in position["exposures"].items()}
    return {"available": True, "portfolio_id": str(pid),
            "calculation_date": page["calculation_date"].isoformat(), "total": page["total"],
            "limit": limit, "offset": offset, "positions": page["positions"],
            "data_quality": None, "metadata": {}}


# --- "All Accounts": every portfolio of the caller ----------------------------------------
# A portfolio's weight is its share of the caller's total equity (the latest rolled-forward
# equity of each); a betas' aggregate is their equity-weighted mean over the portfolios that
# have one, which equals the combined book's beta (dollar exposures add up).


class Book:
    """The caller's portfolios, their equity and weights."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.values = {r["portfolio_id"]: max(float(r["value"] or 0), 0.0) for r in rows}
        self.total = sum(self.values.values())
        dates = [r["snapshot_date"] for r in rows if r["snapshot_date"] is not None]
        self.calculation_date = max(dates).isoformat() if dates else None

    def weight(self, pid: Any) -> float:
        return self.values[pid] / self.total if self.total > 0 else 0.0

    def portfolios(self) -> list[dict[str, Any]]:
        return [{"portfolio_id": str(r["portfolio_id"]), "portfolio_name": r["name"],
                 "account_name": r["account_name"], "account_type": r["account_type"],
                 "value": round(self.values[r["portfolio_id"]], 2),
                 "weight": round(self.weight(r["portfolio_id"]), 6)} for r in self.rows]

    def weighted(self, per_portfolio: dict[Any, float | None]) -> float | None:
        """Equity-weighted mean over the portfolios with a value (None when none has one)."""
        known = {p: v for p, v in per_portfolio.items() if v is not None and self.values[p] > 0}
        base = sum(self.values[p] for p in known)
        return sum(v * self.values[p] for p, v in known.items()) / base if base > 0 else None

    def common(self) -> dict[str, Any]:
        return {"net_asset_value": round(self.total, 2), "total_value": round(self.total, 2),
                "portfolio_count": len(self.rows), "calculation_date": self.calculation_date}


async def caller_book(session: SessionDep, caller: CallerDep) -> Book:
    return Book(await frontend_queries.caller_portfolios(session, caller.user_id))


async def factors_by_portfolio(session: SessionDep, book: Book
                               ) -> dict[str, dict[Any, dict[str, Any]]]:
    """frontend factor name -> portfolio -> {beta, dollars}."""
    out: dict[str, dict[Any, dict[str, Any]]] = {}
    rows = await frontend_queries.latest_factor_exposures(
        session, [r["portfolio_id"] for r in book.rows])
    for r in rows:
        name = STYLE_FACTOR_NAMES.get(r["factor_name"])
        if name is not None:
            out.setdefault(name, {})[r["portfolio_id"]] = {
                "beta": float(r["exposure"]), "dollars": _f(r["exposure_dollar"])}
    return out


@router.get("/aggregate/overview", response_model=AggregateOverviewResponse,
            summary="All Accounts: total equity and each portfolio's share")
async def aggregate_overview(session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    book = await caller_book(session, caller)
    return {**book.common(), "portfolios": book.portfolios()}


@router.get("/aggregate/breakdown", response_model=AggregateBreakdownResponse,
            summary="All Accounts: each portfolio's share and metrics")
async def aggregate_breakdown(session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    book = await caller_book(session, caller)
    factors = await factors_by_portfolio(session, book)
    market = factors.get(STYLE_FACTOR_NAMES["market"], {})
    portfolios = book.portfolios()
    for entry, row in zip(portfolios, book.rows, strict=True):
        beta = market.get(row["portfolio_id"])
        entry["metrics"] = {"beta_90d": beta["beta"] if beta else None}
    return {**book.common(), "portfolios": portfolios}


@router.get("/aggregate/beta", response_model=AggregateBetaResponse,
            summary="All Accounts: equity-weighted market beta")
async def aggregate_beta(session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    book = await caller_book(session, caller)
    market = (await factors_by_portfolio(session, book)).get(STYLE_FACTOR_NAMES["market"], {})
    betas = {r["portfolio_id"]: (market[r["portfolio_id"]]["beta"]
                                 if r["portfolio_id"] in market else None) for r in book.rows}
    portfolios = book.portfolios()
    for entry, row in zip(portfolios, book.rows, strict=True):
        entry["beta_90d"] = betas[row["portfolio_id"]]
        entry["beta_180d"] = None
    aggregate = book.weighted(betas)
    return {**book.common(), "portfolios": portfolios, "aggregate_beta_90d": aggregate,
            "aggregate_beta_180d": None, "aggregate_beta": aggregate,
            "calculation_method": "weighted_average",
            "formula": "Σ(Beta_i × Weight_i), Weight_i = Equity_i / Σ Equity"}


@router.get("/aggregate/factor-exposures", response_model=AggregateFactorExposuresResponse,
            summary="All Accounts: equity-weighted factor betas and summed dollar exposures")
async def aggregate_factor_exposures(session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    book = await caller_book(session, caller)
    by_factor = await factors_by_portfolio(session, book)
    factors = []
    for name in FACTOR_ORDER:
        per = by_factor.get(name)
        if not per:
            continue
        beta = book.weighted({p: per[p]["beta"] if p in per else None for p in book.values})
        if beta is None:
            continue
        dollars = [v["dollars"] for v in per.values() if v["dollars"] is not None]
        factors.append({"name": name, "aggregate_beta": beta,
                        "aggregate_exposure_dollar": round(sum(dollars), 2) if dollars else None})
    return {**book.common(), "factors": factors, "portfolios": book.portfolios(),
            "calculation_method": "weighted_average",
            "formula": "For each factor: Σ(Beta_i × Weight_i), Weight_i = Equity_i / Σ Equity"}


# --- A10 spread factors -------------------------------------------------------------------

SPREAD_FACTORS: dict[str, tuple[str, str, str, str]] = {
    # factor: (frontend name, direction when > 0, direction when < 0, what the spread is)
    "growth_value_spread": ("Growth-Value Spread", "Growth", "Value", "growth (VUG) over value "
                                                                      "(VTV)"),
    "momentum_spread": ("Momentum Spread", "Momentum", "Contrarian", "momentum (MTUM) over the "
                                                                     "market (SPY)"),
    "size_spread": ("Size Spread", "Small Cap", "Large Cap", "small caps (IWM) over the market "
                                                             "(SPY)"),
    "quality_spread": ("Quality Spread", "Quality", "Speculative", "quality (QUAL) over the "
                                                                  "market (SPY)"),
}
STRONG_SPREAD, MODERATE_SPREAD = 0.5, 0.2  # |beta| thresholds of the original's labels


def interpret_spread(factor: str, beta: float) -> dict[str, str]:
    """The original's labels: magnitude/risk level by |beta|, direction by sign."""
    name, up, down, spread = SPREAD_FACTORS[factor]
    size = abs(beta)
    magnitude, risk = (("Strong", "high") if size > STRONG_SPREAD else
                       ("Moderate", "medium") if size > MODERATE_SPREAD else ("Mild", "low"))
    direction = up if beta > 0 else down if beta < 0 else "Neutral"
    return {"direction": direction, "magnitude": magnitude, "risk_level": risk,
            "explanation": (f"{magnitude} {direction.lower()} tilt: the portfolio moves "
                            f"{beta:+.2f}% of equity for each 1% that {spread} returns.")}


@router.get("/portfolio/{portfolio_id}/spread-factors", response_model=SpreadFactorsResponse,
            responses=NOT_FOUND, summary="Spread factor betas with their reading")
async def spread_factors(session: SessionDep, portfolio: OwnedPortfolioDep) -> dict[str, Any]:
    pid = portfolio["portfolio_id"]
    stored = await queries.factor_exposures(session, pid, None)
    factors = [
        {"name": SPREAD_FACTORS[f["factor"]][0], "beta": float(f["exposure"]),
         "exposure_dollar": _f(f["exposure_dollar"]),
         **interpret_spread(f["factor"], float(f["exposure"]))}
        for f in stored["factors"] if f["factor"] in SPREAD_FACTORS
    ]
    day = stored["calculation_date"]
    if not factors:
        return {"available": False, "portfolio_id": str(pid), "calculation_date": None,
                "factors": [], "metadata": {"reason": "no_calculation_available"}}
    return {"available": True, "portfolio_id": str(pid), "calculation_date": day.isoformat(),
            "factors": factors,
            "metadata": {"calculation_method": "OLS on long-short ETF return spreads, 180 "
                                               "sessions (docs/design.md §6)",
                         "factors_calculated": len(factors)}}


# --- A11 beta comparison ------------------------------------------------------------------


@router.get("/portfolio/{portfolio_id}/beta-comparison", response_model=BetaComparisonResponse,
            responses=NOT_FOUND, summary="Provider beta vs sigmabatch's market beta per position")
async def beta_comparison(session: SessionDep, portfolio: OwnedPortfolioDep) -> dict[str, Any]:
    pid = portfolio["portfolio_id"]
    rows = await frontend_queries.beta_comparison(session, pid)
    positions = [
        {"symbol": r["symbol"], "position_id": str(r["position_id"]),
         "market_beta": r["market_beta"], "calculated_beta": r["calculated_beta"],
         "beta_r_squared": r["r2"],
         "beta_difference": (r["calculated_beta"] - r["market_beta"]
                             if r["calculated_beta"] is not None and r["market_beta"] is not None
                             else None),
         "calculation_date": r["calculation_date"].isoformat() if r["calculation_date"] else None,
         "observations": r["n_obs"]}
        for r in rows
    ]
    metadata = {
        "total_positions": len(positions),
        "positions_with_market_beta": sum(p["market_beta"] is not None for p in positions),
        "positions_with_calculated_beta": sum(p["calculated_beta"] is not None
                                              for p in positions),
    }
    if not positions:
        return {"available": False, "portfolio_id": str(pid), "positions": None,
                "metadata": {**metadata, "error": "No valued public positions yet."}}
    return {"available": True, "portfolio_id": str(pid), "positions": positions,
            "metadata": metadata}


# --- risk analytics (the analytics read functions, docs/design.md §10) --------------------


def _iso(day: dt.date | None) -> str | None:
    return day.isoformat() if day else None


async def _risk(session: SessionDep, pid: Any) -> dict[str, Any] | str:
    """The risk document, or the reason there is none."""
    try:
        return await analytics_queries.risk(session, pid, None)
    except analytics_queries.NoAnalytics as exc:
        return str(exc)


async def _correlations(session: SessionDep, pid: Any) -> dict[str, Any] | str:
    try:
        return await analytics_queries.correlations(session, pid, None)
    except analytics_queries.NoAnalytics as exc:
        return str(exc)


SELECTION = "public positions netted per symbol, largest gross weight first"


@router.get("/portfolio/{portfolio_id}/correlation-matrix",
            response_model=CorrelationMatrixResponse,
            responses={**NOT_FOUND, 400: {"model": ErrorResponse,
                                          "description": "min_overlap > lookback_days."}},
            summary="Correlations of the portfolio's largest public positions")
async def correlation_matrix(
    session: SessionDep, portfolio: OwnedPortfolioDep,
    lookback_days: Annotated[int, Query(ge=30, le=365, description=(
        "Accepted for the frontend; sigmabatch's window is fixed (metadata.lookback_days)."))]
    = 90,
    min_overlap: Annotated[int, Query(ge=10, le=365)] = 30,
    max_symbols: Annotated[int, Query(ge=2, le=50)] = 25,
) -> dict[str, Any]:
    if min_overlap > lookback_days:
        raise HTTPException(400, detail="min_overlap must not exceed lookback_days.")
    pid = portfolio["portfolio_id"]
    doc = await _correlations(session, pid)
    if isinstance(doc, str) or len(doc["symbols"]) < 2 or doc["average_correlation"] is None:
        reason = ("no_calculation_available" if isinstance(doc, str) else
                  "insufficient_symbols" if len(doc["symbols"]) < 2 else "insufficient_data")
        return {"available": False, "data": None, "data_quality": None, "reason": reason,
                "metadata": {"reason": reason,
                             "detail": doc if isinstance(doc, str) else None}}
    shown = doc["symbols"][:max_symbols]
    k = len(shown)
    matrix: dict[str, dict[str, float]] = {}
    valid = 0
    for i, row_symbol in enumerate(shown):
        cells = {}
        for j, column_symbol in enumerate(shown):
            value = doc["matrix"][i][j]
            enough = doc["observations"][i][j] >= doc["min_observations"]
            if value is not None and math.isfinite(value) and (i == j or enough):
                cells[column_symbol] = value
                valid += int(i < j)
        matrix[row_symbol] = cells
    pairs = k * (k - 1) // 2
    day = _iso(doc["date"])
    return {
        "available": True,
        "data": {"matrix": matrix, "average_correlation": doc["average_correlation"]},
        "metadata": {
            "calculation_date": day, "lookback_days": doc["window_sessions"],
            "duration_days": doc["window_sessions"], "symbols_included": k,
            "positions_included": k, "symbols_total": len(doc["symbols"]),
            "min_overlap": doc["min_observations"], "max_symbols": max_symbols,
            "selection_method": SELECTION,
            "average_correlation_over": "all symbols_total symbols",
            "excluded_symbols": doc["excluded_symbols"],
            "diversification_ratio": doc["diversification_ratio"],
            "effective_bets": doc["effective_bets"], "clusters": doc["clusters"],
        },
        "data_quality": {
            "flag": "full" if valid == pairs else "partial",
            "message": f"{valid} of {pairs} pairs have {doc['min_observations']}+ common "
                       "sessions.",
            "positions_analyzed": k, "positions_total": len(doc["symbols"]),
            "positions_skipped": len(doc["excluded_symbols"]),
            "data_days": doc["window_sessions"], "total_pairs": pairs, "valid_pairs": valid,
            "coverage_percent": round(100.0 * valid / pairs, 1) if pairs else 0.0,
        },
    }


@router.get("/portfolio/{portfolio_id}/diversification-score",
            response_model=DiversificationScoreResponse, responses=NOT_FOUND,
            summary="Average correlation of the portfolio's positions")
async def diversification_score(
    session: SessionDep, portfolio: OwnedPortfolioDep,
    lookback_days: Annotated[int, Query(ge=30, le=365)] = 90,
    min_overlap: Annotated[int, Query(ge=10, le=365)] = 30,
) -> dict[str, Any]:
    pid = portfolio["portfolio_id"]
    doc = await _correlations(session, pid)
    if isinstance(doc, str) or doc["average_correlation"] is None:
        return {"available": False, "portfolio_id": str(pid), "portfolio_correlation": None,
                "duration_days": None, "calculation_date": None, "symbols_included": None,
                "metadata": {"reason": "no_calculation_available" if isinstance(doc, str)
                             else "insufficient_data"}}
    return {"available": True, "portfolio_id": str(pid),
            "portfolio_correlation": doc["average_correlation"],
            "duration_days": doc["window_sessions"], "calculation_date": _iso(doc["date"]),
            "symbols_included": len(doc["symbols"]),
            "metadata": {"lookback_days": doc["window_sessions"],
                         "min_overlap": doc["min_observations"], "selection_method": SELECTION,
                         "diversification_ratio": doc["diversification_ratio"],
                         "effective_bets": doc["effective_bets"]}}


def severity(percentage: float) -> str:
    """The frontend's four severity colours, by the size of the loss in % of equity."""
    loss = -percentage
    return ("severe" if loss >= 20 else "high" if loss >= 10 else "medium" if loss >= 5
            else "low")


async def stress_scenarios(session: SessionDep, pid: Any) -> tuple[dt.date, float,
                                                                   list[dict[str, Any]]] | str:
    """(date, equity, scenarios in the frontend's shape) or the reason there are none."""
    try:
        results = await analytics_queries.stress_tests(session, pid, None)
    except analytics_queries.NoAnalytics as exc:
        return str(exc)
    if not results:
        return "No active stress scenarios."
    descriptions = await frontend_queries.scenario_descriptions(
        session, [(r["scenario"], r["version"]) for r in results])
    equity = results[0]["equity"]
    if equity is None or equity <= 0:
        return "The portfolio's equity is not positive: impacts in % of equity are undefined."
    scenarios = []
    for r in results:
        dollars = r["correlated_impact"] or 0.0
        percentage = dollars / equity * 100
        scenarios.append({
            "id": r["scenario"], "name": r["name"] or r["scenario"],
            "description": descriptions.get((r["scenario"], r["version"])),
            "category": r["category"], "impact_type": "correlated",
            "severity": severity(percentage),
            "impact": {"dollar_impact": round(dollars, 2),
                       "percentage_impact": round(percentage, 4),
                       "new_portfolio_value": round(equity + dollars, 2)},
            "direct_impact": r["direct_impact"], "version": r["version"],
            "shocks": r["shocks"],
        })
    return results[0]["date"], equity, scenarios


@router.get("/portfolio/{portfolio_id}/stress-test", response_model=StressTestResponse,
            responses=NOT_FOUND, summary="Stress scenarios: correlated impact on equity")
async def stress_test(
    session: SessionDep, portfolio: OwnedPortfolioDep,
    scenarios: Annotated[str | None, Query(max_length=2000,
                                           description="Comma-separated scenario ids")] = None,
) -> dict[str, Any]:
    pid = portfolio["portfolio_id"]
    wanted = [s.strip() for s in scenarios.split(",") if s.strip()] if scenarios else None
    found = await stress_scenarios(session, pid)
    if isinstance(found, str):
        return {"available": False, "data": None, "data_quality": None, "reason": "no_results",
                "metadata": {"reason": "no_results", "detail": found,
                             "scenarios_requested": wanted}}
    day, equity, rows = found
    if wanted:
        rows = [r for r in rows if r["id"] in wanted]
    return {"available": True,
            "data": {"scenarios": rows, "portfolio_value": round(equity, 2),
                     "calculation_date": day.isoformat()},
            "data_quality": None,
            "metadata": {"scenarios_requested": wanted, "impact_basis": (
                "correlated: the shocked factors plus the conditional expectation of the "
                "others (docs/design.md §10); direct_impact is the shocked factors alone")}}


TREND_BAND = 0.1  # 21-session volatility more than 10% above/below the 63-session one


@router.get("/portfolio/{portfolio_id}/volatility", response_model=VolatilityResponse,
            responses=NOT_FOUND, summary="Realized and forecast volatility (annualised)")
async def volatility(session: SessionDep, portfolio: OwnedPortfolioDep) -> dict[str, Any]:
    pid = portfolio["portfolio_id"]
    doc = await _risk(session, pid)
    if isinstance(doc, str) or doc["volatility_21d"] is None:
        return {"available": False, "portfolio_id": str(pid), "calculation_date": None,
                "data": None, "metadata": {"error": doc if isinstance(doc, str) else
                                           "Not enough return history for a 21-session "
                                           "volatility."}}
    short, long = doc["volatility_21d"], doc["volatility_63d"]
    trend = None
    if long:
        trend = ("increasing" if short > long * (1 + TREND_BAND) else
                 "decreasing" if short < long * (1 - TREND_BAND) else "stable")
    return {"available": True, "portfolio_id": str(pid), "calculation_date": _iso(doc["date"]),
            "data": {"realized_volatility_21d": short, "realized_volatility_63d": long,
                     "expected_volatility_21d": doc["volatility_forecast"],
                     "volatility_trend": trend,
                     "volatility_percentile": doc["volatility_percentile"]},
            "metadata": {"forecast_model": doc["volatility_method"],
                         "trading_day_windows": "21d, 63d",
                         "trend_rule": "21d vs 63d volatility, ±10%"}}


UNCLASSIFIED = "Unclassified"


@router.get("/portfolio/{portfolio_id}/sector-exposure", response_model=SectorExposureResponse,
            responses=NOT_FOUND, summary="Net sector weights (fractions of equity)")
async def sector_exposure(session: SessionDep, portfolio: OwnedPortfolioDep) -> dict[str, Any]:
    pid = portfolio["portfolio_id"]
    doc = await _risk(session, pid)
    if isinstance(doc, str):
        return {"available": False, "portfolio_id": str(pid), "calculation_date": None,
                "data": None, "metadata": {"error": doc}}
    equity = await frontend_queries.snapshot_equity(session, pid, doc["date"]) or 0.0
    weights = {s["sector"]: s["net_weight"] for s in doc["sectors"]
               if s["net_weight"] is not None}
    return {"available": True, "portfolio_id": str(pid), "calculation_date": _iso(doc["date"]),
            "data": {"portfolio_weights": weights, "benchmark_weights": {},
                     "over_underweight": {}, "largest_overweight": None,
                     "largest_underweight": None, "total_portfolio_value": round(equity, 2),
                     "positions_by_sector": {},
                     "unclassified_value": round(weights.get(UNCLASSIFIED, 0.0) * equity, 2),
                     "unclassified_count": len(doc["unclassified_symbols"])},
            "metadata": {"benchmark": "none", "note": (
                "sigmabatch holds no index constituent weights, so there is no benchmark to "
                "compare with; weights are net market value / equity by company-profile "
                "sector (options on their underlying).")}}


def hhi_reading(hhi: float) -> str:
    return ("Highly concentrated" if hhi > 2500 else "Moderately concentrated" if hhi > 1500
            else "Diversified")


@router.get("/portfolio/{portfolio_id}/concentration", response_model=ConcentrationResponse,
            responses=NOT_FOUND, summary="HHI, effective positions, top-3/top-10 weights")
async def concentration(session: SessionDep, portfolio: OwnedPortfolioDep) -> dict[str, Any]:
    pid = portfolio["portfolio_id"]
    doc = await _risk(session, pid)
    if isinstance(doc, str) or doc["hhi"] is None:
        return {"available": False, "portfolio_id": str(pid), "calculation_date": None,
                "data": None, "metadata": {"error": doc if isinstance(doc, str) else
                                           "No valued positions."}}
    hhi = doc["hhi"] * 10_000
    return {"available": True, "portfolio_id": str(pid), "calculation_date": _iso(doc["date"]),
            "data": {"hhi": hhi, "effective_num_positions": doc["effective_positions"],
                     "top_3_concentration": doc["top3_weight"],
                     "top_10_concentration": doc["top10_weight"],
                     "total_positions": portfolio["position_count"], "position_weights": None},
            "metadata": {"calculation_method": "HHI = Σ w² × 10,000, w = |market value| / "
                                               "Σ |market value| per symbol",
                         "interpretation": hhi_reading(hhi)}}


# --- "All Accounts" of the risk analytics -------------------------------------------------


async def risk_by_portfolio(session: SessionDep, book: Book) -> dict[Any, dict[str, Any]]:
    found = {}
    for row in book.rows:
        doc = await _risk(session, row["portfolio_id"])
        if not isinstance(doc, str):
            found[row["portfolio_id"]] = doc
    return found


@router.get("/aggregate/volatility", response_model=AggregateVolatilityResponse,
            summary="All Accounts: equity-weighted volatilities")
async def aggregate_volatility(session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    """An equity-weighted mean of the portfolios' volatilities, as the original: an upper
    bound on the combined book's volatility (equal to it only if the books move together)."""
    book = await caller_book(session, caller)
    risks = await risk_by_portfolio(session, book)

    def of(key: str) -> dict[Any, float | None]:
        return {p: (risks[p][key] if p in risks else None) for p in book.values}

    portfolios = book.portfolios()
    for entry, row in zip(portfolios, book.rows, strict=True):
        doc = risks.get(row["portfolio_id"], {})
        entry["volatility_21d"] = doc.get("volatility_21d")
        entry["volatility_63d"] = doc.get("volatility_63d")
    return {**book.common(), "portfolios": portfolios,
            "aggregate_volatility_21d": book.weighted(of("volatility_21d")),
            "aggregate_volatility_63d": book.weighted(of("volatility_63d")),
            "aggregate_expected_volatility_21d": book.weighted(of("volatility_forecast")),
            "calculation_method": "weighted_average",
            "note": "Equity-weighted mean of the portfolios' volatilities: an upper bound on "
                    "the combined book's (diversification between accounts is ignored)."}


@router.get("/aggregate/sector-exposure", response_model=AggregateSectorExposureResponse,
            summary="All Accounts: net sector weights of the combined book")
async def aggregate_sector_exposure(session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    """Σ sector value / Σ equity: each portfolio's net weight times its equity, summed."""
    book = await caller_book(session, caller)
    risks = await risk_by_portfolio(session, book)
    base = sum(book.values[p] for p in risks)
    if base <= 0:
        return {**book.common(), "available": False, "data": None,
                "message": "No sector analytics for these portfolios yet."}
    weights: dict[str, float] = {}
    for p, doc in risks.items():
        for s in doc["sectors"]:
            if s["net_weight"] is not None:
                weights[s["sector"]] = weights.get(s["sector"], 0.0) + (
                    s["net_weight"] * book.values[p] / base)
    return {**book.common(), "available": True,
            "data": {"portfolio_weights": weights, "benchmark_weights": {},
                     "over_underweight": {}, "largest_overweight": None,
                     "largest_underweight": None},
            "calculation_method": "position_aggregation", "benchmark": "none",
            "formula": "Σ sector net value / Σ equity over the portfolios with analytics"}


@router.get("/aggregate/concentration", response_model=AggregateConcentrationResponse,
            summary="All Accounts: concentration of the combined book by symbol")
async def aggregate_concentration(session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    book = await caller_book(session, caller)
    holdings = pd.DataFrame(await frontend_queries.latest_holdings(
        session, [r["portfolio_id"] for r in book.rows]),
        columns=["portfolio_id", "symbol", "market_value"])
    if holdings.empty:
        return {**book.common(), "available": False, "data": None,
                "message": "No valued positions yet."}
    holdings["market_value"] = holdings["market_value"].astype(float)
    combined = holdings.assign(portfolio_id="all")
    # The analytics' own rule (Σ w², w = |net value| / Σ |net value| per symbol), on one book.
    figures = risk_methods.concentration(
        risk_methods.make_book(combined, pd.Series([book.total], index=["all"]))).iloc[0]
    by_symbol = combined.groupby("symbol")["market_value"].sum()
    gross = by_symbol.abs()
    top = gross.sort_values(ascending=False, kind="stable").head(10)
    return {**book.common(), "available": True, "data": {
        "hhi": float(figures["hhi"]) * 10_000,
        "effective_num_positions": float(figures["effective_positions"]),
        "top_3_concentration": float(figures["top3"]),
        "top_10_concentration": float(figures["top10"]),
        "unique_symbols": int((gross > 0).sum()), "total_positions": len(holdings),
        "top_positions": [{"symbol": s, "value": round(float(by_symbol[s]), 2),
                           "weight": float(v / gross.sum())} for s, v in top.items()]},
        "calculation_method": "symbol_aggregation",
        "formula": "HHI = Σ(weight_i²) × 10,000 across the positions of all portfolios"}


@router.get("/aggregate/correlation-matrix", response_model=AggregateCorrelationMatrixResponse,
            summary="All Accounts: not computed by sigmabatch (per portfolio only)")
async def aggregate_correlation_matrix(
    session: SessionDep, caller: CallerDep,
    max_symbols: Annotated[int, Query(ge=2, le=50)] = 25,
    max_positions: Annotated[int | None, Query(ge=2, le=50)] = None,
) -> dict[str, Any]:
    """sigmabatch computes correlations per portfolio, in the refresh; a combined matrix for
    the caller's accounts is not computed, so this answers `available: false` (docs)."""
    book = await caller_book(session, caller)
    return {**book.common(), "available": False, "symbols": [], "correlation_matrix": [],
            "average_correlation": None, "total_positions_analyzed": 0, "data_quality": None,
            "message": "Correlations are computed per portfolio: select one account."}


@router.get("/aggregate/stress-test", response_model=AggregateStressTestResponse,
            summary="All Accounts: stress impacts summed over the portfolios")
async def aggregate_stress_test(session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    """Each scenario's dollar impact summed over the portfolios (impacts are linear in the
    dollar exposures, so the sum is the combined book's), in % of their summed equity."""
    book = await caller_book(session, caller)
    totals: dict[str, dict[str, Any]] = {}
    equity = 0.0
    included = 0
    for row in book.rows:
        found = await stress_scenarios(session, row["portfolio_id"])
        if isinstance(found, str):
            continue
        _, portfolio_equity, scenarios = found
        equity += portfolio_equity
        included += 1
        for s in scenarios:
            entry = totals.setdefault(s["id"], {**s, "dollars": 0.0, "portfolios_included": 0})
            entry["dollars"] += s["impact"]["dollar_impact"]
            entry["portfolios_included"] += 1
    if not included:
        return {**book.common(), "available": False, "data": None,
                "portfolios_with_stress_data": 0,
                "message": "No stress results for these portfolios yet."}
    scenarios = []
    for s in totals.values():
        percentage = s["dollars"] / equity * 100
        scenarios.append({
            "id": s["id"], "name": s["name"], "description": s["description"],
            "category": s["category"], "impact_type": "correlated",
            "severity": severity(percentage), "portfolios_included": s["portfolios_included"],
            "impact": {"dollar_impact": round(s["dollars"], 2),
                       "percentage_impact": round(percentage, 4),
                       "new_portfolio_value": round(equity + s["dollars"], 2)}})
    return {**book.common(), "available": True,
            "data": {"scenarios": scenarios, "portfolio_value": round(equity, 2)},
            "portfolios_with_stress_data": included, "calculation_method": "sum",
            "formula": "Σ dollar impact_i; % of Σ equity_i over portfolios with results"}
