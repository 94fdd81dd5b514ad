"""Plain aligned text tables: what operators read in a terminal or a cron mail."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "  (none)"
    cells = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    header = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    lines = ["  " + header, "  " + "  ".join("-" * w for w in widths)]
    lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def short(value: Any, width: int = 60) -> Any:
    """A cell value cut to `width`; datetimes as UTC to the second."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, str) and len(value) > width:
        return value[: width - 1] + "…"
    return value


def money(value: Decimal | float | None) -> str:
    return "" if value is None else f"{Decimal(value):,.2f}"
