"""Onboarding rules with no I/O: what a portfolio waits for, and how far along it is.

A portfolio's onboarding has three phases: the upload itself (validated and stored in the
request), the symbols it needs that the system did not know (fetched by onboarding workers,
shared across every portfolio that waits for them), and its first snapshot.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from libs.common.portfolio_csv import ParsedPosition

# Symbol onboarding states (symbol_onboarding.status).
PENDING, RUNNING, READY, FAILED = "pending", "running", "ready", "failed"
SETTLED = frozenset({READY, FAILED})

# Portfolio onboarding states (portfolio_onboarding.status), docs/design.md §9.
P_RUNNING, P_COMPLETED, P_PARTIAL, P_FAILED = "running", "completed", "partial", "failed"
MODE_INSTANT, MODE_ASYNC = "v2_instant", "v2_async"

PHASES: tuple[tuple[str, str], ...] = (
    ("upload", "Validate and store positions"),
    ("symbols", "Fetch price history and factor betas of new symbols"),
    ("snapshot", "Compute the first portfolio snapshot"),
)
# Share of the overall percentage each phase stands for (fetching dominates the wait).
PHASE_WEIGHTS = {"upload": 10.0, "symbols": 75.0, "snapshot": 15.0}


def market_data_symbols(positions: Iterable[ParsedPosition]) -> list[str]:
    """Distinct symbols whose price history the positions need, sorted."""
    return sorted({s for p in positions if (s := p.market_data_symbol) is not None})


def default_equity(positions: Iterable[ParsedPosition]) -> Decimal:
    """Net entry value (longs minus shorts, options at their premium).

    The starting equity when the upload does not state one: the capital the positions
    represent. For a long-only book it is what was invested; for a long/short book it is
    the net, which is what P&L returns are measured against.
    """
    total = sum((p.entry_value for p in positions), Decimal(0))
    return total.quantize(Decimal("0.01"))


def final_status(failed_symbols: Iterable[str], snapshot_failed: bool = False) -> str:
    if snapshot_failed:
        return P_FAILED
    return P_PARTIAL if list(failed_symbols) else P_COMPLETED


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
    phase_states: tuple[str, ...]  # per phase: pending / running / completed / failed


def progress(
    *,
    symbols_total: int,
    symbols_settled: int,
    snapshot_requested: bool,
    snapshot_done: bool,
    failed: bool = False,
) -> Progress:
    """Where an onboarding is, from counts the database holds."""
    symbols_done = symbols_settled >= symbols_total
    if snapshot_done:
        states = ("completed", "completed", "completed")
    elif failed:
        states = ("completed", "completed" if symbols_done else "failed",
                  "failed" if symbols_done else "pending")
    elif symbols_done:
        states = ("completed", "completed", "running" if snapshot_requested else "pending")
    else:
        states = ("completed", "running", "pending")
    symbol_share = symbols_settled / symbols_total if symbols_total else 1.0
    percent = PHASE_WEIGHTS["upload"] + PHASE_WEIGHTS["symbols"] * symbol_share
    if snapshot_done:
        percent = 100.0
    if "running" in states:
        index = states.index("running")
    elif "failed" in states:
        index = states.index("failed")
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
        phases_completed=states.count("completed"),
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
