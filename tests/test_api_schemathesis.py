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

from tests.processes import ServiceProcess
from tests.test_api_helpers import seed_known_symbols, token_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_openapi_fuzzing_finds_no_server_error(settings, service_env):
    headers = await token_for(settings.database_url, "fuzzer", admin=True)
    await seed_known_symbols(settings.database_url, ["AAPL"], days=20)
    port = _free_port()
    api = ServiceProcess("status_api", {**service_env, "API_PORT": str(port)})
    api.start(wait_ready=False)
    try:
        _wait_http(port)
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "schemathesis.cli", "run",
             f"http://127.0.0.1:{port}/openapi.json",
             "--checks", "not_a_server_error",
             "--header", f"Authorization:{headers['Authorization']}",
             "--max-examples", "25", "--seed", "7", "--request-timeout", "20",
             "--phases", "examples,coverage,fuzzing"],
            capture_output=True, text=True, timeout=600)
    finally:
        api.kill()
    output = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, output
    assert "Server error" not in output and " passed" in output


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
