"""Onboarding on real PostgreSQL + NATS with the real sample provider, services in process.

The provider is the real `sample` provider behind a counting wrapper (it only records calls),
so "one fetch per symbol" is observed, not assumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Sequence

from sqlalchemy import text

from libs.common import bus
from libs.common.db import session_scope
from libs.common.events import (
    PortfolioRefreshRequested,
    SymbolOnboardCompleted,
    SymbolOnboardRequested,
)
from libs.common.jobs import JobTracker
from libs.common.market_data import get_provider
from libs.common.onboarding import store
from libs.common.service import ServiceContext
from libs.common.snapshots.refresh import JOB_REQUEST
from libs.common.uow import sql_unit_of_work
from services.onboarding.coordinator import OnboardingCoordinator
from services.onboarding.worker import JOB_TYPE, OnboardingWorker
from services.portfolio_refresh.handlers import RefreshHandlers
from tests.polling import eventually as wait_for
from tests.test_api_helpers import (
    api_client,
    csv_bytes,
    poll_status,
    seed_known_symbols,
    stock_rows,
    token_for,
)

UPLOAD = "/api/v1/portfolios"


class CountingProvider:
    """The real provider, with every call recorded (symbols per call)."""

    def __init__(self, inner, delay_for: Sequence[str] = (), delay: float = 0.0) -> None:
        self.inner = inner
        self.name = inner.name
        self.price_calls: list[tuple[str, ...]] = []
        self.delay_for = set(delay_for)
        self.delay = delay

    async def fetch_prices(self, symbols, start, end):
        self.price_calls.append(tuple(symbols))
        if self.delay_for & set(symbols):
            await asyncio.sleep(self.delay)
        return await self.inner.fetch_prices(symbols, start, end)

    async def fetch_profiles(self, symbols, as_of):
        return await self.inner.fetch_profiles(symbols, as_of)

    async def fetch_fundamentals(self, symbols, as_of):
        return await self.inner.fetch_fundamentals(symbols, as_of)

    def calls_for(self, symbol: str) -> int:
        return sum(symbol in call for call in self.price_calls)


@contextlib.asynccontextmanager
async def onboarding_running(ctx: ServiceContext, provider, workers: int = 2,
                             refresh: bool = True) -> AsyncIterator[OnboardingCoordinator]:
    """The onboarding service's consumers, in this process (several worker loops), and
    portfolio_refresh's request consumer (the real snapshot maker) unless `refresh=False`."""
    stop = asyncio.Event()
    worker = OnboardingWorker(ctx, provider)
    coordinator = OnboardingCoordinator(sql_unit_of_work(ctx.database_url), ctx.publish, republish_after_seconds=0,
                                        stale_after_seconds=ctx.settings.job_stale_after_seconds)
    worker_spec = ctx.consumer("onboarding-worker", SymbolOnboardRequested, JOB_TYPE)
    coordinator_spec = ctx.consumer("onboarding-coordinator", SymbolOnboardCompleted,
                                    "onboarding_coordinator")
    tasks = [asyncio.create_task(bus.consume(ctx.js, ctx.topology, worker_spec, worker.handle,
                                             stop, dead_letter=ctx.dead_letter))
             for _ in range(workers)]
    tasks.append(asyncio.create_task(bus.consume(ctx.js, ctx.topology, coordinator_spec,
                                                 coordinator.handle, stop,
                                                 dead_letter=ctx.dead_letter)))
    tasks.append(asyncio.create_task(coordinator.watch_outcomes(stop, interval=0.2)))
    if refresh:
        refresh_spec = ctx.consumer("portfolio-refresh-request", PortfolioRefreshRequested,
                                    JOB_REQUEST)
        tasks.append(asyncio.create_task(bus.consume(
            ctx.js, ctx.topology, refresh_spec, RefreshHandlers(ctx).on_refresh_requested, stop,
            dead_letter=ctx.dead_letter)))
    try:
        yield coordinator
    finally:
        stop.set()
        await asyncio.wait(tasks, timeout=10)
        for task in tasks:
            task.cancel()


async def refresh_requests(ctx: ServiceContext) -> list[PortfolioRefreshRequested]:
    """Every portfolio.refresh.requested in the jobs stream (read without consuming)."""
    info = await ctx.js.stream_info(ctx.topology.jobs_stream)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        with contextlib.suppress(Exception):
            raw = await ctx.js.get_msg(ctx.topology.jobs_stream, seq)
            if raw.subject == ctx.topology.subject(PortfolioRefreshRequested.subject):
                found.append(PortfolioRefreshRequested.model_validate_json(raw.data))
    return found


async def test_unknown_symbols_are_fetched_then_the_snapshot_is_requested(settings, ctx):
    headers = await token_for(settings.database_url, "alice")
    as_of = await seed_known_symbols(settings.database_url, ["AAPL"])
    provider = CountingProvider(get_provider(settings))
    async with api_client(settings) as client, onboarding_running(ctx, provider, refresh=False):
        created = await client.post(UPLOAD, headers=headers, files={"file": (
            "p.csv", csv_bytes(*stock_rows(["AAPL", "ZZNEW"]),
                               ",2,3.10,2025-06-30,OPTIONS,,YYNEW,50,2025-08-15,CALL,,"))},
            data={"name": "new symbols"})
        pid = created.json()["portfolio_id"]
        first = (await client.get(f"/api/v1/onboarding/status/{pid}", headers=headers)).json()
        requests = await wait_for(lambda: refresh_requests(ctx))
        status = (await client.get(f"/api/v1/onboarding/status/{pid}", headers=headers)).json()
    assert first["status"] == "running" and first["mode"] == "v2_async"
    assert [(r.portfolio_id, r.as_of, r.reason) for r in requests] == [
        (uuid.UUID(pid), as_of, "onboarding")]
    assert status["overall_progress"]["current_phase"] == "phase_3"
    assert status["phases"][1] | {"status": "completed"} == status["phases"][1]
    assert status["current_phase_progress"] == {"current": 0, "total": 1, "unit": "snapshots"}
    log = [line["message"] for line in status["activity_log"]]
    assert any(line.startswith("YYNEW is ready:") for line in log)
    assert any(line.startswith(f"Requested the first snapshot for {as_of}") for line in log)
    assert provider.calls_for("ZZNEW") == 1 and provider.calls_for("YYNEW") == 1
    async with session_scope(settings.database_url) as session:
        universe = (await session.execute(text(
            "SELECT symbol, added_by FROM symbol_universe WHERE added_by = 'onboarding' "
            "ORDER BY symbol"))).all()
        betas = (await session.execute(text(
            "SELECT count(DISTINCT factor_name) FROM symbol_factor_exposures "
            "WHERE symbol = 'ZZNEW' AND calculation_date = "
            "(SELECT max(date) FROM market_data_cache WHERE symbol = 'ZZNEW')"))).scalar_one()
        prices = (await session.execute(text(
            "SELECT count(*) FROM market_data_cache WHERE symbol = 'ZZNEW'"))).scalar_one()
        profile = (await session.execute(text(
            "SELECT count(*) FROM company_profiles WHERE symbol = 'ZZNEW'"))).scalar_one()
        jobs = (await session.execute(text(
            "SELECT job_key, status FROM batch_run_history WHERE job_type = :t ORDER BY job_key"),
            {"t": JOB_TYPE})).all()
    assert [tuple(r) for r in universe] == [("YYNEW", "onboarding"), ("ZZNEW", "onboarding")]
    assert betas == 12 and prices > 240 and profile == 1
    assert [tuple(j) for j in jobs] == [("YYNEW", "completed"), ("ZZNEW", "completed")]


async def test_upload_with_unknown_symbols_runs_then_completes(settings, ctx):
    headers = await token_for(settings.database_url, "alice")
    as_of = await seed_known_symbols(settings.database_url, ["AAPL", "MSFT"])
    provider = CountingProvider(get_provider(settings), delay_for=["ZZSLOW"], delay=0.5)
    async with api_client(settings) as client, onboarding_running(ctx, provider):
        created = await client.post(UPLOAD, headers=headers, files={"file": (
            "p.csv", csv_bytes(*stock_rows(["AAPL", "MSFT", "ZZSLOW"])))}, data={"name": "n"})
        pid = created.json()["portfolio_id"]
        seen = await poll_status(client, headers, pid, ("completed", "partial", "failed"),
                                 recorded=True)
        exposures = (await client.get(f"/api/v1/portfolios/{pid}/factor-exposures",
                                      headers=headers)).json()
        positions = (await client.get(f"/api/v1/portfolios/{pid}/positions",
                                      headers=headers)).json()
    assert seen[0]["status"] == "running" and seen[0]["mode"] == "v2_async"
    assert seen[0]["overall_progress"]["percent_complete"] < 100
    final = seen[-1]
    assert (final["status"], final["snapshot_date"]) == ("completed", as_of.isoformat())
    assert final["overall_progress"] == {
        "current_phase": "phase_3", "current_phase_name": "Compute the first portfolio snapshot",
        "phases_completed": 3, "phases_total": 3, "percent_complete": 100.0}
    assert [p["status"] for p in final["phases"]] == ["completed"] * 3
    assert final["activity_log"][-1]["message"] == (
        f"First snapshot for {as_of} is ready: onboarding completed.")
    assert "Fetching a year of prices, the profile and factor betas of ZZSLOW." in [
        line["message"] for line in final["activity_log"]]
    percents = [s["overall_progress"]["percent_complete"] for s in seen]
    assert percents == sorted(percents)
    assert exposures["calculation_date"] == as_of.isoformat()
    assert {f["factor"] for f in exposures["factors"]} >= {"market", "interest_rate"}
    assert all(p["valuation_date"] == as_of.isoformat() for p in positions)


async def test_two_users_same_new_symbol_one_fetch(settings, ctx):
    alice = await token_for(settings.database_url, "alice")
    bob = await token_for(settings.database_url, "bob")
    await seed_known_symbols(settings.database_url, [])
    provider = CountingProvider(get_provider(settings), delay_for=["ZZSHR"], delay=1.0)
    async with api_client(settings) as client, onboarding_running(ctx, provider, workers=3):
        uploads = await asyncio.gather(*[
            client.post(UPLOAD, headers=h, files={"file": ("p.csv", csv_bytes(
                *stock_rows(["ZZSHR", own])))}, data={"name": "shared"})
            for h, own in ((alice, "ZZALC"), (bob, "ZZBOB"))])
        pids = [(u.json()["portfolio_id"], h) for u, h in zip(uploads, (alice, bob), strict=True)]
        finals = [(await poll_status(client, h, p, ("completed", "partial", "failed")))[-1]
                  for p, h in pids]
        assert [f["status"] for f in finals] == ["completed", "completed"]
        # A late third upload of the now-known symbol needs no fetch at all.
        late = await client.post(UPLOAD, headers=alice, files={"file": (
            "p.csv", csv_bytes(*stock_rows(["ZZSHR"])))}, data={"name": "late"})
    assert late.json()["mode"] == "v2_instant", late.json()
    assert late.json()["symbols_queued"] == 0
    assert provider.calls_for("ZZSHR") == 1
    assert provider.calls_for("ZZALC") == 1 and provider.calls_for("ZZBOB") == 1


async def _snapshot_requested(database_url: str, pids: list[str]) -> bool:
    async with session_scope(database_url) as session:
        n = (await session.execute(text(
            "SELECT count(*) FROM portfolio_onboarding WHERE snapshot_requested_at IS NOT NULL "
            "AND portfolio_id = ANY(CAST(:ids AS uuid[]))"), {"ids": pids})).scalar_one()
    return n == len(pids)


async def test_failed_symbol_gives_partial_with_the_symbol_named(settings, ctx):
    headers = await token_for(settings.database_url, "alice")
    await seed_known_symbols(settings.database_url, ["AAPL"])
    provider = CountingProvider(get_provider(settings))
    async with api_client(settings) as client, onboarding_running(ctx, provider):
        created = await client.post(UPLOAD, headers=headers, files={"file": (
            "p.csv", csv_bytes(*stock_rows(["AAPL", "HZNP"])))}, data={"name": "delisted"})
        pid = created.json()["portfolio_id"]
        status = (await poll_status(client, headers, pid, ("completed", "partial", "failed")))[-1]
        snapshots = (await client.get(f"/api/v1/portfolios/{pid}/snapshots",
                                      headers=headers)).json()
    assert status["status"] == "partial" and status["failed_symbols"] == ["HZNP"]
    assert [s["snapshot_date"] for s in snapshots] == [status["snapshot_date"]]
    messages = [(line["level"], line["message"]) for line in status["activity_log"]]
    assert any(level == "warning" and m.startswith("HZNP could not be fetched: no data")
               for level, m in messages)
    assert any("without 1 symbol(s) that could not be fetched: HZNP" in m for _, m in messages)


async def test_snapshot_is_requested_once_however_many_checks_race(settings):
    await seed_known_symbols(settings.database_url, ["AAPL"], days=10)
    async with session_scope(settings.database_url) as session:
        user = (await session.execute(text(
            "INSERT INTO users (id, username) VALUES (gen_random_uuid(), 'u') RETURNING id"))
        ).scalar_one()
        from libs.common.portfolio_csv import parse_portfolio_csv
        parsed = parse_portfolio_csv(csv_bytes(*stock_rows(["AAPL", "ZZRCE"])))
        stored = await store.store_upload(
            session, user_id=user, name="race", positions=parsed.positions,
            data_symbols=["AAPL", "ZZRCE"], equity_balance=parsed.positions[0].entry_value,
            requested_by="u", retry_failed_after_seconds=3600)
        await session.execute(text("UPDATE symbol_onboarding SET status = 'ready'"))

    async def check(scope: dict) -> list[store.SnapshotRequest]:
        async with session_scope(settings.database_url) as session:
            return await store.request_snapshot_if_ready(
                session, fallback_as_of=dt.date(2025, 1, 2), **scope)

    scopes = [{"portfolio_id": stored.portfolio_id}, {"symbol": "ZZRCE"}, {}] * 6
    results = await asyncio.gather(*[check(s) for s in scopes])
    assert sum(len(r) for r in results) == 1


async def test_reconciler_republishes_a_request_lost_before_publish(settings, ctx):
    """An upload whose process died between commit and publish still onboards."""
    await seed_known_symbols(settings.database_url, [], days=10)
    async with session_scope(settings.database_url) as session:
        user = (await session.execute(text(
            "INSERT INTO users (id, username) VALUES (gen_random_uuid(), 'u') RETURNING id"))
        ).scalar_one()
        from libs.common.portfolio_csv import parse_portfolio_csv
        parsed = parse_portfolio_csv(csv_bytes(*stock_rows(["ZZLST"])))
        stored = await store.store_upload(
            session, user_id=user, name="lost", positions=parsed.positions,
            data_symbols=["ZZLST"], equity_balance=parsed.positions[0].entry_value,
            requested_by="u", retry_failed_after_seconds=3600)
    provider = CountingProvider(get_provider(settings))
    async with onboarding_running(ctx, provider, refresh=False) as coordinator:
        await asyncio.sleep(0.5)
        assert provider.calls_for("ZZLST") == 0  # nothing was ever published
        await coordinator.reconcile()
        await wait_for(lambda: _snapshot_requested(settings.database_url,
                                                   [str(stored.portfolio_id)]))
        await wait_for(lambda: refresh_requests(ctx))
        await coordinator.reconcile()  # repeating it publishes nothing new
    assert provider.calls_for("ZZLST") == 1
    assert len(await refresh_requests(ctx)) == 1


async def test_dead_lettered_first_snapshot_fails_the_onboarding(settings, ctx):
    headers = await token_for(settings.database_url, "alice")
    as_of = await seed_known_symbols(settings.database_url, ["AAPL"], days=10)
    async with api_client(settings) as client:  # no snapshot maker, no refresh service
        created = await client.post(UPLOAD, headers=headers, files={"file": (
            "p.csv", csv_bytes(*stock_rows(["AAPL"])))}, data={"name": "doomed"})
        pid = created.json()["portfolio_id"]
        assert created.json()["status"] == "running"
        # What the bus does after MaxDeliver failed deliveries of the refresh request: the
        # dead letter is keyed by the job key the handler works under (portfolio:date).
        request = PortfolioRefreshRequested(portfolio_id=uuid.UUID(pid), as_of=as_of)
        await ctx.jobs.record_dead_letter(JOB_REQUEST, f"{pid}:{as_of.isoformat()}",
                                          "ValueError: no prices",
                                          request.model_dump_json().encode(), 3)
        status_url = f"/api/v1/onboarding/status/{pid}"
        derived = (await client.get(status_url, headers=headers)).json()
        # the GET only reads: the row is still running until the coordinator records it
        assert await onboarding_row_status(settings.database_url, pid) == "running"
        coordinator = OnboardingCoordinator(sql_unit_of_work(settings.database_url), ctx.publish)
        assert await coordinator.record_outcomes() == 1
        assert await coordinator.record_outcomes() == 0  # idempotent
        status = (await client.get(status_url, headers=headers)).json()
    for document in (derived, status):
        assert document["status"] == "failed"
        assert document["error"] == "the first snapshot could not be made: ValueError: no prices"
        assert [p["status"] for p in document["phases"]] == ["completed", "completed", "failed"]
    assert derived["finished_at"] is None and status["finished_at"] is not None
    assert await onboarding_row_status(settings.database_url, pid) == "failed"
    assert status["activity_log"][-1]["level"] == "error"


async def test_a_dead_letter_under_the_legacy_message_id_key_fails_the_onboarding(settings, ctx):
    """Dead letters recorded before they were keyed by job carry the request's message id,
    `refresh:<portfolio>:<date>`; the coordinator finds those too."""
    headers = await token_for(settings.database_url, "alice")
    as_of = await seed_known_symbols(settings.database_url, ["AAPL"], days=10)
    async with api_client(settings) as client:
        created = await client.post(UPLOAD, headers=headers, files={"file": (
            "p.csv", csv_bytes(*stock_rows(["AAPL"])))}, data={"name": "doomed"})
    pid = created.json()["portfolio_id"]
    request = PortfolioRefreshRequested(portfolio_id=uuid.UUID(pid), as_of=as_of)
    assert request.message_id() == f"refresh:{pid}:{as_of.isoformat()}"
    await ctx.jobs.record_dead_letter(JOB_REQUEST, f"refresh:{pid}:{as_of.isoformat()}",
                                      "ValueError: no prices",
                                      request.model_dump_json().encode(), 3)
    # The status API sees it at once (before the coordinator records the outcome).
    async with api_client(settings) as client:
        status = await client.get(f"/api/v1/onboarding/status/{pid}", headers=headers)
    assert status.json()["status"] == "failed", status.json()
    assert "no prices" in str(status.json()), status.json()
    coordinator = OnboardingCoordinator(sql_unit_of_work(settings.database_url), ctx.publish)
    assert await coordinator.record_outcomes() == 1
    assert await onboarding_row_status(settings.database_url, pid) == "failed"


async def onboarding_row_status(database_url: str, portfolio_id: str) -> str:
    async with session_scope(database_url) as session:
        return (await session.execute(text(
            "SELECT status FROM portfolio_onboarding WHERE portfolio_id = :p"),
            {"p": uuid.UUID(portfolio_id)})).scalar_one()


class FailingOnceProvider(CountingProvider):
    """The real provider, except that the first price call raises like a network error."""

    async def fetch_prices(self, symbols, start, end):
        if not self.price_calls:
            self.price_calls.append(tuple(symbols))
            raise ConnectionError("provider unreachable")
        return await super().fetch_prices(symbols, start, end)


async def test_transient_provider_error_is_retried(settings, ctx):
    headers = await token_for(settings.database_url, "alice")
    await seed_known_symbols(settings.database_url, [], days=10)
    provider = FailingOnceProvider(get_provider(settings))
    async with api_client(settings) as client, onboarding_running(ctx, provider):
        created = await client.post(UPLOAD, headers=headers, files={"file": (
            "p.csv", csv_bytes(*stock_rows(["ZZRTY"])))}, data={"name": "retry"})
        pid = created.json()["portfolio_id"]
        final = (await poll_status(client, headers, pid, ("completed", "partial", "failed")))[-1]
    assert final["status"] == "completed" and provider.calls_for("ZZRTY") == 2
    async with session_scope(settings.database_url) as session:
        jobs = (await session.execute(text(
            "SELECT status, error FROM batch_run_history WHERE job_type = :t "
            "ORDER BY started_at"), {"t": JOB_TYPE})).all()
    assert [j.status for j in jobs] == ["failed", "completed"]
    assert jobs[0].error == "ConnectionError: provider unreachable (will retry)"


async def test_reconciler_republishes_only_requests_that_may_be_lost(settings):
    tracker = JobTracker(settings.database_url)
    async with session_scope(settings.database_url) as session:
        await session.execute(text(
            "INSERT INTO symbol_onboarding (symbol, status, requested_at) VALUES "
            "('FRESH', 'pending', now()), ('OLD', 'pending', now() - interval '2 minutes'), "
            "('LIVE', 'running', now()), ('ORPHAN', 'running', now()), "
            "('DONE', 'ready', now() - interval '1 hour')"))
    await tracker.start(JOB_TYPE, "LIVE")
    async with session_scope(settings.database_url) as session:
        owed = await store.unsettled_symbols(session, min_age_seconds=60,
                                             stale_after_seconds=120)
    assert sorted(owed) == ["OLD", "ORPHAN"]
