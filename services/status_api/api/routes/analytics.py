"""Risk analytics of a portfolio on a date (docs/design.md §10): risk, correlations, stress.

`date` defaults to the latest date with analytics; a date without them answers 404 with the
reason. Another user's portfolio is 404 (ownership is checked first).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import HTTPException, status

from services.status_api import analytics_queries
from services.status_api.api.deps import OwnedPortfolioDep, SessionDep
from services.status_api.api.responses import Responses, resource_router
from services.status_api.schemas import CorrelationsOut, ErrorResponse, RiskOut, StressTestOut

router = resource_router("/portfolios", "analytics")

NO_DATA: Responses = {404: {"model": ErrorResponse, "description": (
    "No such portfolio for this caller (another user's answers 404 too), or no analytics on "
    "that date (the detail says why and which date is the latest).")}}


def not_found(exc: analytics_queries.NoAnalytics) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc))


@router.get("/{portfolio_id}/risk", response_model=RiskOut, responses=NO_DATA,
            summary="Volatility, beta, concentration, sectors and Greeks on a date")
async def get_risk(session: SessionDep, portfolio: OwnedPortfolioDep,
                   date: dt.date | None = None) -> dict[str, Any]:
    try:
        return await analytics_queries.risk(session, portfolio["portfolio_id"], date)
    except analytics_queries.NoAnalytics as exc:
        raise not_found(exc) from exc


@router.get("/{portfolio_id}/correlations", response_model=CorrelationsOut, responses=NO_DATA,
            summary="Correlation matrix of the public positions on a date, with its summary")
async def get_correlations(session: SessionDep, portfolio: OwnedPortfolioDep,
                           date: dt.date | None = None) -> dict[str, Any]:
    try:
        return await analytics_queries.correlations(session, portfolio["portfolio_id"], date)
    except analytics_queries.NoAnalytics as exc:
        raise not_found(exc) from exc


@router.get("/{portfolio_id}/stress-tests", response_model=list[StressTestOut],
            responses=NO_DATA, summary="Every active stress scenario's impact on a date")
async def get_stress_tests(session: SessionDep, portfolio: OwnedPortfolioDep,
                           date: dt.date | None = None) -> list[dict[str, Any]]:
    try:
        return await analytics_queries.stress_tests(session, portfolio["portfolio_id"], date)
    except analytics_queries.NoAnalytics as exc:
        raise not_found(exc) from exc
