"""Answers carried as columns between a local worker (Python or node) and the runtime.

A page of rows as JSON is one object per row, every row repeating the column names; the
runtime then takes each column back out of the rows before it types them. When the
function runs in our own worker, which holds the rows as Python objects, the worker
sends each large table whose rows all have the same columns as one JSON array per
column instead (`encode_columnar`; `node_worker.mjs` builds the same frame): the same
values through the same JSON encoder, fewer bytes, and about half the runtime's work to
read them (`decode_columnar`).

In a long sync (`TypingAhead`) the Python worker also types the columns it can type
exactly as the runtime would and sends them as Arrow (`typed_columns`, a `TYPED`
frame); the others still go as JSON arrays.

Nothing else changes. The answer is validated as any other; a table's rows are still a
sequence of row objects (`ColumnRows`, built when something asks for them: a function
destination, an error message), and its columns go to planning as they are.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any

from .jsonio import NotUnicode, TooDeep, decode_json, encode_json

COLUMNAR_MIN_ROWS = 64  # below this a table goes as rows: too few to be worth it
_LENGTH = struct.Struct(">I")
# a column's values → its logical type's name and Arrow array, or None (`typed_columns`)
Typer = Callable[[list], "tuple[str, Any] | None"]


class ColumnarAnswer:
    """A worker's answer with some tables' rows as columns: `answer` is the JSON of the
    answer with those tables' rows left empty, `columns` the JSON of `{table: {column:
    [value of each row]}}`. Not bytes, so that nothing reads it as the whole answer.

    When the worker typed some columns itself (`typed_columns`), `typed` is the JSON of
    `{table: [rows, [every column, in order]]}` for the tables with typed columns, whose
    Arrow streams `arrow` holds in that order; `columns` then has only the others."""

    __slots__ = ("answer", "columns", "typed", "arrow")

    def __init__(
        self, answer: bytes, columns: bytes, typed: bytes = b"", arrow: bytes = b""
    ) -> None:
        self.answer, self.columns, self.typed, self.arrow = answer, columns, typed, arrow

    @classmethod
    def from_payload(cls, payload: bytes, *, typed: bool = False) -> ColumnarAnswer:
        """The answer in a frame's `payload` (`payload` makes it): a `COLUMNS` frame holds
        the answer and the columns, a `TYPED` frame (`typed`) also its typed and Arrow."""
        answer, end = _part(payload, 0)
        if not typed:
            return cls(answer, payload[end:])
        columns, end = _part(payload, end)
        shapes, end = _part(payload, end)
        return cls(answer, columns, shapes, payload[end:])

    def payload(self) -> bytes:
        """The frame's payload: each part after its length, but the last."""
        if not self.typed:
            return _LENGTH.pack(len(self.answer)) + self.answer + self.columns
        parts = (self.answer, self.columns, self.typed)
        return b"".join(_LENGTH.pack(len(part)) + part for part in parts) + self.arrow

    def __len__(self) -> int:  # the answer's size in bytes, as logs and limits count it
        return len(self.answer) + len(self.columns) + len(self.typed) + len(self.arrow)


def _part(payload: bytes, start: int) -> tuple[bytes, int]:
    """The part at `start` that its length prefixes, and where the next one starts."""
    (size,) = _LENGTH.unpack_from(payload, start)
    start += _LENGTH.size
    return payload[start : start + size], start + size


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


class TypingAhead:
    """Large tables' columns typed in a Python worker (`typed_columns`), once Arrow has
    loaded after its `LONG_SYNC_ANSWERS`-th large answer: a sync that long likely has
    many pages to go.

    Typing needs Arrow, whose import costs the worker about 0.1 s of CPU once, about 50
    MB of memory and 200 MB of address space (with the system's allocator, which Arrow is
    told to use here unless the handler loaded Arrow first). `load_if_due` starts it
    after that answer is sent, never in a short sync, and never under a memory cap
    (`memory:`) below `MIN_MEMORY_MB`, whose memory is the function's. In `background`
    (a worker process), the import runs in a thread while the next answers still go as
    JSON, and typing starts with the first answer after it: a worker that waited for the
    import kept the runtime waiting for the next page, about 0.05 s in `make bench`."""

    LONG_SYNC_ANSWERS = 3
    MIN_MEMORY_MB = 2048

    def __init__(self, *, enabled: bool = True, background: bool = False) -> None:
        self.enabled, self.background, self.answers = enabled, background, 0
        self.typer: Callable[[list], Any] | None = None
        self.loading: threading.Thread | None = None

    def large_answer(self) -> None:
        self.answers += 1

    def load_if_due(self) -> None:
        if not self.enabled or self.typer is not None or self.answers < self.LONG_SYNC_ANSWERS:
            return
        if not self.background:
            self._load()
        elif self.loading is None:
            self.loading = threading.Thread(target=self._load, name="load-arrow", daemon=True)
            self.loading.start()

    def _load(self) -> None:
        if "pyarrow" not in sys.modules:  # its default allocator reserves gigabytes
            os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
        try:
            from .typed_columns import typed_column
        except Exception:  # noqa: BLE001 - without Arrow here, columns go as JSON
            self.enabled = False  # and it is not tried again
            return
        self.typer = typed_column


def encode_columnar(answer: Any, typer: Typer | None = None) -> ColumnarAnswer | None:
    """`answer` with its large uniform tables as columns, or None when none qualifies or
    the answer is anything but a plain page. With a `typer` (`typed_columns.typed_column`),
    the columns it can type go as Arrow."""
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
    typed = _typed_tables(columns, typer) if typer is not None else {}
    if not typed:
        return ColumnarAnswer(head, encode_json(columns))
    from .typed_columns import encode_tables

    shapes = {t: [len(next(iter(columns[t].values()))), list(columns[t])] for t in typed}
    for table, done in typed.items():
        columns[table] = {c: v for c, v in columns[table].items() if c not in done}
    return ColumnarAnswer(head, encode_json(columns), encode_json(shapes), encode_tables(typed))


def _typed_tables(columns: dict[str, dict[str, list]], typer: Typer) -> dict[str, dict]:
    """Per table, the columns `typer` typed (a failure leaves a column to JSON)."""
    typed = {}
    for table, values_of in columns.items():
        done = {}
        for column, values in values_of.items():
            try:
                found = typer(values)
            except Exception:  # noqa: BLE001 - text Arrow refuses, say: JSON says why
                found = None
            if found is not None:
                done[column] = found
        if done:
            typed[table] = done
    return typed


def _columns_of(rows: Any) -> dict[str, list] | None:
    """`rows` as columns, if it is a list of at least `COLUMNAR_MIN_ROWS` objects with
    the same (text) keys."""
    if type(rows) is not list or len(rows) < COLUMNAR_MIN_ROWS:
        return None
    if set(map(type, rows)) != {dict}:
        return None
    names = list(rows[0])
    # as many keys in all as the first row's in each, and each row has the first's: the
    # same keys everywhere, found without collecting them
    if not names or sum(map(len, rows)) != len(names) * len(rows):
        return None
    if not all(type(name) is str for name in names):
        return None
    try:
        return {name: list(map(itemgetter(name), rows)) for name in names}
    except KeyError:  # some row has another key instead
        return None


def decode_columnar(raw: ColumnarAnswer) -> Any:
    """The answer with its column tables as `ColumnRows`. Raises as `decode_json` does."""
    answer = decode_json(raw.answer)
    if type(answer) is not dict:
        return answer
    tables = answer.get("insert")
    try:
        columns_of = decode_json(raw.columns)
    except NotUnicode as exc:
        raise NotUnicode(_as_of_rows(exc.path), exc.character) from None
    except TooDeep as exc:
        raise TooDeep(_as_of_rows(exc.path)) from None
    shapes = decode_json(raw.typed) if raw.typed else {}
    if shapes:
        from .typed_columns import decode_tables

        arrays_of = decode_tables(raw.arrow, list(shapes))
        for table, (count, order) in shapes.items():
            values_of, arrays = columns_of.get(table, {}), arrays_of[table]
            columns = {c: arrays[c] if c in arrays else values_of[c] for c in order}
            tables[table] = ColumnRows(columns, count)
    for table, columns in columns_of.items():
        if table not in shapes:
            count = len(next(iter(columns.values()))) if columns else 0
            tables[table] = ColumnRows(columns, count)
    return answer


def _as_of_rows(path: tuple) -> tuple:
    """A place in the columns, (table, column, row, ...), as the same place in the rows."""
    if len(path) < 3:
        return ("insert", *path[:1])
    table, column, row, *rest = path
    return ("insert", table, row, column, *rest)
