"""PostgreSQL binary COPY payloads built column-wise with numpy.

Why: asyncpg's ``copy_records_to_table`` encodes every value of every record in Python-level
calls (type checks per element of each array); for the analytics tables of a 500-portfolio
chunk (~50 columns, arrays of scenarios, symbols and packed matrices) that encoding cost more
than the server's insert. Here each column is encoded for all rows at once into a
(rows × width) byte block with a per-row length, and the rows are laid out by one boolean-mask
gather (``blocks[mask]`` walks row-major: row 1's fields, then row 2's ...). The stream is
sent with ``COPY ... FROM STDIN (FORMAT binary)``.

Format (PostgreSQL docs, "COPY — Binary Format"): signature, flags, header extension; per
row an int16 field count, then per field an int32 byte length (-1 = NULL) and the value in
the type's binary send format (network byte order); an int16 -1 trailer.
"""

from __future__ import annotations

import datetime as dt
import functools
import struct
import uuid
from collections.abc import Sequence

import asyncpg
import numpy as np

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)
_POSTGRES_EPOCH = dt.date(2000, 1, 1)
_NULL = np.frombuffer(struct.pack(">i", -1), dtype=np.uint8)

#: Element type OIDs the binary array format names (must match the column's element type).
FLOAT8_OID = 701
INT4_OID = 23
TEXT_OID = 25


def _prefix(lengths: np.ndarray) -> np.ndarray:
    """(n, 4) big-endian int32 length prefixes."""
    return np.ascontiguousarray(lengths.astype(">i4")).view(np.uint8).reshape(-1, 4)


class BinaryRows:
    """The rows of one COPY, added a column at a time (every column has ``n`` values)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._blocks: list[np.ndarray] = []  # (n, width) uint8, length prefix included
        self._lengths: list[np.ndarray] = []  # (n,) bytes used of each row's block

    def _add(self, block: np.ndarray, lengths: np.ndarray) -> None:
        self._blocks.append(block)
        self._lengths.append(lengths.astype("int64"))

    def fixed(self, values: np.ndarray, dtype: str, null: np.ndarray | None = None) -> None:
        """A fixed-width value per row (``dtype`` a big-endian numpy type; "u1" with a second
        axis for raw bytes); NULL where ``null``."""
        data = np.ascontiguousarray(np.asarray(values).astype(dtype)).view(np.uint8)
        width = data.size // self.n if self.n else np.dtype(dtype).itemsize
        block = np.empty((self.n, 4 + width), dtype=np.uint8)
        block[:, :4] = _prefix(np.full(self.n, width))
        block[:, 4:] = data.reshape(self.n, width)
        lengths = np.full(self.n, 4 + width)
        if null is not None and null.any():
            block[null, :4] = _NULL
            lengths[null] = 4
        self._add(block, lengths)

    def floats(self, values: np.ndarray) -> None:
        """float8, NaN and infinities as NULL."""
        arr = np.asarray(values, dtype="float64")
        self.fixed(arr, ">f8", ~np.isfinite(arr))

    def ints(self, values: np.ndarray) -> None:
        self.fixed(np.asarray(values), ">i4")

    def uuids(self, values: Sequence[uuid.UUID]) -> None:
        raw = np.frombuffer(b"".join(v.bytes for v in values), dtype=np.uint8)
        self.fixed(raw.reshape(self.n, 16), "u1")

    def date(self, day: dt.date) -> None:
        self.fixed(np.full(self.n, (day - _POSTGRES_EPOCH).days), ">i4")

    def constant(self, value: bytes) -> None:
        """The same encoded value on every row."""
        raw = np.frombuffer(value, dtype=np.uint8)
        self.fixed(np.broadcast_to(raw, (self.n, len(raw))), "u1")

    def varlen(self, values: Sequence[bytes]) -> None:
        """Already-encoded values of varying length (text, jsonb, bytea, arrays)."""
        sizes = np.fromiter((len(v) for v in values), dtype="int64", count=self.n)
        width = int(sizes.max()) if self.n else 0
        block = np.zeros((self.n, 4 + width), dtype=np.uint8)
        block[:, :4] = _prefix(sizes)
        for row, value in enumerate(values):  # one copy per row (a per-byte index costs more)
            block[row, 4:4 + len(value)] = np.frombuffer(value, dtype=np.uint8)
        self._add(block, 4 + sizes)

    def float_arrays(self, matrix: np.ndarray) -> None:
        """One float8[] of ``matrix.shape[1]`` elements per row (NaN kept as NaN, not NULL)."""
        m = matrix.shape[1]
        header = struct.pack(">iiiii", 1, 0, FLOAT8_OID, m, 1) if m else struct.pack(
            ">iii", 0, 0, FLOAT8_OID)
        elements = np.empty((self.n, m, 12), dtype=np.uint8)
        elements[:, :, :4] = np.frombuffer(struct.pack(">i", 8), dtype=np.uint8)
        elements[:, :, 4:] = np.ascontiguousarray(
            np.asarray(matrix, dtype="float64").astype(">f8")).view(np.uint8).reshape(
            self.n, m, 8)
        size = len(header) + 12 * m
        block = np.empty((self.n, 4 + size), dtype=np.uint8)
        block[:, :4] = _prefix(np.full(self.n, size))
        block[:, 4:4 + len(header)] = np.frombuffer(header, dtype=np.uint8)
        block[:, 4 + len(header):] = elements.reshape(self.n, 12 * m)
        self._add(block, np.full(self.n, 4 + size))

    def payload(self) -> bytes:
        """The whole COPY stream: header, rows, trailer."""
        count = np.frombuffer(struct.pack(">h", len(self._blocks)), dtype=np.uint8)
        blocks = [np.broadcast_to(count, (self.n, 2)), *self._blocks]
        lengths = [np.full(self.n, 2), *self._lengths]
        table = np.concatenate(blocks, axis=1)
        widths = np.cumsum([0, *(b.shape[1] for b in blocks)])
        mask = np.zeros(table.shape, dtype=bool)
        for i, used in enumerate(lengths):
            mask[:, widths[i]:widths[i + 1]] = (
                np.arange(widths[i + 1] - widths[i])[None, :] < used[:, None])
        return _SIGNATURE + table[mask].tobytes() + _TRAILER


def text_array(values: Sequence[str]) -> bytes:
    """text[] in binary form (one dimension, no NULL elements; empty: zero dimensions)."""
    if not values:
        return struct.pack(">iii", 0, 0, TEXT_OID)
    return struct.pack(">iiiii", 1, 0, TEXT_OID, len(values), 1) + b"".join(
        _text_element(v) for v in values)


@functools.lru_cache(maxsize=1 << 16)
def _text_element(value: str) -> bytes:
    """One array element: its length, then its UTF-8 (symbols repeat across rows: cached)."""
    encoded = value.encode()
    return struct.pack(">i", len(encoded)) + encoded


def int_array(values: np.ndarray) -> bytes:
    """int4[] in binary form (one dimension, no NULL elements; empty: zero dimensions)."""
    n = len(values)
    if not n:
        return struct.pack(">iii", 0, 0, INT4_OID)
    pairs = np.empty((n, 2), dtype=">i4")
    pairs[:, 0] = 4
    pairs[:, 1] = values
    return struct.pack(">iiiii", 1, 0, INT4_OID, n, 1) + pairs.tobytes()


def jsonb(text: str) -> bytes:
    """jsonb's binary form: format version 1, then the JSON text."""
    return b"\x01" + text.encode()


def text(value: str) -> bytes:
    return value.encode()


async def copy_rows(conn: asyncpg.Connection, table: str, columns: Sequence[str],
                    rows: BinaryRows) -> None:
    """COPY ``rows`` into ``table`` (binary; nothing sent for zero rows)."""
    if rows.n == 0:
        return
    await conn.copy_to_table(table, source=_Chunks(rows.payload()), columns=list(columns),
                             format="binary")


class _Chunks:
    """The payload as an async iterable (what ``copy_to_table`` streams from)."""

    def __init__(self, data: bytes, size: int = 1 << 20) -> None:
        self._data = data
        self._size = size

    def __aiter__(self) -> _Chunks:
        self._offset = 0
        return self

    async def __anext__(self) -> bytes:
        if self._offset >= len(self._data):
            raise StopAsyncIteration
        part = self._data[self._offset:self._offset + self._size]
        self._offset += self._size
        return part
