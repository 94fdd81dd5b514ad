"""Onboarding status: polled by every open browser tab, so served from a raw pool and a
cache of finished documents (see `FinishedStatusCache`)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal

from fastapi.responses import JSONResponse, Response

from services.status_api import queries
from services.status_api.api.deps import CallerDep, PgPoolDep, StateDep
from services.status_api.api.responses import Responses, resource_router
from services.status_api.api.routes.frontend_onboarding import (
    parse_portfolio_id,
    portfolio_not_found,
)
from services.status_api.api.state import FINISHED
from services.status_api.frontend_models import FrontendError
from services.status_api.schemas import OnboardingStatus

router = resource_router("/onboarding", "onboarding")


def _json_default(value: object) -> str:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


STATUS_ERRORS: Responses = {
    400: {"model": FrontendError, "description": "Not a UUID (`invalid_portfolio_id`)."},
    404: {"model": FrontendError, "description": (
        "No such portfolio for this caller (`portfolio_not_found`; another user's portfolio "
        "answers 404 too).")}}


@router.get("/status/{portfolio_id}", response_model=OnboardingStatus,
            responses=STATUS_ERRORS, summary="Onboarding progress of an uploaded portfolio")
async def onboarding_status(state: StateDep, pool: PgPoolDep, caller: CallerDep,
                            portfolio_id: str) -> Response:
    """`not_found` means the portfolio exists but was not onboarded through an upload.

    One document for sigmabatch's clients and the SigmaSight web frontend's progress page
    (docs/frontend.md): every field that page reads is present, and its error bodies are
    the original backend's (`detail: {error, message}`).
    """
    parsed = parse_portfolio_id(portfolio_id)
    if isinstance(parsed, JSONResponse):
        return parsed
    key = (parsed, caller.user_id)
    body = state.status_cache.get(key)
    if body is None:
        document = await queries.onboarding_status(pool, parsed, caller.user_id)
        if document is None:
            return portfolio_not_found()
        # Serialised directly (the model above documents it): this endpoint is polled hard.
        body = json.dumps(document, default=_json_default).encode()
        if document["status"] in FINISHED and document["finished_at"] is not None:
            state.status_cache.put(key, body)  # recorded: never changes again
    return Response(body, media_type="application/json")
