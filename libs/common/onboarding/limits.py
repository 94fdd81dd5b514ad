"""Per-user limits on new symbols (issue 12, finding 9): one upload must not enqueue 10,000.

A new symbol is one not in the symbol universe: each costs a provider fetch of a year of
prices, a profile and factor betas. Two limits, both per user:

- per upload (default 200): more is refused with 422, like any other problem of the file;
- per rolling 24 hours (default 1,000 distinct symbols over the user's uploads of the last
  24 hours): more is refused with 429 and a Retry-After saying when enough of the window's
  symbols will have aged out for this very upload to pass.

A symbol counts once however many of the user's portfolios ask for it. 0 disables a limit.
A refused upload writes nothing (the check runs in the upload's transaction, before any
insert, under a per-user advisory lock so that two concurrent uploads cannot both pass).
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.config import Settings

WINDOW = dt.timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class NewSymbolLimits:
    per_upload: int = 200
    per_day: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> NewSymbolLimits:
        return cls(per_upload=settings.max_new_symbols_per_upload,
                   per_day=settings.max_new_symbols_per_day)


class NewSymbolLimitExceeded(Exception):
    """An upload over a new-symbol limit; `status` is the HTTP status to answer.

    422: the upload alone is over a limit (retrying cannot help); 429: the user's last 24
    hours plus this upload are over the daily limit, `retry_after_seconds` says when not.
    """

    def __init__(self, message: str, *, status: int, limit_name: str, limit: int,
                 retry_after_seconds: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.limit_name = limit_name
        self.limit = limit
        self.retry_after_seconds = retry_after_seconds


def _sample(symbols: Collection[str], limit: int = 8) -> str:
    shown = sorted(symbols)[:limit]
    return ", ".join(shown) + (f" and {len(symbols) - limit} more" if len(symbols) > limit else "")


def check_upload_size(new_symbols: Collection[str], limits: NewSymbolLimits) -> None:
    """422 when the upload alone has more new symbols than a limit allows."""
    for name, limit, setting in (
        ("per upload", limits.per_upload, "SIGMABATCH_MAX_NEW_SYMBOLS_PER_UPLOAD"),
        ("per day", limits.per_day, "SIGMABATCH_MAX_NEW_SYMBOLS_PER_DAY"),
    ):
        if limit and len(new_symbols) > limit:
            raise NewSymbolLimitExceeded(
                f"The upload has {len(new_symbols):,} symbols new to sigmabatch "
                f"({_sample(new_symbols)}); the limit is {limit:,} new symbols {name} "
                f"({setting}). Split the portfolio or ask an operator to add the symbols.",
                status=422, limit_name=setting, limit=limit)


def seconds_until_room(
    last_seen: Mapping[str, dt.datetime], new_symbols: Collection[str], limit: int,
    now: dt.datetime, window: dt.timedelta = WINDOW,
) -> int | None:
    """None when the user's window plus `new_symbols` fits in `limit`; else the seconds until
    enough of the window's symbols (by the time the user last asked for each) have aged out.

    `last_seen`: symbol → latest upload of the user in the window that asked for it. Symbols
    of this upload already in the window never free room (asking again keeps them counted).
    Assumes len(new_symbols) <= limit (`check_upload_size` refused the rest).
    """
    wanted = set(new_symbols)
    used = len(set(last_seen) | wanted)
    if used <= limit:
        return None
    removable = sorted(seen for symbol, seen in last_seen.items() if symbol not in wanted)
    freed_at = removable[used - limit - 1] + window
    return max(1, math.ceil((freed_at - now).total_seconds()))


async def check_daily_quota(session: AsyncSession, user_id: uuid.UUID,
                            new_symbols: Collection[str], limits: NewSymbolLimits) -> None:
    """429 when the user's new symbols of the last 24 hours plus these pass the daily limit.

    Call inside the upload's transaction before anything is written: the advisory lock
    (released at commit) serialises one user's concurrent uploads through this check.
    """
    if not new_symbols or not limits.per_day:
        return
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                          {"key": f"sigmabatch-new-symbols:{user_id}"})
    rows = (await session.execute(
        text(
            """
            SELECT pos.symbol, max(p.created_at) AS last_seen, now() AS now
            FROM portfolio_onboarding_symbols pos JOIN portfolios p ON p.id = pos.portfolio_id
            WHERE p.user_id = :user_id AND p.created_at > now() - make_interval(secs => :window)
            GROUP BY pos.symbol
            """
        ),
        {"user_id": user_id, "window": WINDOW.total_seconds()},
    )).all()
    if not rows:
        return
    last_seen = {r.symbol: r.last_seen for r in rows}
    wait = seconds_until_room(last_seen, new_symbols, limits.per_day, rows[0].now)
    if wait is None:
        return
    fresh = set(new_symbols) - set(last_seen)
    raise NewSymbolLimitExceeded(
        f"You asked for {len(last_seen):,} new symbols in the last 24 hours and this upload "
        f"adds {len(fresh):,} more; the limit is {limits.per_day:,} new symbols per user per "
        f"day (SIGMABATCH_MAX_NEW_SYMBOLS_PER_DAY). Nothing was saved: retry in {wait:,} s, "
        "or upload without the new symbols.",
        status=429, limit_name="SIGMABATCH_MAX_NEW_SYMBOLS_PER_DAY", limit=limits.per_day,
        retry_after_seconds=wait)
