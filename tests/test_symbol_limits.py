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


async def test_limits_through_the_api_refuse_with_422_and_429_and_write_nothing(settings) -> None:
    from tests.test_api_helpers import api_client, count, csv_bytes, stock_rows, token_for

    limited = settings.model_copy(update={"max_new_symbols_per_upload": 3,
                                          "max_new_symbols_per_day": 5})
    alice = await token_for(settings.database_url, "alice")
    bob = await token_for(settings.database_url, "bob")

    def form(*symbols: str) -> dict:
        data = csv_bytes(*stock_rows(list(symbols)))
        return {"files": {"file": ("p.csv", data, "text/csv")}, "data": {"name": "P"}}

    async with api_client(limited) as client:
        post = client.post
        too_many = await post("/api/v1/portfolios", headers=alice, **form("NWA", "NWB", "NWC", "NWD"))
        assert too_many.status_code == 422
        problem = too_many.json()["errors"][0]
        assert problem["column"] == "Symbol"
        assert "4 symbols new" in problem["message"]
        assert "SIGMABATCH_MAX_NEW_SYMBOLS_PER_UPLOAD" in problem["message"]

        first = await post("/api/v1/portfolios", headers=alice, **form("NWA", "NWB", "NWC"))
        assert first.status_code == 201, first.text
        over_day = await post("/api/v1/portfolios", headers=alice, **form("NWD", "NWE", "NWF"))
        assert over_day.status_code == 429, over_day.text
        assert "SIGMABATCH_MAX_NEW_SYMBOLS_PER_DAY" in over_day.json()["detail"]
        assert "limit is 5" in over_day.json()["detail"]
        # the window's oldest symbols were asked for a moment ago: they age out in ~24 h
        assert 86_000 <= int(over_day.headers["retry-after"]) <= 86_400
        # a symbol already counted today is free to ask again: {A, B, C} + {A, D, E} = 5 fits
        again = await post("/api/v1/portfolios", headers=alice, **form("NWA", "NWD", "NWE"))
        assert again.status_code == 201, again.text
        # the web frontend's upload is under the same quota (its own error shape)
        frontend = await post(
            "/api/v1/onboarding/create-portfolio", headers=alice,
            files={"csv_file": ("p.csv", csv_bytes(*stock_rows(["NWX"])), "text/csv")},
            data={"portfolio_name": "F", "account_name": "F", "account_type": "taxable",
                  "equity_balance": "100000"})
        assert frontend.status_code == 429, frontend.text
        assert frontend.json()["detail"]["error"] == "new_symbol_limit"
        assert int(frontend.headers["retry-after"]) > 0
        # per user: bob has his own quota
        other = await post("/api/v1/portfolios", headers=bob, **form("NWF", "NWG", "NWH"))
        assert other.status_code == 201, other.text

    assert await count(settings.database_url, "portfolios") == 3
    assert await count(settings.database_url, "portfolio_onboarding") == 3
    assert await count(settings.database_url, "symbol_onboarding") == 8  # NWA..NWH
