"""The binary COPY encoder the analytics writes use, round-tripped through real PostgreSQL.

Every column type the analytics tables use (uuid, date, varchar, int4, float8 with NULLs,
jsonb, text[] with empty and non-ASCII values, int4[], float8[] with NaN, bytea of varying
length, a constant column) is written with `copy_binary` and read back with asyncpg's own
decoders, which are independent of the encoder.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid

import asyncpg
import numpy as np

from libs.common.analytics import copy_binary as cb
from libs.common.db import asyncpg_dsn


async def test_binary_copy_round_trips_every_analytics_column_type(database_url):
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(
            """CREATE TEMP TABLE t (id uuid, day date, basis varchar(8), n int4, x float8,
               doc jsonb, names text[], labels int4[], arr float8[], blob bytea, fixed text[])""")
        ids = [uuid.uuid4() for _ in range(3)]
        day = dt.date(2026, 11, 27)
        rows = cb.BinaryRows(3)
        rows.uuids(ids)
        rows.date(day)
        rows.varlen([cb.text(b) for b in ("equity", "gross", "none")])
        rows.ints(np.array([0, -7, 2_000_000_000]))
        rows.floats(np.array([1.5, np.nan, -np.inf]))
        rows.varlen([cb.jsonb(json.dumps(d)) for d in ([], [{"sector": "Énergie", "w": None}],
                                                       {"a": 1})])
        rows.varlen([cb.text_array(v) for v in ([], ["AAPL", "Größe"], ["X"])])
        rows.varlen([cb.int_array(np.array(v, dtype="int64")) for v in ([], [0, 1, -1], [5])])
        rows.float_arrays(np.array([[1.0, np.nan], [-2.5, 0.0], [1e300, -1e-300]]))
        rows.varlen([b"", b"\x00\x01\x02", bytes(range(256)) * 3])
        rows.constant(cb.text_array(["market", "interest_rate"]))
        await cb.copy_rows(conn, "t", ["id", "day", "basis", "n", "x", "doc", "names", "labels",
                                       "arr", "blob", "fixed"], rows)
        got = {r["id"]: r for r in await conn.fetch("SELECT * FROM t")}
    finally:
        await conn.close()

    assert set(got) == set(ids)
    a, b, c = (got[i] for i in ids)
    assert [r["day"] for r in (a, b, c)] == [day] * 3
    assert [r["basis"] for r in (a, b, c)] == ["equity", "gross", "none"]
    assert [r["n"] for r in (a, b, c)] == [0, -7, 2_000_000_000]
    assert a["x"] == 1.5 and b["x"] is None and c["x"] is None  # NaN/inf -> NULL
    assert [json.loads(r["doc"]) for r in (a, b, c)] == [
        [], [{"sector": "Énergie", "w": None}], {"a": 1}]
    assert [list(r["names"]) for r in (a, b, c)] == [[], ["AAPL", "Größe"], ["X"]]
    assert [list(r["labels"]) for r in (a, b, c)] == [[], [0, 1, -1], [5]]
    assert a["arr"][0] == 1.0 and math.isnan(a["arr"][1])  # NaN kept inside arrays
    assert list(b["arr"]) == [-2.5, 0.0] and list(c["arr"]) == [1e300, -1e-300]
    assert [r["blob"] for r in (a, b, c)] == [b"", b"\x00\x01\x02", bytes(range(256)) * 3]
    assert [list(r["fixed"]) for r in (a, b, c)] == [["market", "interest_rate"]] * 3


async def test_zero_rows_send_nothing(database_url):
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute("CREATE TEMP TABLE t (x float8)")
        await cb.copy_rows(conn, "t", ["x"], cb.BinaryRows(0))
        assert await conn.fetchval("SELECT count(*) FROM t") == 0
    finally:
        await conn.close()
