"""Property-based run of the OpenAPI spec against the real API process: no 5xx anywhere.

schemathesis generates requests for every operation of /openapi.json (valid and invalid
paths, queries, bodies, multipart uploads) with an admin's token; the API runs as
`python -m services.status_api` on real PostgreSQL + NATS.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

import httpx
from sqlalchemy import text

from libs.common.db import session_scope
from libs.common.factor_definitions import seed_factor_definitions
from libs.common.jobs import JobTracker
from tests.processes import ServiceProcess
from tests.test_api_helpers import csv_bytes, seed_known_symbols, stock_rows, token_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_openapi_fuzzing_finds_no_server_error(settings, service_env, tmp_path):
    headers = await token_for(settings.database_url, "fuzzer", admin=True)
    as_of = await seed_known_symbols(settings.database_url, ["AAPL", "MSFT"], days=40)
    # Betas on the snapshot date, so the real ids of the second run reach data (factor reads
    # answer 404 with a reason where there is none).
    async with session_scope(settings.database_url) as session:
        await seed_factor_definitions(session)
        await session.execute(text(
            "INSERT INTO symbol_factor_exposures (symbol, factor_name, calculation_date, beta, "
            "n_obs, quality) SELECT s, 'market', :d, 1.1, 90, 'full' FROM unnest(CAST(:s AS text[])) AS s"),
            {"d": as_of, "s": ["AAPL", "MSFT"]})
    port = _free_port()
    api = ServiceProcess("status_api", {**service_env, "API_PORT": str(port)})
    api.start(wait_ready=False)
    try:
        _wait_http(port)
        # A real, onboarded portfolio (first snapshot made in the upload) for the second run.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            created = await client.post(
                "/api/v1/portfolios", headers=headers, data={"name": "fuzz"},
                files={"file": ("p.csv", csv_bytes(*stock_rows(["AAPL", "MSFT"])))})
        assert created.json()["status"] == "completed", created.text
        tracker = JobTracker(settings.database_url)
        job = await tracker.start("symbol_batch", "2026-01-02")
        await tracker.finish(job)
        config = tmp_path / "schemathesis.toml"
        config.write_text(f'''[parameters]
"path.portfolio_id" = "{created.json()["portfolio_id"]}"
"path.symbol" = "AAPL"
"path.job_id" = "{job.id}"
''')
        runs = []
        for extra, examples in (([], "25"), (["--config-file", str(config)], "15")):
            command = [sys.executable, "-m", "schemathesis.cli", *extra, "run",
                       f"http://127.0.0.1:{port}/openapi.json",
                       "--checks", "not_a_server_error",
                       "--header", f"Authorization:{headers['Authorization']}",
                       "--max-examples", examples, "--seed", "7", "--request-timeout", "20",
                       "--phases", "examples,coverage,fuzzing"]
            runs.append(await asyncio.to_thread(subprocess.run, command, capture_output=True,
                                                text=True, timeout=600))
    finally:
        api.kill()
    for result in runs:
        output = result.stdout[-6000:] + result.stderr[-2000:]
        assert result.returncode == 0, output
        assert "Server error" not in output and " passed" in output
    # With the real portfolio's id, no operation is stuck answering 404 in the second run.
    assert "Missing test data" not in runs[1].stdout


def _wait_http(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"status_api not ready on port {port}")
