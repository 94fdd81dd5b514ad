"""Bearer tokens: random, shown once, stored only as a SHA-256 hash.

A token is 32 random bytes (256 bits), so a fast unsalted hash is the right tool: there is
nothing to brute-force (unlike a password), and an O(1) indexed lookup by hash keeps every
API call cheap. A leaked database reveals no usable token.

`create_user_token` is what `sigmabatch token create` calls; `list_tokens` and
`revoke_tokens` are `token list` / `token revoke`. A token expires (default: 90 days, set by
`SIGMABATCH_TOKEN_EXPIRES_DAYS` or `--expires-days`; 0 = never). status_api's `api.deps`
resolves callers with `lookup_token` (TokenRejected says whether a token is unknown,
expired or revoked: the 401's message) and caches them in a `TokenCache` for a few seconds
(the status endpoint is polled hard), never past their expiry; a revoked token stops
working within that TTL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

TOKEN_PREFIX = "sb_"
CACHE_TTL_SECONDS = 10.0
DEFAULT_EXPIRES_DAYS = 90
LOCAL_USER = "local"  # the caller when auth is disabled (single-user local runs)
CLERK_USERNAME_PREFIX = "clerk:"  # users of Clerk session tokens (clerk.py); reserved here


@dataclass(frozen=True, slots=True)
class Caller:
    user_id: uuid.UUID
    username: str
    is_admin: bool


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def ensure_user(session: AsyncSession, username: str, admin: bool = False) -> Caller:
    """Create the user if new (an existing user keeps its id; `admin=True` promotes it)."""
    row = (
        await session.execute(
            text(
                """
                INSERT INTO users (id, username, is_admin) VALUES (:id, :username, :admin)
                ON CONFLICT (username) DO UPDATE SET is_admin = users.is_admin OR :admin
                RETURNING id, username, is_admin
                """
            ),
            {"id": uuid.uuid4(), "username": username, "admin": admin},
        )
    ).one()
    return Caller(row.id, row.username, row.is_admin)


async def create_user_token(
    session: AsyncSession,
    username: str,
    admin: bool,
    name: str | None = None,
    expires_days: int | None = DEFAULT_EXPIRES_DAYS,
) -> str:
    """Create the user if new and a fresh token for it; returns the token (shown once).

    `expires_days` None or 0: the token never expires (for a service account, revoke it
    when done with it).
    """
    if not username.strip():
        raise ValueError("username must not be empty")
    if username.strip().startswith(CLERK_USERNAME_PREFIX):
        raise ValueError(f"usernames starting {CLERK_USERNAME_PREFIX!r} are reserved for users "
                         "signed in with Clerk")
    if expires_days is not None and expires_days < 0:
        raise ValueError("expires_days must be 0 (never) or more")
    user = await ensure_user(session, username.strip(), admin)
    token = new_token()
    await session.execute(
        text(
            "INSERT INTO api_tokens (id, user_id, token_hash, name, expires_at) "
            "VALUES (:id, :user_id, :token_hash, :name, "
            "CASE WHEN CAST(:days AS integer) > 0 "
            "THEN now() + make_interval(days => CAST(:days AS integer)) END)"
        ),
        {"id": uuid.uuid4(), "user_id": user.user_id, "token_hash": hash_token(token),
         "name": name, "days": expires_days or 0},
    )
    return token


class TokenRejected(Exception):
    """A presented token that cannot be used; the message says why (it goes in the 401)."""


@dataclass(frozen=True, slots=True)
class Resolved:
    caller: Caller
    expires_at: dt.datetime | None


async def lookup_token(session: AsyncSession, token: str) -> Resolved:
    """The token's caller; TokenRejected (unknown, revoked or expired) otherwise.

    Marks the token used (at most once a minute, so polling costs no write per request).
    """
    row = (
        await session.execute(
            text(
                """
                SELECT t.id, t.revoked_at, t.expires_at, t.expires_at <= now() AS expired,
                       u.id AS user_id, u.username, u.is_admin
                FROM api_tokens t JOIN users u ON u.id = t.user_id
                WHERE t.token_hash = :token_hash
                """
            ),
            {"token_hash": hash_token(token)},
        )
    ).first()
    if row is None:
        raise TokenRejected("Invalid token.")
    if row.revoked_at is not None:
        raise TokenRejected(
            f"This token was revoked on {row.revoked_at:%Y-%m-%d %H:%M} UTC; "
            "ask for a new one (`sigmabatch token create`).")
    if row.expired:
        raise TokenRejected(
            f"This token expired on {row.expires_at:%Y-%m-%d %H:%M} UTC; "
            "ask for a new one (`sigmabatch token create`).")
    await session.execute(
        text("UPDATE api_tokens SET last_used_at = now() WHERE id = :id "
             "AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')"),
        {"id": row.id},
    )
    return Resolved(Caller(row.user_id, row.username, row.is_admin), row.expires_at)


async def list_tokens(session: AsyncSession, username: str | None = None) -> list[dict[str, Any]]:
    """Every token's metadata (never the token nor its hash), newest first."""
    rows = await session.execute(
        text(
            """
            SELECT t.id, u.username AS "user", u.is_admin AS admin, t.name, t.created_at,
                   t.expires_at, t.last_used_at, t.revoked_at,
                   CASE WHEN t.revoked_at IS NOT NULL THEN 'revoked'
                        WHEN t.expires_at <= now() THEN 'expired'
                        ELSE 'active' END AS status
            FROM api_tokens t JOIN users u ON u.id = t.user_id
            WHERE CAST(:username AS text) IS NULL OR u.username = :username
            ORDER BY t.created_at DESC, t.id
            """
        ),
        {"username": username},
    )
    return [dict(r) for r in rows.mappings()]


async def revoke_tokens(
    session: AsyncSession, *, token_id: uuid.UUID | None = None, username: str | None = None
) -> int:
    """Revoke one token by id, or every unrevoked token of a user; returns how many.

    ValueError when the id or the user does not exist (an operator's typo must not pass as
    "nothing to revoke"). Revoking again is harmless (0).
    """
    if (token_id is None) == (username is None):
        raise ValueError("give a token id or a user, not both")
    if token_id is not None:
        found = (await session.execute(
            text("SELECT revoked_at FROM api_tokens WHERE id = :id"), {"id": token_id})).first()
        if found is None:
            raise ValueError(f"no token with id {token_id}")
        filter_sql, params = "id = :id", {"id": token_id}
    else:
        user = (await session.execute(
            text("SELECT id FROM users WHERE username = :u"), {"u": username})).first()
        if user is None:
            raise ValueError(f"no user named {username!r}")
        filter_sql, params = "user_id = :user_id", {"user_id": user.id}
    result = await session.execute(
        text(f"UPDATE api_tokens SET revoked_at = now() WHERE {filter_sql} "
             "AND revoked_at IS NULL RETURNING id"), params)
    return len(result.all())


class TokenCache:
    """hash → (caller, expiry): saves a DB round trip per poll."""

    def __init__(self, ttl: float = CACHE_TTL_SECONDS) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[Caller, float]] = {}

    def get(self, token: str) -> Caller | None:
        entry = self._entries.get(hash_token(token))
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, token: str, caller: Caller, expires_at: dt.datetime | None = None) -> None:
        """Keep it for the TTL, but never past the token's own expiry."""
        if len(self._entries) > 10_000:
            self._entries.clear()
        ttl = self.ttl
        if expires_at is not None:
            ttl = min(ttl, (expires_at - dt.datetime.now(dt.UTC)).total_seconds())
        if ttl > 0:
            self._entries[hash_token(token)] = (caller, time.monotonic() + ttl)
