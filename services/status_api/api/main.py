"""The routers of the API: `/api/v1/<resource>` (bearer auth) and the ops endpoints."""

from __future__ import annotations

from fastapi import FastAPI

from services.status_api.api.routes import (
    admin,
    analytics,
    batch,
    frontend_analytics,
    frontend_onboarding,
    me,
    onboarding,
    ops,
    portfolios,
    symbols,
)

ROUTERS = (portfolios.router, analytics.router, onboarding.router, batch.router, admin.router,
           symbols.router, me.router, ops.router, frontend_onboarding.router,
           frontend_analytics.router)


def include_routers(app: FastAPI) -> None:
    for router in ROUTERS:
        app.include_router(router)
