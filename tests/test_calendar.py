"""NYSE calendar helpers: weekends, holidays, early closes, settle delay, backfill windows."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from libs.common import calendar as cal

HOUR = timedelta(hours=1)


def eastern(*args: int) -> datetime:
    return datetime(*args, tzinfo=cal.EASTERN)


def test_after_close_plus_settle_delay_is_today():
    # Wednesday 2025-11-26, regular close 16:00 ET.
    assert cal.effective_trading_date(eastern(2025, 11, 26, 17, 1), HOUR) == date(2025, 11, 26)


def test_before_settle_delay_is_previous_session():
    assert cal.effective_trading_date(eastern(2025, 11, 26, 16, 59), HOUR) == date(2025, 11, 25)
    assert cal.effective_trading_date(eastern(2025, 11, 26, 9, 0), HOUR) == date(2025, 11, 25)


def test_weekend_resolves_to_friday():
    assert cal.effective_trading_date(eastern(2025, 11, 22, 12, 0), HOUR) == date(2025, 11, 21)
    assert cal.effective_trading_date(eastern(2025, 11, 23, 23, 0), HOUR) == date(2025, 11, 21)


def test_thanksgiving_holiday_and_early_close():
    # Thanksgiving 2025-11-27 closed; Friday 2025-11-28 closes at 13:00 ET.
    assert not cal.is_session(date(2025, 11, 27))
    assert cal.effective_trading_date(eastern(2025, 11, 27, 20, 0), HOUR) == date(2025, 11, 26)
    assert cal.effective_trading_date(eastern(2025, 11, 28, 14, 30), HOUR) == date(2025, 11, 28)
    assert cal.effective_trading_date(eastern(2025, 11, 28, 13, 30), HOUR) == date(2025, 11, 26)


def test_timezone_is_eastern_not_utc():
    # 2025-11-27 02:00 UTC is still Wednesday 21:00 in New York.
    now = datetime(2025, 11, 27, 2, 0, tzinfo=UTC)
    assert cal.effective_trading_date(now, HOUR) == date(2025, 11, 26)
    with pytest.raises(ValueError):
        cal.effective_trading_date(datetime(2025, 11, 27, 2, 0), HOUR)


def test_previous_session_skips_weekends_and_holidays():
    assert cal.previous_session(date(2026, 1, 2)) == date(2025, 12, 31)  # New Year's Day
    assert cal.previous_session(date(2025, 12, 29)) == date(2025, 12, 26)  # weekend + Christmas
    assert cal.previous_session(date(2025, 12, 27)) == date(2025, 12, 26)  # Saturday
    assert cal.session_on_or_before(date(2025, 12, 25)) == date(2025, 12, 24)
    assert cal.session_on_or_before(date(2025, 12, 24)) == date(2025, 12, 24)


def test_missing_sessions_first_run_is_target_only():
    assert cal.missing_sessions(None, date(2025, 12, 31)) == [date(2025, 12, 31)]


def test_missing_sessions_backfills_skipping_weekends_and_holidays():
    got = cal.missing_sessions(date(2025, 12, 22), date(2026, 1, 5))
    assert got == [
        date(2025, 12, 23),
        date(2025, 12, 24),
        date(2025, 12, 26),
        date(2025, 12, 29),
        date(2025, 12, 30),
        date(2025, 12, 31),
        date(2026, 1, 2),
        date(2026, 1, 5),
    ]


def test_missing_sessions_beyond_the_cap_are_done_oldest_first_by_following_runs():
    # Issue 12 finding 7: the cap used to keep the newest N and skip the oldest for good.
    got = cal.missing_sessions(date(2025, 1, 2), date(2025, 12, 31), max_backfill=3)
    assert got == [date(2025, 1, 3), date(2025, 1, 6), date(2025, 1, 7)]
    done = {date(2025, 1, 2), *got}
    following = cal.missing_sessions(max(done), date(2025, 12, 31), max_backfill=3, done=done,
                                      first_completed=min(done))
    assert following == [date(2025, 1, 8), date(2025, 1, 10), date(2025, 1, 13)]  # 9th: closed


def test_holes_are_listed_and_filled_before_newer_sessions():
    done = {date(2025, 12, 22), date(2025, 12, 24), date(2025, 12, 29)}
    assert cal.holes(done) == [date(2025, 12, 23), date(2025, 12, 26)]
    got = cal.missing_sessions(date(2025, 12, 29), date(2025, 12, 31), max_backfill=3,
                               done=done, first_completed=date(2025, 12, 22))
    assert got == [date(2025, 12, 23), date(2025, 12, 26), date(2025, 12, 30)]


def test_nothing_missing_when_up_to_date():
    assert cal.missing_sessions(date(2025, 12, 31), date(2025, 12, 31)) == []
    assert cal.missing_sessions(date(2026, 1, 2), date(2025, 12, 31)) == []


def test_target_must_be_a_session():
    with pytest.raises(ValueError):
        cal.missing_sessions(None, date(2025, 12, 25))


def test_early_close_session_close_time():
    close = cal.session_close(date(2025, 12, 24)).astimezone(cal.EASTERN)
    assert (close.hour, close.minute) == (13, 0)
    assert cal.session_close(date(2025, 12, 23)).astimezone(cal.EASTERN).hour == 16


def test_lookback_start_counts_sessions():
    start = cal.lookback_start(date(2026, 1, 5), 8)
    assert start == date(2025, 12, 22)
    assert len(cal.sessions_between(start, date(2026, 1, 5))) == 9


def test_far_future_and_old_dates_are_covered():
    assert cal.is_session(date(1990, 1, 2))
    assert cal.previous_session(date(2031, 7, 6)) == date(2031, 7, 3)  # Fourth of July weekend
