"""`sigmabatch trigger nightly`: says at once when a run is in progress or the date is
complete (and then publishes nothing), and `--wait`'s progress and summary, on real
PostgreSQL + NATS (the job rows written by the real job tracker)."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
from pathlib import Path

import nats
import pytest
from nats.js.errors import NotFoundError
from sqlalchemy import text

from libs.common import bus
from libs.common.config import Settings, get_settings
from libs.common.db import dispose_engines, session_scope
from libs.common.jobs import JobTracker
from sigmabatch.batch_wait import wait_for_batch
from sigmabatch.cli import main

DAY = dt.date(2026, 6, 3)


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("DATABASE_URL", settings.require_database_url())
    monkeypatch.setenv("NATS_URL", settings.require_nats_url())
    monkeypatch.setenv("SIGMABATCH_BUS_PREFIX", settings.bus_prefix)
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


async def _published(settings: Settings) -> list[dict]:
    topology = bus.Topology(settings.bus_prefix)
    nc = await nats.connect(settings.require_nats_url())
    try:
        message = await nc.jetstream().get_last_msg(
            topology.jobs_stream, topology.subject("batch.nightly.requested"))
        return [json.loads(message.data)]
    except NotFoundError:
        return []
    finally:
        await nc.close()


async def _run_in_progress(url: str) -> None:
    tracker = JobTracker(url, worker_id="w")
    job = await tracker.start("symbol_batch", DAY.isoformat(), phases=["profiles", "prices"])
    await tracker.phase(job, "prices", total=5, unit="symbols")
    await tracker.progress(job, 2)
    await dispose_engines()


async def _complete(url: str) -> None:
    async with session_scope(url) as session:
        await session.execute(text("UPDATE batch_run_history SET status = 'completed'"))
        await session.execute(text(
            "INSERT INTO symbol_batch_dates (batch_date, status, symbols_total, symbols_failed) "
            "VALUES (:d, 'partial', 6, 1)"), {"d": DAY})
    await dispose_engines()


def test_trigger_says_at_once_a_run_is_in_progress_or_the_date_is_complete(
        cli_env: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = cli_env.require_database_url()
    args = ["trigger", "nightly", "--date", DAY.isoformat(), "--data-dir", str(tmp_path)]
    asyncio.run(_run_in_progress(url))
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "a symbol batch run is in progress (target 2026-06-03, phase prices, 2/5): " \
           "it covers 2026-06-03" in said
    assert "published" not in said and asyncio.run(_published(cli_env)) == []

    asyncio.run(_complete(url))
    assert main(args) == 0
    assert "2026-06-03 is already complete (partial: 6 symbols, 1 failed); nothing to do" \
        in capsys.readouterr().out
    assert asyncio.run(_published(cli_env)) == []

    assert main([*args, "--rerun"]) == 0  # on purpose: published
    assert "published batch.nightly.requested" in capsys.readouterr().out
    [request] = asyncio.run(_published(cli_env))
    assert request["target_date"] == DAY.isoformat() and request["rerun_token"]


async def _drive_a_run(url: str) -> None:
    """What symbol_batch and portfolio_refresh write, step by step."""
    tracker = JobTracker(url, worker_id="w")
    await asyncio.sleep(0.3)
    job = await tracker.start("symbol_batch", DAY.isoformat(),
                              phases=["profiles", "prices", "fundamentals", "factors"])
    for phase in ("profiles", "prices", "fundamentals", "factors"):
        await tracker.phase(job, phase, total=4, unit="symbols")
        await asyncio.sleep(0.2)
        await tracker.progress(job, 4)
    days = [DAY - dt.timedelta(days=1), DAY]
    async with session_scope(url) as session:
        for day in days:
            await session.execute(text(
                "INSERT INTO symbol_batch_dates (batch_date, status, run_id, symbols_total, "
                "symbols_failed, failures) VALUES (:d, :s, :r, 4, :n, CAST(:f AS jsonb))"),
                {"d": day, "s": "partial" if day == DAY else "completed", "r": job.id,
                 "n": 1 if day == DAY else 0,
                 "f": json.dumps({"ZZZ": "no prices"} if day == DAY else {})})
    await tracker.finish(job, "partial")
    for day in days:
        plan = await tracker.start("portfolio_refresh", day.isoformat())
        await tracker.phase(plan, "plan", total=0, unit="portfolios")
        await tracker.finish(plan)


async def test_wait_shows_phases_then_dates_then_a_summary(settings: Settings) -> None:
    url = settings.require_database_url()
    out = io.StringIO()
    since = dt.datetime.now(dt.UTC)
    driver = asyncio.create_task(_drive_a_run(url))
    code = await wait_for_batch(url, DAY.isoformat(), since, within_seconds=60, out=out,
                                poll_seconds=0.05)
    await driver
    shown = out.getvalue()
    assert code == 0
    assert "waiting for the symbol batch to start" in shown
    assert "symbol batch 2026-06-03: running" in shown
    assert "  prices       [" in shown and "4/4 symbols" in shown
    assert "  2026-06-02  completed 4 symbols, 0 failed   refresh" in shown
    summary = shown[shown.index("Summary:"):]
    assert summary.startswith("Summary: symbol batch 2026-06-03 partial after")
    assert "phases: profiles" in summary and "factors" in summary
    assert "dates: 2 (2026-06-02 .. 2026-06-03), 4 symbols" in summary
    assert "2026-06-03  partial   1 symbol(s) failed, 0 portfolio snapshot(s)" in summary
    assert "ZZZ: no prices" in summary


async def test_wait_gives_up_after_its_timeout(settings: Settings) -> None:
    out = io.StringIO()
    code = await wait_for_batch(settings.require_database_url(), DAY.isoformat(),
                                dt.datetime.now(dt.UTC), within_seconds=0.5, out=out,
                                poll_seconds=0.1)
    assert code == 1 and "timed out after 0 s; the run goes on" in out.getvalue()
