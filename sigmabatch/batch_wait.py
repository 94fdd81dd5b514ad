"""`sigmabatch trigger nightly` before and after the publish: is there anything to do, and
`--wait`'s progress (per phase, then per date) and summary.

Everything is read from the database (SQL in `sigmabatch/queries.py`), the one truth the
services share: the symbol batch's job row (`batch_run_history`, keyed by its target date)
for phases and progress, the watermark table (`symbol_batch_dates`, a row per completed date, with failures and reasons)
and, per date, the refresh's plan job and complete snapshots.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from sigmabatch import queries

SYMBOL_BATCH = "symbol_batch"
REFRESH_PLAN = "portfolio_refresh"
FINAL = ("completed", "partial", "failed")
BAR_WIDTH = 24
NOTHING_TO_DO_AFTER_SECONDS = 15.0  # no run started by then: ask whether there was any work


@dataclass(frozen=True)
class BatchState:
    """What the database says about a target date before a trigger."""

    date_status: str | None  # completed / partial when the date is in the watermark table
    symbols_total: int | None
    symbols_failed: int | None
    running_key: str | None  # a symbol batch run in progress (any target date)
    running_phase: str | None
    running_progress: tuple[int, int] | None
    watermark: dt.date | None


async def batch_state(database_url: str, target: dt.date) -> BatchState:
    from libs.common.db import session_scope

    async with session_scope(database_url) as session:
        day = await queries.batch_date_row(session, target)
        running = await queries.running_symbol_batch(session, SYMBOL_BATCH)
        watermark = await queries.batch_watermark(session)
    return BatchState(
        date_status=day["status"] if day else None,
        symbols_total=day["symbols_total"] if day else None,
        symbols_failed=day["symbols_failed"] if day else None,
        running_key=running["job_key"] if running else None,
        running_phase=running["current_phase"] if running else None,
        running_progress=(running["progress_current"], running["progress_total"])
        if running else None,
        watermark=watermark,
    )


def bar(current: int, total: int, width: int = BAR_WIDTH) -> str:
    filled = 0 if total <= 0 else min(width, round(width * current / total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


@dataclass
class Progress:
    """Snapshot of a run for display: the job, its dates, and each date's refresh."""

    job: dict[str, Any] | None = None
    dates: list[dict[str, Any]] = field(default_factory=list)
    refresh: dict[dt.date, dict[str, Any]] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        if self.job is None or self.job["status"] not in FINAL:
            return False
        if self.job["status"] == "failed":
            return True
        # every date of the run refreshed: its plan finished and each planned portfolio done
        return all(
            (r := self.refresh.get(d["batch_date"])) is not None
            and r["status"] in FINAL
            and r["snapshots"] >= r["planned"]
            for d in self.dates
        )

    def lines(self) -> list[str]:
        if self.job is None:
            return ["waiting for the symbol batch to start…"]
        job = self.job
        out = [f"symbol batch {job['job_key']}: {job['status']}"]
        for phase in job["phases"] or []:
            current, total = phase.get("current") or 0, phase.get("total") or 0
            seconds = _phase_seconds(phase)
            out.append(
                f"  {phase.get('name', '?'):<13}{bar(current, total)} {current}/{total} "
                f"{phase.get('unit') or ''}".rstrip()
                + (f"  {seconds:.1f} s" if seconds is not None else "")
                + ("" if phase.get("status") != "running" else "  …")
            )
        for d in self.dates:
            r = self.refresh.get(d["batch_date"])
            refresh = (
                "refresh waiting" if r is None
                else f"refresh {bar(r['snapshots'], r['planned'], 10)} "
                     f"{min(r['snapshots'], r['planned'])}/{r['planned']} portfolios ({r['status']})"
            )
            out.append(f"  {d['batch_date']}  {d['status']:<9} {d['symbols_total']} symbols, "
                       f"{d['symbols_failed']} failed   {refresh}")
        return out


def _phase_seconds(phase: dict[str, Any]) -> float | None:
    try:
        return (dt.datetime.fromisoformat(phase["finished_at"])
                - dt.datetime.fromisoformat(phase["started_at"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


async def read_progress(database_url: str, key: str, since: dt.datetime) -> Progress:
    from libs.common.db import session_scope

    progress = Progress()
    async with session_scope(database_url) as session:
        progress.job = await queries.symbol_batch_run(session, SYMBOL_BATCH, key, since)
        if progress.job is None:
            return progress
        progress.dates = await queries.run_dates(session, progress.job["id"])
        days = [d["batch_date"] for d in progress.dates]
        for r in await queries.date_refreshes(session, REFRESH_PLAN, days) if days else []:
            if r["status"] is not None:
                progress.refresh[r["batch_date"]] = {
                    "status": r["status"], "planned": r["planned"] or 0,
                    "snapshots": r["snapshots"]}
    return progress


def summary(progress: Progress, elapsed: float) -> str:
    job = progress.job
    assert job is not None
    result = job.get("result") or {}
    lines = ["", f"Summary: symbol batch {job['job_key']} {job['status']} after {elapsed:.1f} s"]
    if job.get("error"):
        lines.append(f"  error: {job['error']}")
    phases = [f"{p.get('name')} {s:.1f} s" for p in job["phases"] or []
              if (s := _phase_seconds(p)) is not None]
    if phases:
        lines.append("  phases: " + ", ".join(phases))
    if progress.dates:
        first, last = progress.dates[0]["batch_date"], progress.dates[-1]["batch_date"]
        lines.append(f"  dates: {len(progress.dates)} ({first} .. {last}), "
                     f"{result.get('symbols_total', progress.dates[-1]['symbols_total'])} symbols")
        for d in progress.dates:
            r = progress.refresh.get(d["batch_date"], {})
            lines.append(f"    {d['batch_date']}  {d['status']:<9} {d['symbols_failed']} symbol(s) "
                         f"failed, {r.get('snapshots', 0)} portfolio snapshot(s)")
            for symbol, reason in sorted((d["failures"] or {}).items())[:10]:
                lines.append(f"      {symbol}: {reason}")
    else:
        lines.append("  no date was processed")
    return "\n".join(lines)


async def wait_for_batch(database_url: str, key: str, since: dt.datetime, *,
                         within_seconds: float, out: TextIO | None = None,
                         poll_seconds: float = 0.5) -> int:
    """Show the run's progress until it and the refresh of its dates finish; 0 unless failed
    (or timed out: 1). A terminal redraws in place; a log or cron mail gets changed lines."""
    out = out or sys.stdout
    live = out.isatty()
    began = time.monotonic()
    shown: list[str] = []
    progress = Progress()
    while time.monotonic() - began < within_seconds:
        progress = await read_progress(database_url, key, since)
        lines = progress.lines()
        if lines != shown:
            if live and shown:
                out.write(f"\x1b[{len(shown)}F\x1b[J")  # back up over the last drawing
                out.write("\n".join(lines) + "\n")
            elif live:
                out.write("\n".join(lines) + "\n")
            else:
                out.write("\n".join(line for line in lines if line not in shown) + "\n")
            out.flush()
            shown = lines
        if progress.job is None and time.monotonic() - began > NOTHING_TO_DO_AFTER_SECONDS:
            state = await batch_state(database_url, dt.date.fromisoformat(key))
            if state.running_key is None and state.watermark and state.watermark >= dt.date.fromisoformat(key):
                out.write(f"the symbol batch found nothing to do for {key} "
                          f"(watermark {state.watermark})\n")
                return 0
        if progress.finished:
            out.write(summary(progress, time.monotonic() - began) + "\n")
            out.flush()
            return 1 if progress.job and progress.job["status"] == "failed" else 0
        await asyncio.sleep(poll_seconds)
    out.write(f"timed out after {within_seconds:.0f} s; the run goes on: see `sigmabatch status`\n")
    return 1
