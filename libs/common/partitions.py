"""Monthly partitions of the snapshot tables: created ahead, and dropped by retention.

`portfolio_snapshots` and `position_snapshots` are PARTITION BY RANGE (snapshot_date), one
partition per month named `<table>_yYYYYmMM`, plus `<table>_default` (migration 0009). The
month partitions are made by the SQL function `sigmabatch_ensure_snapshot_partitions(date)`
(the one implementation, shared by the migration and the refresh). The refresh calls
`ensure_snapshot_partitions` before it claims a date, for that month and the next, in a
short transaction of its own so the DDL's locks are not held by a chunk. A row whose month
has no partition (a date nobody prepared: a test fixture, a manual insert) lands in the
default partition and never fails; creating its month later moves it out.

Retention (`sigmabatch retention --keep-months N`) detaches and drops whole month partitions
older than the kept window: no row-by-row DELETE, no bloat, no vacuum debt.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import asyncpg

PARTITIONED_TABLES = ("portfolio_snapshots", "position_snapshots")
_PARTITION_NAME = re.compile(
    r"^(portfolio_snapshots|position_snapshots)_(y\d{4}m\d{2}|default)$"
)
_BOUND = re.compile(r"FROM \('(\d{4}-\d{2}-\d{2})'\) TO \('(\d{4}-\d{2}-\d{2})'\)")

# Months of partitions known to exist, per database (the check is skipped once seen).
_known: set[tuple[str, dt.date]] = set()


def is_partition_name(name: str | None) -> bool:
    """A partition of a snapshot table (not a model table: autogenerate must ignore it)."""
    return bool(name and _PARTITION_NAME.match(name))


def include_name(name: str | None, type_: str, _parent_names: object = None) -> bool:
    """Alembic autogenerate filter: the month/default partitions are not model tables."""
    return not (type_ == "table" and is_partition_name(name))


def add_months(day: dt.date, months: int) -> dt.date:
    """The first of the month `months` after (or before, negative) `day`'s month."""
    index = day.year * 12 + day.month - 1 + months
    return dt.date(index // 12, index % 12 + 1, 1)


def partition_name(table: str, day: dt.date) -> str:
    return f"{table}_y{day.year:04d}m{day.month:02d}"


async def ensure_snapshot_partitions(
    conn: asyncpg.Connection, day: dt.date, *, key: str = "", ahead: int = 1
) -> int:
    """Make sure the month partitions of `day` and the `ahead` months after it exist.

    Returns how many partitions were created. Cheap when they exist (one catalog lookup per
    month, then remembered per `key`, e.g. the database URL). Run it outside a chunk's
    transaction: creating a partition takes locks on the parent and the default partition.
    """
    made = 0
    for i in range(ahead + 1):
        month = add_months(day, i)
        if (key, month) in _known:
            continue
        names = [partition_name(t, month) for t in PARTITIONED_TABLES]
        exists = await conn.fetchval(
            "SELECT count(*) FROM unnest($1::text[]) n WHERE to_regclass(n) IS NOT NULL", names
        )
        if exists != len(names):
            made += await conn.fetchval("SELECT sigmabatch_ensure_snapshot_partitions($1)", month)
        _known.add((key, month))
    return made


def known(key: str, day: dt.date, ahead: int = 1) -> bool:
    """True when this process has already seen the partitions `ensure_snapshot_partitions`
    would check (no round trip needed)."""
    return all((key, add_months(day, i)) in _known for i in range(ahead + 1))


@dataclass(frozen=True)
class Partition:
    table: str  # the partitioned parent
    name: str
    start: dt.date | None  # None: the default partition
    end: dt.date | None
    rows: int
    bytes: int


async def list_partitions(conn: asyncpg.Connection) -> list[Partition]:
    """The partitions of the snapshot tables with their month bounds and size, oldest first."""
    rows = await conn.fetch(
        """
        SELECT parent.relname AS parent, child.relname AS name,
               pg_get_expr(child.relpartbound, child.oid) AS bound,
               pg_total_relation_size(child.oid) AS bytes
        FROM pg_inherits i
        JOIN pg_class parent ON parent.oid = i.inhparent
        JOIN pg_class child ON child.oid = i.inhrelid
        WHERE parent.relname = ANY($1::text[])
          AND parent.relnamespace = 'public'::regnamespace
        """,
        list(PARTITIONED_TABLES),
    )
    out = []
    for r in rows:
        found = _BOUND.search(r["bound"])
        start, end = (
            (dt.date.fromisoformat(found.group(1)), dt.date.fromisoformat(found.group(2)))
            if found
            else (None, None)
        )
        count = await conn.fetchval(f'SELECT count(*) FROM "{r["name"]}"')
        out.append(Partition(r["parent"], r["name"], start, end, count, r["bytes"]))
    return sorted(out, key=lambda p: (p.start or dt.date.max, p.table))


@dataclass(frozen=True)
class RetentionPlan:
    cutoff: dt.date  # snapshots dated before this go
    drop: list[Partition]
    default_rows: dict[str, int]  # rows before the cutoff left in each default partition


def retention_cutoff(keep_months: int, today: dt.date) -> dt.date:
    """First day kept: the first of the month `keep_months` before `today`'s month.

    `--keep-months 12` on 2026-11-30 keeps 2025-11-01 onward: the current month and the 12
    before it whole.
    """
    if keep_months < 1:
        raise ValueError("keep_months must be at least 1")
    return add_months(today, -keep_months)


async def plan_retention(
    conn: asyncpg.Connection, keep_months: int, today: dt.date
) -> RetentionPlan:
    """Which month partitions lie wholly before the cutoff (nothing is changed)."""
    cutoff = retention_cutoff(keep_months, today)
    partitions = await list_partitions(conn)
    drop = [p for p in partitions if p.end is not None and p.end <= cutoff]
    default_rows = {
        table: await conn.fetchval(
            f"SELECT count(*) FROM {table}_default WHERE snapshot_date < $1", cutoff
        )
        for table in PARTITIONED_TABLES
    }
    return RetentionPlan(cutoff, drop, default_rows)


async def apply_retention(conn: asyncpg.Connection, plan: RetentionPlan) -> None:
    """Detach and drop the planned partitions, then delete the default partitions' old rows.

    Each partition is its own transaction (DETACH then DROP): a failure leaves the others
    done and the command can be re-run.
    """
    for p in plan.drop:
        async with conn.transaction():
            await conn.execute(f'ALTER TABLE {p.table} DETACH PARTITION "{p.name}"')
            await conn.execute(f'DROP TABLE "{p.name}"')
    async with conn.transaction():
        for table in PARTITIONED_TABLES:
            await conn.execute(
                f"DELETE FROM {table}_default WHERE snapshot_date < $1", plan.cutoff
            )


def describe_plan(plan: RetentionPlan, applied: bool) -> str:
    """Human-readable lines of what retention drops (or would drop)."""
    verb = "dropped" if applied else "would drop"
    lines = [f"retention: keeping snapshots dated {plan.cutoff.isoformat()} and later"]
    for p in plan.drop:
        lines.append(
            f"  {verb} {p.name} [{p.start} .. {p.end}) {p.rows:,} rows, "
            f"{p.bytes / 2**20:.1f} MiB"
        )
    for table, n in plan.default_rows.items():
        if n:
            lines.append(f"  {verb} {n:,} rows before the cutoff from {table}_default")
    if not plan.drop and not any(plan.default_rows.values()):
        lines.append("  nothing to drop")
    if not applied and (plan.drop or any(plan.default_rows.values())):
        lines.append("dry run: nothing changed; re-run with --apply to drop")
    return "\n".join(lines)
