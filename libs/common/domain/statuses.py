"""Status values of jobs and onboarding, and the rules that finish them (docs/design.md §3, §4, §9).

StrEnums compare equal to their text, so they go straight into SQL parameters, JSON and
pydantic Literals; the values are the contract of the API and of the database rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class JobStatus(StrEnum):
    """batch_run_history.status."""

    RUNNING = "running"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"


#: A job in one of these is finished for good (only a retry starts a new attempt).
FINAL_JOB_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.PARTIAL, JobStatus.FAILED})


class SymbolStatus(StrEnum):
    """symbol_onboarding.status: one new symbol's fetch."""

    PENDING = "pending"
    RUNNING = "running"
    READY = "ready"
    FAILED = "failed"


#: A symbol in one of these no longer holds up the portfolios waiting for it.
SETTLED_SYMBOL_STATUSES = frozenset({SymbolStatus.READY, SymbolStatus.FAILED})


class OnboardingStatus(StrEnum):
    """portfolio_onboarding.status and the onboarding status endpoint (`not_found`: none)."""

    NOT_FOUND = "not_found"
    RUNNING = "running"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"


FINISHED_ONBOARDING_STATUSES = frozenset(
    {OnboardingStatus.COMPLETED, OnboardingStatus.PARTIAL, OnboardingStatus.FAILED}
)


class OnboardingMode(StrEnum):
    INSTANT = "v2_instant"  # every symbol already known: first snapshot at once
    ASYNC = "v2_async"  # waits for new symbols to be fetched


class PhaseStatus(StrEnum):
    """Status of one onboarding phase in the status document."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


def onboarding_final_status(
    failed_symbols: Iterable[str], snapshot_failed: bool = False
) -> OnboardingStatus:
    """How an onboarding ends once its first snapshot is made (or cannot be).

    failed: the snapshot could not be made; partial: it was, but some symbols could not be
    fetched (their positions are carried at entry, flagged stale); completed otherwise.
    """
    if snapshot_failed:
        return OnboardingStatus.FAILED
    return OnboardingStatus.PARTIAL if list(failed_symbols) else OnboardingStatus.COMPLETED


def batch_final_status(symbols_failed: int) -> JobStatus:
    """A symbol batch with any symbol that still failed is partial, never silently complete."""
    return JobStatus.PARTIAL if symbols_failed else JobStatus.COMPLETED
