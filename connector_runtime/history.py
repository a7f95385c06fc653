"""History mode (design §14): the times and the per-version hash every warehouse shares.

Pure apart from Arrow. A history table keeps every version of a row: `_fivetran_start`
(the start of the sync that wrote it), `_fivetran_end` (`END_OF_TIME` while active) and
`_fivetran_active`, keyed by the primary key plus `_fivetran_start`. Whether an upsert
changes a row is decided by one number per version, `_fivetran_hash`: a 64-bit hash of
its non-null data columns, so a destination compares two integers per key instead of
every column in SQL (where NULLs, JSON and floating point compare differently on each
warehouse).

The hash is of each value's *canonical text*, chosen so that a value and the same value
stored under a widened type agree where the warehouse would show them equal: numbers as
their shortest decimal (`5`, `5.0` and DECIMAL `5.00` are all `5`), temporals as
`YYYY-MM-DDTHH:MM:SS.ffffff` (a date is its midnight, a naive time is read as UTC), JSON
with its object keys sorted. A null column adds nothing, so a column added later, or
absent from a row, never changes the hash of a row that has no value there. Destinations
recompute the active versions' hashes from what they store after a widening (see
`stored_array`), so a value that reads differently once widened (a date become text) is
still compared as the warehouse now holds it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pydantic_core

from .batches import arrow_type, column_array
from .naming import HISTORY_COLUMNS
from .types import LogicalType

START, END, ACTIVE, HASH = HISTORY_COLUMNS
END_OF_TIME = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)  # an active version's end
_TICK = timedelta(milliseconds=1)  # a closed version ends this long before the next begins
_SEPARATOR = "\x1f"


def closing_time(synced_at: datetime) -> datetime:
    """`_fivetran_end` of a version closed by the sync that started at `synced_at`."""
    return synced_at - _TICK


def row_hashes(rows: pa.Table, columns: Mapping[str, LogicalType]) -> pa.Array:
    """One signed 64-bit hash per row of its data columns (those of `columns` that `rows`
    has), by name: column order, and columns that are null, change nothing."""
    pieces = [
        _piece(name, canonical_text(rows.column(name), columns[name]))
        for name in sorted(c for c in rows.column_names if c in columns)
    ]
    if not pieces:
        return pa.array([_hash("")] * rows.num_rows, pa.int64())
    joined = pc.binary_join_element_wise(*pieces, "", null_handling="skip")
    return pa.array([_hash(text) for text in joined.to_pylist()], pa.int64())


def _piece(name: str, text: pa.ChunkedArray) -> pa.ChunkedArray:
    """`<name length>:<name><value length>:<value>`: no two rows share their text unless
    their values do, whatever the values hold. Null where the value is null."""
    lengths = pc.binary_length(text).cast(pa.string())
    head = f"{len(name)}:{name}"
    return pc.binary_join_element_wise(head, lengths, ":", text, _SEPARATOR, "")


def _hash(text: str | None) -> int:
    digest = hashlib.blake2b((text or "").encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def canonical_text(values: pa.ChunkedArray | pa.Array, logical: LogicalType) -> pa.Array:
    """Each value's text as the hash sees it (see the module docstring); null stays null."""
    name = logical.name
    if name in ("LONG", "BOOLEAN", "STRING"):
        return values.cast(pa.string())
    if name == "DOUBLE":
        return _number_text(values)
    if name == "DECIMAL":
        text = values.cast(pa.string())
        trimmed = pc.replace_substring_regex(text, r"(\.\d*?)0+$", r"\1")
        return pc.replace_substring_regex(trimmed, r"\.$", "")
    if logical.is_temporal:
        moments = values.cast(pa.timestamp("us")) if name == "NAIVE_DATE" else values
        return pc.strftime(moments, "%Y-%m-%dT%H:%M:%S")  # %S carries the microseconds
    return pa.array([None if v is None else _sorted_json(v) for v in values.to_pylist()])


def _number_text(values) -> pa.Array:
    """Integral doubles as integers (`5.0` is `5`, as a LONG 5 is), others as Arrow
    writes them."""
    whole = pc.and_(pc.is_finite(values), pc.equal(values, pc.floor(values)))
    whole = pc.and_(whole, pc.less(pc.abs(values), 2.0**63))
    as_integer = pc.if_else(whole, values, pa.scalar(None, pa.float64())).cast(pa.int64())
    return pc.if_else(whole, as_integer.cast(pa.string()), values.cast(pa.string()))


def _sorted_json(text: str) -> str:
    """JSON text with object keys sorted; integers of any size exact."""
    try:
        value = pydantic_core.from_json(text)
    except ValueError:  # nested deeper than pydantic-core reads
        value = json.loads(text)
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # an integer beyond 64 bits, deep nesting
        return json.dumps(value, sort_keys=True, separators=(",", ":"))


def stored_array(values: list, logical: LogicalType) -> pa.Array:
    """Values read back from a warehouse (as its driver returns them) as the Arrow array
    the page planner would have made of them: `canonical_text` then reads both alike.
    JSON values are text, or already parsed (PostgreSQL's jsonb)."""
    if logical.name == "JSON":
        return pa.array([_json_text(v) for v in values], pa.string())
    if logical.name == "BOOLEAN":
        return pa.array([None if v is None else bool(v) for v in values], pa.bool_())
    if any(isinstance(v, date | Decimal | bytes) for v in values):
        values = [_as_json_value(v) for v in values]
    return column_array(values, logical).cast(arrow_type(logical))


def _json_text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode()
    return value if isinstance(value, str) else json.dumps(value)


def _as_json_value(value):
    """A driver's value as the JSON value a function would have sent for it."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode()
    return value
