"""The SigmaSight web frontend's onboarding routes (docs/frontend.md), as thin adapters.

create-portfolio runs sigmabatch's upload use case (the account is part of it); calculate
asks portfolio_refresh to bring the portfolio up to date (or points at the running
onboarding); batch-status, the log download and the CSV template read what sigmabatch keeps.
The onboarding status itself is `api/routes/onboarding.py` (one route for both clients).

Errors use the shapes the frontend reads: `detail` as an object with `message` (and the CSV
row problems at `detail.errors`), or a string.
"""

from __future__ import annotations

import csv
import datetime as dt
import uuid
from typing import Annotated, Any, Literal

from fastapi import File, Form, HTTPException, Query, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from libs.common import bus
from libs.common.domain.onboarding import ACCOUNT_TYPES
from libs.common.events import PortfolioRefreshRequested
from libs.common.onboarding.limits import NewSymbolLimitExceeded, NewSymbolLimits
from libs.common.onboarding.upload import DuplicateAccountName, UploadRejected, upload_portfolio
from libs.common.portfolio_csv import HEADER_LINE, MAX_UPLOAD_BYTES, CsvProblem
from services.status_api import frontend_queries, queries
from services.status_api.api.deps import (
    CallerDep,
    OwnedPortfolioDep,
    PgPoolDep,
    SessionDep,
    StateDep,
)
from services.status_api.api.responses import NOT_FOUND, Responses, resource_router
from services.status_api.api.routes.portfolios import _read_limited
from services.status_api.frontend_models import (
    BatchStatusResponse,
    CreatePortfolioResponse,
    FrontendError,
    OnboardingLogJson,
    TriggerCalculationsResponse,
    ValidateInviteResponse,
)

router = resource_router("", "frontend")

CREATE_ERRORS: Responses = {
    400: {"model": FrontendError, "description": (
        "The CSV or a form field was rejected: `detail.errors` lists every problem as "
        "{row, symbol, code, error_code, message, field}; nothing was saved.")},
    409: {"model": FrontendError, "description": "The caller already has this account name."},
    429: {"model": FrontendError, "description": (
        "Over the caller's daily limit of new symbols (SIGMABATCH_MAX_NEW_SYMBOLS_PER_DAY); "
        "`Retry-After` says in how many seconds this upload would pass. Nothing was saved."),
          "headers": {"Retry-After": {"schema": {"type": "integer"}}}}}


def frontend_error(status: int, error: str, message: str,
                   errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    detail: dict[str, Any] = {"error": error, "message": message}
    if errors is not None:
        detail["errors"] = errors
    return JSONResponse(status_code=status, content={"detail": detail})


def parse_portfolio_id(raw: str) -> uuid.UUID | JSONResponse:
    """The path id, or the 400 the original backend answers for a malformed one."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        return frontend_error(400, "invalid_portfolio_id", "Invalid portfolio ID format")


def portfolio_not_found() -> JSONResponse:
    return frontend_error(404, "portfolio_not_found",
                          "Portfolio not found or you don't have access")


def _row_errors(problems: list[CsvProblem], data: bytes) -> list[dict[str, Any]]:
    """sigmabatch's {row, column, message} as the upload hook reads them, with the row's
    symbol (its first cell) so the validation screen can name it."""
    lines = data.decode("utf-8-sig", errors="replace").splitlines()
    errors = []
    for problem in problems:
        symbol = None
        if problem.row is not None and 0 < problem.row <= len(lines):
            cells = next(csv.reader([lines[problem.row - 1]]), [])
            symbol = (cells[0].strip() or None) if cells else None
        code = "invalid_" + (problem.column or "file").lower().replace(" ", "_")
        errors.append({"row": problem.row, "symbol": symbol, "code": code, "error_code": code,
                       "message": problem.message, "field": problem.column,
                       "column": problem.column})
    return errors


@router.post("/onboarding/create-portfolio", status_code=201,
             response_model=CreatePortfolioResponse, responses=CREATE_ERRORS,
             summary="Create a portfolio from a CSV (the web frontend's upload form)")
async def create_portfolio(
    state: StateDep,
    caller: CallerDep,
    csv_file: Annotated[UploadFile | None, File(description="The CSV, UTF-8, at most 2 MB.")]
    = None,
    portfolio_name: Annotated[str | None, Form()] = None,
    account_name: Annotated[str | None, Form(description="Unique per user, ≤ 100 chars.")]
    = None,
    account_type: Annotated[str | None, Form(description=", ".join(ACCOUNT_TYPES))] = None,
    equity_balance: Annotated[str | None, Form(description="Starting equity, > 0.")] = None,
    description: Annotated[str | None, Form(description="Accepted and ignored.")] = None,
) -> CreatePortfolioResponse | JSONResponse:
    """sigmabatch's upload (same validation, same onboarding) with the frontend's form and
    answer. Every field is checked at once: a missing one is listed with the CSV's problems
    (400), so the frontend's validation screen shows them all; nothing is saved then."""
    data = await _read_limited(csv_file, MAX_UPLOAD_BYTES) if csv_file is not None else b""
    try:
        result = await upload_portfolio(
            database_url=state.database_url, publish=state.publish, user_id=caller.user_id,
            username=caller.username, name=portfolio_name or "", data=data,
            equity_balance=equity_balance,
            snapshot_maker=state.snapshot_maker,
            retry_failed_after_seconds=state.settings.duplicate_window_seconds,
            account_name=account_name or "", account_type=account_type or "",
            name_field="portfolio_name",
            new_symbol_limits=NewSymbolLimits.from_settings(state.settings))
    except UploadRejected as exc:
        state.metrics.uploads.labels("rejected").inc()
        return frontend_error(
            400, "csv_validation_failed",
            f"The upload was rejected: {len(exc.problems)} problem(s); nothing was saved.",
            _row_errors(exc.problems, data))
    except DuplicateAccountName as exc:
        state.metrics.uploads.labels("rejected").inc()
        return frontend_error(409, "duplicate_account_name", (
            f"You already have an account named '{exc.account_name}': choose another "
            "account name."))
    except NewSymbolLimitExceeded as exc:  # the daily limit (the per-upload one is a 400 above)
        state.metrics.uploads.labels("over_quota").inc()
        refused = frontend_error(429, "new_symbol_limit", exc.message)
        refused.headers["Retry-After"] = str(exc.retry_after_seconds or 1)
        return refused
    state.metrics.uploads.labels(result.mode).inc()
    return CreatePortfolioResponse(
        portfolio_id=str(result.portfolio_id), portfolio_name=result.name,
        account_name=result.account_name or "", account_type=result.account_type or "",
        equity_balance=float(result.equity_balance), positions_imported=result.positions_created,
        positions_failed=0, total_positions=result.positions_created,
        message=("Portfolio created; onboarding "
                 + ("is complete." if result.status != "running" else "has started.")),
        next_step={"action": "calculate",
                   "endpoint": f"/api/v1/portfolios/{result.portfolio_id}/calculate",
                   "description": "Start (or bring up to date) the portfolio's calculations, "
                                  "then poll /api/v1/onboarding/status/{portfolio_id}."},
        status=result.status, mode=result.mode, symbols_queued=result.symbols_queued)


@router.post("/portfolios/{portfolio_id}/calculate", response_model=TriggerCalculationsResponse,
             responses={**NOT_FOUND, 503: {"model": FrontendError,
                                           "description": "NATS unavailable."}},
             summary="Start the portfolio's calculations (the web frontend's trigger)")
async def calculate(state: StateDep, session: SessionDep,
                    portfolio: OwnedPortfolioDep) -> TriggerCalculationsResponse:
    """While the upload's onboarding runs, points at it (nothing new to start: the upload
    started it). Otherwise asks portfolio_refresh to bring the portfolio up to the latest
    batch date (a snapshot already made is not made again). Poll
    `/api/v1/portfolios/{portfolio_id}/batch-status/{batch_run_id}`."""
    portfolio_id = portfolio["portfolio_id"]
    target = await frontend_queries.refresh_target(session, portfolio_id)
    if target.onboarding_running:
        run_id, message = frontend_queries.ONBOARDING_RUN, "Onboarding is running."
    else:
        if state.js is None:
            raise HTTPException(503, detail="The message bus is not reachable; try again.")
        request = PortfolioRefreshRequested(portfolio_id=portfolio_id, as_of=target.as_of,
                                            reason="frontend calculate")
        try:
            await bus.publish(state.js, state.topology, request)
        except Exception as exc:
            raise HTTPException(503, detail=f"Could not request the calculation: {exc}") from exc
        run_id = f"refresh-{target.as_of.isoformat() if target.as_of else 'latest'}"
        message = "Calculations requested."
    return TriggerCalculationsResponse(
        portfolio_id=str(portfolio_id), batch_run_id=run_id, status="started",
        message=f"{message} Poll /api/v1/portfolios/{portfolio_id}/batch-status/{run_id}.")


@router.get("/portfolios/{portfolio_id}/batch-status/{batch_run_id}",
            response_model=BatchStatusResponse, responses=NOT_FOUND,
            summary="Status of a calculate run (idle for an unknown run id)")
async def batch_status(session: SessionDep, caller: CallerDep, portfolio: OwnedPortfolioDep,
                       batch_run_id: str) -> BatchStatusResponse:
    run = await frontend_queries.run_status(session, portfolio["portfolio_id"], batch_run_id)
    started: dt.datetime | None = run["started_at"]
    end = run["finished_at"] or dt.datetime.now(dt.UTC)
    return BatchStatusResponse(
        status=run["status"], batch_run_id=batch_run_id,
        portfolio_id=str(portfolio["portfolio_id"]),
        started_at=started.isoformat() if started else "", triggered_by=caller.username,
        elapsed_seconds=max(0, int((end - started).total_seconds())) if started else 0)


@router.get("/onboarding/status/{portfolio_id}/logs",
            responses={200: {"model": OnboardingLogJson, "content": {"text/plain": {}},
                             "description": "The whole onboarding log as an attachment "
                                            "(text, or JSON with format=json)."},
                       400: {"model": FrontendError}, 404: {"model": FrontendError}},
            summary="Download the onboarding log (txt or json)")
async def onboarding_log(state: StateDep, pool: PgPoolDep, session: SessionDep,
                         caller: CallerDep, portfolio_id: str,
                         format: Annotated[Literal["txt", "json"], Query()] = "txt",
                         ) -> Response:
    parsed = parse_portfolio_id(portfolio_id)
    if isinstance(parsed, JSONResponse):
        return parsed
    document = await queries.onboarding_status(pool, parsed, caller.user_id)
    if document is None:
        return portfolio_not_found()
    if document["status"] == "not_found":
        return frontend_error(404, "no_logs_available",
                              "No onboarding logs available for this portfolio")
    portfolio = await queries.portfolio(session, caller.user_id, parsed)
    lines = await frontend_queries.activity_log(session, parsed)
    now = dt.datetime.now(dt.UTC)
    activity = [{"timestamp": line["timestamp"].isoformat(), "level": line["level"],
                 "message": line["message"]} for line in lines]
    name = portfolio["name"] if portfolio else ""
    filename = f"portfolio_setup_log_{str(parsed)[:8]}_{now:%Y%m%d_%H%M%S}.{format}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if format == "json":
        body = OnboardingLogJson(
            portfolio_id=str(parsed), portfolio_name=name,
            started_at=_iso(document["started_at"]),
            elapsed_seconds=document["elapsed_seconds"], final_status=document["status"],
            overall_progress=document["overall_progress"], phases=document["phases"],
            activity_log=activity, generated_at=now.isoformat())
        return Response(body.model_dump_json(), media_type="application/json", headers=headers)
    return Response(_log_text(str(parsed), name, document, activity),
                    media_type="text/plain; charset=utf-8", headers=headers)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _duration(seconds: int) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m {secs}s" if hours else (f"{minutes}m {secs}s" if minutes
                                                          else f"{secs}s")


def _log_text(portfolio_id: str, name: str, document: dict[str, Any],
              activity: list[dict[str, Any]]) -> str:
    rule = "=" * 80
    progress = document["overall_progress"] or {}
    lines = [rule, "SIGMABATCH PORTFOLIO SETUP LOG", rule,
             f"Portfolio ID: {portfolio_id}", f"Portfolio Name: {name}",
             f"Started: {_iso(document['started_at']) or 'N/A'}",
             f"Total Duration: {_duration(document['elapsed_seconds'])}",
             f"Final Status: {document['status']}", f"Mode: {document['mode']}", "",
             rule, "SUMMARY", rule,
             f"Phases Completed: {progress.get('phases_completed', 0)}/"
             f"{progress.get('phases_total', 0)}"]
    if document.get("failed_symbols"):
        lines.append(f"Symbols that could not be fetched: {', '.join(document['failed_symbols'])}")
    if document.get("error"):
        lines.append(f"Error: {document['error']}")
    lines += ["", rule, "PHASE DETAILS", rule]
    for phase in document["phases"]:
        lines.append(f"Phase: {phase['phase_name']}")
        lines.append(f"  Status: {phase['status']}")
        if phase["duration_seconds"] is not None:
            lines.append(f"  Duration: {_duration(phase['duration_seconds'])}")
        if phase["total"]:
            lines.append(f"  Progress: {phase['current']}/{phase['total']} {phase['unit']}")
        lines.append("")
    lines += [rule, "ACTIVITY LOG", rule]
    lines += [f"{a['timestamp'][:19].replace('T', ' ')} [{a['level'].upper()}] {a['message']}"
              for a in activity] or ["No activity log entries available."]
    lines += ["", rule, "END OF LOG", rule, ""]
    return "\n".join(lines)


CSV_TEMPLATE = f"""# sigmabatch portfolio import template (the SigmaSight upload format)
# ==========================================
# 1. One position per line below the header; lines starting with # are ignored.
# 2. Required: Symbol, Quantity, Entry Price Per Share, Entry Date (YYYY-MM-DD, not future).
# 3. Negative quantity = short. Entry price > 0 (an option's premium may be 0).
# 4. Investment Class PUBLIC / OPTIONS / PRIVATE, or blank to detect it.
# 5. Options: Underlying Symbol, Strike Price, Expiration Date, Option Type (CALL/PUT);
#    the Symbol may be blank (an OCC-style symbol is built) or descriptive.
# 6. Closed positions: Exit Date (after the entry) and Exit Price Per Share.
# Account types (chosen in the upload form): {", ".join(ACCOUNT_TYPES)}
#
{HEADER_LINE}
# Stock (long)
AAPL,100,158.00,2024-01-15,PUBLIC,STOCK,,,,,,
# ETF
SPY,50,445.20,2024-01-20,PUBLIC,ETF,,,,,,
# Short stock (negative quantity)
MSFT,-25,395.50,2024-02-10,PUBLIC,STOCK,,,,,,
# Long call, descriptive symbol
SPY_C450_20260320,10,5.50,2024-02-01,OPTIONS,,SPY,450.00,2026-03-20,CALL,,
# Long put, symbol left blank
,5,3.25,2024-02-05,OPTIONS,,AAPL,160.00,2026-03-20,PUT,,
# Cash / money market
SPAXX,10000,1.00,2024-01-01,PUBLIC,CASH,,,,,,
# Private asset (carried at entry value)
PRIVATE_RE_FUND_A,1,50000.00,2023-06-01,PRIVATE,,,,,,,
# Closed position
JPM,50,185.00,2023-12-01,PUBLIC,STOCK,,,,,2024-01-15,195.00
"""


@router.get("/onboarding/csv-template", response_class=Response, include_in_schema=True,
            responses={200: {"content": {"text/csv": {}}, "description": "The template."}},
            summary="Download the CSV template (no token needed: a plain link)")
async def csv_template() -> Response:
    return Response(CSV_TEMPLATE, media_type="text/csv", headers={
        "Content-Disposition": 'attachment; filename="sigmasight_portfolio_template.csv"',
        "Cache-Control": "public, max-age=3600"})


class InviteCode(BaseModel):
    invite_code: str = Field(max_length=200)


@router.post("/onboarding/validate-invite", response_model=ValidateInviteResponse,
             summary="The frontend's invite step: any authenticated caller is validated")
async def validate_invite(caller: CallerDep, body: InviteCode | None = None,
                          ) -> ValidateInviteResponse:
    """sigmabatch's tokens are issued by an operator (`sigmabatch token create`): holding one
    is the invitation, so the frontend's invite page always passes."""
    return ValidateInviteResponse()
