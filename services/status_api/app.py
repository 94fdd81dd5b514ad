"""The FastAPI application factory: wiring only (routes live in routes.py).

The app owns one NATS connection (publishing uploads' onboarding requests and the admin
trigger) and the process's DB engine. NATS being down does not stop the API: reads work,
uploads still commit, and the onboarding reconciler publishes what could not be published.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.common import bus
from libs.common.auth import TokenCache
from libs.common.config import Settings, get_settings
from libs.common.db import asyncpg_dsn, dispose_engines, get_engine
from libs.common.events import Message
from libs.common.onboarding.upload import SnapshotMaker
from libs.common.portfolio_csv import MAX_UPLOAD_BYTES
from services.status_api.routes import FinishedStatusCache, api
from services.status_api.schemas import Health, Readiness

log = logging.getLogger(__name__)

# Raw asyncpg pool of the hot read path (the polled status endpoint).
PG_POOL_SIZE = 10


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    uploads: Counter

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter("sigmabatch_http_requests_total", "HTTP requests",
                             ["method", "route", "status"], registry=registry),
            latency=Histogram("sigmabatch_http_request_seconds", "HTTP request latency",
                              ["method", "route"], registry=registry,
                              buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)),
            uploads=Counter("sigmabatch_uploads_total", "Portfolio uploads by outcome",
                            ["outcome"], registry=registry),
        )


class MetricsMiddleware:
    """Request count and latency per route template (pure ASGI: no per-request task)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_and_record(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status[0])).inc()
            self.metrics.latency.labels(scope["method"], route).observe(
                time.perf_counter() - started)


class UploadSizeLimit:
    """Refuse an oversized upload from its Content-Length, before any byte is parsed.

    The multipart parser would otherwise spool the whole body first; the CSV parser's own
    limit still applies to what gets through (bodies without Content-Length).
    """

    OVERHEAD = 64 * 1024  # multipart boundaries, headers and the other form fields

    def __init__(self, app, path: str, limit: int) -> None:
        self.app, self.path, self.limit = app, path, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == self.path:
            declared = dict(scope["headers"]).get(b"content-length")
            if declared and declared.isdigit() and int(declared) > self.limit + self.OVERHEAD:
                size_mb = int(declared) / (1024 * 1024)
                response = JSONResponse(status_code=422, content={
                    "detail": "The upload was rejected: 1 problem(s); nothing was saved.",
                    "errors": [{"row": None, "column": "file", "message": (
                        f"The upload is {size_mb:.1f} MB; the limit is "
                        f"{self.limit / (1024 * 1024):.1f} MB for the file.")}]},
                    headers={"Connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: Settings | None = None, *,
               snapshot_maker: SnapshotMaker | None = None) -> FastAPI:
    settings = settings or get_settings()
    database_url = settings.require_database_url()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        get_engine(database_url)
        app.state.pg_pool = await asyncpg.create_pool(
            asyncpg_dsn(database_url), min_size=2, max_size=PG_POOL_SIZE)
        connector = asyncio.create_task(_connect_nats(app, settings))
        # Everything imported and built so far lives as long as the process: keep it out of
        # the collector's generations, so GC pauses do not land on polled requests.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await app.state.pg_pool.close()
            connector.cancel()
            with contextlib.suppress(BaseException):
                await connector
            if app.state.nc is not None:
                with contextlib.suppress(Exception):
                    await app.state.nc.drain()
            await dispose_engines()

    app = FastAPI(
        title="sigmabatch API",
        version="0.1.0",
        description=(
            "Portfolio onboarding and batch status. Every /api/v1 endpoint needs "
            "`Authorization: Bearer <token>` (`sigmabatch token create --user NAME`). "
            "Errors are JSON `{detail, errors: [{row, column, message}]}`."),
        lifespan=lifespan,
    )
    state = app.state
    state.settings = settings
    state.database_url = database_url
    state.auth_disabled = settings.auth_disabled
    state.token_cache = TokenCache()
    state.status_cache = FinishedStatusCache()
    state.snapshot_maker = snapshot_maker
    state.topology = bus.Topology(settings.bus_prefix)
    state.nc = None
    state.js = None
    state.metrics = Metrics.create()

    async def publish(message: Message) -> bool:
        """Best effort after a commit: the onboarding reconciler re-publishes what fails."""
        if state.js is None:
            log.warning("NATS not connected: %s left to the reconciler", message.message_id())
            return False
        try:
            return await bus.publish(state.js, state.topology, message)
        except Exception as exc:
            log.warning("publish of %s failed (%s): left to the reconciler",
                        message.message_id(), exc)
            return False

    state.publish = publish

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=True,
            allow_methods=["*"], allow_headers=["*"])

    app.add_middleware(UploadSizeLimit, path="/api/v1/portfolios", limit=MAX_UPLOAD_BYTES)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"row": None, "column": ".".join(str(p) for p in e.get("loc", ())[1:]) or None,
             "message": e.get("msg", "invalid")}
            for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": "Invalid request.",
                                                      "errors": errors})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code,
                            content={"detail": str(exc.detail), "errors": []},
                            headers=getattr(exc, "headers", None))

    app.include_router(api)

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, tags=["ops"],
             responses={503: {"model": Readiness, "description": "A dependency is down."}})
    async def readyz() -> JSONResponse:
        database = False
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                async with get_engine(database_url).connect() as connection:
                    await connection.execute(text("SELECT 1"))
                database = True
        nats_ok = bool(state.nc is not None and state.nc.is_connected)
        ok = database and nats_ok
        return JSONResponse(status_code=200 if ok else 503, content={
            "status": "ok" if ok else "unavailable", "database": database, "nats": nats_ok})

    @app.get("/metrics", tags=["ops"], response_class=Response,
             responses={200: {"content": {"text/plain": {}},
                              "description": "Prometheus text format."}})
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    return app


async def _connect_nats(app: FastAPI, settings: Settings) -> None:
    """Connect (retrying until NATS is up) and declare the streams; then stay connected."""
    delay = 0.2
    while True:
        try:
            nc = await bus.connect(settings.require_nats_url(), "status_api")
            js = nc.jetstream()
            await bus.ensure_streams(
                js, app.state.topology,
                duplicate_window_seconds=settings.duplicate_window_seconds,
                event_retention_days=settings.event_retention_days)
            app.state.nc, app.state.js = nc, js
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("NATS not reachable yet (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
