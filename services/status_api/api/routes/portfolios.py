"""Portfolios: upload (starts onboarding), list, detail, snapshots, positions, exposures."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import File, Form, HTTPException, UploadFile
from fastapi.responses import JSONResponse

from libs.common.onboarding.limits import NewSymbolLimitExceeded, NewSymbolLimits
from libs.common.onboarding.upload import UploadRejected, upload_portfolio
from libs.common.portfolio_csv import MAX_UPLOAD_BYTES
from services.status_api import analytics_queries, queries
from services.status_api.api.deps import (
    CallerDep,
    OwnedPortfolioDep,
    SessionDep,
    StateDep,
)
from services.status_api.api.responses import NOT_FOUND, Responses, rejected, resource_router
from services.status_api.api.routes.analytics import NO_DATA, not_found
from services.status_api.schemas import (
    ErrorResponse,
    PortfolioDetail,
    PortfolioFactorExposures,
    PortfolioOut,
    PositionValuationOut,
    SnapshotOut,
    UploadResponse,
)

router = resource_router("/portfolios", "portfolios")
READ_CHUNK = 64 * 1024

UPLOAD_RESPONSES: Responses = {
    201: {"description": "Stored; onboarding started.", "links": {
        name: {"operationRef": "#/paths/" + path.replace("/", "~1") + "/get",
               "parameters": {"portfolio_id": "$response.body#/portfolio_id"}}
        for name, path in (
            ("OnboardingStatus", "/api/v1/onboarding/status/{portfolio_id}"),
            ("Portfolio", "/api/v1/portfolios/{portfolio_id}"),
            ("Snapshots", "/api/v1/portfolios/{portfolio_id}/snapshots"),
            ("Positions", "/api/v1/portfolios/{portfolio_id}/positions"),
            ("FactorExposures", "/api/v1/portfolios/{portfolio_id}/factor-exposures"))}},
    422: {"model": ErrorResponse, "description": (
        "The file or form was rejected. `errors` lists every problem as {row, column, "
        "message}; `row` is the line number in the file as an editor shows it (comments and "
        "header count). Nothing was saved. An upload with more symbols new to sigmabatch "
        "than SIGMABATCH_MAX_NEW_SYMBOLS_PER_UPLOAD (default 200) is refused here too.")},
    413: {"model": ErrorResponse, "description": (
        "The request body is over the upload limit (2 MB file plus form overhead); refused "
        "while it is read, with or without Content-Length.")},
    429: {"model": ErrorResponse, "description": (
        "The caller's new symbols of the last 24 hours plus this upload's are over "
        "SIGMABATCH_MAX_NEW_SYMBOLS_PER_DAY (default 1,000); `Retry-After` says in how many "
        "seconds this upload would pass. Nothing was saved."),
          "headers": {"Retry-After": {"schema": {"type": "integer"},
                                      "description": "Seconds until this upload would pass."}}}}


async def _read_limited(file: UploadFile, limit: int) -> bytes:
    """Read at most limit+1 bytes: enough to know the file is too large, no more."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await file.read(READ_CHUNK)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


@router.post("", status_code=201, response_model=UploadResponse,
             responses=UPLOAD_RESPONSES, summary="Upload a portfolio CSV (docs/design.md §8 format)")
async def create_portfolio(
    state: StateDep,
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="The CSV, UTF-8, at most 2 MB.")],
    name: Annotated[str, Form(description="Portfolio name.")],
    equity_balance: Annotated[str | None, Form(description=(
        "Starting equity: the capital returns (daily P&L / previous equity) and factor "
        "weights (market value / equity) are measured against. Default: the net market "
        "value of the positions at the first snapshot date (equity_source "
        "`net_market_value`); a book whose net value is ≤ 0 must send it (422)."))] = None,
) -> UploadResponse | JSONResponse:
    """Store a portfolio from a CSV and start its onboarding.

    Header (exact, first line that is not a `#` comment):
    `Symbol,Quantity,Entry Price Per Share,Entry Date,Investment Class,Investment Subtype,`
    `Underlying Symbol,Strike Price,Expiration Date,Option Type,Exit Date,Exit Price Per Share`

    - UTF-8 (a BOM is fine), at most 2 MB and 10,000 positions; `#` lines are ignored.
    - Quantity ≠ 0 (negative = short, ≤ 6 decimals); entry price > 0 (≤ 4 decimals), except
      that an OPTIONS row may record a premium of 0; dates `YYYY-MM-DD`, not in the future;
      an exit date comes after the entry date and with an exit price.
    - Investment Class PUBLIC / OPTIONS / PRIVATE, or blank to detect it (OCC option
      symbols, names with `_` or private markers, cash and money-market funds).
    - Options need Underlying Symbol, Strike Price, Expiration Date and Option Type
      (CALL/PUT); with a blank Symbol an OCC-style symbol is built.
    - A row identical to an earlier one is a duplicate (two lots that differ are fine).

    Any problem rejects the whole upload with 422 and every problem as `{row, column,
    message}`, `row` being the line number in the file as an editor shows it; nothing is
    saved (also past the per-upload limit on new symbols; past the per-day one: 429 with
    Retry-After). Otherwise 201: `completed` at once when every symbol was already known
    (`v2_instant`), else `running` while new symbols are fetched (`v2_async`); poll
    `/api/v1/onboarding/status/{portfolio_id}`.
    """
    data = await _read_limited(file, MAX_UPLOAD_BYTES)
    try:
        result = await upload_portfolio(
            database_url=state.database_url, publish=state.publish, user_id=caller.user_id,
            username=caller.username, name=name, data=data, equity_balance=equity_balance,
            snapshot_maker=state.snapshot_maker,
            retry_failed_after_seconds=state.settings.duplicate_window_seconds,
            new_symbol_limits=NewSymbolLimits.from_settings(state.settings))
    except UploadRejected as exc:
        state.metrics.uploads.labels("rejected").inc()
        return rejected(exc.problems)
    except NewSymbolLimitExceeded as exc:
        state.metrics.uploads.labels("over_quota").inc()
        return JSONResponse(status_code=exc.status, content={"detail": exc.message, "errors": []},
                            headers={"Retry-After": str(exc.retry_after_seconds or 1)})
    state.metrics.uploads.labels(result.mode).inc()
    return UploadResponse(
        portfolio_id=result.portfolio_id, positions_created=result.positions_created,
        symbols_known=len(result.symbols_known), symbols_queued=len(result.symbols_queued),
        status=result.status, mode=result.mode, queued_symbols=result.symbols_queued,
        equity_source=result.equity_source, warnings=result.warnings)


@router.get("", response_model=list[PortfolioOut], summary="The caller's portfolios")
async def list_portfolios(session: SessionDep, caller: CallerDep) -> list[dict[str, Any]]:
    return await queries.portfolios(session, caller.user_id)


@router.get("/{portfolio_id}", response_model=PortfolioDetail, responses=NOT_FOUND)
async def get_portfolio(session: SessionDep, portfolio: OwnedPortfolioDep) -> dict[str, Any]:
    latest = await queries.snapshots(session, portfolio["portfolio_id"], None, None, limit=1,
                                     newest_first=True)
    return {**portfolio, "latest_snapshot": latest[0] if latest else None}


@router.get("/{portfolio_id}/snapshots", response_model=list[SnapshotOut],
            responses=NOT_FOUND, summary="Complete daily snapshots, oldest first")
async def get_snapshots(session: SessionDep, portfolio: OwnedPortfolioDep,
                        start: dt.date | None = None,
                        end: dt.date | None = None) -> list[dict[str, Any]]:
    return await queries.snapshots(session, portfolio["portfolio_id"], start, end)


@router.get("/{portfolio_id}/positions", response_model=list[PositionValuationOut],
            responses=NO_DATA,
            summary="Positions valued on a date (default: the latest) with daily P&L, Greeks "
                    "and model inputs")
async def get_positions(session: SessionDep, portfolio: OwnedPortfolioDep,
                        date: dt.date | None = None) -> list[dict[str, Any]]:
    """Each position's price, price_source (market/stale/model/carried/entry, or exited on
    its exit day), market value and daily P&L on the date, and for options the Greeks with
    the Black-Scholes inputs. Without `date`, a portfolio not yet valued lists its positions
    unvalued; a `date` without a snapshot answers 404 with the reason."""
    try:
        return await analytics_queries.positions_on(session, portfolio["portfolio_id"], date)
    except analytics_queries.NoAnalytics as exc:
        if date is not None:
            raise not_found(exc) from exc
    return await queries.positions(session, portfolio["portfolio_id"])


@router.get("/{portfolio_id}/factor-exposures",
            response_model=PortfolioFactorExposures,
            responses={404: {"model": ErrorResponse, "description": (
                "No such portfolio for this caller, or no factor exposures on or before the "
                "date (the detail says which).")}},
            summary="Portfolio factor exposures on a date (default: the latest; a date without "
                    "exposures answers the latest before it)")
async def get_factor_exposures(session: SessionDep, portfolio: OwnedPortfolioDep,
                               date: dt.date | None = None) -> dict[str, Any]:
    found = await queries.factor_exposures(session, portfolio["portfolio_id"], date)
    if found["calculation_date"] is None:
        when = f"on or before {date}" if date else "yet"
        raise HTTPException(404, detail=f"No factor exposures {when} for this portfolio: its "
                                        "first snapshot with public positions makes them.")
    return found
