"""Columns typed in our own Python worker, sent to the runtime as Arrow.

The worker holds a page's rows as Python objects. For a large table (`columns.py`) it
can type a column there, with the runtime's own `infer_array`, and send the typed Arrow
array instead of the values' JSON: the runtime then neither parses those values nor
types them, and its process is left to write pages. The work moves to the function's
process, which runs beside the runtime's.

A column is typed in the worker only where the result is exactly what the runtime would
make of the column's JSON: a column of one plain kind of value (booleans, integers,
floats, text, or objects and arrays of plain JSON values), nulls aside. Anything else
(a datetime, a Decimal, a number beyond 64 bits, a NaN in an object, text that is a
date without a zone) goes as JSON, as before, and is typed by the runtime.

What the runtime receives for a typed column (`TypedValues`): the Arrow array, its
logical type, and the column's values, made from the array only if something asks for
them (a function destination, an error message, a column widened beyond its type).
Date-times travel as their text, so the values are the text the function sent; JSON
travels as its text, which parses back to the values sent.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from .batches import Inferred, arrow_type, infer_array, json_in_bulk
from .jsonio import decode_json, has_non_finite
from .types import JSON, UTC_DATETIME, LogicalType

_SCALAR_KINDS = ({bool}, {int}, {float}, {str})
_ALL_NULL = ""  # the logical type sent for a column with no value at all


def typed_column(values: list) -> tuple[str, pa.Array] | None:
    """The column's logical type (as text; "" when every value is null) and the Arrow
    array the runtime would make of `values` after their JSON round trip; None when that
    cannot be known here (the column then goes as JSON). Date-times come as their text."""
    kinds = set(map(type, values))
    kinds.discard(type(None))
    if not kinds:
        return _ALL_NULL, pa.nulls(len(values))
    if kinds <= {dict, list}:
        texts = _plain_json(values)
        return None if texts is None else (str(JSON), texts)
    if kinds not in _SCALAR_KINDS:
        return None
    inferred = infer_array(values, kinds)
    if inferred.array is None:  # an integer beyond 64 bits, a date without a zone...
        return None
    return str(inferred.logical), inferred.array if inferred.text is None else inferred.text


def _plain_json(values: list) -> pa.Array | None:
    """The JSON texts of objects and arrays that hold only what JSON holds, without NaN
    or ±Infinity (their text is then the runtime's, and parses back to them); else None."""
    bulk = json_in_bulk(values)
    if bulk is None:  # a datetime, an integer beyond 64 bits...
        return None
    text, texts = bulk
    return None if b"null" in text and has_non_finite(values) else texts


def encode_tables(tables: dict[str, dict[str, tuple[str, pa.Array]]]) -> bytes:
    """One Arrow IPC stream per table, one after the other (`decode_tables` reads them
    in that order); each column's logical type in its field's metadata."""
    sink = pa.BufferOutputStream()
    for columns in tables.values():
        fields = [
            pa.field(name, array.type, metadata={"logical": logical})
            for name, (logical, array) in columns.items()
        ]
        batch = pa.record_batch([array for _, array in columns.values()], schema=pa.schema(fields))
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def decode_tables(arrow: bytes, tables: list[str]) -> dict[str, dict[str, TypedValues]]:
    """`encode_tables`' streams, read in place (no copy), as `tables` lists them."""
    reader = pa.BufferReader(pa.py_buffer(arrow))
    decoded = {}
    for table in tables:
        read = pa.ipc.open_stream(reader).read_all()  # to its end, where the next begins
        decoded[table] = {
            field.name: TypedValues(field.metadata[b"logical"].decode(), column.combine_chunks())
            for field, column in zip(read.schema, read.columns, strict=True)
        }
    return decoded


class TypedValues(Sequence):
    """A column typed in the worker: `inferred` is what `infer_array` made of it; its
    values (as the JSON the function sent would parse) are made when first asked for."""

    __slots__ = ("inferred", "_array", "_values")

    def __init__(self, logical: str, array: pa.Array) -> None:
        self._array = array
        self._values: list | None = None
        if not logical:
            self.inferred = Inferred(None, None)
        else:
            parsed = LogicalType.parse(logical)
            typed = array.cast(arrow_type(parsed)) if parsed == UTC_DATETIME else array
            self.inferred = Inferred(parsed, typed)

    @property
    def values(self) -> list:
        if self._values is None:
            values = self._array.to_pylist()
            if self.inferred.logical == JSON:
                values = [None if v is None else decode_json(v) for v in values]
            self._values = values
        return self._values

    def __len__(self) -> int:
        return len(self._array)

    def __getitem__(self, index):  # type: ignore[override]
        return self.values[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.values)

    def __contains__(self, value: object) -> bool:
        if value is None:  # the planner's check for null keys, without the values
            return self._array.null_count > 0
        return value in self.values

    def __eq__(self, other: object) -> bool:
        return self.values == list(other) if isinstance(other, Sequence) else NotImplemented

    __hash__ = None  # type: ignore[assignment]
