"""symbol_batch's ports: the repository and unit of work its use case runs on, and its run lock.

`SymbolBatch` (handlers.py) decides; these carry out. The SQL implementations delegate to
`store` (symbol_batch's own SQL) and `market_store` (shared with onboarding), each call inside
the caller's transaction; `tests/test_symbol_batch_unit.py` passes in-memory fakes with the
same shape, so the use case's decisions are tested without PostgreSQL or NATS, next to
`tests/test_symbol_batch.py`, which runs the same class on the real servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol, Self

import asyncpg
import pandas as pd
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common import market_store
from libs.common.bus import TransientError
from libs.common.db import asyncpg_dsn
from libs.common.factor_definitions import seed_factor_definitions
from libs.common.market_data.base import Fundamentals, Profile
from libs.common.uow import SessionUnitOfWork
from services.symbol_batch import store
from services.symbol_batch.store import CompletedDate

LOCK_NAME = "sigmabatch:symbol_batch"
LOCK_WAIT_SECONDS = 60.0


class SymbolBatchRepository(Protocol):
    """The batch's state: the universe, what is due, the per-date watermark, market data."""

    async def ensure_seeded(self, etfs: Sequence[str], synthetic: Sequence[str]) -> None: ...

    async def batched_dates(self) -> dict[dt.date, str]: ...

    async def latest_job_status(self, job_key: str) -> str | None: ...

    async def active_universe(self) -> list[tuple[str, str | None]]: ...

    async def last_price_dates(self, symbols: Sequence[str]) -> dict[str, dt.date]: ...

    async def profiles_due(self, symbols: Sequence[str], as_of: dt.date,
                           max_age_days: int) -> list[str]: ...

    async def fundamentals_due(self, symbols: Sequence[str], as_of: dt.date,
                               max_age_days: int) -> list[str]: ...

    async def upsert_profiles(self, profiles: Sequence[Profile], as_of: dt.date) -> None: ...

    async def upsert_prices(self, bars: pd.DataFrame) -> None: ...

    async def upsert_fundamentals(self, items: Sequence[Fundamentals]) -> None: ...

    async def seed_factor_definitions(self) -> None: ...

    async def load_closes(self, symbols: Sequence[str],
                          sessions: pd.DatetimeIndex) -> pd.DataFrame: ...

    async def write_symbol_betas(self, exposures: pd.DataFrame, day: dt.date) -> None: ...

    async def record_date_complete(self, day: dt.date, *, status: str, run_id: uuid.UUID,
                                   symbols_total: int, failures: dict[str, str],
                                   redo: str = "no") -> bool: ...

    async def dates_of_key(self, job_key: str) -> list[CompletedDate]: ...

    async def latest_snapshot_date(self) -> dt.date | None: ...


class SymbolBatchUnitOfWork(Protocol):
    """One transaction: commits when the block ends normally, rolls back on an exception."""

    batch: SymbolBatchRepository

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None: ...


SymbolBatchUnitOfWorkFactory = Callable[[], SymbolBatchUnitOfWork]


class RunLock(Protocol):
    """Serialises runs across replicas and cron hosts; raises `TransientError` when another
    run keeps it past the wait (the message is redelivered later)."""

    def __call__(self) -> AbstractAsyncContextManager[None]: ...


# --- PostgreSQL -----------------------------------------------------------------------------


class SqlSymbolBatchRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def ensure_seeded(self, etfs: Sequence[str], synthetic: Sequence[str]) -> None:
        await store.ensure_seeded(self.session, etfs, synthetic)

    async def batched_dates(self) -> dict[dt.date, str]:
        return await store.batched_dates(self.session)

    async def latest_job_status(self, job_key: str) -> str | None:
        return await store.latest_job_status(self.session, job_key)

    async def active_universe(self) -> list[tuple[str, str | None]]:
        return await store.active_universe(self.session)

    async def last_price_dates(self, symbols: Sequence[str]) -> dict[str, dt.date]:
        return await store.last_price_dates(self.session, symbols)

    async def profiles_due(self, symbols: Sequence[str], as_of: dt.date,
                           max_age_days: int) -> list[str]:
        return await store.profiles_due(self.session, symbols, as_of, max_age_days)

    async def fundamentals_due(self, symbols: Sequence[str], as_of: dt.date,
                               max_age_days: int) -> list[str]:
        return await store.fundamentals_due(self.session, symbols, as_of, max_age_days)

    async def upsert_profiles(self, profiles: Sequence[Profile], as_of: dt.date) -> None:
        await market_store.upsert_profiles(self.session, profiles, as_of)

    async def upsert_prices(self, bars: pd.DataFrame) -> None:
        await market_store.upsert_prices(self.session, bars)

    async def upsert_fundamentals(self, items: Sequence[Fundamentals]) -> None:
        await store.upsert_fundamentals(self.session, items)

    async def seed_factor_definitions(self) -> None:
        await seed_factor_definitions(self.session)

    async def load_closes(self, symbols: Sequence[str],
                          sessions: pd.DatetimeIndex) -> pd.DataFrame:
        return await store.load_closes(self.session, symbols, sessions)

    async def write_symbol_betas(self, exposures: pd.DataFrame, day: dt.date) -> None:
        await market_store.write_symbol_betas(self.session, exposures, day)

    async def record_date_complete(self, day: dt.date, *, status: str, run_id: uuid.UUID,
                                   symbols_total: int, failures: dict[str, str],
                                   redo: str = "no") -> bool:
        return await store.record_date_complete(
            self.session, day, status=status, run_id=run_id, symbols_total=symbols_total,
            failures=failures, redo=redo)

    async def dates_of_key(self, job_key: str) -> list[CompletedDate]:
        return await store.dates_of_key(self.session, job_key)

    async def latest_snapshot_date(self) -> dt.date | None:
        return await store.latest_snapshot_date(self.session)


class SqlSymbolBatchUnitOfWork(SessionUnitOfWork):
    batch: SymbolBatchRepository

    def _bind(self, session: AsyncSession) -> None:
        self.batch = SqlSymbolBatchRepository(session)


def sql_unit_of_work(database_url: str) -> SymbolBatchUnitOfWorkFactory:
    return lambda: SqlSymbolBatchUnitOfWork(database_url)


class AdvisoryRunLock:
    """A session-level PostgreSQL advisory lock on a dedicated connection: released by the
    server when the worker dies, so a killed run never blocks the next one."""

    def __init__(self, database_url: str, *, name: str = LOCK_NAME,
                 wait_seconds: float = LOCK_WAIT_SECONDS) -> None:
        self.database_url = database_url
        self.name = name
        self.wait_seconds = wait_seconds

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        connection = await asyncpg.connect(asyncpg_dsn(self.database_url))
        try:
            deadline = time.monotonic() + self.wait_seconds
            while not await connection.fetchval(
                "SELECT pg_try_advisory_lock(hashtext($1))", self.name
            ):
                if time.monotonic() > deadline:
                    raise TransientError("another symbol batch run holds the lock")
                await asyncio.sleep(0.5)
            yield
        finally:
            with contextlib.suppress(Exception):
                await connection.close()
