"""Onboarding as real processes: kill -9 of a worker in the middle of a symbol.

The worker process is `services.onboarding` itself (its `build_definition`), with the real
sample provider behind a wrapper that only records each call to a file and, for the symbol
under test, takes its time, so the kill lands mid-fetch. portfolio_refresh runs as its own
process. After the kill a fresh worker must finish the symbol (JetStream redelivers the
unacked message; the stale job row is reclaimed) and the portfolio must complete.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import text

from libs.common.db import session_scope
from tests.processes import REPO_ROOT, ServiceProcess
from tests.test_api_helpers import (
    api_client,
    csv_bytes,
    poll_status,
    seed_known_symbols,
    stock_rows,
    token_for,
)


class _RecordingProvider:
    """The real provider; each price call is appended to a file (one line per call)."""

    def __init__(self, inner, record: Path, slow: set[str], delay: float) -> None:
        self.inner, self.name, self.record = inner, inner.name, record
        self.slow, self.delay = slow, delay

    async def fetch_prices(self, symbols, start, end):
        with self.record.open("a") as f:
            f.write(" ".join(symbols) + "\n")
        if self.slow & set(symbols):
            await asyncio.sleep(self.delay)
        return await self.inner.fetch_prices(symbols, start, end)

    async def fetch_profiles(self, symbols, as_of):
        return await self.inner.fetch_profiles(symbols, as_of)

    async def fetch_fundamentals(self, symbols, as_of):
        return await self.inner.fetch_fundamentals(symbols, as_of)


def run_worker() -> None:
    """Entry point of the worker subprocess (see WorkerProcess)."""
    from libs.common.service import main
    from services.onboarding.__main__ import build_definition, default_provider

    record = Path(os.environ["TEST_RECORD_FILE"])
    slow = set(filter(None, os.environ.get("TEST_SLOW_SYMBOLS", "").split(",")))
    delay = float(os.environ.get("TEST_FETCH_DELAY", "0"))
    main(build_definition(
        lambda s, g: _RecordingProvider(default_provider(s, g), record, slow, delay)))


class WorkerProcess(ServiceProcess):
    def start(self, *, wait_ready: bool = True, timeout: float = 30.0) -> WorkerProcess:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-c",
             "from tests.test_onboarding_process import run_worker; run_worker()"],
            cwd=REPO_ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        if wait_ready:
            self.wait_for_log(" ready", timeout=timeout)
        return self


def _calls(record: Path, symbol: str) -> int:
    if not record.exists():
        return 0
    return sum(symbol in line.split() for line in record.read_text().splitlines())


async def test_kill_9_of_the_worker_mid_symbol_still_completes(settings, service_env, tmp_path):
    headers = await token_for(settings.database_url, "alice")
    as_of = await seed_known_symbols(settings.database_url, ["AAPL"])
    record = tmp_path / "calls.txt"
    env = {**service_env, "TEST_RECORD_FILE": str(record), "TEST_SLOW_SYMBOLS": "ZZKIL",
           "TEST_FETCH_DELAY": "120"}
    refresh = ServiceProcess("portfolio_refresh", service_env).start()
    first = WorkerProcess("onboarding", env).start()
    second = None
    try:
        async with api_client(settings) as client:
            created = await client.post("/api/v1/portfolios", headers=headers, files={
                "file": ("p.csv", csv_bytes(*stock_rows(["AAPL", "ZZKIL"])))},
                data={"name": "kill"})
            pid = created.json()["portfolio_id"]
            deadline = time.monotonic() + 30
            while _calls(record, "ZZKIL") == 0:
                assert time.monotonic() < deadline, first.log()[-3000:]
                await asyncio.sleep(0.05)
            first.kill()  # SIGKILL mid-fetch: no ack, no nak, a running job row left behind
            running = (await poll_status(client, headers, pid, ("running",)))[-1]
            assert running["current_phase_progress"]["current"] == 0
            second = WorkerProcess("onboarding", {**env, "TEST_FETCH_DELAY": "0"},
                                   replica=1).start()
            final = (await poll_status(client, headers, pid, ("completed", "partial", "failed"),
                                       timeout=90))[-1]
    finally:
        for process in (first, second, refresh):
            if process is not None:
                process.kill()
    assert (final["status"], final["snapshot_date"]) == ("completed", as_of.isoformat())
    assert "Fetching a year of prices, the profile and factor betas of ZZKIL (attempt 2)." in [
        line["message"] for line in final["activity_log"]]
    assert _calls(record, "ZZKIL") == 2  # the killed attempt and the one that finished
    async with session_scope(settings.database_url) as session:
        jobs = (await session.execute(text(
            "SELECT status, attempts FROM batch_run_history "
            "WHERE job_type = 'symbol_onboard' AND job_key = 'ZZKIL'"))).all()
    assert [tuple(j) for j in jobs] == [("completed", 2)]  # reclaimed, not duplicated


async def test_requests_made_while_onboarding_is_down_and_sigterm_mid_symbol(
        settings, service_env, tmp_path):
    """Uploads while the service is down wait in JetStream; SIGTERM mid-symbol hands it on."""
    headers = await token_for(settings.database_url, "alice")
    await seed_known_symbols(settings.database_url, ["AAPL"])
    record = tmp_path / "calls.txt"
    env = {**service_env, "TEST_RECORD_FILE": str(record), "TEST_SLOW_SYMBOLS": "ZZOFF",
           "TEST_FETCH_DELAY": "120"}
    refresh = ServiceProcess("portfolio_refresh", service_env).start()
    first = second = None
    try:
        async with api_client(settings) as client:
            created = await client.post("/api/v1/portfolios", headers=headers, files={
                "file": ("p.csv", csv_bytes(*stock_rows(["AAPL", "ZZOFF"])))},
                data={"name": "offline"})
            pid = created.json()["portfolio_id"]
            first = WorkerProcess("onboarding", env).start()  # started after the upload
            deadline = time.monotonic() + 30
            while _calls(record, "ZZOFF") == 0:
                assert time.monotonic() < deadline, first.log()[-3000:]
                await asyncio.sleep(0.05)
            first.process.terminate()  # SIGTERM mid-fetch: the message is nak'ed on the way out
            second = WorkerProcess("onboarding", {**env, "TEST_FETCH_DELAY": "0"},
                                   replica=1).start()
            final = (await poll_status(client, headers, pid, ("completed", "partial", "failed"),
                                       timeout=90))[-1]
            assert first.process.wait(timeout=60) is not None
    finally:
        for process in (first, second, refresh):
            if process is not None:
                process.kill()
    assert final["status"] == "completed"
    assert _calls(record, "ZZOFF") == 2
    async with session_scope(settings.database_url) as session:
        jobs = (await session.execute(text(
            "SELECT status, error FROM batch_run_history "
            "WHERE job_type = 'symbol_onboard' AND job_key = 'ZZOFF' ORDER BY started_at"))).all()
    # The interrupted attempt released its job row on the way out; the next one finished.
    assert [tuple(j) for j in jobs] == [("failed", "interrupted by shutdown"), ("completed", None)]
