"""portfolio_refresh on real PostgreSQL and NATS: slots, fan-out, crash, replicas, fixtures."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from decimal import Decimal

import asyncpg
import nats
import numpy as np
import pandas as pd
import pytest

from libs.common import pnl
from libs.common.db import asyncpg_dsn, dispose_engines, session_scope
from libs.common.events import PortfolioRefreshRequested, SymbolBatchCompleted
from libs.common.factor_definitions import seed_factor_definitions
from libs.common.factors import ALL_FACTORS, FACTOR_ETFS, compute_exposures, daily_returns
from libs.common.market_data.sample import sample_bars
from libs.common.portfolio_csv import parse_portfolio_csv
from libs.common.service import ServiceContext
from libs.common.snapshots.refresh import JOB_CHUNK, refresh_portfolios
from tests.conftest import FIXTURES
from tests.polling import eventually as wait_for
from tests.processes import ServiceProcess

PARAMS = pnl.PricingParams()
DAYS = [d.date() for d in pd.bdate_range("2024-03-01", periods=8)]
SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "EEE", "SPY"]


# --------------------------------------------------------------------------- seeding


async def connect(database_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(asyncpg_dsn(database_url))


async def seed_factor_defs(database_url: str) -> None:
    async with session_scope(database_url) as session:
        await seed_factor_definitions(session)


async def insert_prices(conn: asyncpg.Connection, bars: pd.DataFrame) -> None:
    await conn.copy_records_to_table(
        "market_data_cache",
        columns=["symbol", "date", "close", "adj_close", "source"],
        records=list(zip(bars["symbol"], bars["date"], bars["close"].astype(float),
                         bars["close"].astype(float), ["test"] * len(bars), strict=True)),
    )


async def insert_betas(conn: asyncpg.Connection, betas: pd.DataFrame, day: dt.date) -> None:
    await conn.copy_records_to_table(
        "symbol_factor_exposures",
        columns=["symbol", "factor_name", "calculation_date", "beta", "n_obs", "quality"],
        records=[(s, f, day, float(b), 90, "full")
                 for s, f, b in zip(betas["symbol"], betas["factor"], betas["beta"], strict=True)],
    )


async def insert_user(conn: asyncpg.Connection) -> uuid.UUID:
    user_id = uuid.uuid4()
    await conn.execute("INSERT INTO users (id, username) VALUES ($1, $2)", user_id,
                       f"u{user_id.hex[:8]}")
    return user_id


async def seed_synthetic(database_url: str, n_portfolios: int, *, seed: int = 1) -> list[uuid.UUID]:
    """n portfolios of 5 positions (long, short, option, private, exited) over DAYS."""
    await seed_factor_defs(database_url)
    rng = np.random.default_rng(seed)
    conn = await connect(database_url)
    try:
        user = await insert_user(conn)
        rows = []
        for symbol in SYMBOLS:
            level = 50 + 100 * rng.random()
            for day in DAYS:
                level *= 1 + rng.normal(0, 0.02)
                if symbol == "EEE" and day == DAYS[3]:
                    continue  # a missing quote: stale that day
                rows.append({"symbol": symbol, "date": day, "close": round(level, 4)})
        await insert_prices(conn, pd.DataFrame(rows))
        betas = pd.DataFrame([(s, f, rng.normal(1, 0.3)) for s in SYMBOLS for f in ALL_FACTORS],
                             columns=["symbol", "factor", "beta"])
        await insert_betas(conn, betas, DAYS[0])
        ids = sorted(uuid.uuid4() for _ in range(n_portfolios))
        await conn.copy_records_to_table(
            "portfolios", columns=["id", "user_id", "name", "equity_balance"],
            records=[(p, user, f"p{i}", Decimal(100_000 + i)) for i, p in enumerate(ids)])
        positions = []
        for i, p in enumerate(ids):
            a, b = SYMBOLS[i % 5], SYMBOLS[(i + 2) % 5]
            entry = DAYS[i % 3]
            positions += [
                (uuid.uuid4(), p, a, Decimal(10 + i % 7), Decimal("100"), entry, None, None,
                 "PUBLIC", None, None, None, None),
                (uuid.uuid4(), p, b, Decimal(-5 - i % 3), Decimal("80"), DAYS[0], None, None,
                 "PUBLIC", None, None, None, None),
                (uuid.uuid4(), p, f"SPY_C{100 + i % 20}", Decimal(1 + i % 2), Decimal("4"),
                 DAYS[0], None, None, "OPTIONS", "SPY", Decimal(100 + i % 20),
                 dt.date(2024, 9, 20), "CALL"),
                (uuid.uuid4(), p, "PRIVATE_FUND_A", Decimal(1), Decimal("25000"), DAYS[0], None,
                 None, "PRIVATE", None, None, None, None),
                (uuid.uuid4(), p, "CCC", Decimal(3), Decimal("90"), DAYS[0], DAYS[2 + i % 4],
                 Decimal("95.5"), "PUBLIC", None, None, None, None),
            ]
        await conn.copy_records_to_table(
            "positions",
            columns=["id", "portfolio_id", "symbol", "quantity", "entry_price", "entry_date",
                     "exit_date", "exit_price", "investment_class", "underlying_symbol",
                     "strike_price", "expiration_date", "option_type"],
            records=positions)
        await conn.copy_records_to_table(
            "capital_flows", columns=["id", "portfolio_id", "flow_date", "amount"],
            records=[(uuid.uuid4(), p, DAYS[2], Decimal("1000.50")) for p in ids[::3]])
        await conn.copy_records_to_table(
            "symbol_batch_dates", columns=["batch_date", "status", "symbols_total"],
            records=[(d, "completed", len(SYMBOLS)) for d in DAYS])
        return ids
    finally:
        await conn.close()


DIGEST_QUERIES = {
    "portfolio_snapshots": """
        SELECT portfolio_id, snapshot_date, is_complete, equity, total_value, long_value,
               short_value, gross_exposure, net_exposure, daily_pnl, daily_unrealized_pnl,
               daily_realized_pnl, daily_return, cumulative_pnl, capital_flow, position_count,
               has_stale_prices, stale_symbols, has_model_prices, details
        FROM portfolio_snapshots""",
    "position_snapshots": "SELECT * FROM position_snapshots",
    "factor_exposures": "SELECT * FROM factor_exposures",
    "position_factor_exposures": "SELECT * FROM position_factor_exposures",
}


async def table_digest(database_url: str) -> dict[str, tuple[int, str]]:
    """Row count and md5 of every output table's rows (ids and timestamps excluded)."""
    conn = await connect(database_url)
    try:
        out = {}
        for name, query in DIGEST_QUERIES.items():
            row = await conn.fetchrow(
                f"SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                f"AS h FROM ({query}) t")
            out[name] = (row["n"], row["h"])
        return out
    finally:
        await conn.close()


async def clear_outputs(database_url: str) -> None:
    conn = await connect(database_url)
    try:
        # position_factor_exposures is a view over position_snapshots: it empties with them
        await conn.execute("DELETE FROM factor_exposures; "
                           "DELETE FROM position_snapshots; DELETE FROM portfolio_snapshots")
    finally:
        await conn.close()


async def fetch(database_url: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await connect(database_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def complete_count(database_url: str, day: dt.date) -> int:
    rows = await fetch(database_url, "SELECT count(*) AS n FROM portfolio_snapshots "
                                     "WHERE snapshot_date = $1 AND is_complete", day)
    return rows[0]["n"]


async def publish_raw(ctx: ServiceContext, message, msg_id: str) -> None:
    """Publish with an explicit Nats-Msg-Id: a second delivery of the same business event."""
    await ctx.js.publish(ctx.topology.subject(message.subject), message.model_dump_json().encode(),
                         headers={"Nats-Msg-Id": msg_id})


def batch_event(day: dt.date) -> SymbolBatchCompleted:
    return SymbolBatchCompleted(batch_date=day, status="completed", symbols_total=6, run_id="r1")


# --------------------------------------------------------------------------- in process


async def test_chunk_writes_what_the_pure_library_computes(database_url: str) -> None:
    ids = await seed_synthetic(database_url, 12)
    for day in DAYS[:5]:
        outcomes = await refresh_portfolios(database_url, day, ids, PARAMS)
        assert sum(o.snapshots for o in outcomes) == 12
    rows = await fetch(database_url, "SELECT * FROM portfolio_snapshots ORDER BY portfolio_id, "
                                     "snapshot_date")
    assert len(rows) == 60 and all(r["is_complete"] for r in rows)
    by_portfolio: dict[uuid.UUID, list[asyncpg.Record]] = {}
    for r in rows:
        by_portfolio.setdefault(r["portfolio_id"], []).append(r)
    for series in by_portfolio.values():
        first, *rest = series
        assert first["daily_pnl"] == 0
        # the roll-forward identity, exact in the Numeric columns
        for prev, cur in zip(series, rest, strict=False):
            assert cur["equity"] == prev["equity"] + cur["daily_pnl"] + cur["capital_flow"]
            assert cur["cumulative_pnl"] == prev["cumulative_pnl"] + cur["daily_pnl"]
    # the stale quote of EEE on DAYS[3] is flagged where EEE is held
    stale = await fetch(database_url, "SELECT DISTINCT unnest(stale_symbols) AS s FROM "
                                      "portfolio_snapshots WHERE snapshot_date = $1", DAYS[3])
    assert {r["s"] for r in stale} == {"EEE"}
    # every option is model-priced with its inputs recorded
    models = await fetch(database_url, "SELECT model_inputs FROM position_snapshots "
                                       "WHERE price_source = 'model'")
    assert len(models) == 60
    inputs = json.loads(models[0]["model_inputs"])
    assert inputs["underlying"] == "SPY" and inputs["model"] == "black_scholes"
    # exits realize once, on their exit day
    realized = await fetch(database_url, "SELECT count(*) AS n FROM position_snapshots "
                                         "WHERE price_source = 'exited'")
    assert realized[0]["n"] == sum(1 for i in range(12) if 2 + i % 4 <= 4)
    # exposures: both levels, Σ beta × weight consistent
    check = await fetch(database_url, """
        SELECT f.exposure, sum(p.beta * p.weight) AS s FROM factor_exposures f
        JOIN position_factor_exposures p ON p.portfolio_id = f.portfolio_id
         AND p.calculation_date = f.calculation_date AND p.factor_name = f.factor_name
        GROUP BY f.portfolio_id, f.calculation_date, f.factor_name, f.exposure""")
    assert len(check) == 12 * 5 * len(ALL_FACTORS)
    assert all(abs(r["exposure"] - r["s"]) < 1e-9 for r in check)
    await dispose_engines()


async def test_complete_slot_is_skipped_and_half_slot_redone(database_url: str) -> None:
    ids = await seed_synthetic(database_url, 4)
    await refresh_portfolios(database_url, DAYS[0], ids, PARAMS)
    await refresh_portfolios(database_url, DAYS[1], ids[:2], PARAMS)
    before = await table_digest(database_url)
    # a half slot: claimed, never filled (as another writer could leave it)
    conn = await connect(database_url)
    await conn.execute("INSERT INTO portfolio_snapshots (id, portfolio_id, snapshot_date) "
                       "VALUES ($1, $2, $3)", uuid.uuid4(), ids[2], DAYS[1])
    await conn.close()
    outcomes = await refresh_portfolios(database_url, DAYS[1], ids, PARAMS)
    assert outcomes[-1].snapshots == 2  # ids[2] (redone) and ids[3]; ids[0:2] skipped
    after = await fetch(database_url, "SELECT portfolio_id, is_complete, equity FROM "
                                      "portfolio_snapshots WHERE snapshot_date = $1", DAYS[1])
    assert len(after) == 4 and all(r["is_complete"] and r["equity"] is not None for r in after)
    # repeating changes nothing
    mid = await table_digest(database_url)
    await refresh_portfolios(database_url, DAYS[1], ids, PARAMS)
    assert await table_digest(database_url) == mid
    assert mid["portfolio_snapshots"][0] == before["portfolio_snapshots"][0] + 2
    await dispose_engines()


async def test_missed_dates_are_caught_up_in_order(database_url: str) -> None:
    ids = await seed_synthetic(database_url, 6)
    for day in DAYS[:3]:
        await refresh_portfolios(database_url, day, ids, PARAMS)
    daily = await table_digest(database_url)
    await refresh_portfolios(database_url, DAYS[5], ids, PARAMS)  # DAYS[3], DAYS[4] missed
    dates = await fetch(database_url, "SELECT DISTINCT snapshot_date FROM portfolio_snapshots "
                                      "ORDER BY 1")
    assert [r["snapshot_date"] for r in dates] == DAYS[:6]
    conn = await connect(database_url)
    chained = await conn.fetch("""
        SELECT s.details->>'previous_snapshot_date' AS prev, s.snapshot_date
        FROM portfolio_snapshots s WHERE s.snapshot_date > $1""", DAYS[0])
    await conn.close()
    assert all(dt.date.fromisoformat(r["prev"]) == DAYS[DAYS.index(r["snapshot_date"]) - 1]
               for r in chained)
    # a date with no batch at all is a gap: rolled over from the latest earlier snapshot
    await clear_outputs(database_url)
    conn = await connect(database_url)
    await conn.execute("DELETE FROM symbol_batch_dates WHERE batch_date = $1", DAYS[1])
    await conn.close()
    for day in (DAYS[0], DAYS[2]):
        await refresh_portfolios(database_url, day, ids, PARAMS)
    gap = await fetch(database_url, "SELECT details->>'previous_snapshot_date' AS prev "
                                    "FROM portfolio_snapshots WHERE snapshot_date = $1", DAYS[2])
    assert {r["prev"] for r in gap} == {DAYS[0].isoformat()}
    assert daily["portfolio_snapshots"][0] == 18
    await dispose_engines()


# --------------------------------------------------------------------------- services


@pytest.fixture
def refresh_env(service_env: dict[str, str]) -> dict[str, str]:
    env = dict(service_env)
    env.update(SIGMABATCH_REFRESH_CHUNK_SIZE="25", SIGMABATCH_MAX_DELIVER="20")
    return env


async def completed_events(ctx: ServiceContext) -> list[dict]:
    nc = await nats.connect(ctx.settings.require_nats_url())
    try:
        js = nc.jetstream()
        sub = await js.subscribe(ctx.topology.subject("portfolio.refresh.completed"),
                                 ordered_consumer=True)
        events = []
        try:
            while True:
                msg = await sub.next_msg(timeout=1.0)
                events.append(json.loads(msg.data))
        except (nats.errors.TimeoutError, TimeoutError):
            pass
        return events
    finally:
        await nc.close()


async def test_same_event_twice_changes_nothing(
    ctx: ServiceContext, database_url: str, refresh_env: dict[str, str]
) -> None:
    ids = await seed_synthetic(database_url, 60)
    with ServiceProcess("portfolio_refresh", refresh_env):
        await publish_raw(ctx, batch_event(DAYS[0]), "first")
        await wait_for(lambda: _equals(complete_count(database_url, DAYS[0]), len(ids)))
        await wait_for(lambda: _has_event(ctx, DAYS[0]))
        first = await table_digest(database_url)
        await publish_raw(ctx, batch_event(DAYS[0]), "second")  # redelivered event
        await wait_for(lambda: _plan_jobs_done(database_url, DAYS[0], 2))
        await asyncio.sleep(1.0)
        assert await table_digest(database_url) == first
    chunk_jobs = await fetch(database_url, "SELECT count(*) AS n FROM batch_run_history "
                                           "WHERE job_type = $1", JOB_CHUNK)
    assert chunk_jobs[0]["n"] == 3  # 60 portfolios / 25: the second plan found nothing to do


async def _equals(awaitable, expected) -> bool:
    return (await awaitable) == expected


async def _has_event(ctx: ServiceContext, day: dt.date) -> bool:
    return any(e["batch_date"] == day.isoformat() for e in await completed_events(ctx))


async def _plan_jobs_done(database_url: str, day: dt.date, n: int) -> bool:
    rows = await fetch(database_url, "SELECT count(*) AS n FROM batch_run_history WHERE "
                                     "job_type = 'portfolio_refresh' AND job_key = $1 AND "
                                     "status = 'completed'", day.isoformat())
    return rows[0]["n"] >= n


async def test_kill_mid_chunk_then_restart_equals_clean_run(
    ctx: ServiceContext, database_url: str, refresh_env: dict[str, str]
) -> None:
    ids = await seed_synthetic(database_url, 600)
    for day in DAYS[:2]:
        await refresh_portfolios(database_url, day, ids, PARAMS)
    await dispose_engines()
    target = DAYS[2]
    service = ServiceProcess("portfolio_refresh", refresh_env).start()
    try:
        await publish_raw(ctx, batch_event(target), "kill-test")
        # kill while the date is part done: some chunks committed, others not
        await wait_for(lambda: _between(complete_count(database_url, target), 0, len(ids)),
                       interval=0.05)
        service.kill()
        killed_at = await complete_count(database_url, target)
        assert 0 < killed_at < len(ids)
        incomplete = await fetch(database_url, "SELECT count(*) AS n FROM portfolio_snapshots "
                                               "WHERE NOT is_complete")
        assert incomplete[0]["n"] == 0  # the transaction died with the process
        restarted = ServiceProcess("portfolio_refresh", refresh_env, replica=1).start()
        try:
            await wait_for(lambda: _equals(complete_count(database_url, target), len(ids)),
                           timeout=120)
            await wait_for(lambda: _has_event(ctx, target))
        finally:
            restarted.kill()
    finally:
        service.kill()
    recovered = await table_digest(database_url)
    # the clean run: same data, nothing interrupted
    await clear_outputs(database_url)
    for day in DAYS[:3]:
        await refresh_portfolios(database_url, day, ids, PARAMS)
    await dispose_engines()
    assert await table_digest(database_url) == recovered


async def _between(awaitable, low: int, high: int) -> bool:
    return low < (await awaitable) < high


async def test_two_replicas_share_a_date_and_make_each_snapshot_once(
    ctx: ServiceContext, database_url: str, refresh_env: dict[str, str]
) -> None:
    ids = await seed_synthetic(database_url, 500)
    replicas = [ServiceProcess("portfolio_refresh", refresh_env, replica=i) for i in range(2)]
    for r in replicas:
        r.start()
    try:
        await publish_raw(ctx, batch_event(DAYS[0]), "replicas")
        await wait_for(lambda: _equals(complete_count(database_url, DAYS[0]), len(ids)),
                       timeout=120)
        await wait_for(lambda: _has_event(ctx, DAYS[0]))
    finally:
        for r in replicas:
            r.kill()
    rows = await fetch(database_url, "SELECT portfolio_id, count(*) AS n FROM portfolio_snapshots "
                                     "GROUP BY portfolio_id")
    assert len(rows) == len(ids) and all(r["n"] == 1 for r in rows)
    jobs = await fetch(database_url, "SELECT job_key, status, worker_id, result FROM "
                                     "batch_run_history WHERE job_type = $1", JOB_CHUNK)
    assert len(jobs) == 20 and all(j["status"] == "completed" for j in jobs)
    made = sum(json.loads(j["result"])["snapshots"][DAYS[0].isoformat()] for j in jobs)
    assert made == len(ids)  # no portfolio done twice
    assert len({j["worker_id"] for j in jobs}) == 2  # both replicas took chunks
    events = [e for e in await completed_events(ctx) if e["batch_date"] == DAYS[0].isoformat()]
    assert len(events) == 1 and events[0]["portfolios_total"] == len(ids)


async def test_backfilled_dates_arriving_together_roll_in_order(
    ctx: ServiceContext, database_url: str, refresh_env: dict[str, str]
) -> None:
    ids = await seed_synthetic(database_url, 200)
    dates = DAYS[:5]
    replicas = [ServiceProcess("portfolio_refresh", refresh_env, replica=i) for i in range(2)]
    for r in replicas:
        r.start()
    try:
        for day in reversed(dates):  # even out of order: each snapshot rolls from the one before
            await ctx.publish(batch_event(day))
        for day in dates:
            await wait_for(lambda d=day: _equals(complete_count(database_url, d), len(ids)),
                           timeout=120)
    finally:
        for r in replicas:
            r.kill()
    concurrent = await table_digest(database_url)
    await clear_outputs(database_url)
    for day in dates:
        await refresh_portfolios(database_url, day, ids, PARAMS)
    await dispose_engines()
    assert await table_digest(database_url) == concurrent


# --------------------------------------------------------------------------- fixtures e2e

FIXTURE_DAY = dt.date(2026, 11, 24)
NEXT_DAY = dt.date(2026, 11, 25)


async def seed_fixture_portfolios(database_url: str) -> dict[str, uuid.UUID]:
    """Every example CSV that parses, with sample-provider prices and real factor betas."""
    await seed_factor_defs(database_url)
    parsed = {}
    for path in sorted((FIXTURES / "portfolios").glob("*.csv")):
        data = path.read_bytes()
        if path.stem == "Sample_Template":  # its closed-position line lacks one comma
            data = data.replace(b"TSLA,50,185.00,2023-12-01,PUBLIC,STOCK,,,,2024-01-15",
                                b"TSLA,50,185.00,2023-12-01,PUBLIC,STOCK,,,,,2024-01-15")
        result = parse_portfolio_csv(data, today=FIXTURE_DAY)
        if result.ok:
            parsed[path.stem] = result.positions
    assert len(parsed) >= 6
    symbols = sorted({p.market_data_symbol for ps in parsed.values() for p in ps
                      if p.market_data_symbol} | set(FACTOR_ETFS))
    bars = pd.concat([sample_bars(s, dt.date(2023, 11, 1), NEXT_DAY)
                      for s in symbols])
    wide = bars.pivot(index="date", columns="symbol", values="adj_close")
    wide.index = pd.to_datetime(wide.index)
    betas = compute_exposures(daily_returns(wide), FIXTURE_DAY)
    conn = await connect(database_url)
    try:
        await insert_prices(conn, bars)
        await insert_betas(conn, betas, FIXTURE_DAY)
        user = await insert_user(conn)
        ids = {}
        for name, positions in parsed.items():
            pid = uuid.uuid4()
            ids[name] = pid
            equity = sum((abs(p.entry_value) for p in positions), Decimal(0))
            await conn.execute("INSERT INTO portfolios (id, user_id, name, equity_balance) "
                               "VALUES ($1, $2, $3, $4)", pid, user, name, equity)
            await conn.copy_records_to_table(
                "positions",
                columns=["id", "portfolio_id", "source_row", "symbol", "quantity", "entry_price",
                         "entry_date", "exit_date", "exit_price", "investment_class",
                         "investment_subtype", "underlying_symbol", "strike_price",
                         "expiration_date", "option_type", "multiplier"],
                records=[(uuid.uuid4(), pid, p.row, p.symbol, p.quantity, p.entry_price,
                          p.entry_date, p.exit_date, p.exit_price, str(p.investment_class),
                          p.investment_subtype, p.underlying_symbol, p.strike_price,
                          p.expiration_date, p.option_type, p.multiplier) for p in positions])
        await conn.copy_records_to_table(
            "symbol_batch_dates", columns=["batch_date", "status", "symbols_total"],
            records=[(d, "completed", len(symbols)) for d in (FIXTURE_DAY, NEXT_DAY)])
        return ids
    finally:
        await conn.close()


async def test_example_portfolios_refresh_end_to_end(
    ctx: ServiceContext, database_url: str, refresh_env: dict[str, str]
) -> None:
    ids = await seed_fixture_portfolios(database_url)
    template = ids["Sample_Template"]
    with ServiceProcess("portfolio_refresh", refresh_env):
        # onboarding's first snapshot of one portfolio, then the nightly batch for the others
        await ctx.publish(PortfolioRefreshRequested(portfolio_id=template, as_of=FIXTURE_DAY,
                                                    reason="onboarding"))
        await wait_for(lambda: _equals(complete_count(database_url, FIXTURE_DAY), 1))
        await ctx.publish(batch_event(FIXTURE_DAY))
        await wait_for(lambda: _equals(complete_count(database_url, FIXTURE_DAY), len(ids)))
        await ctx.publish(batch_event(NEXT_DAY))
        await wait_for(lambda: _equals(complete_count(database_url, NEXT_DAY), len(ids)))
        await wait_for(lambda: _has_event(ctx, NEXT_DAY))

    snaps = await fetch(database_url, "SELECT p.name, s.* FROM portfolio_snapshots s JOIN "
                                      "portfolios p ON p.id = s.portfolio_id")
    day1 = {r["name"]: r for r in snaps if r["snapshot_date"] == FIXTURE_DAY}
    day2 = {r["name"]: r for r in snaps if r["snapshot_date"] == NEXT_DAY}
    for name in ids:
        assert day1[name]["daily_pnl"] == 0  # first snapshot: no jump from entry prices
        assert day2[name]["equity"] == day1[name]["equity"] + day2[name]["daily_pnl"]
    # independent check of a plain stock portfolio's value and P&L from the stored quotes
    small = await fetch(database_url, """
        SELECT sum(x.quantity * m2.close) AS value, sum(x.quantity * (m2.close - m1.close)) AS pnl
        FROM positions x
        JOIN market_data_cache m1 ON m1.symbol = x.symbol AND m1.date = $2
        JOIN market_data_cache m2 ON m2.symbol = x.symbol AND m2.date = $3
        WHERE x.portfolio_id = $1""", ids["small_test_portfolio"], FIXTURE_DAY, NEXT_DAY)
    assert float(day2["small_test_portfolio"]["total_value"]) == pytest.approx(
        small[0]["value"], abs=0.01)
    assert float(day2["small_test_portfolio"]["daily_pnl"]) == pytest.approx(small[0]["pnl"],
                                                                              abs=0.01)
    # the template: shorts, options of both formats, an exited position, private and cash
    t = day2["Sample_Template"]
    assert t["short_value"] < 0 and t["has_model_prices"]
    marks = await fetch(database_url, "SELECT x.symbol, s.price_source FROM position_snapshots s "
                                      "JOIN positions x ON x.id = s.position_id "
                                      "WHERE s.portfolio_id = $1 AND s.snapshot_date = $2",
                        template, NEXT_DAY)
    sources = {r["symbol"]: r["price_source"] for r in marks}
    assert sources["PRIVATE_FUND_A"] == "carried" and sources["SPAXX"] == "carried"
    assert sources["CORP_BOND_2025"] == "carried" and sources["AAPL"] == "market"
    assert "TSLA" not in sources or sources["TSLA"] != "exited"  # exited in 2024: not held
    assert sum(1 for s in sources.values() if s == "model") == 4
    exposures = await fetch(database_url, "SELECT count(DISTINCT portfolio_id) AS n FROM "
                                          "factor_exposures WHERE calculation_date = $1", NEXT_DAY)
    assert exposures[0]["n"] == len(ids)



async def test_refresh_jobs_report_portfolios_done_of_total(ctx: ServiceContext,
                                                            database_url: str) -> None:
    """Plan, chunk and request jobs count portfolios (not 0/0) so `status` and the console
    can show them; the plan's count is what the chunks then refresh."""
    from libs.common.events import PortfolioRefreshChunkRequested
    from services.portfolio_refresh.handlers import RefreshHandlers

    ids = await seed_synthetic(database_url, 7)
    handlers = RefreshHandlers(ctx)
    handlers.chunk_size = 3
    await handlers.on_symbol_batch_completed(batch_event(DAYS[0]), None)  # type: ignore[arg-type]
    planned_at = dt.datetime.now(dt.UTC)
    chunk = PortfolioRefreshChunkRequested(batch_date=DAYS[0], portfolio_ids=sorted(ids)[:3],
                                           chunk_index=0, chunk_count=3, planned_at=planned_at)
    await handlers.on_chunk(chunk, None)  # type: ignore[arg-type]
    await handlers.on_refresh_requested(  # type: ignore[arg-type]
        PortfolioRefreshRequested(portfolio_id=ids[0], as_of=DAYS[1], reason="test"), None)
    rows = await fetch(database_url, "SELECT job_type, status, progress_current, progress_total, "
                                     "progress_unit, phases FROM batch_run_history "
                                     "ORDER BY started_at")
    progress = [(r["job_type"], r["status"], r["progress_current"], r["progress_total"],
                 r["progress_unit"]) for r in rows]
    assert progress == [
        ("portfolio_refresh", "completed", 7, 7, "portfolios"),
        ("portfolio_refresh_chunk", "completed", 3, 3, "portfolios"),
        ("portfolio_refresh_request", "completed", 1, 1, "portfolios"),
    ]
    assert [p["name"] for p in json.loads(rows[1]["phases"])] == ["refresh"]
    assert await complete_count(database_url, DAYS[0]) == 3


async def test_first_snapshots_requested_together_are_made_together_each_once(
    ctx: ServiceContext, database_url: str, refresh_env: dict[str, str]
) -> None:
    """20 onboardings asking for their first snapshot at once (as a burst of uploads does):
    the service gathers them into a few refreshes instead of 20, each portfolio gets exactly
    one snapshot, each request keeps its own completed job, and the rows equal those made
    one portfolio at a time by the library (the pre-gathering path)."""
    ids = await seed_synthetic(database_url, 20)
    day = DAYS[1]

    async def requests_done() -> bool:
        rows = await fetch(database_url, "SELECT count(*) AS n FROM batch_run_history WHERE "
                                         "job_type = 'portfolio_refresh_request' AND "
                                         "status = 'completed'")
        return rows[0]["n"] == len(ids)

    with ServiceProcess("portfolio_refresh", refresh_env):
        await asyncio.gather(*(ctx.publish(PortfolioRefreshRequested(
            portfolio_id=p, as_of=day, reason="first snapshot")) for p in ids))
        await wait_for(requests_done, timeout=120)
    rows = await fetch(database_url, "SELECT portfolio_id, count(*) AS n FROM portfolio_snapshots "
                                     "WHERE is_complete GROUP BY portfolio_id")
    assert len(rows) == len(ids) and all(r["n"] == 1 for r in rows)
    jobs = await fetch(database_url, "SELECT job_key, result FROM batch_run_history "
                                     "WHERE job_type = 'portfolio_refresh_request'")
    assert sorted(j["job_key"] for j in jobs) == sorted(f"{p}:{day}" for p in ids)
    # Each job shows the refresh it was part of: far fewer refreshes than requests.
    sizes = [json.loads(j["result"])["snapshots"][day.isoformat()] for j in jobs]
    refreshes = sum(1 / s for s in sizes)
    assert max(sizes) > 1 and refreshes <= len(ids) / 4, sizes
    gathered = await table_digest(database_url)

    await clear_outputs(database_url)
    params = pnl.PricingParams(risk_free_rate=ctx.settings.risk_free_rate)
    for p in ids:
        await refresh_portfolios(database_url, day, [p], params, explicit=True)
    assert await table_digest(database_url) == gathered
