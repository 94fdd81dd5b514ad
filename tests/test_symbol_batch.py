"""symbol_batch on real NATS JetStream and PostgreSQL (per-test database and bus prefix)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from libs.common import bootstrap, bus, calendar
from libs.common.db import asyncpg_dsn
from libs.common.events import BatchNightlyRequested, SymbolBatchCompleted
from libs.common.factors import ALL_FACTORS, FACTOR_ETFS
from libs.common.market_data.sample import SampleProvider
from libs.common.service import ServiceContext
from services.symbol_batch.handlers import (
    SymbolBatch,
    build_universe,
    resolve_target,
)
from services.symbol_batch.store import JOB_TYPE
from tests.polling import eventually as wait_for
from tests.processes import ServiceProcess

D = dt.date
UNIVERSE = ["AAPL", "MSFT", "NVDA", "KO", "BND", "PRIVATE_FUND_A", "SPAXX", "CORP_BOND_2025"]
PUBLIC = ["AAPL", "MSFT", "NVDA", "KO", "BND"]


class RecordingProvider(SampleProvider):
    """The real sample provider, recording what it was asked (to prove what never reaches it)."""

    def __init__(self) -> None:
        super().__init__()
        self.price_calls: list[tuple[list[str], dt.date, dt.date]] = []
        self.asked: set[str] = set()

    async def fetch_prices(self, symbols, start, end):
        self.price_calls.append((list(symbols), start, end))
        self.asked.update(symbols)
        return await super().fetch_prices(symbols, start, end)

    async def fetch_profiles(self, symbols, as_of):
        self.asked.update(symbols)
        return await super().fetch_profiles(symbols, as_of)

    async def fetch_fundamentals(self, symbols, as_of):
        self.asked.update(symbols)
        return await super().fetch_fundamentals(symbols, as_of)


async def sql(url: str, query: str, *args):
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


async def seed_universe(url: str, symbols: Sequence[str], active: bool = True) -> None:
    await sql(
        url,
        "INSERT INTO symbol_universe (symbol, added_by, is_active) "
        "SELECT s, 'test', $2 FROM unnest($1::text[]) s ON CONFLICT (symbol) DO NOTHING",
        list(symbols),
        active,
    )


async def set_watermark(url: str, day: dt.date) -> None:
    await sql(
        url,
        "INSERT INTO symbol_batch_dates (batch_date, status, symbols_total) VALUES ($1, 'completed', 0)",
        day,
    )


async def batch_dates(url: str) -> list[dict]:
    rows = await sql(
        url, "SELECT * FROM symbol_batch_dates WHERE run_id IS NOT NULL ORDER BY batch_date"
    )
    return [_decoded(r) for r in rows]


def _decoded(row) -> dict:
    """asyncpg hands jsonb over as text."""
    return {
        k: json.loads(v) if k in JSON_COLUMNS and isinstance(v, str) else v
        for k, v in dict(row).items()
    }


JSON_COLUMNS = {"failures", "phases", "result"}


async def completed_events(ctx: ServiceContext) -> list[SymbolBatchCompleted]:
    """Every symbol.batch.completed message in the events stream, in stream order."""
    sub = await ctx.js.pull_subscribe(
        ctx.topology.subject(SymbolBatchCompleted.subject),
        stream=ctx.topology.events_stream,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    out = []
    try:
        while True:
            try:
                msgs = await sub.fetch(100, timeout=0.5)
            except Exception:
                break
            for msg in msgs:
                out.append(SymbolBatchCompleted.model_validate_json(msg.data))
                await msg.ack()
    finally:
        await sub.unsubscribe()
    return out


@contextlib.asynccontextmanager
async def consumers(ctx: ServiceContext, *batches: SymbolBatch) -> AsyncIterator[None]:
    """The service's consume loop in-process: one loop per SymbolBatch (replicas)."""
    [route] = bootstrap.routes_of("symbol_batch")
    spec = bootstrap.consumer_spec(route, ctx.settings)
    await bus.ensure_consumer(ctx.js, ctx.topology, spec)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(
            bus.consume(ctx.js, ctx.topology, spec, b.handle, stop, dead_letter=ctx.dead_letter)
        )
        for b in batches
    ]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def jobs_of(url: str) -> list[dict]:
    rows = await sql(
        url,
        "SELECT job_key, status, attempts, phases, result, progress_current, progress_total "
        "FROM batch_run_history WHERE job_type = $1 ORDER BY started_at",
        JOB_TYPE,
    )
    return [_decoded(r) for r in rows]


# --- pure parts -------------------------------------------------------------------------


def test_universe_adds_factor_etfs_and_keeps_private_symbols_out():
    universe = build_universe([(s, None) for s in UNIVERSE] + [("BLACKSTONE", "PRIVATE")])
    assert set(universe.symbols) == set(PUBLIC) | set(FACTOR_ETFS)
    assert set(universe.skipped) == {"PRIVATE_FUND_A", "SPAXX", "CORP_BOND_2025", "BLACKSTONE"}


def test_target_resolution_caps_at_the_effective_date():
    now = dt.datetime(2025, 12, 2, 15, 0, tzinfo=dt.UTC)  # Tuesday 10:00 ET: Monday is final
    settle = dt.timedelta(hours=1)
    assert resolve_target(None, now, settle) == D(2025, 12, 1)
    assert resolve_target(D(2025, 11, 29), now, settle) == D(2025, 11, 28)  # Saturday
    assert resolve_target(D(2025, 12, 5), now, settle) == D(2025, 12, 1)  # not final yet


# --- on the real servers ----------------------------------------------------------------


async def test_first_run_processes_the_target_date_only(ctx, settings):
    url = settings.database_url
    await seed_universe(url, UNIVERSE)
    await seed_universe(url, ["KHC"], active=False)
    provider = RecordingProvider()
    async with consumers(ctx, SymbolBatch.from_context(ctx, provider)):
        await ctx.publish(BatchNightlyRequested(target_date=D(2025, 11, 26)))
        await wait_for(lambda: batch_dates(url), what="first batch date")
        await wait_for(lambda: completed_events(ctx), what="event")
    dates = await batch_dates(url)
    assert [(r["batch_date"], r["status"], r["symbols_failed"]) for r in dates] == [
        (D(2025, 11, 26), "completed", 0)
    ]
    assert dates[0]["symbols_total"] == len(PUBLIC) + len(FACTOR_ETFS)
    exposures = await sql(
        url, "SELECT symbol, count(*) AS n FROM symbol_factor_exposures GROUP BY symbol"
    )
    assert {r["symbol"]: r["n"] for r in exposures} == {
        s: len(ALL_FACTORS) for s in PUBLIC + list(FACTOR_ETFS)
    }
    spy = await sql(
        url,
        "SELECT beta, r2, quality FROM symbol_factor_exposures "
        "WHERE symbol = 'SPY' AND factor_name = 'market'",
    )
    assert spy[0]["beta"] == pytest.approx(1.0, abs=1e-12) and spy[0]["r2"] == pytest.approx(1.0)
    # Private, cash and synthetic symbols never reached the provider; inactive ones dropped out.
    assert provider.asked == set(PUBLIC) | set(FACTOR_ETFS)
    assert len(provider.price_calls) == 1
    events = await completed_events(ctx)
    assert [(e.batch_date, e.status) for e in events] == [(D(2025, 11, 26), "completed")]
    jobs = await jobs_of(url)
    assert [(j["job_key"], j["status"]) for j in jobs] == [("2025-11-26", "completed")]
    assert [p["name"] for p in jobs[0]["phases"]] == [
        "profiles",
        "prices",
        "fundamentals",
        "factors",
    ]
    assert all(p["status"] == "completed" for p in jobs[0]["phases"])
    profiles = await sql(url, "SELECT count(*) AS n FROM company_profiles")
    fundamentals = await sql(url, "SELECT count(*) AS n FROM fundamentals")
    assert profiles[0]["n"] == len(PUBLIC) + len(FACTOR_ETFS) and fundamentals[0]["n"] > 0
    definitions = await sql(url, "SELECT count(*) AS n FROM factor_definitions")
    assert definitions[0]["n"] == len(ALL_FACTORS)


async def test_missed_nights_are_backfilled_once_skipping_weekends_and_holidays(ctx, settings):
    url = settings.database_url
    await seed_universe(url, UNIVERSE)
    await set_watermark(url, D(2025, 11, 25))
    provider = RecordingProvider()
    expected = [D(2025, 11, 26), D(2025, 11, 28), D(2025, 12, 1)]  # Thanksgiving, weekend
    async with consumers(ctx, SymbolBatch.from_context(ctx, provider)):
        await ctx.publish(BatchNightlyRequested(target_date=D(2025, 12, 1)))
        await wait_for(lambda: _has_events(ctx, 3), what="three events")
        # The same trigger again (another cron host: dropped by Nats-Msg-Id), and a distinct
        # message for the same night (passes the dedupe window: the database decides).
        assert not await ctx.publish(BatchNightlyRequested(target_date=D(2025, 12, 1)))
        assert await ctx.publish(BatchNightlyRequested(target_date=D(2025, 12, 1), rerun_token="x"))
        await asyncio.sleep(2.0)
    assert [r["batch_date"] for r in await batch_dates(url)] == expected
    # One provider call for the chunk, covering every date plus the factor lookback.
    assert len(provider.price_calls) == 1
    _, start, end = provider.price_calls[0]
    assert end == D(2025, 12, 1) and start < D(2025, 11, 26) - dt.timedelta(days=180)
    events = await completed_events(ctx)
    assert [e.batch_date for e in events] == expected
    jobs = await jobs_of(url)
    assert [(j["job_key"], j["status"]) for j in jobs] == [("2025-12-01", "completed")]
    duplicates = await sql(
        url,
        "SELECT count(*) - count(DISTINCT (symbol, factor_name, calculation_date)) AS n, "
        "count(DISTINCT calculation_date) AS d FROM symbol_factor_exposures",
    )
    assert duplicates[0]["n"] == 0 and duplicates[0]["d"] == 3


async def _has_events(ctx: ServiceContext, n: int) -> bool:
    return len(await completed_events(ctx)) >= n


async def test_one_failing_symbol_makes_the_run_partial_with_its_reason(ctx, settings):
    url = settings.database_url
    await seed_universe(url, [*UNIVERSE, "HZNP"])  # acquired in 2023: no bars in 2025
    await set_watermark(url, D(2025, 11, 26))
    async with consumers(ctx, SymbolBatch.from_context(ctx, SampleProvider())):
        await ctx.publish(BatchNightlyRequested(target_date=D(2025, 12, 1)))
        await wait_for(lambda: _has_events(ctx, 2), what="two events")
    dates = await batch_dates(url)
    assert [(r["batch_date"], r["status"], r["symbols_failed"]) for r in dates] == [
        (D(2025, 11, 28), "partial", 1),
        (D(2025, 12, 1), "partial", 1),
    ]
    assert dates[0]["failures"] == {"HZNP": "prices: no data: delisted after 2023-10-05"}
    events = await completed_events(ctx)
    assert {(e.status, e.symbols_failed) for e in events} == {("partial", 1)}
    jobs = await jobs_of(url)
    assert jobs[0]["status"] == "partial"
    others = await sql(
        url,
        "SELECT count(DISTINCT symbol) AS n FROM symbol_factor_exposures "
        "WHERE calculation_date = '2025-12-01'",
    )
    assert others[0]["n"] == len(PUBLIC) + len(FACTOR_ETFS)


async def test_two_replicas_and_two_triggers_for_one_night_make_one_run(ctx, settings):
    url = settings.database_url
    await seed_universe(url, UNIVERSE)
    await set_watermark(url, D(2025, 11, 20))
    a, b = RecordingProvider(), RecordingProvider()
    async with consumers(ctx, SymbolBatch.from_context(ctx, a),
                         SymbolBatch.from_context(ctx, b)):
        await asyncio.gather(
            ctx.publish(
                BatchNightlyRequested(
                    target_date=D(2025, 11, 26), requested_by="cron-a", rerun_token="a"
                )
            ),
            ctx.publish(
                BatchNightlyRequested(
                    target_date=D(2025, 11, 26), requested_by="cron-b", rerun_token="b"
                )
            ),
        )
        await wait_for(lambda: _has_events(ctx, 4), what="four events")
        await asyncio.sleep(2.0)
    jobs = await jobs_of(url)
    assert [(j["job_key"], j["status"]) for j in jobs] == [("2025-11-26", "completed")]
    assert len(a.price_calls) + len(b.price_calls) == 1
    events = await completed_events(ctx)
    assert [e.batch_date for e in events] == [
        D(2025, 11, 21),
        D(2025, 11, 24),
        D(2025, 11, 25),
        D(2025, 11, 26),
    ]


async def test_kill_during_factor_phase_then_restart_completes_without_duplicates(
    ctx, settings, service_env
):
    url = settings.database_url
    synthetic = [f"Z{i:04d}" for i in range(600)]
    await seed_universe(url, [*PUBLIC, *synthetic])
    watermark, target = D(2025, 8, 14), D(2025, 11, 11)
    await set_watermark(url, watermark)
    # Enough dates that phase 3 lasts seconds, so the kill lands inside it.
    expected_dates = len(calendar.sessions_between(D(2025, 8, 15), target))
    env = dict(service_env, SIGMABATCH_MAX_BACKFILL_DAYS=str(expected_dates + 10))

    async def in_factor_phase():
        rows = await sql(
            url,
            "SELECT (SELECT current_phase FROM batch_run_history WHERE job_type = $1 "
            "ORDER BY started_at DESC LIMIT 1) AS phase, "
            "(SELECT count(*) FROM symbol_batch_dates WHERE run_id IS NOT NULL) AS done",
            JOB_TYPE,
        )
        return rows[0]["phase"] == "factors" and rows[0]["done"] >= 1

    first = ServiceProcess("symbol_batch", env).start()
    try:
        await ctx.publish(BatchNightlyRequested(target_date=target))
        await wait_for(in_factor_phase, timeout=120, what="factor phase")
        first.kill()  # SIGKILL: no cleanup, message unacked, job row left 'running'
    finally:
        first.kill()
    done_at_kill = len(await batch_dates(url))
    assert 1 <= done_at_kill < expected_dates, "the kill must land inside phase 3"
    stuck = await jobs_of(url)
    assert [j["status"] for j in stuck] == ["running"]

    second = ServiceProcess("symbol_batch", env, replica=1).start()
    try:

        async def all_done():
            return len(await batch_dates(url)) == expected_dates and (
                (await jobs_of(url))[0]["status"] == "completed"
            )

        await wait_for(all_done, timeout=120, what="resumed run")
    finally:
        second.terminate()
    jobs = await jobs_of(url)
    assert len(jobs) == 1 and jobs[0]["attempts"] == 2  # the same job, taken over
    counts = await sql(
        url,
        "SELECT calculation_date, count(*) AS n FROM symbol_factor_exposures "
        "GROUP BY calculation_date ORDER BY 1",
    )
    assert len(counts) == expected_dates
    assert {r["n"] for r in counts} == {
        (len(PUBLIC) + len(synthetic) + len(FACTOR_ETFS)) * len(ALL_FACTORS)
    }
    events = await completed_events(ctx)
    assert len(events) == expected_dates
    assert [e.batch_date for e in events] == sorted(e.batch_date for e in events)
    prices = await sql(
        url, "SELECT count(*) - count(DISTINCT (symbol, date)) AS n FROM market_data_cache"
    )
    assert prices[0]["n"] == 0


async def test_factor_definitions_seed_is_idempotent_and_converges(database_url):
    from libs.common.db import dispose_engines, session_scope
    from libs.common.factor_definitions import factor_definitions, seed_factor_definitions

    await sql(
        database_url,
        "INSERT INTO factor_definitions (name, display_name, kind, method, regressor, "
        "window_days, min_obs) VALUES ('market', 'stale name', 'market', 'ols', 'SPY', 60, 20)",
    )
    try:
        for _ in range(2):
            async with session_scope(database_url) as session:
                await seed_factor_definitions(session)
    finally:
        await dispose_engines()
    rows = await sql(database_url, "SELECT * FROM factor_definitions ORDER BY sort_order")
    expected = factor_definitions()
    assert [r["name"] for r in rows] == [d.name for d in expected] == list(ALL_FACTORS)
    market = next(r for r in rows if r["name"] == "market")
    assert (market["display_name"], market["window_days"], market["min_obs"]) == (
        "Market Beta",
        90,
        30,
    )
    spread = next(r for r in rows if r["name"] == "growth_value_spread")
    assert (spread["method"], spread["regressor"], spread["window_days"]) == ("ols", "VUG-VTV", 180)


# --- issue 12 finding 7: reruns restate, partial dates are retried, no silent holes ----------


class FlakyProvider(RecordingProvider):
    """The sample provider, with one symbol failing in its first price call only."""

    def __init__(self, symbol: str) -> None:
        super().__init__()
        self.symbol = symbol

    async def fetch_prices(self, symbols, start, end):
        result = await super().fetch_prices(symbols, start, end)
        if len(self.price_calls) == 1 and self.symbol in symbols:
            result.bars = result.bars[result.bars["symbol"] != self.symbol]
            result.failures[self.symbol] = "upstream 503"
        return result


async def test_rerun_refetches_the_date_and_announces_a_restatement(ctx, settings):
    url = settings.database_url
    await seed_universe(url, UNIVERSE)
    await set_watermark(url, D(2025, 11, 25))
    provider = RecordingProvider()
    async with consumers(ctx, SymbolBatch.from_context(ctx, provider)):
        await ctx.publish(BatchNightlyRequested(target_date=D(2025, 12, 1)))
        await wait_for(lambda: _has_events(ctx, 3), what="three events")
        first = {r["batch_date"]: r["run_id"] for r in await batch_dates(url)}
        # What `sigmabatch trigger nightly --date 2025-11-28 --rerun` publishes.
        await ctx.publish(BatchNightlyRequested(target_date=D(2025, 11, 28), rerun=True,
                                                rerun_token="op1"))
        await wait_for(lambda: _has_events(ctx, 4), what="the restatement event")
    assert len(provider.price_calls) == 2 and provider.price_calls[1][2] == D(2025, 11, 28)
    jobs = await jobs_of(url)
    assert [(j["job_key"], j["status"]) for j in jobs] == [
        ("2025-12-01", "completed"), ("2025-11-28:rerun:op1", "completed")]
    after = {r["batch_date"]: r["run_id"] for r in await batch_dates(url)}
    assert after[D(2025, 11, 28)] != first[D(2025, 11, 28)]  # recorded by the rerun
    assert after[D(2025, 12, 1)] == first[D(2025, 12, 1)]
    restated = [e for e in await completed_events(ctx) if e.restate]
    assert [(e.batch_date, e.run_id) for e in restated] == [
        (D(2025, 11, 28), str(after[D(2025, 11, 28)]))]


async def test_partial_date_is_retried_by_the_next_night_and_restated(ctx, settings):
    url = settings.database_url
    await seed_universe(url, UNIVERSE)
    await set_watermark(url, D(2025, 11, 26))
    provider = FlakyProvider("MSFT")
    async with consumers(ctx, SymbolBatch.from_context(ctx, provider)):
        await ctx.publish(BatchNightlyRequested(target_date=D(2025, 11, 28)))
        await wait_for(lambda: _has_events(ctx, 1), what="the first night")
        assert [(r["batch_date"], r["status"]) for r in await batch_dates(url)][-1] == (
            D(2025, 11, 28), "partial")
        await ctx.publish(BatchNightlyRequested(target_date=D(2025, 12, 1)))
        await wait_for(lambda: _has_events(ctx, 3), what="the second night")
    dates = await batch_dates(url)
    assert [(r["batch_date"], r["status"]) for r in dates if r["symbols_total"]] == [
        (D(2025, 11, 28), "completed"), (D(2025, 12, 1), "completed")]
    msft = await sql(url, "SELECT count(*) AS n FROM symbol_factor_exposures "
                          "WHERE symbol = 'MSFT' AND calculation_date = '2025-11-28'")
    assert msft[0]["n"] == len(ALL_FACTORS)
    events = await completed_events(ctx)
    assert [(e.batch_date, e.status, e.restate) for e in events] == [
        (D(2025, 11, 28), "partial", False),
        (D(2025, 11, 28), "completed", True),
        (D(2025, 12, 1), "completed", False),
    ]


async def test_sessions_beyond_the_cap_are_caught_up_oldest_first(ctx, settings):
    url = settings.database_url
    await seed_universe(url, UNIVERSE)
    await set_watermark(url, D(2025, 11, 20))
    ctx.settings.max_backfill_days = 2
    async with consumers(ctx, SymbolBatch.from_context(ctx, SampleProvider())):
        await ctx.publish(BatchNightlyRequested(target_date=D(2025, 11, 28)))
        await wait_for(lambda: _has_events(ctx, 2), what="the first run")
        await ctx.publish(BatchNightlyRequested(target_date=D(2025, 11, 28), rerun_token="n2"))
        await wait_for(lambda: _has_events(ctx, 4), what="the second run")
    done = [r["batch_date"] for r in await batch_dates(url)]
    # oldest first, nothing skipped: 21, 24 then 25, 26 (27th: Thanksgiving; 28th next time)
    assert done == [D(2025, 11, 21), D(2025, 11, 24), D(2025, 11, 25), D(2025, 11, 26)]


async def test_sample_universe_adds_synthetic_tickers_priced_and_betaed(ctx, settings):
    """SIGMABATCH_SAMPLE_UNIVERSE=50: the nightly batch seeds SY0001..SY0050 (once, however
    often it runs) and writes prices and betas for every one, labelled synthetic."""
    url = settings.database_url
    settings.sample_universe = 50  # the ctx fixture shares this object
    await seed_universe(url, ["AAPL"])
    synthetic = [f"SY{i:04d}" for i in range(1, 51)]
    async with consumers(ctx, SymbolBatch.from_context(ctx, RecordingProvider())):
        await ctx.publish(BatchNightlyRequested(target_date=D(2025, 11, 26)))
        await wait_for(lambda: completed_events(ctx), what="event")
        await ctx.publish(BatchNightlyRequested(target_date=D(2025, 11, 26), rerun_token="again"))
        await asyncio.sleep(1.0)
    seeded = await sql(
        url, "SELECT symbol, added_by, asset_type FROM symbol_universe WHERE symbol LIKE 'SY0%'"
    )
    assert sorted(r["symbol"] for r in seeded) == synthetic
    assert {(r["added_by"], r["asset_type"]) for r in seeded} == {("sample_universe", "stock")}
    prices = await sql(
        url,
        "SELECT symbol, array_agg(DISTINCT source) AS sources FROM market_data_cache "
        "WHERE symbol LIKE 'SY0%' AND date = '2025-11-26' GROUP BY symbol",
    )
    assert sorted(r["symbol"] for r in prices) == synthetic
    assert {tuple(r["sources"]) for r in prices} == {("sample:synthetic",)}
    betas = await sql(
        url,
        "SELECT symbol, count(*) AS n FROM symbol_factor_exposures "
        "WHERE symbol LIKE 'SY0%' AND calculation_date = '2025-11-26' GROUP BY symbol",
    )
    assert {r["symbol"]: r["n"] for r in betas} == {s: len(ALL_FACTORS) for s in synthetic}
    [done] = await batch_dates(url)
    assert done["symbols_total"] == 1 + len(FACTOR_ETFS) + 50 and done["symbols_failed"] == 0
