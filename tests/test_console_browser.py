"""The console in a real browser (Playwright driving Debian's chromium) against a running
system: status_api, onboarding and portfolio_refresh as processes on real NATS + PostgreSQL.

What a user and an operator do: sign in (a bad token is refused with a message); upload a bad
CSV and see every problem at its cell; upload a good one, watch it onboard (a new symbol is
fetched, so the async path) and land on the portfolio page, whose numbers are the API's; as
an admin, see the batch runs by date with failures, and re-run a date (the request reaches
NATS). Any JavaScript error fails the test. Screenshots (wide and phone) go to docs/img/.

The system is seeded the way the batch would have left it: a year of sample prices, 20 batch
dates written through the real job tracker, factor betas, and one portfolio refreshed over
those dates by the real refresh use case (so the charts have history).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import httpx
import nats
import pytest
from sqlalchemy import text

from libs.common import bus, pnl
from libs.common.calendar import sessions_between
from libs.common.config import Settings
from libs.common.db import dispose_engines, session_scope
from libs.common.factor_definitions import seed_factor_definitions
from libs.common.factors import ALL_FACTORS
from libs.common.jobs import JobTracker
from libs.common.onboarding import store as onboarding_store
from libs.common.onboarding.upload import upload_portfolio
from libs.common.snapshots.refresh import refresh_portfolios
from sigmabatch.embedded import free_port
from tests.conftest import REPO_ROOT, Servers, _admin_execute, _delete_streams, _with_database
from tests.processes import ServiceProcess
from tests.test_api_helpers import csv_bytes, seed_known_symbols

CHROMIUM = os.environ.get("SIGMABATCH_CHROMIUM", "/usr/bin/chromium")
playwright_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)", allow_module_level=True)

IMG = REPO_ROOT / "docs" / "img"
WIDE = {"width": 1360, "height": 900}
PHONE = {"width": 390, "height": 844}
KNOWN = ["AAPL", "MSFT", "JPM", "XOM", "SPY"]
NEW_SYMBOL = "NVDA"  # not in the universe: the onboarding worker fetches it
HISTORY_SESSIONS = 20
# Browser-side noise that is the API answering as designed (the page renders these answers).
EXPECTED_HTTP = ("status of 401", "status of 404", "status of 422")


@dataclass
class System:
    url: str
    settings: Settings
    user_token: str
    admin_token: str
    history_id: str
    bare_id: str  # a portfolio that was never onboarded through an upload
    end: dt.date
    dates: list[dt.date]


def _beta(symbol: str, factor: str) -> float:
    digest = hashlib.sha256(f"{symbol}:{factor}".encode()).digest()
    return round((digest[0] - 128) / 100, 3)


async def _seed(settings: Settings) -> dict:
    url = settings.require_database_url()
    end = await seed_known_symbols(url, KNOWN)
    dates = sessions_between(end - dt.timedelta(days=40), end)[-HISTORY_SESSIONS:]
    tracker = JobTracker(url, worker_id="seed")
    async with session_scope(url) as session:
        await seed_factor_definitions(session)
        await session.execute(text(
            "INSERT INTO symbol_factor_exposures (symbol, factor_name, calculation_date, beta, "
            "n_obs, quality) SELECT s, f, d, b, 90, 'full' FROM unnest(CAST(:s AS text[]), "
            "CAST(:f AS text[]), CAST(:d AS date[]), CAST(:b AS float8[])) AS t(s, f, d, b)"),
            {"s": [s for d in dates for s in KNOWN for _ in ALL_FACTORS],
             "f": [f for d in dates for s in KNOWN for f in ALL_FACTORS],
             "d": [d for d in dates for s in KNOWN for _ in ALL_FACTORS],
             "b": [_beta(s, f) for d in dates for s in KNOWN for f in ALL_FACTORS]})
    # Two batch runs through the real job tracker: a first run for the oldest date, then a
    # backfill to the end with one symbol failing on the last date.
    runs = []
    for key, phase_totals, status in ((dates[0], 5, "completed"), (end, 5, "partial")):
        job = await tracker.start("symbol_batch", key.isoformat(),
                                  phases=["profiles", "prices", "fundamentals", "factors"])
        for phase in ("profiles", "prices", "fundamentals", "factors"):
            await tracker.phase(job, phase, total=phase_totals, unit="symbols")
            await tracker.progress(job, phase_totals)
        await tracker.finish(job, status)
        runs.append(job.id)
    async with session_scope(url) as session:
        for day in dates:
            last = day == end
            await session.execute(text(
                "INSERT INTO symbol_batch_dates (batch_date, status, run_id, symbols_total, "
                "symbols_failed, failures) VALUES (:d, :st, :run, :n, :f, CAST(:fj AS jsonb))"),
                {"d": day, "st": "partial" if last else "completed",
                 "run": runs[0] if day == dates[0] else runs[1], "n": len(KNOWN) + 1,
                 "f": 1 if last else 0,
                 "fj": json.dumps({"QQQX": "no prices from the provider (unknown symbol)"}
                                  if last else {})})
    # A job that exhausted its deliveries, and one still running with progress.
    await tracker.record_dead_letter("symbol_onboard", "QQQX", "ValueError: unknown symbol",
                                     b"{}", 5)
    running = await tracker.start("portfolio_refresh_chunk", f"{end}:0-of-1")
    await tracker.phase(running, "refresh", total=8, unit="portfolios")
    await tracker.progress(running, 3)
    # The history portfolio: stored by the upload use case, refreshed over the batch dates.
    async with session_scope(url) as session:
        user_id = (await session.execute(text(
            "SELECT id FROM users WHERE username = 'alice'"))).scalar_one()

    async def no_bus(message) -> bool:
        return False

    rows = ["AAPL,120,150.25,{0},PUBLIC,STOCK,,,,,,", "MSFT,60,310.10,{0},PUBLIC,STOCK,,,,,,",
            "JPM,-40,140.00,{0},PUBLIC,STOCK,,,,,,", "XOM,90,105.50,{0},PUBLIC,STOCK,,,,,,"]
    first = (dates[0] - dt.timedelta(days=3)).isoformat()
    stored = await upload_portfolio(
        database_url=url, publish=no_bus, user_id=user_id, username="alice",
        name="Growth and income", data=csv_bytes(*(r.format(first) for r in rows)))
    await refresh_portfolios(url, end, [stored.portfolio_id], pnl.PricingParams(),
                             max_backfill=HISTORY_SESSIONS + 5)
    async with session_scope(url) as session:  # its first snapshot is there: onboarded
        await onboarding_store.finish_completed_onboardings(session, stored.portfolio_id)
        bare_id = uuid.uuid4()
        await session.execute(text(
            "INSERT INTO portfolios (id, user_id, name, equity_balance) "
            "VALUES (:p, :u, 'Entered by hand', 1000)"), {"p": bare_id, "u": user_id})
    await dispose_engines()
    return {"history_id": str(stored.portfolio_id), "bare_id": str(bare_id), "end": end,
            "dates": dates}


@pytest.fixture(scope="module")
def system(servers: Servers, template_database: str) -> Iterator[System]:
    name = f"sb_t_{uuid.uuid4().hex[:12]}"
    prefix = f"t{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin_execute(servers, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
    database_url = _with_database(servers.admin_database_url, name)
    port = free_port()
    settings = Settings(DATABASE_URL=database_url, NATS_URL=servers.nats_url,
                        SIGMABATCH_BUS_PREFIX=prefix, MARKET_DATA_PROVIDER="sample")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(DATABASE_URL=database_url, NATS_URL=servers.nats_url,
               SIGMABATCH_BUS_PREFIX=prefix, MARKET_DATA_PROVIDER="sample",
               API_PORT=str(port), API_HOST="127.0.0.1", PYTHONPATH=str(REPO_ROOT))
    processes: list[ServiceProcess] = []
    try:
        began = time.perf_counter()
        for service in ("status_api", "onboarding", "portfolio_refresh"):  # start meanwhile
            processes.append(ServiceProcess(service, env).start(wait_ready=False))
        tokens = asyncio.run(_tokens(database_url))
        seeded = asyncio.run(_seed(settings))
        seeded_after = time.perf_counter() - began
        for process in processes:
            process.wait_for_log(ServiceProcess.READY_LINES.get(process.name, " ready"),
                                 timeout=90)
        print(f"\nconsole system: seeded in {seeded_after:.1f} s, services ready after "
              f"{time.perf_counter() - began:.1f} s")
        yield System(url=f"http://127.0.0.1:{port}", settings=settings,
                     user_token=tokens[0], admin_token=tokens[1], **seeded)
    finally:
        for process in processes:
            with contextlib.suppress(Exception):
                process.terminate()
        asyncio.run(_delete_streams(servers.nats_url, bus.Topology(prefix)))
        asyncio.run(_admin_execute(servers, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _tokens(database_url: str) -> tuple[str, str]:
    from libs.common.auth import create_user_token

    async with session_scope(database_url) as session:
        user = await create_user_token(session, "alice", admin=False)
        admin = await create_user_token(session, "ops", admin=True)
    await dispose_engines()
    return user, admin


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with playwright_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield instance
        instance.close()


class Page:
    """A page that records every JavaScript error and unexpected console error."""

    def __init__(self, browser, system: System, viewport: dict) -> None:
        self.context = browser.new_context(viewport=viewport)
        self.page = self.context.new_page()
        self.page.set_default_timeout(45_000)  # a loaded CI machine
        self.system = system
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.on("console", self._console)

    def _console(self, message) -> None:
        if message.type == "error" and not any(e in message.text for e in EXPECTED_HTTP):
            self.errors.append(f"console: {message.text}")

    def sign_in(self, token: str) -> None:
        self.page.goto(self.system.url + "/")
        self.page.fill("#token", token)
        self.page.keyboard.press("Enter")  # the form is keyboard-usable
        self.page.wait_for_selector("#nav:not([hidden])")

    def shot(self, name: str) -> None:
        IMG.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(IMG / name), full_page=True)

    def close(self) -> None:
        self.context.close()
        assert not self.errors, self.errors


def api(system: System, path: str, token: str) -> httpx.Response:
    return httpx.get(system.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def money(value: str | None) -> str:
    if value is None:
        return "—"
    return f"{Decimal(value).quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,.2f}"


BAD_CSV = csv_bytes(
    "AAPL,10,150.00,2025-06-30,PUBLIC,STOCK,,,,,,",
    "MSFT,abc,310.00,2025-06-30,PUBLIC,STOCK,,,,,,",     # line 3: quantity not a number
    "JPM,5,140.00,2025-13-01,PUBLIC,STOCK,,,,,,",        # line 4: no such month
    "XOM,7,-3,2025-06-30,PUBLIC,STOCK,,,,,,",             # line 5: negative price
)
GOOD_CSV = csv_bytes("AAPL,25,180.50,2025-06-30,PUBLIC,STOCK,,,,,,",
                     "MSFT,-10,400.00,2025-06-30,PUBLIC,STOCK,,,,,,",
                     f"{NEW_SYMBOL},15,120.00,2025-06-30,PUBLIC,STOCK,,,,,,")


def test_user_signs_in_uploads_and_reads_the_portfolio(system: System, browser) -> None:
    view = Page(browser, system, WIDE)
    page = view.page
    page.goto(system.url + "/")
    page.fill("#token", "sb_not-a-token")
    page.click("button[type=submit]")
    page.wait_for_selector("#signin-error .error-box")
    assert "not accepted (401)" in page.inner_text("#signin-error")
    view.sign_in(system.user_token)
    page.wait_for_selector("#portfolios")
    assert "Growth and income" in page.inner_text("#portfolios")

    # A bad file: every problem at its line and column, as the API lists them.
    page.goto(system.url + "/#/upload")
    page.set_input_files("#csv-file", files=[{"name": "mine.csv", "mimeType": "text/csv",
                                              "buffer": BAD_CSV}])
    page.click("#upload-submit")
    page.wait_for_selector("#csv-problems")
    problems = httpx.post(system.url + "/api/v1/portfolios",
                          headers={"Authorization": f"Bearer {system.user_token}"},
                          files={"file": ("mine.csv", BAD_CSV, "text/csv")},
                          data={"name": "mine"}, timeout=30).json()["errors"]
    assert {(p["row"], p["column"]) for p in problems} >= {
        (3, "Quantity"), (4, "Entry Date"), (5, "Entry Price Per Share")}
    flagged = page.eval_on_selector_all(
        "#csv-problems td.err", "cells => cells.map(c => [+c.dataset.row, c.dataset.col, c.dataset.problem])")
    assert {(row, col) for row, col, _ in flagged} == {(p["row"], p["column"]) for p in problems}
    for row, col, shown in flagged:
        expected = [p["message"] for p in problems if (p["row"], p["column"]) == (row, col)]
        assert shown == " | ".join(expected)
    cell = page.locator('#csv-problems td[data-row="3"][data-col="Quantity"]')
    assert cell.inner_text() == "abc"  # the file as the user wrote it
    view.shot("console-upload-errors-wide.png")

    # A good file with a new symbol: async onboarding, then the portfolio opens by itself.
    page.fill("#portfolio-name", "From the browser")
    page.set_input_files("#csv-file", files=[{"name": "good.csv", "mimeType": "text/csv",
                                              "buffer": GOOD_CSV}])
    page.focus("#portfolio-name")
    for _ in range(10):  # keyboard reachable: Tab gets to the upload button
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "upload-submit":
            break
    assert page.evaluate("document.activeElement.id") == "upload-submit"
    page.keyboard.press("Enter")
    page.wait_for_selector("#onboarding #mode")
    assert page.get_attribute("#mode", "data-mode") == "v2_async"
    view.shot("console-onboarding-wide.png")
    page.wait_for_url("**/#/portfolio/*", timeout=90_000)
    portfolio_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("#positions")
    status = api(system, f"/api/v1/onboarding/status/{portfolio_id}", system.user_token).json()
    assert status["status"] == "completed" and status["mode"] == "v2_async"
    log = [line["timestamp"] for line in status["activity_log"]]
    assert log == sorted(log)

    _assert_portfolio_page_equals_api(page, system, portfolio_id)
    page.goto(f"{system.url}/#/portfolio/{system.history_id}")
    page.wait_for_selector("#chart-equity .uplot")
    _assert_portfolio_page_equals_api(page, system, system.history_id)
    risk = api(system, f"/api/v1/portfolios/{system.history_id}/risk?date={system.end}",
               system.user_token)
    if risk.status_code == 200:  # the refresh computes analytics (docs/design.md §10)
        page.wait_for_selector("#risk")
        for key in ("volatility_21d", "top3_weight"):
            value = risk.json()[key]
            shown = "—" if value is None else \
                f"{Decimal(repr(value * 100)).quantize(Decimal('0.01'), ROUND_HALF_UP):,.2f}%"
            assert page.inner_text(f'#risk [data-figure="{key}"]') == shown, key
    view.shot("console-portfolio-wide.png")

    # No onboarding status: "status unavailable" only after the contract's grace (≥5
    # not_found answers and ≥10 s of polling every 2 s), never at the first answer.
    began = time.monotonic()
    page.goto(f"{system.url}/#/onboarding/{system.bare_id}")
    page.wait_for_timeout(4_000)
    assert page.locator("#status-unavailable").count() == 0
    page.wait_for_selector("#status-unavailable", timeout=40_000)
    assert time.monotonic() - began >= 10.0
    assert api(system, f"/api/v1/onboarding/status/{system.bare_id}",
               system.user_token).json()["status"] == "not_found"

    page.goto(f"{system.url}/#/portfolio/{uuid.uuid4()}")
    page.wait_for_selector(".error-box")
    assert "Portfolio not found (404)" in page.inner_text(".error-box")
    view.close()

    phone = Page(browser, system, PHONE)
    phone.sign_in(system.user_token)
    phone.page.goto(f"{system.url}/#/portfolio/{system.history_id}")
    phone.page.wait_for_selector("#chart-equity .uplot")
    assert phone.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    phone.shot("console-portfolio-phone.png")
    phone.close()


def _assert_portfolio_page_equals_api(page, system: System, portfolio_id: str) -> None:
    detail = api(system, f"/api/v1/portfolios/{portfolio_id}", system.user_token).json()
    positions = api(system, f"/api/v1/portfolios/{portfolio_id}/positions",
                    system.user_token).json()
    factors = api(system, f"/api/v1/portfolios/{portfolio_id}/factor-exposures",
                  system.user_token).json()
    latest = detail["latest_snapshot"]
    assert latest is not None
    for key in ("equity", "total_value", "gross_exposure", "daily_pnl", "cumulative_pnl"):
        assert page.inner_text(f'[data-figure="{key}"]') == money(latest[key]), key
    for position in positions:
        row = page.locator(f'#positions tr[data-position="{position["position_id"]}"]')
        assert row.locator('[data-field="market_value"]').inner_text() == \
            money(position["market_value"])
        assert row.locator('[data-field="price_source"]').inner_text() == \
            (position["price_source"] or "—")
    assert factors["factors"], "the refresh wrote factor exposures"
    for factor in factors["factors"]:
        bar = page.locator(f'#factors [data-factor="{factor["factor"]}"]')
        assert bar.locator('[data-field="exposure_dollar"]').inner_text() == \
            money(factor["exposure_dollar"])


async def _last_nightly_request(system: System) -> dict:
    """The newest `batch.nightly.requested` on the jobs stream (nothing consumes it here)."""
    topology = bus.Topology(system.settings.bus_prefix)
    nc = await nats.connect(system.settings.require_nats_url())
    try:
        message = await nc.jetstream().get_last_msg(
            topology.jobs_stream, topology.subject("batch.nightly.requested"))
        return json.loads(message.data)
    finally:
        await nc.close()


def test_operator_sees_runs_by_date_and_reruns_one(system: System, browser) -> None:
    view = Page(browser, system, WIDE)
    page = view.page
    view.sign_in(system.user_token)
    page.goto(system.url + "/#/ops")
    page.wait_for_selector("main .error-box")
    assert "admin token (403)" in page.inner_text("main")
    assert page.is_hidden("#nav-ops")
    view.close()

    view = Page(browser, system, WIDE)
    page = view.page
    view.sign_in(system.admin_token)
    page.click("#nav-ops")
    page.wait_for_selector("#batch-dates")
    listed = api(system, "/api/v1/admin/batch/dates?limit=60", system.admin_token).json()
    shown = page.eval_on_selector_all("#batch-dates tbody tr", "rows => rows.map(r => r.dataset.date)")
    assert shown == [d["batch_date"] for d in listed]
    assert shown == [d.isoformat() for d in reversed(system.dates)]
    last = page.locator(f'#batch-dates tr[data-date="{system.end.isoformat()}"]')
    last.locator("summary").click()
    assert "QQQX: no prices from the provider" in last.inner_text()
    assert "factors" in last.inner_text()  # phase durations
    page.wait_for_selector('#running tr:has-text("portfolio_refresh_chunk")')
    assert "3/8 portfolios" in page.inner_text("#running")
    assert "dead-lettered" in page.inner_text("#failed")
    page.wait_for_selector("#consumers")
    view.shot("console-operations-wide.png")

    target = system.dates[-3]
    page.fill("#rerun-date", target.isoformat())
    page.click("#rerun")
    assert target.isoformat() in page.inner_text("#confirm-text")
    page.click("#confirm-ok")
    page.wait_for_selector("#action-result:has-text('accepted')")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # Playwright's loop owns this thread
        request = pool.submit(asyncio.run, _last_nightly_request(system)).result()
    assert (request["target_date"], request["requested_by"]) == (target.isoformat(), "ops")
    view.close()

    phone = Page(browser, system, PHONE)
    phone.sign_in(system.admin_token)
    phone.page.goto(system.url + "/#/ops")
    phone.page.wait_for_selector("#batch-dates")
    phone.shot("console-operations-phone.png")
    phone.close()


def test_docs_render_offline(system: System, browser) -> None:
    """Swagger UI from the package's own assets: any request off this host is blocked."""
    view = Page(browser, system, WIDE)
    outside: list[str] = []

    def guard(route) -> None:
        if route.request.url.startswith(system.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    view.page.route("**/*", guard)
    view.page.goto(system.url + "/docs", wait_until="domcontentloaded")
    view.page.wait_for_selector(".swagger-ui .opblock-tag", timeout=30_000)
    assert "/api/v1/portfolios" in view.page.inner_text(".swagger-ui")
    assert outside == []
    view.close()
