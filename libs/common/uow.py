"""Unit of work: one transaction and the repositories a use case needs inside it.

Use cases and handlers take a `UnitOfWorkFactory` instead of a database URL:

    async with uow() as work:
        requests = await work.onboarding.request_snapshot_if_ready(...)

The block commits when it ends normally and rolls back on any exception. `SqlUnitOfWork` is
the PostgreSQL one (the repositories delegate to the use case's SQL in `store` modules);
tests pass an in-memory fake with the same shape, so the handler's logic runs without a
database (next to the real-server tests, which keep the SQL honest).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol, Self

from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.db import session_scope
from libs.common.onboarding import store
from libs.common.onboarding.store import SnapshotRequest


class OnboardingRepository(Protocol):
    """The onboarding state the coordinator reads and moves (see `onboarding.store`)."""

    async def request_snapshot_if_ready(
        self, *, fallback_as_of: dt.date, portfolio_id: uuid.UUID | None = None,
        symbol: str | None = None) -> list[SnapshotRequest]: ...

    async def unsettled_symbols(self, *, min_age_seconds: float,
                                stale_after_seconds: float) -> list[str]: ...

    async def unsettled_snapshot_requests(self) -> list[SnapshotRequest]: ...

    async def finish_completed_onboardings(self) -> int: ...

    async def fail_dead_snapshot_onboardings(self, refresh_job_type: str) -> int: ...


class UnitOfWork(Protocol):
    onboarding: OnboardingRepository

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None: ...


UnitOfWorkFactory = Callable[[], UnitOfWork]


class SqlOnboardingRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def request_snapshot_if_ready(
            self, *, fallback_as_of: dt.date, portfolio_id: uuid.UUID | None = None,
            symbol: str | None = None) -> list[SnapshotRequest]:
        return await store.request_snapshot_if_ready(
            self.session, fallback_as_of=fallback_as_of, portfolio_id=portfolio_id,
            symbol=symbol)

    async def unsettled_symbols(self, *, min_age_seconds: float,
                                stale_after_seconds: float) -> list[str]:
        return await store.unsettled_symbols(self.session, min_age_seconds=min_age_seconds,
                                             stale_after_seconds=stale_after_seconds)

    async def unsettled_snapshot_requests(self) -> list[SnapshotRequest]:
        return await store.unsettled_snapshot_requests(self.session)

    async def finish_completed_onboardings(self) -> int:
        return await store.finish_completed_onboardings(self.session)

    async def fail_dead_snapshot_onboardings(self, refresh_job_type: str) -> int:
        return await store.fail_dead_snapshot_onboardings(self.session, refresh_job_type)


class SessionUnitOfWork:
    """The SQL unit of work's mechanics: one `session_scope` transaction (commit on a normal
    exit, rollback on an exception); a subclass binds its repositories to the session in
    `_bind`. Services with repositories of their own (symbol_batch) subclass it."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._scope: AbstractAsyncContextManager[AsyncSession] | None = None

    def _bind(self, session: AsyncSession) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._scope = session_scope(self.database_url)
        self._bind(await self._scope.__aenter__())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._scope is not None
        scope, self._scope = self._scope, None
        await scope.__aexit__(exc_type, exc, tb)


class SqlUnitOfWork(SessionUnitOfWork):
    """One `session_scope` transaction with the SQL repositories over its session."""

    onboarding: OnboardingRepository

    def _bind(self, session: AsyncSession) -> None:
        self.onboarding = SqlOnboardingRepository(session)


def sql_unit_of_work(database_url: str) -> UnitOfWorkFactory:
    """The factory handlers get in production (bootstrap wires it)."""
    return lambda: SqlUnitOfWork(database_url)
