"""Typed FastAPI dependencies: every route states what it needs in its signature.

- `StateDep` / `SettingsDep`: the process's `ApiState` and `Settings`.
- `SessionDep`: ONE database session per request (lazy: no connection until the first
  statement; committed when the route returns, rolled back on an exception). The caller's
  token lookup, the ownership check and the route's reads all share it.
- `CallerDep` / `AdminDep`: the authenticated caller (401), an admin (403).
- `OwnedPortfolioDep`: the caller's portfolio named by the `portfolio_id` path parameter, or
  404 (another user's portfolio is indistinguishable from a missing one).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, cast

import asyncpg
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from libs.common.auth import LOCAL_USER, Caller, TokenRejected, ensure_user, lookup_token
from libs.common.clerk import looks_like_jwt, resolve_clerk_token
from libs.common.config import Settings
from libs.common.db import session_scope
from services.status_api import queries
from services.status_api.api.state import ApiState


def get_state(request: Request) -> ApiState:
    return cast(ApiState, request.app.state.api)


StateDep = Annotated[ApiState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    async with session_scope(state.database_url) as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def get_pg_pool(state: StateDep) -> asyncpg.Pool:
    if state.pg_pool is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="Starting up.")
    return state.pg_pool


PgPoolDep = Annotated[asyncpg.Pool, Depends(get_pg_pool)]

bearer_scheme = HTTPBearer(auto_error=False, description="A token from `sigmabatch token create`.")
CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail,
                         headers={"WWW-Authenticate": "Bearer"})


async def authenticate(state: ApiState, session: AsyncSession,
                       authorization: str | None) -> Caller:
    """The caller of an `Authorization` header value, or 401 saying why (missing, unknown,
    expired, revoked). Shared by `resolve_caller` and the body guard (which authenticates
    before a request body is read). A JWT is a Clerk session token of the web frontend
    (verified offline, `libs.common.clerk`); anything else is a sigmabatch token. Resolved
    tokens are cached for a few seconds (the status endpoint is polled hard), so most requests
    never touch the session."""
    if state.settings.auth_disabled:
        if state.local_caller is None:
            state.local_caller = await ensure_user(session, LOCAL_USER, admin=True)
        return state.local_caller
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("Missing bearer token: send 'Authorization: Bearer <token>'.")
    caller = state.token_cache.get(token)
    if caller is None:
        try:
            if looks_like_jwt(token):
                resolved = await resolve_clerk_token(session, state.database_url, state.clerk,
                                                     token)
            else:
                resolved = await lookup_token(session, token)
        except TokenRejected as rejected:
            raise _unauthorized(str(rejected)) from None
        caller = resolved.caller
        state.token_cache.put(token, caller, resolved.expires_at)
    return caller


async def resolve_caller(request: Request, state: StateDep, session: SessionDep,
                         credentials: CredentialsDep) -> Caller:
    """The authenticated caller, or 401. A request with a body was authenticated by the body
    guard before its body was read: its caller is in `request.state.caller`."""
    known = getattr(request.state, "caller", None)
    if isinstance(known, Caller):
        return known
    del credentials  # declared for OpenAPI's security scheme; the header is read directly
    return await authenticate(state, session, request.headers.get("authorization"))


CallerDep = Annotated[Caller, Depends(resolve_caller)]


async def require_admin(caller: CallerDep) -> Caller:
    if not caller.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="This endpoint is for admins only.")
    return caller


AdminDep = Annotated[Caller, Depends(require_admin)]


async def owned_portfolio(session: SessionDep, caller: CallerDep,
                          portfolio_id: uuid.UUID) -> dict[str, Any]:
    found = await queries.portfolio(session, caller.user_id, portfolio_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="Portfolio not found.")
    return found


OwnedPortfolioDep = Annotated[dict[str, Any], Depends(owned_portfolio)]
