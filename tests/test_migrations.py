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
