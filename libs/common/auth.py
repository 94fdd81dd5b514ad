"""Bearer tokens: random, shown once, stored only as a SHA-256 hash.

A token is 32 random bytes (256 bits), so a fast unsalted hash is the right tool: there is
nothing to brute-force (unlike a password), and an O(1) indexed lookup by hash keeps every
API call cheap. A leaked database reveals no usable token.

`create_user_token` is what `sigmabatch token create` calls; status_api's `api.deps`
resolves callers with `lookup_token` and caches them in a `TokenCache` for a few seconds (the
status endpoint is polled hard), so a revoked token stops working within that TTL.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

TOKEN_PREFIX = "sb_"
CACHE_TTL_SECONDS = 10.0
LOCAL_USER = "local"  # the caller when auth is disabled (single-user local runs)


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
    session: AsyncSession, username: str, admin: bool, name: str | None = None
) -> str:
    """Create the user if new and a fresh token for it; returns the token (shown once)."""
    if not username.strip():
        raise ValueError("username must not be empty")
    user = await ensure_user(session, username.strip(), admin)
    token = new_token()
    await session.execute(
        text(
            "INSERT INTO api_tokens (id, user_id, token_hash, name) "
            "VALUES (:id, :user_id, :token_hash, :name)"
        ),
        {"id": uuid.uuid4(), "user_id": user.user_id, "token_hash": hash_token(token), "name": name},
    )
    return token


async def lookup_token(session: AsyncSession, token: str) -> Caller | None:
    row = (
        await session.execute(
            text(
                """
                SELECT u.id, u.username, u.is_admin FROM api_tokens t
                JOIN users u ON u.id = t.user_id
                WHERE t.token_hash = :token_hash AND t.revoked_at IS NULL
                """
            ),
            {"token_hash": hash_token(token)},
        )
    ).first()
    return Caller(row.id, row.username, row.is_admin) if row else None


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

    def put(self, token: str, caller: Caller) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[hash_token(token)] = (caller, time.monotonic() + self.ttl)
