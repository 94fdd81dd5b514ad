"""`python -m services.status_api`: serve the HTTP API with uvicorn on settings.api_port."""

from __future__ import annotations

import uvicorn

from libs.common.config import get_settings
from libs.common.logs import configure_logging
from services.status_api.app import create_app
from services.status_api.snapshots import default_snapshot_maker


def main() -> None:
    settings = get_settings()
    configure_logging("status_api", settings.log_level)
    app = create_app(settings, snapshot_maker=default_snapshot_maker(settings))
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_config=None,
                access_log=False)


if __name__ == "__main__":
    main()
