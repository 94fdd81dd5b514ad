"""OpenAPI response declarations and error bodies shared by the routes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from libs.common.portfolio_csv import CsvProblem
from services.status_api.schemas import ErrorResponse

Responses = dict[int | str, dict[str, Any]]

AUTH_ERRORS: Responses = {
    401: {"model": ErrorResponse, "description": "Missing or invalid bearer token."},
    422: {"model": ErrorResponse, "description": "Invalid parameters."}}
NOT_FOUND: Responses = {
    404: {"model": ErrorResponse,
          "description": "No such portfolio for this caller (another user's portfolio answers "
                         "404 too)."}}
ADMIN_ONLY: Responses = {403: {"model": ErrorResponse, "description": "Not an admin."}}


def rejected(problems: list[CsvProblem]) -> JSONResponse:
    """422 listing every problem of an upload (nothing was saved)."""
    return JSONResponse(
        status_code=422,
        content={"detail": f"The upload was rejected: {len(problems)} problem(s); nothing "
                           "was saved.", "errors": [p.as_dict() for p in problems]},
    )


API_PREFIX = "/api/v1"


def resource_router(path: str, tag: str) -> APIRouter:
    """The router of one `/api/v1` resource (bearer auth). The full prefix sits on the router
    itself, so a route's `path` is its whole template, which the metrics label by."""
    return APIRouter(prefix=API_PREFIX + path, tags=[tag], responses=AUTH_ERRORS)
