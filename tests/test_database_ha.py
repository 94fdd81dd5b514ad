"""PostgreSQL HA settings reach the driver: what docs/operations.md tells CloudNativePG users.

DATABASE_URL may carry `target_session_attrs=read-write`, so that after a failover a
connection never lands on the demoted primary (now a standby): both the engine and the raw
asyncpg connections take the URL's query as is. The engine pre-pings pooled connections, so
one cut by the failover is replaced instead of failing the next statement.
"""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text

from libs.common.db import asyncpg_dsn, dispose_engines, get_engine


def _with_attrs(url: str, attrs: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}target_session_attrs={attrs}"


async def test_target_session_attrs_reaches_the_engine_and_raw_connections(
    database_url: str,
) -> None:
    try:
        writable = _with_attrs(database_url, "read-write")
        async with get_engine(writable).connect() as connection:
            assert (await connection.execute(text("SELECT pg_is_in_recovery()"))).scalar() is False
        raw = await asyncpg.connect(asyncpg_dsn(writable))
        await raw.close()
        # The test server is a primary: asking for a standby must be refused, which shows the
        # attribute is honoured and not dropped on the way.
        standby = _with_attrs(database_url, "standby")
        with pytest.raises(Exception, match="target"):
            async with get_engine(standby).connect():
                pass
        with pytest.raises(asyncpg.exceptions.TargetServerAttributeNotMatched):
            await asyncpg.connect(asyncpg_dsn(standby))
        assert get_engine(writable).pool._pre_ping  # type: ignore[attr-defined]
    finally:
        await dispose_engines()
