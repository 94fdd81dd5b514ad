"""The onboarding coordinator's logic on an in-memory unit of work (no servers, milliseconds).

`tests/test_onboarding.py` runs the same coordinator on real PostgreSQL + NATS; here the
fake repository holds the onboarding state in dicts, so what is checked is the coordinator's
own part: what it asks in which transaction, what it publishes, and that a publish only
follows a commit.
"""

from __future__ import annotations

import datetime as dt
import uuid
from types import TracebackType
from typing import Self

import pytest

from libs.common.bus import Delivery
from libs.common.events import (
    Message,
    PortfolioRefreshRequested,
    SymbolOnboardCompleted,
    SymbolOnboardRequested,
)
from libs.common.onboarding.store import SnapshotRequest
from libs.common.snapshots.refresh import JOB_REQUEST
from services.onboarding.coordinator import OnboardingCoordinator

AS_OF = dt.date(2026, 11, 27)


class FakeOnboarding:
    """Portfolios waiting for symbols, in memory (the rules of onboarding.store, simplified)."""

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self.waiting: dict[uuid.UUID, set[str]] = {}
        self.failed_symbols: dict[uuid.UUID, list[str]] = {}
        self.settled: set[str] = set()
        self.requested: dict[uuid.UUID, dt.date] = {}
        self.snapshot_made: set[uuid.UUID] = set()
        self.dead_requests: set[uuid.UUID] = set()
        self.status: dict[uuid.UUID, str] = {}
        self.pending_symbols: list[str] = []
        self.fail_next: Exception | None = None

    async def request_snapshot_if_ready(self, *, fallback_as_of: dt.date,
                                        portfolio_id: uuid.UUID | None = None,
                                        symbol: str | None = None) -> list[SnapshotRequest]:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        ready = [p for p, symbols in self.waiting.items()
                 if p not in self.requested and symbols <= self.settled
                 and (symbol is None or symbol in symbols)
                 and (portfolio_id is None or p == portfolio_id)]
        for p in ready:
            self.requested[p] = fallback_as_of
        return [SnapshotRequest(p, fallback_as_of, self.failed_symbols.get(p, [])) for p in ready]

    async def unsettled_symbols(self, *, min_age_seconds: float,
                                stale_after_seconds: float) -> list[str]:
        return list(self.pending_symbols)

    async def unsettled_snapshot_requests(self) -> list[SnapshotRequest]:
        return [SnapshotRequest(p, d, []) for p, d in self.requested.items()
                if p not in self.snapshot_made and p not in self.dead_requests]

    async def finish_completed_onboardings(self) -> int:
        done = [p for p in self.snapshot_made if self.status.get(p) == "running"]
        for p in done:
            self.status[p] = "partial" if self.failed_symbols.get(p) else "completed"
        return len(done)

    async def fail_dead_snapshot_onboardings(self, refresh_job_type: str) -> int:
        assert refresh_job_type == JOB_REQUEST
        dead = [p for p in self.dead_requests if self.status.get(p) == "running"]
        for p in dead:
            self.status[p] = "failed"
        return len(dead)


class FakeUnitOfWork:
    def __init__(self, repository: FakeOnboarding) -> None:
        self.onboarding = repository

    async def __aenter__(self) -> Self:
        self.onboarding.journal.append("begin")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.onboarding.journal.append("rollback" if exc_type else "commit")


class Harness:
    def __init__(self) -> None:
        self.journal: list[str] = []
        self.repository = FakeOnboarding(self.journal)
        self.published: list[Message] = []
        self.coordinator = OnboardingCoordinator(lambda: FakeUnitOfWork(self.repository),
                                                 self.publish)

    async def publish(self, message: Message) -> bool:
        self.journal.append(f"publish {message.message_id()}")
        self.published.append(message)
        return True

    def portfolio(self, *symbols: str) -> uuid.UUID:
        pid = uuid.uuid4()
        self.repository.waiting[pid] = set(symbols)
        self.repository.status[pid] = "running"
        return pid


def completed(symbol: str) -> SymbolOnboardCompleted:
    return SymbolOnboardCompleted(symbol=symbol, status="ready", correlation_id="corr-1")


DELIVERY = Delivery(msg=None, num_delivered=1, msg_id=None)  # type: ignore[arg-type]


async def test_last_symbol_settling_requests_the_snapshot_after_the_commit() -> None:
    h = Harness()
    both, only_aapl = h.portfolio("AAPL", "ZZNEW"), h.portfolio("AAPL")
    h.repository.settled |= {"AAPL"}
    await h.coordinator.handle(completed("aapl"), DELIVERY)  # lower case: normalised
    assert [m.portfolio_id for m in h.published] == [only_aapl]  # type: ignore[attr-defined]

    h.repository.settled |= {"ZZNEW"}
    await h.coordinator.handle(completed("ZZNEW"), DELIVERY)
    request = h.published[-1]
    assert isinstance(request, PortfolioRefreshRequested)
    assert (request.portfolio_id, request.reason, request.correlation_id) == (
        both, "onboarding", "corr-1")
    # each publish follows the commit of the transaction that decided it
    assert h.journal == ["begin", "commit", f"publish refresh:{only_aapl}:{request.as_of}",
                         "begin", "commit", f"publish refresh:{both}:{request.as_of}"]


async def test_a_repeated_completion_event_requests_nothing_twice() -> None:
    h = Harness()
    h.portfolio("AAPL")
    h.repository.settled |= {"AAPL"}
    await h.coordinator.handle(completed("AAPL"), DELIVERY)
    await h.coordinator.handle(completed("AAPL"), DELIVERY)
    assert len(h.published) == 1


async def test_a_failed_transaction_rolls_back_and_publishes_nothing() -> None:
    h = Harness()
    h.portfolio("AAPL")
    h.repository.settled |= {"AAPL"}
    h.repository.fail_next = ConnectionError("database gone")
    with pytest.raises(ConnectionError):
        await h.coordinator.handle(completed("AAPL"), DELIVERY)
    assert h.journal == ["begin", "rollback"] and h.published == []


async def test_reconcile_republishes_what_is_owed_and_records_outcomes() -> None:
    h = Harness()
    made, dead, owed = h.portfolio("AAPL"), h.portfolio("MSFT"), h.portfolio("IBM")
    h.repository.settled |= {"AAPL", "MSFT", "IBM"}
    h.repository.requested.update({made: AS_OF, dead: AS_OF, owed: AS_OF})
    h.repository.snapshot_made.add(made)
    h.repository.dead_requests.add(dead)
    h.repository.failed_symbols[made] = ["ZZBAD"]
    h.repository.pending_symbols = ["ZZLOST"]

    await h.coordinator.reconcile()

    symbol_requests = [m for m in h.published if isinstance(m, SymbolOnboardRequested)]
    assert [(m.symbol, m.requested_by) for m in symbol_requests] == [("ZZLOST", "reconciler")]
    snapshot_requests = [m for m in h.published if isinstance(m, PortfolioRefreshRequested)]
    assert [m.portfolio_id for m in snapshot_requests] == [owed]
    assert h.repository.status == {made: "partial", dead: "failed", owed: "running"}
    assert await h.coordinator.record_outcomes() == 0  # recorded once
