"""Migrations: up to head creates every table, down to base removes them, up again works."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import asyncpg
import pytest

from libs.common.db import asyncpg_dsn, dispose_engines, get_engine
from libs.common.migrate import (
    DatabaseNotMigrated,
    downgrade,
    ensure_migrated,
    head_revision,
    upgrade,
)
from libs.common.models import Base
from libs.common.partitions import include_name


async def _tables(url: str) -> set[str]:
    """Tables of the schema; the partitions of a partitioned table are not tables of their own."""
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await connection.fetch(
            "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace "
            "AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        )
    finally:
        await connection.close()
    return {r["relname"] for r in rows} - {"alembic_version"}


def test_upgrade_downgrade_upgrade(empty_database_url: str) -> None:
    expected = set(Base.metadata.tables)
    assert {"batch_run_history", "portfolio_snapshots", "symbol_factor_exposures"} <= expected
    upgrade(empty_database_url)
    assert asyncio.run(_tables(empty_database_url)) == expected
    downgrade(empty_database_url, "base")
    assert asyncio.run(_tables(empty_database_url)) == set()
    upgrade(empty_database_url)
    assert asyncio.run(_tables(empty_database_url)) == expected


async def test_unmigrated_database_is_refused_with_a_clear_message(empty_database_url: str) -> None:
    engine = get_engine(empty_database_url)
    try:
        with pytest.raises(DatabaseNotMigrated, match="sigmabatch migrate"):
            await ensure_migrated(engine)
        await asyncio.to_thread(upgrade, empty_database_url)
        await ensure_migrated(engine)  # at head: no error
        assert head_revision()
    finally:
        await dispose_engines()


def test_service_refuses_to_start_on_unmigrated_database(empty_database_url, servers, bus_prefix):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    env = dict(
        os.environ,
        DATABASE_URL=empty_database_url,
        NATS_URL=servers.nats_url,
        SIGMABATCH_BUS_PREFIX=bus_prefix,
        PYTHONPATH=str(REPO_ROOT),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from libs.common.service import ServiceDefinition, main;"
            "main(ServiceDefinition('probe', lambda ctx: []))",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "run `sigmabatch migrate` first" in result.stderr


async def test_models_and_migrations_agree(database_url: str) -> None:
    """Autogenerate against a migrated database finds nothing to do."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = get_engine(database_url)
    try:
        async with engine.connect() as connection:
            # the month partitions are not model tables (the same filter as migrations/env.py)
            diff = await connection.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"include_name": include_name}),
                    Base.metadata,
                )
            )
    finally:
        await dispose_engines()
    assert diff == []


async def test_deleting_a_portfolio_deletes_its_position_exposures(database_url: str) -> None:
    """The view's rows go with the position snapshots (FK cascade on the partitioned table)."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        user = await connection.fetchval(
            "INSERT INTO users (id, username) VALUES (gen_random_uuid(), 'u') RETURNING id"
        )
        portfolio = await connection.fetchval(
            "INSERT INTO portfolios (id, user_id, name, equity_balance) "
            "VALUES (gen_random_uuid(), $1, 'p', 100) RETURNING id",
            user,
        )
        position = await connection.fetchval(
            "INSERT INTO positions (id, portfolio_id, symbol, quantity, entry_price, entry_date, "
            "investment_class) VALUES (gen_random_uuid(), $1, 'AAPL', 1, 1, '2024-01-02', 'PUBLIC') "
            "RETURNING id",
            portfolio,
        )
        await connection.execute(
            "INSERT INTO factor_definitions (name, display_name, kind, method, regressor, "
            "window_days, min_obs) VALUES ('market', 'Market', 'market', 'ols', 'SPY', 90, 60)"
        )
        await connection.execute(
            "INSERT INTO symbol_factor_exposures (symbol, factor_name, calculation_date, beta, "
            "n_obs, quality) VALUES ('AAPL', 'market', '2024-01-03', 1.5, 90, 'full')"
        )
        await connection.execute(
            "INSERT INTO position_snapshots (position_id, snapshot_date, portfolio_id, "
            "price_source, market_value, daily_pnl, realized_pnl, beta_symbol, beta_date, "
            "exposure_value, weight) VALUES ($1, '2024-01-03', $2, 'market', 1, 0, 0, 'AAPL', "
            "'2024-01-03', 1.0, 0.01)",
            position,
            portfolio,
        )
        before = await connection.fetch("SELECT * FROM position_factor_exposures")
        await connection.execute("DELETE FROM portfolios WHERE id = $1", portfolio)
        left = await connection.fetchval("SELECT count(*) FROM position_factor_exposures")
    finally:
        await connection.close()
    assert [(r["factor_name"], r["beta"], r["weight"], r["exposure_dollar"]) for r in before] == [
        ("market", 1.5, 0.01, Decimal("1.50"))
    ]
    assert left == 0
