"""Event and command schemas of the bus (docs/design.md §3).

Each message class knows its subject and its business key: the key becomes the
`Nats-Msg-Id` header, so JetStream drops a repeat inside the duplicate window, and the
handlers stay idempotent beyond it (the database decides).
Commands (`*.requested`) go to the work-queue stream and have one handler; events
(`*.completed`) go to the events stream and may have many independent consumers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class Message(BaseModel):
    """Base of every bus payload."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    subject: ClassVar[str]
    is_command: ClassVar[bool]
    correlation_id: str = Field(default_factory=lambda: uuid.uuid4().hex)

    def message_id(self) -> str:
        """The business key used as Nats-Msg-Id."""
        raise NotImplementedError


class BatchNightlyRequested(Message):
    subject: ClassVar[str] = "batch.nightly.requested"
    is_command: ClassVar[bool] = True
    target_date: dt.date | None = None
    requested_by: str = "cron"
    # Set by an operator to re-run a date on purpose (bypasses dedupe by a distinct key).
    rerun_token: str | None = None
    # Restate `target_date`: re-fetch it, recompute its betas and restate the snapshots from
    # it to the latest date, even though it was completed before.
    rerun: bool = False

    def message_id(self) -> str:
        key = self.target_date.isoformat() if self.target_date else "latest"
        return f"nightly:{key}" + (f":{self.rerun_token}" if self.rerun_token else "")


class SymbolBatchCompleted(Message):
    subject: ClassVar[str] = "symbol.batch.completed"
    is_command: ClassVar[bool] = False
    batch_date: dt.date
    status: Literal["completed", "partial"]
    symbols_total: int
    symbols_failed: int = 0
    run_id: str
    # The date was completed before and has been redone (operator rerun, a partial date's
    # failed symbols retried, a hole filled): its snapshots must be restated from it on.
    restate: bool = False

    def message_id(self) -> str:
        base = f"symbol-batch:{self.batch_date.isoformat()}"
        return f"{base}:restate:{self.run_id}" if self.restate else base


class SymbolOnboardRequested(Message):
    subject: ClassVar[str] = "symbol.onboard.requested"
    is_command: ClassVar[bool] = True
    symbol: str
    portfolio_id: uuid.UUID | None = None
    requested_by: str | None = None

    def message_id(self) -> str:
        return f"onboard:{self.symbol.upper()}"


class SymbolOnboardCompleted(Message):
    subject: ClassVar[str] = "symbol.onboard.completed"
    is_command: ClassVar[bool] = False
    symbol: str
    status: Literal["ready", "failed"]
    reason: str | None = None

    def message_id(self) -> str:
        return f"onboarded:{self.symbol.upper()}"


class PortfolioRefreshRequested(Message):
    subject: ClassVar[str] = "portfolio.refresh.requested"
    is_command: ClassVar[bool] = True
    portfolio_id: uuid.UUID
    as_of: dt.date | None = None
    reason: str = "manual"

    def message_id(self) -> str:
        key = self.as_of.isoformat() if self.as_of else "latest"
        return f"refresh:{self.portfolio_id}:{key}"


class PortfolioRefreshChunkRequested(Message):
    """One slice of a date's portfolios (fan-out of `symbol.batch.completed` by
    portfolio_refresh): replicas sharing the work-queue consumer take different chunks."""

    subject: ClassVar[str] = "portfolio.refresh.chunk.requested"
    is_command: ClassVar[bool] = True
    batch_date: dt.date
    portfolio_ids: list[uuid.UUID]
    chunk_index: int
    chunk_count: int
    # When the date was planned: portfolios created later are not part of this fan-out.
    planned_at: dt.datetime | None = None
    # A restatement (see SymbolBatchCompleted.restate): the id of the batch run that redid it.
    restate_run: str | None = None

    def message_id(self) -> str:
        digest = hashlib.sha1(
            ",".join(sorted(str(p) for p in self.portfolio_ids)).encode()
        ).hexdigest()[:12]
        return (
            f"refresh-chunk:{self.batch_date.isoformat()}:"
            f"{self.chunk_index}/{self.chunk_count}:{digest}"
            + (f":restate:{self.restate_run}" if self.restate_run else "")
        )


class PortfolioRefreshCompleted(Message):
    subject: ClassVar[str] = "portfolio.refresh.completed"
    is_command: ClassVar[bool] = False
    batch_date: dt.date
    portfolios_total: int
    failed: int = 0

    def message_id(self) -> str:
        return f"portfolio-refresh:{self.batch_date.isoformat()}"


COMMANDS: tuple[type[Message], ...] = (
    BatchNightlyRequested,
    SymbolOnboardRequested,
    PortfolioRefreshRequested,
    PortfolioRefreshChunkRequested,
)
EVENTS: tuple[type[Message], ...] = (
    SymbolBatchCompleted,
    SymbolOnboardCompleted,
    PortfolioRefreshCompleted,
)
