"""The nightly cycle scenario every end-to-end and fault test runs.

1. An operator's deployment: universe seeded, the batch last completed on WATERMARK.
2. The nightly trigger for FIRST_TARGET: the batch backfills the missed sessions.
3. Two users' portfolios are uploaded through the API: every symbol known → first snapshot
   at once (v2_instant).
4. The nightly trigger for SECOND_TARGET: two more sessions; portfolio_refresh reacts to each
   `symbol.batch.completed` and snapshots every portfolio, in date order.
Fault hooks run at named points of the scenario; the final digest must equal a clean run's.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.harness import System

FIXTURES = Path(__file__).resolve().parents[2] / "examples"
PORTFOLIOS = ("balanced-retirement.csv", "tech-focused-professional.csv")
WATERMARK = dt.date(2026, 11, 13)  # a Friday
FIRST_TARGET = dt.date(2026, 11, 18)  # backfills Mon 16, Tue 17, Wed 18
FIRST_DATES = [dt.date(2026, 11, 16), dt.date(2026, 11, 17), dt.date(2026, 11, 18)]
SECOND_TARGET = dt.date(2026, 11, 20)
SECOND_DATES = [dt.date(2026, 11, 19), dt.date(2026, 11, 20)]

Fault = Callable[[System], None]


def portfolio_files() -> list[Path]:
    return [FIXTURES / name for name in PORTFOLIOS]


def symbols_of(paths: list[Path]) -> list[str]:
    symbols: set[str] = set()
    for path in paths:
        lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
        for row in csv.DictReader(lines):
            if (row["Investment Class"] or "PUBLIC") == "PUBLIC" and row["Symbol"]:
                symbols.add(row["Symbol"])
    return sorted(symbols)


def run_scenario(system: System, faults: dict[str, Fault] | None = None) -> dict[str, Any]:
    faults = faults or {}

    def hook(point: str) -> None:
        if point in faults:
            faults[point](system)

    files = portfolio_files()
    system.start_all()
    system.seed_universe(symbols_of(files))
    system.set_watermark(WATERMARK)
    system.login("alice")

    system.trigger(FIRST_TARGET)
    hook("after_first_trigger")
    system.wait_for_cycle(FIRST_DATES, portfolios=0)

    for path in files:
        created = system.upload(path, name=path.stem)
        hook("after_upload")
        status = system.wait_onboarded(created["portfolio_id"])
        assert status["status"] == "completed", status
        assert status["mode"] == "v2_instant", status

    hook("before_second_trigger")
    system.trigger(SECOND_TARGET)
    hook("after_second_trigger")
    system.wait_for_cycle(SECOND_DATES, portfolios=len(files))
    hook("before_digest")
    return system.digest()
