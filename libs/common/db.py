"""Database access: one engine per process, one session helper, one raw-connection helper.

ORM sessions serve the ordinary reads and transactional writes; bulk writes (COPY,
`INSERT ... SELECT FROM unnest(...)`) go through the asyncpg connection underneath the same
session, so they share its transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

_engines: dict[str, AsyncEngine] = {}
_sessionmakers: dict[str, async_sessionmaker[AsyncSession]] = {}


def normalize_url(url: str) -> str:
    """Accept plain `postgresql://` / `postgres://` URLs and use the asyncpg driver."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def asyncpg_dsn(url: str) -> str:
    """The same URL in the form asyncpg.connect() takes (no `+asyncpg` driver suffix)."""
    return "postgresql://" + normalize_url(url)[len("postgresql+asyncpg://") :]


def get_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """The process-wide engine for `url` (pre-ping: survives a PostgreSQL restart)."""
    url = normalize_url(url)
    engine = _engines.get(url)
    if engine is None:
        options: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 10}
        options.update(kwargs)
        engine = create_async_engine(url, **options)
        _engines[url] = engine
        _sessionmakers[url] = async_sessionmaker(engine, expire_on_commit=False)
    return engine


@asynccontextmanager
async def session_scope(url: str) -> AsyncIterator[AsyncSession]:
    """A unit of work: commits on success, rolls back on any exception."""
    get_engine(url)
    async with _sessionmakers[normalize_url(url)]() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


async def raw_connection(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under `session`, inside its transaction (for COPY / unnest)."""
    connection = await session.connection()
    # SQLAlchemy's asyncpg adapter sends BEGIN lazily, with the first statement it runs itself:
    # run one now, or raw statements would autocommit outside the session's transaction.
    await connection.exec_driver_sql("SELECT 1")
    raw = await connection.get_raw_connection()
    return raw.driver_connection


async def dispose_engines() -> None:
    """Close every pool (graceful shutdown, and between tests)."""
    for engine in list(_engines.values()):
        await engine.dispose()
    _engines.clear()
    _sessionmakers.clear()
