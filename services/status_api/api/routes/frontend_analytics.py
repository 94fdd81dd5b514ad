"""The SigmaSight web frontend's analytics routes (`/api/v1/analytics/...`, docs/frontend.md).

Thin adapters: each reads what sigmabatch computed (snapshots, factor exposures, the risk
analytics' read functions) and shapes it as the frontend's types (frontend_models.py). No
number is computed here beyond unit and sign conventions (percentages of equity, the
frontend's factor display names, equity weights of the "All Accounts" view). "Not available"
is 200 with `available: false`, as the frontend expects; another user's portfolio is 404.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Query

from libs.common.factor_definitions import DISPLAY_NAMES
from services.status_api import frontend_queries, queries
from services.status_api.api.deps import CallerDep, OwnedPortfolioDep, SessionDep
from services.status_api.api.responses import NOT_FOUND, resource_router
from services.status_api.frontend_models import (
    AggregateBetaResponse,
    AggregateBreakdownResponse,
    AggregateFactorExposuresResponse,
    AggregateOverviewResponse,
    BetaComparisonResponse,
    FactorExposuresResponse,
    PortfolioOverviewResponse,
    PositionFactorExposuresResponse,
    SpreadFactorsResponse,
)

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
            "completeness": "full" if len(factors) == len(STYLE_FACTOR_NAMES) else "partial",
            "total_active_factors": len(STYLE_FACTOR_NAMES),
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
