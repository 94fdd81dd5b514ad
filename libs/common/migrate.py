"""Schema migrations (alembic) run programmatically: `sigmabatch migrate`, tests, `up`.

Services call `ensure_migrated` at start-up and refuse to run on a database that is not at
the head revision, with a message that says what to run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class DatabaseNotMigrated(RuntimeError):
    """The database schema is not at the revision this code needs."""


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    return config


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config("")).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migrations have {len(heads)} heads: {heads}; merge them")
    return heads[0]


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate up (blocking; from async code use `asyncio.to_thread`)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision()
        )


async def ensure_migrated(engine: AsyncEngine) -> None:
    """Raise DatabaseNotMigrated unless the schema is at head."""
    current = await current_revision(engine)
    head = await asyncio.to_thread(head_revision)
    if current != head:
        raise DatabaseNotMigrated(
            f"database schema is at revision {current or 'none (empty database)'}, "
            f"this code needs {head}: run `sigmabatch migrate` first"
        )
