"""Migrations: up to head creates every table, down to base removes them, up again works."""

from __future__ import annotations

import asyncio

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


async def _tables(url: str) -> set[str]:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await connection.close()
    return {r["tablename"] for r in rows} - {"alembic_version"}


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
            diff = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
    finally:
        await dispose_engines()
    assert diff == []


async def test_deleting_a_portfolio_deletes_its_position_exposures(database_url: str) -> None:
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
            "INSERT INTO position_factor_exposures (position_id, calculation_date, factor_name, "
            "portfolio_id, beta, weight) VALUES ($1, '2024-01-03', 'market', $2, 1.0, 1.0)",
            position,
            portfolio,
        )
        await connection.execute("DELETE FROM portfolios WHERE id = $1", portfolio)
        left = await connection.fetchval("SELECT count(*) FROM position_factor_exposures")
    finally:
        await connection.close()
    assert left == 0
