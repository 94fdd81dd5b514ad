"""The FastAPI application factory: assembly only.

The routes live in `api/routes/<resource>.py`, their dependencies in `api/deps.py`, the read
queries in `queries.py`. The app owns one NATS connection (publishing uploads' onboarding
requests and the admin trigger) and the process's DB engine. NATS being down does not stop
the API: reads work, uploads still commit, and the onboarding reconciler publishes what could
not be published.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from libs.common import bootstrap
from libs.common.clerk import ClerkVerifier
from libs.common.config import Settings
from libs.common.db import asyncpg_dsn, dispose_engines, get_engine
from libs.common.onboarding.upload import SnapshotMaker
from libs.common.portfolio_csv import MAX_UPLOAD_BYTES
from services.status_api.api.body_guard import DEFAULT_LIMIT, MULTIPART_OVERHEAD, BodyGuard
from services.status_api.api.main import include_routers
from services.status_api.api.middleware import (
    MetricsMiddleware,
    install_error_handlers,
)
from services.status_api.api.responses import FixedPointJSONResponse
from services.status_api.api.state import ApiState
from services.status_api.console import mount_console

log = logging.getLogger(__name__)

# Raw asyncpg pool of the hot read path (the polled status endpoint).
PG_POOL_SIZE = 10

DESCRIPTION = (
    "Portfolio onboarding and batch status. Every /api/v1 endpoint needs "
    "`Authorization: Bearer <token>` (`sigmabatch token create --user NAME`). "
    "Errors are JSON `{detail, errors: [{row, column, message}]}`. Numbers: money is a "
    "decimal string at 2 dp (`Money`), per-unit prices a decimal string at 4 dp (`Price`), "
    "quantities a decimal string (`Quantity`); returns, betas, exposures and R² are JSON "
    "numbers (`Ratio`); nothing is written in exponent notation. A portfolio resource names "
    "itself by `portfolio_id` only.")


def create_app(settings: Settings | None = None, *,
               snapshot_maker: SnapshotMaker | None = None) -> FastAPI:
    settings = settings or bootstrap.settings()
    state = ApiState(settings=settings, database_url=settings.require_database_url(),
                     topology=bootstrap.topology(settings), snapshot_maker=snapshot_maker,
                     clerk=ClerkVerifier.from_settings(settings))
    app = FastAPI(title="sigmabatch API", version="0.1.0", description=DESCRIPTION,
                  lifespan=_lifespan(state), default_response_class=FixedPointJSONResponse,
                  # /docs is served by mount_console from the package's own Swagger UI
                  # assets (no CDN); ReDoc would load from one, so it is off.
                  docs_url=None, redoc_url=None)
    app.state.api = state
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=True,
            allow_methods=["*"], allow_headers=["*"],
            # The web frontend names the log download from it (docs/frontend.md).
            expose_headers=["Content-Disposition"])
    # Auth before any body is read, and bodies capped while they are read (413).
    upload_cap = MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD
    app.add_middleware(BodyGuard, prefix="/api/v1/", default_limit=DEFAULT_LIMIT,
                       limits={"/api/v1/portfolios": upload_cap,
                               "/api/v1/onboarding/create-portfolio": upload_cap})
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    install_error_handlers(app)
    include_routers(app)
    mount_console(app)
    return app


def _lifespan(state: ApiState):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        get_engine(state.database_url)
        state.pg_pool = await asyncpg.create_pool(
            asyncpg_dsn(state.database_url), min_size=2, max_size=PG_POOL_SIZE)
        connector = asyncio.create_task(_connect_nats(state))
        # Everything imported and built so far lives as long as the process: keep it out of
        # the collector's generations, so GC pauses do not land on polled requests.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await state.pg_pool.close()
            connector.cancel()
            with contextlib.suppress(BaseException):
                await connector
            if state.nc is not None:
                with contextlib.suppress(Exception):
                    await state.nc.drain()
            await dispose_engines()

    return lifespan


async def _connect_nats(state: ApiState) -> None:
    """Connect (retrying until NATS is up) and declare the streams; then stay connected."""
    settings = state.settings
    delay = 0.2
    while True:
        try:
            connection = await bootstrap.connect_bus(settings, "status_api")
            state.nc, state.js = connection.nc, connection.js
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("NATS not reachable yet (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
