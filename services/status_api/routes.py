"""HTTP routes (DESIGN §9). Thin: authenticate, call a use case or a read query, shape JSON."""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    HTTPException,
    Path,
    Query,
    Request,
    UploadFile,
)
from fastapi.responses import JSONResponse, Response

from libs.common import bus
from libs.common.auth import Caller, require_admin, resolve_caller
from libs.common.db import session_scope
from libs.common.events import BatchNightlyRequested
from libs.common.onboarding.upload import UploadRejected, upload_portfolio
from libs.common.portfolio_csv import MAX_UPLOAD_BYTES, CsvProblem
from services.status_api import queries
from services.status_api.schemas import (
    ErrorResponse,
    JobOut,
    NightlyAccepted,
    NightlyRequest,
    OnboardingStatus,
    PortfolioDetail,
    PortfolioFactorExposures,
    PortfolioOut,
    PositionOut,
    PriceOut,
    SnapshotOut,
    SymbolFactorOut,
    UploadResponse,
)

log = logging.getLogger(__name__)

CallerDep = Annotated[Caller, Depends(resolve_caller)]
AUTH_ERRORS = {401: {"model": ErrorResponse, "description": "Missing or invalid bearer token."},
               422: {"model": ErrorResponse, "description": "Invalid parameters."}}
NOT_FOUND = {404: {"model": ErrorResponse,
                   "description": "No such portfolio for this caller (another user's "
                                  "portfolio answers 404 too)."}}
READ_CHUNK = 64 * 1024

api = APIRouter(prefix="/api/v1", responses=AUTH_ERRORS)

JobType = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
                                      description="e.g. symbol_batch, symbol_onboard")]
Symbol = Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,32}$", description="Ticker, e.g. AAPL")]


def _db(request: Request) -> str:
    return request.app.state.database_url


def _not_found(what: str = "Portfolio not found.") -> HTTPException:
    return HTTPException(404, detail=what)


async def _owned_portfolio(request: Request, caller: Caller, portfolio_id: uuid.UUID) -> dict:
    async with session_scope(_db(request)) as session:
        found = await queries.portfolio(session, caller.user_id, portfolio_id)
    if found is None:
        raise _not_found()
    return found


def _rejected(problems: list[CsvProblem]) -> JSONResponse:
    return JSONResponse(
        status_code=422,
        content={"detail": f"The upload was rejected: {len(problems)} problem(s); nothing "
                           "was saved.", "errors": [p.as_dict() for p in problems]},
    )


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


@api.post(
    "/portfolios",
    status_code=201,
    response_model=UploadResponse,
    responses={201: {"description": "Stored; onboarding started.", "links": {
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
        "header count). Nothing was saved.")}},
    summary="Upload a portfolio CSV (DESIGN §8 format)",
)
async def create_portfolio(
    request: Request,
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="The CSV, UTF-8, at most 2 MB.")],
    name: Annotated[str, Form(description="Portfolio name.")],
    equity_balance: Annotated[str | None, Form(description=(
        "Starting equity. Default: the net entry value of the positions."))] = None,
):
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
    saved. Otherwise 201: `completed` at once when every symbol was already known
    (`v2_instant`), else `running` while new symbols are fetched (`v2_async`); poll
    `/api/v1/onboarding/status/{portfolio_id}`.
    """
    data = await _read_limited(file, MAX_UPLOAD_BYTES)
    state = request.app.state
    try:
        result = await upload_portfolio(
            database_url=state.database_url, publish=state.publish, user_id=caller.user_id,
            username=caller.username, name=name, data=data, equity_balance=equity_balance,
            snapshot_maker=state.snapshot_maker,
            retry_failed_after_seconds=state.settings.duplicate_window_seconds)
    except UploadRejected as exc:
        state.metrics.uploads.labels("rejected").inc()
        return _rejected(exc.problems)
    state.metrics.uploads.labels(result.mode).inc()
    return UploadResponse(
        portfolio_id=result.portfolio_id, positions_created=result.positions_created,
        symbols_known=len(result.symbols_known), symbols_queued=len(result.symbols_queued),
        status=result.status, mode=result.mode, queued_symbols=result.symbols_queued)


@api.get("/onboarding/status/{portfolio_id}", response_model=OnboardingStatus,
         responses=NOT_FOUND, summary="Onboarding progress of an uploaded portfolio")
async def onboarding_status(request: Request, caller: CallerDep, portfolio_id: uuid.UUID):
    """`not_found` means the portfolio exists but was not onboarded through an upload."""
    cache: FinishedStatusCache = request.app.state.status_cache
    key = (portfolio_id, caller.user_id)
    body = cache.get(key)
    if body is None:
        document = await queries.onboarding_status(request.app.state.pg_pool, _db(request),
                                                   portfolio_id, caller.user_id)
        if document is None:
            raise _not_found()
        # Serialised directly (the model above documents it): this endpoint is polled hard.
        body = json.dumps(document, default=_json_default).encode()
        if document["status"] in FINISHED:
            cache.put(key, body)
    return Response(body, media_type="application/json")


FINISHED = frozenset({"completed", "partial", "failed"})


class FinishedStatusCache:
    """Status documents of finished onboardings, which never change again.

    Nothing is written for a portfolio once its onboarding is completed/partial/failed
    (its elapsed time is frozen at finished_at), so every replica may keep the bytes; a
    running onboarding is always read from the database.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._bodies: dict[tuple[uuid.UUID, uuid.UUID], bytes] = {}

    def get(self, key: tuple[uuid.UUID, uuid.UUID]) -> bytes | None:
        return self._bodies.get(key)

    def put(self, key: tuple[uuid.UUID, uuid.UUID], body: bytes) -> None:
        if len(self._bodies) >= self.capacity:
            self._bodies.clear()
        self._bodies[key] = body


def _json_default(value: object) -> str:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@api.get("/batch/jobs", response_model=list[JobOut],
         summary="Jobs of every type (default: the running ones)")
async def batch_jobs(
    request: Request, caller: CallerDep,
    status: Literal["running", "completed", "partial", "failed"] = "running",
    job_type: JobType = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
):
    async with session_scope(_db(request)) as session:
        return await queries.jobs(session, status, job_type, limit)


@api.get("/batch/runs", response_model=list[JobOut], summary="Job history, newest first")
async def batch_runs(
    request: Request, caller: CallerDep,
    job_type: JobType = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
):
    async with session_scope(_db(request)) as session:
        return await queries.jobs(session, None, job_type or None, limit)


@api.post("/admin/batch/nightly", status_code=202, response_model=NightlyAccepted,
          responses={403: {"model": ErrorResponse, "description": "Not an admin."},
                     503: {"model": ErrorResponse, "description": "NATS unavailable."}},
          summary="Trigger the nightly batch (admin)")
async def trigger_nightly(request: Request, body: NightlyRequest | None = None,
                          caller: Caller = Depends(require_admin)):  # noqa: B008
    message = BatchNightlyRequested(target_date=body.target_date if body else None,
                                    requested_by=caller.username)
    state = request.app.state
    if state.js is None:
        raise HTTPException(503, detail="The message bus is not reachable; try again shortly.")
    try:
        published = await bus.publish(state.js, state.topology, message)
    except Exception as exc:
        raise HTTPException(503, detail=f"Could not publish the trigger: {exc}") from exc
    return NightlyAccepted(message_id=message.message_id(), published=published,
                           target_date=message.target_date)


@api.get("/portfolios", response_model=list[PortfolioOut], summary="The caller's portfolios")
async def list_portfolios(request: Request, caller: CallerDep):
    async with session_scope(_db(request)) as session:
        return await queries.portfolios(session, caller.user_id)


@api.get("/portfolios/{portfolio_id}", response_model=PortfolioDetail, responses=NOT_FOUND)
async def get_portfolio(request: Request, caller: CallerDep, portfolio_id: uuid.UUID):
    found = await _owned_portfolio(request, caller, portfolio_id)
    async with session_scope(_db(request)) as session:
        latest = await queries.snapshots(session, portfolio_id, None, None, limit=1,
                                         newest_first=True)
    return {**found, "latest_snapshot": latest[0] if latest else None}


@api.get("/portfolios/{portfolio_id}/snapshots", response_model=list[SnapshotOut],
         responses=NOT_FOUND, summary="Complete daily snapshots, oldest first")
async def get_snapshots(request: Request, caller: CallerDep, portfolio_id: uuid.UUID,
                        start: dt.date | None = None, end: dt.date | None = None):
    await _owned_portfolio(request, caller, portfolio_id)
    async with session_scope(_db(request)) as session:
        return await queries.snapshots(session, portfolio_id, start, end)


@api.get("/portfolios/{portfolio_id}/positions", response_model=list[PositionOut],
         responses=NOT_FOUND, summary="Positions with their latest valuation")
async def get_positions(request: Request, caller: CallerDep, portfolio_id: uuid.UUID):
    await _owned_portfolio(request, caller, portfolio_id)
    async with session_scope(_db(request)) as session:
        return await queries.positions(session, portfolio_id)


@api.get("/portfolios/{portfolio_id}/factor-exposures", response_model=PortfolioFactorExposures,
         responses=NOT_FOUND,
         summary="Portfolio factor exposures on a date (default: the latest; a date without "
                 "exposures answers the latest before it)")
async def get_factor_exposures(request: Request, caller: CallerDep, portfolio_id: uuid.UUID,
                               date: dt.date | None = None):
    await _owned_portfolio(request, caller, portfolio_id)
    async with session_scope(_db(request)) as session:
        return await queries.factor_exposures(session, portfolio_id, date)


def _symbol(symbol: str) -> str:
    return symbol.strip().upper()


@api.get("/symbols/{symbol}/prices", response_model=list[PriceOut],
         responses={404: {"model": ErrorResponse, "description": "Symbol never priced."}},
         summary="Daily prices (close, adjusted close, source) in a date range")
async def get_prices(request: Request, caller: CallerDep, symbol: Symbol,
                     start: dt.date | None = None, end: dt.date | None = None):
    clean = _symbol(symbol)
    async with session_scope(_db(request)) as session:
        rows = await queries.prices(session, clean, start, end)
        if not rows and not await queries.symbol_known(session, clean):
            raise HTTPException(404, detail=f"No prices for {clean}: the symbol is unknown.")
    return rows


@api.get("/symbols/{symbol}/factors", response_model=list[SymbolFactorOut],
         responses={404: {"model": ErrorResponse, "description": "Symbol unknown."}},
         summary="Factor betas on a date (default: the latest; else the latest before it)")
async def get_symbol_factors(request: Request, caller: CallerDep, symbol: Symbol,
                             date: dt.date | None = None):
    clean = _symbol(symbol)
    async with session_scope(_db(request)) as session:
        rows = await queries.symbol_factors(session, clean, date)
        if not rows and not await queries.symbol_known(session, clean):
            raise HTTPException(404, detail=f"No factor betas for {clean}: the symbol is unknown.")
    return rows
