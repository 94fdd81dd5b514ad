"""Bearer tokens: random, shown once, stored only as a SHA-256 hash.

A token is 32 random bytes (256 bits), so a fast unsalted hash is the right tool: there is
nothing to brute-force (unlike a password), and an O(1) indexed lookup by hash keeps every
API call cheap. A leaked database reveals no usable token.

`create_user_token` is what `sigmabatch token create` calls. `resolve_caller` is the FastAPI
dependency: 401 without a valid token, the caller otherwise. Resolved tokens are cached in
process for a few seconds (the status endpoint is polled hard); a revoked token stops working
within that TTL.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.db import session_scope

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


bearer_scheme = HTTPBearer(auto_error=False, description="A token from `sigmabatch token create`.")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


async def resolve_caller(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),  # noqa: B008
) -> Caller:
    """FastAPI dependency: the authenticated caller, or 401.

    Needs `app.state.database_url`, `app.state.token_cache` and `app.state.auth_disabled`.
    """
    state = request.app.state
    if state.auth_disabled:
        caller = getattr(state, "local_caller", None)
        if caller is None:
            async with session_scope(state.database_url) as session:
                caller = await ensure_user(session, LOCAL_USER, admin=True)
            state.local_caller = caller
        return caller
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise _unauthorized("Missing bearer token: send 'Authorization: Bearer <token>'.")
    token = credentials.credentials
    cache: TokenCache = state.token_cache
    caller = cache.get(token)
    if caller is None:
        async with session_scope(state.database_url) as session:
            caller = await lookup_token(session, token)
        if caller is None:
            raise _unauthorized("Invalid or revoked token.")
        cache.put(token, caller)
    return caller


async def require_admin(caller: Caller = Depends(resolve_caller)) -> Caller:  # noqa: B008
    if not caller.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="This endpoint is for admins only.")
    return caller
