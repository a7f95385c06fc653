"""JSON for the function protocol: one encoder, used wherever we write a function's JSON.

orjson first; what orjson refuses (integers beyond 64 bits, non-string keys, lone
surrogates) goes through the stdlib encoder, so a big integer is never rounded.
"""

from __future__ import annotations

import json
import uuid
from datetime import date
from datetime import time as time_of_day
from decimal import Decimal
from typing import Any

import orjson


def encode_json(value: Any) -> bytes:
    """JSON bytes by orjson; what orjson refuses (integers beyond 64 bits, non-string keys,
    lone surrogates) goes through the stdlib encoder instead.

    Decimals become exact JSON numbers, sets become lists, datetimes ISO-8601 strings;
    any other unknown type raises `TypeError` rather than being quietly stringified.
    """
    try:
        return orjson.dumps(value, default=_orjson_default)
    except TypeError:
        return json.dumps(
            value, default=_stdlib_default, separators=(",", ":"), allow_nan=False
        ).encode()


def _orjson_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value)) if value.is_finite() else None
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _stdlib_default(value: Any) -> Any:
    # The stdlib cannot write raw number text: integral Decimals stay exact, others are floats.
    if isinstance(value, Decimal) and value.is_finite():
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, date | time_of_day):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return _orjson_default(value)
