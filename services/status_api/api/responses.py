"""OpenAPI response declarations and error bodies shared by the routes."""

from __future__ import annotations

import json
import json.encoder
import math
from decimal import Decimal
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


def fixed_point(value: float) -> str:
    """A float as a JSON number without exponent notation (1e-07 -> 0.0000001)."""
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a JSON number")
    text = float.__repr__(value)
    return format(Decimal(text), "f") if "e" in text or "E" in text else text


def dumps(content: Any) -> str:
    """JSON like Starlette's (compact, UTF-8, no NaN) with fixed-point numbers."""
    chunks = json.encoder._make_iterencode(  # type: ignore[attr-defined]
        None, _not_serialisable, json.encoder.py_encode_basestring, None, fixed_point,
        ":", ",", False, False, True)
    return "".join(chunks(content, 0))


def _not_serialisable(value: object) -> Any:
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class FixedPointJSONResponse(JSONResponse):
    """The API's JSON response: numbers never in exponent notation (see schemas.Ratio)."""

    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8")
