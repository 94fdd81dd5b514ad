"""Onboarding status: polled by every open browser tab, so served from a raw pool and a
cache of finished documents (see `FinishedStatusCache`)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal

from fastapi import HTTPException
from fastapi.responses import Response

from services.status_api import queries
from services.status_api.api.deps import CallerDep, PgPoolDep, StateDep
from services.status_api.api.responses import NOT_FOUND, resource_router
from services.status_api.api.state import FINISHED
from services.status_api.schemas import OnboardingStatus

router = resource_router("/onboarding", "onboarding")


def _json_default(value: object) -> str:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@router.get("/status/{portfolio_id}", response_model=OnboardingStatus,
            responses=NOT_FOUND, summary="Onboarding progress of an uploaded portfolio")
async def onboarding_status(state: StateDep, pool: PgPoolDep, caller: CallerDep,
                            portfolio_id: uuid.UUID) -> Response:
    """`not_found` means the portfolio exists but was not onboarded through an upload."""
    key = (portfolio_id, caller.user_id)
    body = state.status_cache.get(key)
    if body is None:
        document = await queries.onboarding_status(pool, state.database_url, portfolio_id,
                                                   caller.user_id)
        if document is None:
            raise HTTPException(404, detail="Portfolio not found.")
        # Serialised directly (the model above documents it): this endpoint is polled hard.
        body = json.dumps(document, default=_json_default).encode()
        if document["status"] in FINISHED:
            state.status_cache.put(key, body)
    return Response(body, media_type="application/json")
