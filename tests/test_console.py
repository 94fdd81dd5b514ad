"""The console's server side on real PostgreSQL + NATS: its page and assets, offline /docs,
`/me`, the operator reads (batch dates, bus), and the activity log's time order."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid

import pytest
from sqlalchemy import text

from libs.common.db import session_scope
from libs.common.jobs import JobTracker
from services.status_api.console import CONSOLE_DIR
from tests.test_api_helpers import api_client, token_for

VENDOR_LICENSES = ["vendor/uplot/LICENSE", "vendor/swagger-ui/LICENSE"]


async def test_console_page_and_its_assets_are_served_from_the_package(settings):
    async with api_client(settings) as client:
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assets = re.findall(r'(?:src|href)="(/console/[^"]+)"', page.text)
        assert {"/console/app.js", "/console/app.css",
                "/console/vendor/uplot/uPlot.iife.min.js"} <= set(assets)
        for asset in assets:
            response = await client.get(asset)
            assert response.status_code == 200 and response.content, asset
    assert "http" not in "".join(assets)  # nothing from the internet
    for license_file in VENDOR_LICENSES:
        assert "Permission is hereby granted" in (CONSOLE_DIR / license_file).read_text() or \
            "Apache License" in (CONSOLE_DIR / license_file).read_text()


async def test_docs_use_local_swagger_assets(settings):
    async with api_client(settings) as client:
        docs = await client.get("/docs")
        assert docs.status_code == 200
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", docs.text)
        urls += re.findall(r"url: '([^']+)'", docs.text)
        assert urls and not [u for u in urls if "://" in u], urls
        for url in urls:
            assert (await client.get(url)).status_code == 200, url
        assert (await client.get("/redoc")).status_code == 404  # it would load from a CDN


async def test_me_says_who_and_whether_admin(settings):
    user = await token_for(settings.database_url, "alice")
    admin = await token_for(settings.database_url, "root", admin=True)
    async with api_client(settings) as client:
        assert (await client.get("/api/v1/me")).status_code == 401
        me = (await client.get("/api/v1/me", headers=user)).json()
        root = (await client.get("/api/v1/me", headers=admin)).json()
        dates = await client.get("/api/v1/admin/batch/dates", headers=user)
        bus_status = await client.get("/api/v1/admin/bus", headers=user)
    assert (me["username"], me["is_admin"]) == ("alice", False)
    assert (root["username"], root["is_admin"]) == ("root", True)
    assert dates.status_code == 403 and bus_status.status_code == 403


async def test_batch_dates_show_the_run_phases_failures_and_refresh(settings):
    """Rows written by the real job tracker; durations and failures as stored."""
    admin = await token_for(settings.database_url, "root", admin=True)
    tracker = JobTracker(settings.database_url, worker_id="w1")
    job = await tracker.start("symbol_batch", "2026-11-27", phases=["profiles", "prices"])
    await tracker.phase(job, "profiles", total=3, unit="symbols")
    await tracker.phase(job, "prices", total=3, unit="symbols")
    await tracker.progress(job, 2)
    await tracker.finish(job, "partial")
    plan = await tracker.start("portfolio_refresh", "2026-11-27")
    await tracker.phase(plan, "plan", total=4, unit="portfolios")
    await tracker.finish(plan)
    async with session_scope(settings.database_url) as session:
        await session.execute(text(
            "INSERT INTO symbol_batch_dates (batch_date, status, run_id, symbols_total, "
            "symbols_failed, failures) VALUES ('2026-11-26', 'completed', :id, 3, 0, '{}'), "
            "('2026-11-27', 'partial', :id, 3, 1, CAST(:f AS jsonb))"),
            {"id": job.id, "f": json.dumps({"ZZZ": "no prices from the provider"})})
        phases = (await session.execute(text(
            "SELECT phases FROM batch_run_history WHERE id = :id"), {"id": job.id})).scalar_one()
    async with api_client(settings) as client:
        rows = (await client.get("/api/v1/admin/batch/dates", headers=admin)).json()
        older = (await client.get("/api/v1/admin/batch/dates?before=2026-11-27",
                                  headers=admin)).json()
    assert [r["batch_date"] for r in rows] == ["2026-11-27", "2026-11-26"]
    assert [r["batch_date"] for r in older] == ["2026-11-26"]
    latest = rows[0]
    assert latest["failures"] == [{"symbol": "ZZZ", "reason": "no prices from the provider"}]
    assert latest["run"]["status"] == "partial" and latest["run"]["job_key"] == "2026-11-27"
    expected = {p["name"]: (dt.datetime.fromisoformat(p["finished_at"])
                            - dt.datetime.fromisoformat(p["started_at"])).total_seconds()
                for p in phases}
    assert {p["name"]: p["seconds"] for p in latest["run"]["phases"]} == pytest.approx(expected, abs=0.001)
    assert latest["refresh"] == {"status": "completed", "planned": 4}
    assert rows[1]["refresh"] is None and rows[1]["snapshots"] == 0


async def test_bus_lists_the_streams_and_consumer_lag(settings, ctx):
    admin = await token_for(settings.database_url, "root", admin=True)
    async with api_client(settings) as client:
        body = (await client.get("/api/v1/admin/bus", headers=admin)).json()
    names = {s["stream"] for s in body["streams"]}
    assert {ctx.topology.jobs_stream, ctx.topology.events_stream} <= names
    assert all({"pending", "ack_pending", "consumer"} <= set(c) for c in body["consumers"])


async def test_activity_log_comes_back_in_time_order(settings):
    """A long transaction's line (earlier timestamp, later id) is listed where it happened."""
    headers = await token_for(settings.database_url, "alice")
    portfolio_id = uuid.uuid4()
    base = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
    async with session_scope(settings.database_url) as session:
        user_id = (await session.execute(text(
            "SELECT id FROM users WHERE username = 'alice'"))).scalar_one()
        await session.execute(text(
            "INSERT INTO portfolios (id, user_id, name, equity_balance) "
            "VALUES (:p, :u, 'P', 100)"), {"p": portfolio_id, "u": user_id})
        await session.execute(text(
            "INSERT INTO portfolio_onboarding (portfolio_id, status, mode, started_at) "
            "VALUES (:p, 'running', 'v2_async', :t)"), {"p": portfolio_id, "t": base})
        for seconds, message in ((0, "first"), (5, "third"), (2, "second"), (9, "fourth")):
            await session.execute(text(
                "INSERT INTO onboarding_activity (portfolio_id, timestamp, level, message) "
                "VALUES (:p, :t, 'info', :m)"),
                {"p": portfolio_id, "t": base + dt.timedelta(seconds=seconds), "m": message})
    async with api_client(settings) as client:
        status = (await client.get(f"/api/v1/onboarding/status/{portfolio_id}",
                                   headers=headers)).json()
    log = status["activity_log"]
    assert [line["message"] for line in log] == ["first", "second", "third", "fourth"]
    assert [line["timestamp"] for line in log] == sorted(line["timestamp"] for line in log)


def test_every_console_file_is_package_data() -> None:
    """A non-editable install ships the console: each of its files matches a package-data
    glob of services.status_api in pyproject.toml (what setuptools copies into the wheel)."""
    import glob
    import tomllib

    from tests.conftest import REPO_ROOT

    globs = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["services.status_api"]
    package = CONSOLE_DIR.parent
    files = [p.relative_to(package).as_posix() for p in CONSOLE_DIR.rglob("*") if p.is_file()]
    assert "console/index.html" in files and len(files) >= 10
    shipped = {m for g in globs for m in glob.glob(g, root_dir=package)}  # as setuptools expands
    assert sorted(set(files) - shipped) == []
