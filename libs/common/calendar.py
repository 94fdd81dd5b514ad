"""NYSE session arithmetic for the nightly batch (exchange_calendars, no hand-kept holiday list).

All decisions are made in US/Eastern: a session's data is only final some time after its close
(16:00, or 13:00 on early-close days) plus a settle delay for the vendors to publish adjusted
closes; before that the batch works on the previous session.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import pandas as pd

EASTERN = ZoneInfo("America/New_York")
CALENDAR_START = "1990-01-02"


@lru_cache(maxsize=4)
def _calendar(end_year: int) -> xcals.ExchangeCalendar:
    # Built far enough ahead for any date asked about; exchange_calendars' default bounds are
    # only the last 20 years and one year ahead.
    return xcals.get_calendar("XNYS", start=CALENDAR_START, end=f"{end_year}-12-31")


def nyse(until: date | None = None) -> xcals.ExchangeCalendar:
    """The XNYS calendar covering at least 1990 .. max(``until``, today) + 1 year."""
    year = max((until or date.today()).year, date.today().year) + 1
    return _calendar(year)


def _ts(day: date) -> pd.Timestamp:
    return pd.Timestamp(day).normalize()


def is_session(day: date) -> bool:
    return bool(nyse(day).is_session(_ts(day)))


def previous_session(day: date) -> date:
    """The last session strictly before ``day`` (``day`` need not be a session)."""
    cal = nyse(day)
    ts = _ts(day)
    if cal.is_session(ts):
        return cal.previous_session(ts).date()
    return cal.date_to_session(ts, direction="previous").date()


def session_on_or_before(day: date) -> date:
    cal = nyse(day)
    return cal.date_to_session(_ts(day), direction="previous").date()


def session_close(day: date) -> datetime:
    """Close of a session as an aware UTC datetime (early closes included)."""
    return nyse(day).session_close(_ts(day)).to_pydatetime()


def sessions_between(start: date, end: date) -> list[date]:
    """Sessions with start <= session <= end."""
    if end < start:
        return []
    cal = nyse(end)
    return [ts.date() for ts in cal.sessions_in_range(_ts(start), _ts(end))]


def effective_trading_date(now: datetime, settle_delay: timedelta = timedelta(hours=1)) -> date:
    """The latest session whose closing data is final at ``now``.

    Today's session counts once ``now`` (converted to US/Eastern) is past its close plus
    ``settle_delay``; otherwise, and on weekends/holidays, it is the previous session.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    today = now.astimezone(EASTERN).date()
    if is_session(today) and now.astimezone(UTC) >= session_close(today) + settle_delay:
        return today
    return previous_session(today)


def missing_sessions(
    last_completed: date | None,
    target: date,
    max_backfill: int | None = None,
    *,
    done: set[date] | frozenset[date] = frozenset(),
    first_completed: date | None = None,
) -> list[date]:
    """Sessions to process up to ``target`` (a session), oldest first.

    No watermark (first run) means the target only. Otherwise every session after
    ``first_completed`` (default: the watermark) not in ``done`` — the holes of the history
    and the sessions after the watermark. ``max_backfill`` keeps the OLDEST N, so a system
    switched off for months catches up over the following runs, in date order, and never
    skips a session for good.
    """
    if not is_session(target):
        raise ValueError(f"{target} is not an NYSE session")
    if last_completed is None:
        return [target]
    start = min(first_completed or last_completed, last_completed)
    if start >= target:
        return []
    pending = [
        d for d in sessions_between(start + timedelta(days=1), target)
        if d not in done and d != last_completed
    ]
    if max_backfill is not None and max_backfill > 0:
        pending = pending[:max_backfill]
    return pending


def holes(done: set[date] | frozenset[date]) -> list[date]:
    """Sessions between the first and the last completed one that were never completed."""
    if len(done) < 2:
        return []
    return [d for d in sessions_between(min(done), max(done)) if d not in done]


def lookback_start(first: date, sessions: int) -> date:
    """The session ``sessions`` sessions before ``first`` (for price windows)."""
    cal = nyse(first)
    ts = cal.date_to_session(_ts(first), direction="previous")
    idx = cal.sessions.get_loc(ts)
    return cal.sessions[max(0, idx - sessions)].date()
