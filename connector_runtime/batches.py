"""JSON values → typed Arrow columns, one column at a time.

Each column is converted in bulk by Arrow where its values already have the column's
natural Python type, and value by value only where they do not (a widened column, a
declared type). A value that cannot be stored raises `ValueError` naming its row.

`infer_array` types a page's column and converts it in the same pass (`Inferred`): the
usual column holds one kind of value, and its array is then ready as it was inferred.
"""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic_core import SchemaSerializer, core_schema

from . import masking
from .jsonio import encode_json
from .types import (
    BOOLEAN,
    DOUBLE,
    JSON,
    LONG,
    STRING,
    UTC_DATETIME,
    VECTOR_MIN,
    LogicalType,
    has_dash_fifth,
    infer_column,
    starts_as_a_date,
)

_SIMPLE_ARROW = {
    "BOOLEAN": pa.bool_(),
    "LONG": pa.int64(),
    "DOUBLE": pa.float64(),
    "NAIVE_DATE": pa.date32(),
    "NAIVE_DATETIME": pa.timestamp("us"),
    "UTC_DATETIME": pa.timestamp("us", tz="UTC"),
    "STRING": pa.string(),
    "JSON": pa.string(),
}
# Python types each logical type takes as they are, without a value-by-value pass
_NATURAL = {
    "BOOLEAN": {bool},
    "LONG": {int},
    "DECIMAL": {int},
    "DOUBLE": {float, int},
    "STRING": {str},
}
_EXTRA_FRACTION = re.compile(r"(\.\d{6})\d+")  # Arrow (and warehouses) keep microseconds
_HAS_OFFSET = r"[Tt ]\d{2}:\d{2}.*(Z|z|[+-]\d{2}(:?\d{2})?)$"


class ValueRejected(ValueError):
    """A value that cannot be stored in its column's type; `row` is its index in the page."""

    def __init__(self, row: int, value: object, logical: LogicalType, reason: str = "") -> None:
        shown = masking.excerpt(repr(value), 60, note="...")  # masked, then cut
        detail = f" ({reason})" if reason else ""
        super().__init__(f"row {row}: value {shown} does not fit type {logical}{detail}")
        self.row = row


class Inferred(NamedTuple):
    """A column's inferred type (None: every value null) and, when it was cheap to make
    in the same pass, its values as an Arrow array of that type (else None); for text
    parsed as date-times, also the text."""

    logical: LogicalType | None
    array: pa.Array | None
    text: pa.Array | None = None


# One kind of Python value (nulls aside) → its logical type and Arrow type, converted
# by Arrow in bulk; ints may overflow int64, which leaves them to `infer_column`.
_BULK = {bool: (BOOLEAN, pa.bool_()), int: (LONG, pa.int64()), float: (DOUBLE, pa.float64())}
_ZONED_DATETIME = (
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}(?::?\d{2})?)$"
)


def infer_array(values: list, kinds: set[type] | None = None) -> Inferred:
    """`infer_column(values)`, and the array of `values` in that type where one pass
    makes both: a column of one kind of value (booleans, int64s, floats, objects and
    arrays, text that is not temporal or is all `Z`/offset date-times). Anything else
    gets its type from `infer_column` and no array (`column_array` converts it).
    `kinds`: the types of the values but None, when the caller has them already."""
    if kinds is None:
        kinds = set(map(type, values))
        kinds.discard(type(None))
    if len(kinds) == 1 and (kind := next(iter(kinds))) in _BULK:
        logical, target = _BULK[kind]
        try:
            return Inferred(logical, pa.array(values, target))
        except (OverflowError, pa.ArrowInvalid, pa.ArrowTypeError):
            return Inferred(infer_column(values), None)  # an int beyond 64 bits
    if kinds and kinds <= {dict, list}:
        return Inferred(JSON, json_array(values))
    if kinds == {str} and len(values) >= VECTOR_MIN:
        return _text_array(values)
    return Inferred(infer_column(values), None)


def _text_array(values: list) -> Inferred:
    """Text: STRING when nothing in it could be a date (Arrow's one look); UTC_DATETIME
    parsed in bulk when every value is a date-time with `Z` or an offset, as
    `column_array` would parse it (a value Arrow refuses, such as a 7th fractional digit,
    leaves the column to `infer_column`)."""
    text = pa.array(values, pa.string())
    if not has_dash_fifth(text):  # no date at all: the usual text column
        return Inferred(STRING, text)
    if pc.all(pc.match_substring_regex(text, _ZONED_DATETIME)).as_py():
        try:
            return Inferred(UTC_DATETIME, text.cast(arrow_type(UTC_DATETIME)), text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    elif not starts_as_a_date(text):
        return Inferred(STRING, text)
    return Inferred(infer_column(values), None)


def arrow_type(logical: LogicalType) -> pa.DataType:
    if logical.name == "DECIMAL":
        return pa.decimal128(logical.precision, logical.scale)
    return _SIMPLE_ARROW[logical.name]


def column_array(values: list, logical: LogicalType) -> pa.Array:
    """Typed Arrow array of `values` (JSON values, None for null) as `logical`."""
    kinds = set(map(type, values)) - {type(None)}
    try:
        return _convert(values, kinds, logical)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        raise _first_rejected(values, logical) from None


def _convert(values: list, kinds: set[type], logical: LogicalType) -> pa.Array:
    target = arrow_type(logical)
    if logical.name == "JSON":
        return json_array(values)
    if logical.name == "STRING":
        if kinds <= {str}:
            return pa.array(values, target)
        return pa.array([None if v is None else as_text(v) for v in values], target)
    if kinds <= _NATURAL.get(logical.name, set()):
        return _exact_array(values, logical, target)
    if kinds <= {str}:
        return _from_strings(pa.array(values, pa.string()), logical, target)
    if kinds & {bool, dict, list}:
        raise TypeError("booleans, objects and arrays only go into BOOLEAN, JSON or STRING")
    return _from_strings(
        pa.array([None if v is None else as_text(v) for v in values]), logical, target
    )


def _exact_array(values: list, logical: LogicalType, target: pa.DataType) -> pa.Array:
    if logical.name == "DECIMAL":
        # via Decimal so Arrow checks precision instead of wrapping silently
        return pa.array([None if v is None else Decimal(v) for v in values], target)
    if logical.name == "DOUBLE" and any(type(v) is int for v in values):
        # an integer in a DOUBLE column is stored as the nearest double, as a widened
        # column's values are; Arrow would refuse one beyond 2**53 as "not exact"
        return pa.array([None if v is None else float(v) for v in values], target)
    return pa.array(values, target)


def _from_strings(strings: pa.Array, logical: LogicalType, target: pa.DataType) -> pa.Array:
    """Parse text: numbers for numeric types, ISO 8601 for temporals (offsets to UTC)."""
    if logical.is_temporal:
        strings = pc.replace_substring_regex(strings, _EXTRA_FRACTION.pattern, r"\1")
    if logical.name != "UTC_DATETIME":
        return strings.cast(target)
    # Arrow refuses naive text for a zoned type; naive values are read as UTC (DESIGN §4)
    zoned = pc.fill_null(pc.match_substring_regex(strings, _HAS_OFFSET), False)
    with_offset = pc.if_else(zoned, strings, pa.scalar(None, pa.string())).cast(target)
    naive = pc.if_else(zoned, pa.scalar(None, pa.string()), strings).cast(pa.timestamp("us"))
    return pc.if_else(zoned, with_offset, naive.cast(target))


def _first_rejected(values: list, logical: LogicalType) -> ValueRejected:
    """The exact row whose value broke a bulk conversion."""
    for row, value in enumerate(values):
        if value is None:
            continue
        try:
            _convert([value], {type(value)}, logical)
        except (
            pa.ArrowInvalid,
            pa.ArrowTypeError,
            OverflowError,
            TypeError,
            ValueError,
            InvalidOperation,
        ) as exc:
            return ValueRejected(row, value, logical, _reason(exc))
    return ValueRejected(0, None, logical, "conversion failed")


def _reason(exc: Exception) -> str:
    text = masking.mask(str(exc)).split("\n")[0]  # Arrow's text may echo the value
    if "Rescaling" in text or "precision" in text:
        return "too many digits"
    return masking.excerpt(text, 120, note="")


# JSON text of one value, NaN and ±Infinity as null, for a column that cannot be written
# in bulk: pydantic's encoder, not orjson. Per small value it is several times faster here
# (orjson gives each answer a fresh page of memory: a page fault per value), and it keeps
# integers beyond 64 bits exact.
_JSON = SchemaSerializer(core_schema.any_schema(), core_schema.CoreConfig(ser_json_inf_nan="null"))
# A whole column is written by orjson in one call instead, each value followed by a mark
# that Arrow then cuts at. orjson writes a plain value byte for byte as `_JSON` does;
# these options make it refuse the rest (a datetime, a dataclass, a subclass of str, int,
# dict or list), which `_JSON` writes its own way, value by value.
_PLAIN_ONLY = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
_MARK = "\x00"  # written "\u0000": only a string holding the mark can show it again
_BETWEEN = b',"\\u0000",'
_LAST = b',"\\u0000"]'


def json_array(values: list) -> pa.Array:
    """JSON text of each value (None: null), as an Arrow string array. (Values come from
    parsed JSON, so nothing exotic reaches the encoder.)"""
    bulk = json_in_bulk(values)
    if bulk is not None:
        return bulk[1]
    if None in values:
        encoded = [None if v is None else _JSON.to_json(v) for v in values]
    else:
        encoded = list(map(_JSON.to_json, values))
    return pa.array(encoded, pa.binary()).cast(pa.string())


def json_in_bulk(values: list) -> tuple[bytes, pa.Array] | None:
    """orjson's text of the column (values and marks) and the column's JSON texts cut
    from it, without a Python object per value; None when orjson refuses a value (an
    integer beyond 64 bits, a datetime, nesting past 255 levels), a value holds the mark,
    or a float of its own could be taken for a null. NaN and ±Infinity are written as
    null, as `_JSON` writes them."""
    nulls = None in values
    if not values or nulls and float in set(map(type, values)):
        return None  # a NaN of its own is written "null" too, as None is
    marked = [_MARK] * (2 * len(values))
    marked[::2] = values
    try:
        text = orjson.dumps(marked, option=_PLAIN_ONLY)
    except orjson.JSONEncodeError:
        return None
    # one value of `text` without its brackets and last mark, cut at the marks between
    span = pa.array([1, len(text) - len(_LAST)], pa.int64()).buffers()[1]
    whole = pa.Array.from_buffers(pa.large_binary(), 1, [None, span, pa.py_buffer(text)])
    pieces = pc.split_pattern(whole, _BETWEEN).flatten()
    if len(pieces) != len(values):  # a value holds the mark between two of its items
        return None
    texts = pieces.cast(pa.string())
    if nulls:  # "null" is the text of None alone
        texts = pc.if_else(pc.equal(texts, "null"), pa.scalar(None, pa.string()), texts)
    return text, texts


def _json_text(value: object) -> str:
    return encode_json(value).decode()


def as_text(value: object) -> str:
    """A value in a STRING column (DESIGN §4): booleans as true/false, JSON as its text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, Decimal)):
        return str(value)
    return _json_text(value)


def hashed(value: object) -> str | None:
    """The `hash` column setting: SHA-256 of the value's text, hex."""
    if value is None:
        return None
    return hashlib.sha256(as_text(value).encode()).hexdigest()
