"""Answers carried as columns between a local worker (Python or node) and the runtime.

A page of rows as JSON is one object per row, every row repeating the column names; the
runtime then takes each column back out of the rows before it types them. When the
function runs in our own worker, which holds the rows as Python objects, the worker
sends each large table whose rows all have the same columns as one JSON array per
column instead (`encode_columnar`; `node_worker.mjs` builds the same frame): the same
values through the same JSON encoder, fewer bytes, and about half the runtime's work to
read them (`decode_columnar`).

Nothing else changes. The answer is validated as any other; a table's rows are still a
sequence of row objects (`ColumnRows`, built when something asks for them: a function
destination, an error message), and its columns go to planning as they are.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any

from .jsonio import decode_json, encode_json

COLUMNAR_MIN_ROWS = 64  # below this a table goes as rows: too few to be worth it
_LENGTH = struct.Struct(">I")


class ColumnarAnswer:
    """A worker's answer with some tables' rows as columns: `answer` is the JSON of the
    answer with those tables' rows left empty, `columns` the JSON of `{table: {column:
    [value of each row]}}`. Not bytes, so that nothing reads it as the whole answer."""

    __slots__ = ("answer", "columns")

    def __init__(self, answer: bytes, columns: bytes) -> None:
        self.answer, self.columns = answer, columns

    @classmethod
    def from_payload(cls, payload: bytes) -> ColumnarAnswer:
        (size,) = _LENGTH.unpack_from(payload)
        start = _LENGTH.size
        return cls(payload[start : start + size], payload[start + size :])

    def __len__(self) -> int:  # the answer's size in bytes, as logs and limits count it
        return len(self.answer) + len(self.columns)


class ColumnRows(Sequence):
    """A table's rows held as columns: `columns` maps each column, in the order first
    seen, to its values (every row has every column). Rows are made when asked for."""

    __slots__ = ("columns", "_count")

    def __init__(self, columns: dict[str, list], count: int) -> None:
        self.columns, self._count = columns, count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("row index out of range")
        return {name: values[index] for name, values in self.columns.items()}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        names = list(self.columns)
        for values in zip(*self.columns.values(), strict=True):
            yield dict(zip(names, values, strict=True))

    def __add__(self, other: list) -> list:
        return [*self, *other]

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented

    __hash__ = None  # type: ignore[assignment]


def encode_columnar(answer: Any) -> bytes | None:
    """The payload of `answer` with its large uniform tables as columns (`ColumnarAnswer`),
    or None when none qualifies or the answer is anything but a plain page."""
    if type(answer) is not dict or "errorMessage" in answer or "state" not in answer:
        return None
    tables = answer.get("insert")
    if type(tables) is not dict:
        return None
    columns = {}
    for table, rows in tables.items():
        found = _columns_of(rows)
        if found is not None:
            columns[table] = found
    if not columns:
        return None
    rest = {**answer, "insert": {t: [] if t in columns else r for t, r in tables.items()}}
    head = encode_json(rest)
    return _LENGTH.pack(len(head)) + head + encode_json(columns)


def _columns_of(rows: Any) -> dict[str, list] | None:
    """`rows` as columns, if it is a list of at least `COLUMNAR_MIN_ROWS` objects with
    the same (text) keys."""
    if type(rows) is not list or len(rows) < COLUMNAR_MIN_ROWS:
        return None
    if not all(type(row) is dict for row in rows):
        return None
    names = dict.fromkeys(chain.from_iterable(rows))
    if not names or sum(map(len, rows)) != len(names) * len(rows):  # some row lacks a column
        return None
    if not all(type(name) is str for name in names):
        return None
    return {name: [row[name] for row in rows] for name in names}


def decode_columnar(raw: ColumnarAnswer) -> Any:
    """The answer with its column tables as `ColumnRows`. Raises as `decode_json` does."""
    answer = decode_json(raw.answer)
    if type(answer) is not dict:
        return answer
    tables = answer.get("insert")
    for table, columns in decode_json(raw.columns).items():
        count = len(next(iter(columns.values()))) if columns else 0
        tables[table] = ColumnRows(columns, count)
    return answer
