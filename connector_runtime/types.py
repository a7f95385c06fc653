"""Logical column types: inference from JSON values and widening (design §4).

Pure functions: no database, no network (Arrow only to scan text columns in bulk). A column's type is the `widen` of the types of
every value it has held; `widen` is commutative, associative and idempotent, so the
order in which pages, rows or columns arrive never changes the result.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from functools import reduce

import pyarrow as pa
import pyarrow.compute as pc

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_DECIMAL_DIGITS = 38


@dataclass(frozen=True)
class LogicalType:
    """One of design §4's logical types; DECIMAL carries precision and scale."""

    name: str
    precision: int | None = None
    scale: int | None = None

    def __str__(self) -> str:
        if self.name == "DECIMAL":
            return f"DECIMAL({self.precision},{self.scale})"
        return self.name

    @property
    def is_temporal(self) -> bool:
        return self.name in TEMPORAL_NAMES

    @classmethod
    def parse(cls, text: str) -> LogicalType:
        """`"LONG"`, `"DECIMAL(18,2)"`, ... → LogicalType; ValueError names what is allowed."""
        match = _DECIMAL_RE.fullmatch(text.strip().upper())
        if match:
            precision, scale = int(match[1]), int(match[2] or 0)
            if not 0 < precision <= MAX_DECIMAL_DIGITS or scale > precision:
                raise ValueError(f"DECIMAL({precision},{scale}): need 0 < p <= 38 and s <= p")
            return decimal(precision, scale)
        name = text.strip().upper()
        if name not in SIMPLE_NAMES:
            allowed = ", ".join(sorted(SIMPLE_NAMES)) + ", DECIMAL(p,s)"
            raise ValueError(f"unknown type {text!r}; expected one of {allowed}")
        return LogicalType(name)


def decimal(precision: int, scale: int) -> LogicalType:
    return LogicalType("DECIMAL", precision, scale)


BOOLEAN = LogicalType("BOOLEAN")
LONG = LogicalType("LONG")
DOUBLE = LogicalType("DOUBLE")
NAIVE_DATE = LogicalType("NAIVE_DATE")
NAIVE_DATETIME = LogicalType("NAIVE_DATETIME")
UTC_DATETIME = LogicalType("UTC_DATETIME")
STRING = LogicalType("STRING")
JSON = LogicalType("JSON")
BIG_INTEGER = decimal(MAX_DECIMAL_DIGITS, 0)

SIMPLE_NAMES = frozenset(
    {"BOOLEAN", "LONG", "DOUBLE", "NAIVE_DATE", "NAIVE_DATETIME", "UTC_DATETIME", "STRING", "JSON"}
)
TEMPORAL_NAMES = frozenset({"NAIVE_DATE", "NAIVE_DATETIME", "UTC_DATETIME"})
_NUMERIC_NAMES = frozenset({"LONG", "DECIMAL", "DOUBLE"})
_DECIMAL_RE = re.compile(r"DECIMAL\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)")

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?P<offset>Z|z|[+-]\d{2}(?::?\d{2})?)?"
)


def infer_value(value: object) -> LogicalType | None:
    """The type of one JSON value; None for null, which says nothing."""
    if value is None:
        return None
    if isinstance(value, bool):  # before int: bool is an int subclass
        return BOOLEAN
    if isinstance(value, int):
        return _integer_type(value)
    if isinstance(value, float):
        return DOUBLE
    if isinstance(value, str):
        return string_type(value)
    if isinstance(value, (dict, list)):
        return JSON
    return STRING


def _integer_type(value: int) -> LogicalType:
    if INT64_MIN <= value <= INT64_MAX:
        return LONG
    if abs(value) < 10**MAX_DECIMAL_DIGITS:
        return BIG_INTEGER
    return STRING  # beyond 38 digits no warehouse decimal holds it exactly


def string_type(text: str) -> LogicalType:
    """ISO dates and date-times become temporals; anything else, numeric-looking too, STRING."""
    if _DATE_RE.fullmatch(text):
        return NAIVE_DATE if _parses(date.fromisoformat, text) else STRING
    match = _DATETIME_RE.fullmatch(text)
    if match is None or not _parses(datetime.fromisoformat, _with_offset_colon(text, match)):
        return STRING
    return UTC_DATETIME if match["offset"] else NAIVE_DATETIME


def _with_offset_colon(text: str, match: re.Match) -> str:
    """Python < 3.12 needs `+HH:MM`; ISO 8601 also allows `+HHMM` and `+HH`."""
    offset = match["offset"]
    if not offset or offset in "Zz" or ":" in offset:
        return text
    body = text[: -len(offset)]
    return f"{body}{offset[:3]}:{offset[3:] or '00'}"


def _parses(parse, text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return True


def infer_column(values: Iterable[object]) -> LogicalType | None:
    """The type of a column holding `values`: the widening of each value's type.

    Works per Python type rather than per value: a column of ten thousand ints costs
    one min/max, and a column of text one vectorised look at whether any of it could
    be a date at all.
    """
    values = list(values)
    kinds = set(map(type, values))
    kinds.discard(type(None))
    if len(kinds) == 1 and None not in values:
        return _group_type(kinds.pop(), values)
    groups: dict[type, list] = {kind: [] for kind in kinds}
    for value in values:
        if value is not None:
            groups[type(value)].append(value)
    return widen_all(_group_type(kind, group) for kind, group in groups.items())


def _group_type(kind: type, group: list) -> LogicalType | None:
    if kind is int:
        return widen(_integer_type(min(group)), _integer_type(max(group)))
    if kind is str:
        return _text_type(group)
    return infer_value(group[0])


VECTOR_MIN = 64  # below this, Arrow's setup costs more than it saves


def might_be_temporal(text: pa.Array) -> bool:
    """Whether any value of a string array starts as every date and date-time does."""
    return has_dash_fifth(text) and starts_as_a_date(text)


def starts_as_a_date(text: pa.Array) -> bool:
    """`might_be_temporal` by its pattern alone, for a caller that looked at the fifth
    bytes already (`has_dash_fifth`)."""
    return bool(pc.any(pc.match_substring_regex(text, _TEMPORAL_PREFIX)).as_py())


def has_dash_fifth(text: pa.Array) -> bool:
    """Whether any value of a string array has a '-' as its fifth byte, as every date
    does: a look several times cheaper than the pattern, which most text fails anyway."""
    as_bytes = pa.large_binary() if pa.types.is_large_string(text.type) else pa.binary()
    fifth = pc.binary_slice(text.view(as_bytes), 4, 5)
    return bool(pc.any(pc.equal(fifth, pa.scalar(b"-", as_bytes))).as_py())


def _text_type(group: list[str]) -> LogicalType | None:
    """Most text columns hold no date at all: Arrow tells that in one pass; only columns
    that might be temporal are classified value by value."""
    if len(group) >= VECTOR_MIN:
        text = pa.array(group, pa.string())
        if not might_be_temporal(text):
            return STRING
        bulk = _bulk_temporal_type(group, text)
        if bulk is not None:
            return bulk
    found: LogicalType | None = None
    for kind in set(map(string_type, group)):
        found = widen(found, kind)
        if found == STRING:
            break
    return found


_TEMPORAL_PREFIX = r"^\d{4}-\d{2}-\d{2}"  # every date and date-time starts so
_ZONED = r"[Tt ]\d{2}:\d{2}.*(Z|z|[+-]\d{2}(:?\d{2})?)$"


def _bulk_temporal_type(group: list[str], text: pa.Array) -> LogicalType | None:
    """A column that is all dates / date-times, classified and validated by Arrow; None
    when it is not, or when Arrow cannot parse a value (then value by value decides)."""
    dates = pc.match_substring_regex(text, f"^{_DATE_RE.pattern}$")
    if pc.all(dates).as_py():
        candidate = NAIVE_DATE
    else:
        times = pc.match_substring_regex(text, f"^(?:{_DATETIME_RE.pattern})$")
        if not pc.all(pc.or_(dates, times)).as_py():
            return None
        zoned = pc.any(pc.match_substring_regex(text, _ZONED)).as_py()
        candidate = UTC_DATETIME if zoned else NAIVE_DATETIME
    from .batches import ValueRejected, column_array  # batches builds on this module

    try:
        column_array(group, candidate)
    except ValueRejected:
        return None
    return candidate


def widen_all(types: Iterable[LogicalType | None]) -> LogicalType | None:
    return reduce(widen, types, None)


def widen(a: LogicalType | None, b: LogicalType | None) -> LogicalType | None:
    """The least type that holds every value of `a` and of `b` (design §4)."""
    if a is None or a == b:
        return b
    if b is None:
        return a
    if a.name in _NUMERIC_NAMES and b.name in _NUMERIC_NAMES:
        return _widen_numeric(a, b)
    if a.is_temporal and b.is_temporal:
        # NAIVE_DATE < NAIVE_DATETIME < UTC_DATETIME: naive values are read as UTC
        return max(a, b, key=_TEMPORAL_RANK.__getitem__)
    if _json_holds(a) and _json_holds(b):
        # JSON text holds booleans and numbers exactly; a string would be ambiguous. So
        # BOOLEAN v LONG is JSON too: the least type that holds both, and the only
        # choice that keeps widening associative beside "JSON v scalar -> JSON".
        return JSON
    return STRING


_TEMPORAL_RANK = {NAIVE_DATE: 0, NAIVE_DATETIME: 1, UTC_DATETIME: 2}


def _json_holds(t: LogicalType) -> bool:
    return t in (BOOLEAN, JSON) or t.name in _NUMERIC_NAMES


def _widen_numeric(a: LogicalType, b: LogicalType) -> LogicalType:
    if DOUBLE in (a, b):
        return DOUBLE  # exactness is already lost on the DOUBLE side
    a, b = _as_decimal(a), _as_decimal(b)
    scale = max(a.scale, b.scale)
    integer_digits = max(a.precision - a.scale, b.precision - b.scale)
    if integer_digits + scale > MAX_DECIMAL_DIGITS:
        return DOUBLE  # no DECIMAL holds both; DOUBLE, the numeric top, keeps this associative
    return decimal(integer_digits + scale, scale)


def _as_decimal(t: LogicalType) -> LogicalType:
    return decimal(19, 0) if t == LONG else t  # every int64 has at most 19 digits
