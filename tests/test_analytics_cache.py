"""The per-process price-history cache of the analytics, under concurrent refreshes."""

from __future__ import annotations

import asyncio

import asyncpg
import pandas as pd

from libs.common.analytics.repository import _HistoryCache
from libs.common.db import asyncpg_dsn
from tests.test_api_helpers import seed_known_symbols


async def test_concurrent_refreshes_fill_the_same_missing_symbols_once(database_url: str):
    """Two refreshes of one process (gathered first snapshots, a chunk) asking at once for
    the same symbols the cache lacks: both get the closes, and the cache holds each symbol
    once (unguarded, the second fill joined the same columns again: "columns overlap")."""
    symbols = ["AAPL", "MSFT", "NVDA"]
    day = await seed_known_symbols(database_url, symbols)
    cache = _HistoryCache()
    first = await asyncpg.connect(asyncpg_dsn(database_url))
    second = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        a, b = await asyncio.gather(cache.closes(first, day, symbols),
                                    cache.closes(second, day, symbols[::-1]))
    finally:
        await first.close()
        await second.close()
    assert list(a.columns) == symbols and list(b.columns) == symbols[::-1]
    pd.testing.assert_frame_equal(a, b[symbols])
    assert sorted(cache.frame.columns) == symbols
    assert a.index.max() == pd.Timestamp(day) and a.notna().any().all()
