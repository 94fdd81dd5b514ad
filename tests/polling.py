"""The one way tests (and benches) wait on a condition: poll it, never sleep a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(
    predicate: Callable[[], Awaitable[Any]],
    timeout: float = 90.0,
    what: str = "condition",
    *,
    interval: float = 0.1,
    context: Callable[[], str] | None = None,
) -> Any:
    """Await ``predicate()`` every ``interval`` s until it is truthy and return its value;
    after ``timeout`` s raise TimeoutError naming ``what`` (plus ``context()``, e.g. logs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    detail = f"\n{context()}" if context is not None else ""
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
