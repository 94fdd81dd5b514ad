"""The web console at `/` and offline API docs at `/docs` (issue 11).

Both are static files shipped inside the package (`console/`, package data), so a
non-editable install serves them and nothing is fetched from the internet at run time:
the console's charting library (uPlot) and Swagger UI are vendored from the npm registry
with their licenses under `console/vendor/`. The console talks to the same `/api/v1`
endpoints as any client, with the bearer token the user signs in with.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
ASSETS = "/console"
SWAGGER = f"{ASSETS}/vendor/swagger-ui"


def mount_console(app: FastAPI) -> None:
    """Serve the console's assets, its page at `/` and Swagger UI at `/docs` (local assets)."""
    app.mount(ASSETS, StaticFiles(directory=CONSOLE_DIR), name="console")

    @app.get("/", include_in_schema=False)
    async def console_page() -> FileResponse:
        # no-cache: a new release's page (and the asset versions it names) shows at once.
        return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - docs",
            swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER}/favicon-32x32.png",
        )
