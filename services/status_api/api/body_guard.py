"""Pure-ASGI guard in front of every API request that carries a body (issue 12, finding 5).

FastAPI reads and parses a form body before it solves the endpoint's dependencies, so the
bearer-token check would run only after a (possibly huge) upload had been spooled. This
guard, for POST/PUT/PATCH under `/api/v1`:

1. authenticates first, from the `Authorization` header alone: a missing or bad token is
   answered 401 before one byte of the body is read (the caller is handed on in
   `scope["state"]["caller"]`, so the endpoint's dependency does not look it up again);
2. caps the body while it is read: a Content-Length over the cap is refused 413 at once,
   and a body without one (chunked) is counted in the ASGI receive loop and refused 413 as
   soon as it passes the cap, whatever the app was doing with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from libs.common.db import session_scope
from services.status_api.api.deps import authenticate
from services.status_api.api.state import ApiState

Scope = dict[str, Any]
Message = dict[str, Any]
GUARDED_METHODS = frozenset({"POST", "PUT", "PATCH"})


# Multipart boundaries, part headers and the other form fields around an uploaded file.
MULTIPART_OVERHEAD = 64 * 1024
# Every other guarded body (JSON commands) is small.
DEFAULT_LIMIT = 1024 * 1024


class BodyTooLarge(Exception):
    """Raised into the app's body reader when the body passes the cap."""


def _error(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail, "errors": []},
                        headers={"Connection": "close", **(headers or {})})


class BodyGuard:
    """`limits`: path → byte cap (exact path); `default_limit` for every other guarded path."""

    def __init__(self, app: Any, *, prefix: str, default_limit: int,
                 limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.prefix = prefix
        self.default_limit = default_limit
        self.limits = limits or {}

    def _too_large(self, limit: int) -> JSONResponse:
        return _error(413, f"The request body is larger than the limit of {limit:,} bytes "
                           f"({limit / (1024 * 1024):.1f} MB); nothing was saved.")

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if (scope["type"] != "http" or scope["method"] not in GUARDED_METHODS
                or not scope["path"].startswith(self.prefix)):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        state: ApiState = scope["app"].state.api
        authorization = (headers.get(b"authorization") or b"").decode("latin-1")
        try:
            async with session_scope(state.database_url) as session:
                caller = await authenticate(state, session, authorization)
        except HTTPException as refused:
            await _error(refused.status_code, str(refused.detail),
                         refused.headers)(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = caller

        limit = self.limits.get(scope["path"], self.default_limit)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(limit)(scope, receive, send)
            return

        received = 0
        overflowed = False
        response_started = False

        async def counted_receive() -> Message:
            nonlocal received, overflowed
            if overflowed:
                raise BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflowed = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if overflowed:
                return  # the app's answer to a cut-off body (e.g. a 400) is replaced below
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not overflowed:
                raise
        if overflowed and not response_started:
            await self._too_large(limit)(scope, receive, send)
