"""Onboarding progress rules with no I/O: what a portfolio waits for, and how far along it is.

A portfolio's onboarding has three phases: the upload itself (validated and stored in the
request), the symbols it needs that the system did not know (fetched by onboarding workers,
shared across every portfolio that waits for them), and its first snapshot. How it ends is
`statuses.onboarding_final_status`.
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.domain.statuses import PhaseStatus

PHASES: tuple[tuple[str, str], ...] = (
    ("upload", "Validate and store positions"),
    ("symbols", "Fetch price history and factor betas of new symbols"),
    ("snapshot", "Compute the first portfolio snapshot"),
)
# Share of the overall percentage each phase stands for (fetching dominates the wait).
PHASE_WEIGHTS = {"upload": 10.0, "symbols": 75.0, "snapshot": 15.0}


@dataclass(frozen=True)
class Progress:
    """Overall and current-phase progress as the status endpoint reports them."""

    current_phase: int  # 1-based
    phase_name: str
    phases_completed: int
    percent: float
    phase_current: int
    phase_total: int
    phase_unit: str
    phase_states: tuple[PhaseStatus, ...]


def progress(
    *,
    symbols_total: int,
    symbols_settled: int,
    snapshot_requested: bool,
    snapshot_done: bool,
    failed: bool = False,
) -> Progress:
    """Where an onboarding is, from counts the database holds."""
    done, running, pending, failed_ = (
        PhaseStatus.COMPLETED, PhaseStatus.RUNNING, PhaseStatus.PENDING, PhaseStatus.FAILED,
    )
    symbols_done = symbols_settled >= symbols_total
    states: tuple[PhaseStatus, ...]
    if snapshot_done:
        states = (done, done, done)
    elif failed:
        states = (done, done if symbols_done else failed_, failed_ if symbols_done else pending)
    elif symbols_done:
        states = (done, done, running if snapshot_requested else pending)
    else:
        states = (done, running, pending)
    symbol_share = symbols_settled / symbols_total if symbols_total else 1.0
    percent = PHASE_WEIGHTS["upload"] + PHASE_WEIGHTS["symbols"] * symbol_share
    if snapshot_done:
        percent = 100.0
    if running in states:
        index = states.index(running)
    elif failed_ in states:
        index = states.index(failed_)
    else:
        index = len(states) - 1
    key = PHASES[index][0]
    if key == "symbols":
        current, total, unit = symbols_settled, symbols_total, "symbols"
    elif key == "snapshot":
        current, total, unit = (1 if snapshot_done else 0), 1, "snapshots"
    else:
        current, total, unit = 1, 1, "files"
    return Progress(
        current_phase=index + 1,
        phase_name=PHASES[index][1],
        phases_completed=states.count(done),
        percent=round(percent, 1),
        phase_current=current,
        phase_total=total,
        phase_unit=unit,
        phase_states=states,
    )


# The web frontend's accounts (docs/frontend.md): a portfolio may carry an account name,
# unique per user, and one of these account types (the frontend's upload form offers them).
ACCOUNT_TYPES: tuple[str, ...] = (
    "taxable", "ira", "roth_ira", "401k", "403b", "529", "hsa", "trust", "other")
MAX_ACCOUNT_NAME_LENGTH = 100
