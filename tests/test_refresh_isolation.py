"""Issue 12 finding 1: one portfolio must never stop the snapshots of its chunk.

Real PostgreSQL and NATS, the real portfolio_refresh process, a date split into 4 chunks.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import uuid
from decimal import Decimal

import asyncpg

from libs.common.db import dispose_engines
from libs.common.portfolio_csv import parse_portfolio_csv
from libs.common.service import ServiceContext
from libs.common.snapshots.refresh import JOB_CHUNK, JOB_REQUEST, refresh_portfolios
from tests.conftest import REPO_ROOT
from tests.processes import ServiceProcess
from tests.test_portfolio_refresh import (
    DAYS,
    PARAMS,
    batch_event,
    complete_count,
    connect,
    fetch,
    publish_raw,
    seed_synthetic,
    wait_for,
)

OTHERS = 30
CHUNK = 8  # 31 portfolios -> 4 chunks


async def add_portfolio(database_url: str, quantity: Decimal, equity: Decimal,
                        klass: str = "PUBLIC") -> uuid.UUID:
    """A portfolio holding `quantity` AAA from DAYS[0], with `equity` declared."""
    conn = await connect(database_url)
    try:
        user = await conn.fetchval("SELECT id FROM users LIMIT 1")
        pid = uuid.uuid4()
        await conn.execute(
            "INSERT INTO portfolios (id, user_id, name, equity_balance) VALUES ($1, $2, $3, $4)",
            pid, user, "poison", equity)
        await conn.execute(
            "INSERT INTO positions (id, portfolio_id, symbol, quantity, entry_price, entry_date, "
            "investment_class) VALUES ($1, $2, 'AAA', $3, 100, $4, $5)",
            uuid.uuid4(), pid, quantity, DAYS[0], klass)
        return pid
    finally:
        await conn.close()


async def add_legacy_poison(database_url: str) -> uuid.UUID:
    """A portfolio whose writes the database refuses: 1e11 shares (from before the upload
    bounds) against a CHECK on position values that this test's database carries, so every
    transaction holding it fails with a real constraint violation, whatever the P&L code
    tolerates."""
    conn = await connect(database_url)
    try:
        await conn.execute("ALTER TABLE position_snapshots ADD CONSTRAINT poison_guard "
                           "CHECK (abs(market_value) < 1e12)")
    finally:
        await conn.close()
    return await add_portfolio(database_url, Decimal("100000000000"), Decimal(100000))


async def _all_done(database_url: str, day: dt.date, n: int) -> bool:
    return await complete_count(database_url, day) >= n


def refresh_env_for(service_env: dict[str, str]) -> dict[str, str]:
    return dict(service_env, SIGMABATCH_REFRESH_CHUNK_SIZE=str(CHUNK))


def test_upload_bounds_accept_a_million_shares_and_reject_absurd_magnitudes() -> None:
    header = ("Symbol,Quantity,Entry Price Per Share,Entry Date,Investment Class,"
              "Investment Subtype,Underlying Symbol,Strike Price,Expiration Date,Option Type,"
              "Exit Date,Exit Price Per Share\n")
    ok = parse_portfolio_csv((header + "AAPL,1000000,230.50,2024-01-02,PUBLIC,STOCK,,,,,,\n")
                             .encode())
    assert ok.ok, ok.problems
    for row, column in (
        ("AAPL,2000000000,1,2024-01-02,PUBLIC,STOCK,,,,,,", "Quantity"),
        ("AAPL,10,20000000,2024-01-02,PUBLIC,STOCK,,,,,,", "Entry Price Per Share"),
        ("AAPL,900000000,5000,2024-01-02,PUBLIC,STOCK,,,,,,", "Quantity"),  # 4.5e12 a row
    ):
        bad = parse_portfolio_csv((header + row + "\n").encode())
        assert not bad.ok
        assert [(p.row, p.column) for p in bad.problems] == [(2, column)], bad.problems


async def test_tiny_equity_portfolio_gets_a_flagged_snapshot_and_its_chunk_completes(
    ctx: ServiceContext, database_url: str, service_env: dict[str, str]
) -> None:
    """AAA x 1,000,000 on $0.01 of equity: its return (~1e8) overflowed numeric(20,12) and
    failed its whole chunk on every delivery; now its return is NULL with a flag."""
    ids = await seed_synthetic(database_url, OTHERS)
    poison = await add_portfolio(database_url, Decimal(1_000_000), Decimal("0.01"))
    with ServiceProcess("portfolio_refresh", refresh_env_for(service_env)):
        for day in DAYS[:2]:
            await publish_raw(ctx, batch_event(day), f"poison-{day}")
            await wait_for(lambda day=day: _all_done(database_url, day, len(ids) + 1),
                           timeout=60)
    chunks = await fetch(database_url, "SELECT count(*) AS n FROM batch_run_history "
                                       "WHERE job_type = $1 AND job_key LIKE $2",
                         JOB_CHUNK, f"{DAYS[1].isoformat()}:%")
    assert chunks[0]["n"] >= 3
    row = (await fetch(database_url, "SELECT daily_pnl, daily_return, details, equity "
                                     "FROM portfolio_snapshots WHERE portfolio_id = $1 "
                                     "AND snapshot_date = $2", poison, DAYS[1]))[0]
    assert row["daily_pnl"] != 0 and row["daily_return"] is None
    assert json.loads(row["details"])["return_flag"] == "tiny_equity"
    # the equity chain still rolls: 0.01 + P&L
    assert row["equity"] == Decimal("0.01") + row["daily_pnl"]
    await dispose_engines()


async def test_failing_portfolio_is_bisected_out_marked_failed_and_retried(
    ctx: ServiceContext, database_url: str, service_env: dict[str, str]
) -> None:
    """A portfolio whose writes the database refuses (a row from before the upload
    bounds) fails alone: the 30 others get their snapshots, it is marked failed with the
    reason (slot, onboarding activity, job API), and `jobs retry` re-drives it once fixed."""
    ids = await seed_synthetic(database_url, OTHERS)
    poison = await add_legacy_poison(database_url)
    day = DAYS[0]
    with ServiceProcess("portfolio_refresh", refresh_env_for(service_env)) as service:
        await publish_raw(ctx, batch_event(day), "bisect")
        await wait_for(lambda: _all_done(database_url, day, len(ids)), timeout=60)

        async def failure_recorded() -> bool:
            rows = await fetch(database_url, "SELECT 1 FROM batch_run_history WHERE "
                               "job_type = $1 AND job_key = $2 AND status = 'failed'",
                               JOB_REQUEST, f"{poison}:{day.isoformat()}")
            return bool(rows)

        await wait_for(failure_recorded, timeout=30)
        assert await complete_count(database_url, day) == len(ids)
        slot = (await fetch(database_url, "SELECT is_complete, details FROM portfolio_snapshots "
                                          "WHERE portfolio_id = $1", poison))[0]
        assert not slot["is_complete"]
        assert "poison_guard" in json.loads(slot["details"])["refresh_error"]
        activity = await fetch(database_url, "SELECT level, message FROM onboarding_activity "
                                             "WHERE portfolio_id = $1", poison)
        assert [a["level"] for a in activity] == ["error"]
        assert day.isoformat() in activity[0]["message"]
        chunk = await fetch(database_url, "SELECT status, result FROM batch_run_history "
                                          "WHERE job_type = $1 AND result ? 'failed_portfolios'",
                            JOB_CHUNK)
        assert [c["status"] for c in chunk] == ["partial"]
        assert list(json.loads(chunk[0]["result"])["failed_portfolios"]) == [str(poison)]
        failed = await fetch(database_url, "SELECT id, error FROM batch_run_history WHERE "
                                           "job_type = $1 AND status = 'failed'", JOB_REQUEST)
        assert len(failed) == 1 and "poison_guard" in failed[0]["error"]

        # the operator fixes the row, then re-drives the failed job from the CLI
        conn = await connect(database_url)
        try:
            await conn.execute("UPDATE positions SET quantity = 10 WHERE portfolio_id = $1",
                               poison)
        finally:
            await conn.close()
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "sigmabatch.cli", "jobs", "retry", str(failed[0]["id"])],
            cwd=REPO_ROOT, env=service.env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        await wait_for(lambda: _all_done(database_url, day, len(ids) + 1), timeout=60)
    again = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "sigmabatch.cli", "jobs", "retry", str(uuid.uuid4())],
        cwd=REPO_ROOT, env=service_env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "no job" in again.stderr
    await dispose_engines()


async def test_in_process_bisection_isolates_the_bad_portfolio(database_url: str) -> None:
    """The use case itself (no bus): one transaction per half down to the bad portfolio."""
    ids = await seed_synthetic(database_url, 12)
    poison = await add_legacy_poison(database_url)
    outcomes = await refresh_portfolios(database_url, DAYS[0], [*ids, poison], PARAMS)
    assert outcomes[-1].snapshots == 12 and list(outcomes[-1].failed) == [poison]
    conn: asyncpg.Connection = await connect(database_url)
    try:
        n = await conn.fetchval("SELECT count(*) FROM portfolio_snapshots WHERE is_complete")
    finally:
        await conn.close()
    assert n == 12
    await dispose_engines()
