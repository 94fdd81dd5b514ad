"""Liveness, readiness and Prometheus metrics (no auth: for probes and scrapers)."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from libs.common.db import get_engine
from services.status_api.api.deps import StateDep
from services.status_api.schemas import Health, Readiness

router = APIRouter(tags=["ops"])


@router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "A dependency is down."}})
async def readyz(state: StateDep) -> JSONResponse:
    database = False
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2):
            async with get_engine(state.database_url).connect() as connection:
                await connection.execute(text("SELECT 1"))
            database = True
    nats_ok = bool(state.nc is not None and state.nc.is_connected)
    ok = database and nats_ok
    return JSONResponse(status_code=200 if ok else 503, content={
        "status": "ok" if ok else "unavailable", "database": database, "nats": nats_ok})


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}},
                             "description": "Prometheus text format."}})
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
