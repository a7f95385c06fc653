"""JSON for the function protocol: one encoder and one decoder, used wherever we write or
read a function's JSON (its answers, requests, the saved state).

Both keep what a function's JSON can hold that the fast libraries drop:

- integers beyond 64 bits stay exact (orjson refuses to write them and reads them as floats);
- `NaN`, `Infinity` and `-Infinity` are written as those tokens, as Python's `json` and
  AWS Lambda's Python runtime write them (orjson would write `null`), and read back as
  floats, so the runtime can see them and judge them (a state holding one is refused);
- nesting up to `MAX_DEPTH` levels (pydantic-core's parser stops at about 200).
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import date
from datetime import time as time_of_day
from decimal import Decimal
from typing import Any

import orjson

# The deepest nesting the runtime carries: orjson and pydantic-core, which write the
# saved state, the requests and JSON columns, both stop at 255 levels.
MAX_DEPTH = 254

_INT_RANGE = (-(2**63), 2**64 - 1)  # what orjson writes


class TooDeep(ValueError):
    """JSON nested deeper than `MAX_DEPTH`; `path` leads to where (empty if unknown)."""

    def __init__(self, path: tuple[str | int, ...] = ()) -> None:
        self.path = path
        where = f" (at {describe_path(path)})" if path else ""
        super().__init__(f"nested deeper than {MAX_DEPTH} levels{where}")


def encode_json(value: Any) -> bytes:
    """JSON bytes, by orjson where it writes the value exactly.

    Integers beyond 64 bits stay exact; non-finite floats (and Decimals) are written as
    `NaN`, `Infinity`, `-Infinity`. Decimals become exact JSON numbers, sets lists,
    datetimes ISO-8601 strings; any other unknown type raises `TypeError` rather than
    being quietly stringified. Nesting Python cannot even walk raises `TooDeep`.
    """
    try:
        encoded = orjson.dumps(value, default=_orjson_default)
    except TypeError:  # a big integer, a non-string key, a lone surrogate, deep nesting
        return _encode_exactly(value)
    # orjson writes NaN and ±Infinity as null: only then is a closer look worth it
    if b"null" in encoded and has_non_finite(value):
        return _encode_exactly(value)
    return encoded


def decode_json(raw: bytes | str) -> Any:
    """A JSON document: integers of any size exact, `NaN`/`Infinity` as floats.

    Raises `ValueError` with the parser's message for anything that is not JSON, and
    `TooDeep` for JSON nested deeper than `MAX_DEPTH`.
    """
    import pydantic_core  # here: a function's worker encodes only, and starts faster without it

    try:
        # strings are not interned (only keys): most of a page's values occur once
        return pydantic_core.from_json(raw, cache_strings="keys")
    except ValueError as refused:
        # pydantic-core's parser stops at about 200 levels: the stdlib's goes deeper
        try:
            value = json.loads(raw)
        except RecursionError:
            raise TooDeep() from None
        except ValueError:
            raise refused from None
        path = _deeper_than(value, MAX_DEPTH)
        if path is not None:
            raise TooDeep(path) from None
        found = _lone_surrogate(value, ())
        if found is not None:  # JSON's \ud800 escapes can spell what no warehouse holds
            raise NotUnicode(*found) from None
        if _deeper_than(value, 150) is None:  # pydantic refused it for some other reason
            raise refused from None
        return value


class NotUnicode(ValueError):
    """JSON whose string (or key) holds a lone surrogate escape: not Unicode text."""

    def __init__(self, path: tuple[str | int, ...], character: str) -> None:
        self.path, self.character = path, character
        where = f" at {describe_path(path)}" if path else ""
        super().__init__(
            f"a string{where} holds a lone surrogate (\\u{ord(character):04x}), which is not "
            "Unicode text and no warehouse can store"
        )


def _lone_surrogate(value: Any, path: tuple) -> tuple[tuple, str] | None:
    """The path to the first string or key holding a lone surrogate, and that character."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            bad = next((c for c in item if 0xD800 <= ord(c) <= 0xDFFF), None)
            if bad is not None:
                return where, bad
        elif isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, where))
                stack.append((child, (*where, key)))
        elif isinstance(item, list):
            stack.extend((child, (*where, i)) for i, child in enumerate(item))
    return None


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` nests containers deeper than `limit` levels."""
    return _deeper_than(value, limit) is not None


def non_finite_path(value: Any) -> tuple[tuple[str | int, ...], float] | None:
    """The path to the first NaN or ±Infinity float inside `value`, and that float."""
    if not has_non_finite(value):  # the usual case, without building paths
        return None
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, float):
            if not math.isfinite(node):
                return path, node
        elif isinstance(node, dict):
            stack.extend((item, (*path, key)) for key, item in reversed(node.items()))
        elif isinstance(node, list | tuple):
            stack.extend((item, (*path, i)) for i, item in reversed(list(enumerate(node))))
    return None


def token(number: float | Decimal) -> str:
    """`NaN`, `Infinity` or `-Infinity`: how JSON (as Python and JavaScript write it) spells it."""
    if number.is_nan() if isinstance(number, Decimal) else math.isnan(number):
        return "NaN"
    return "Infinity" if number > 0 else "-Infinity"


def describe_path(path: tuple[str | int, ...], *, limit: int = 6) -> str:
    """('state', 'cursors', 0, 'id') → 'state.cursors[0].id', cut after `limit` steps."""
    text = ""
    for step in path[:limit]:
        if isinstance(step, int):
            text += f"[{step}]"
        elif step.isidentifier():
            text += f".{step}" if text else step
        else:
            text += f"[{json.dumps(step)}]"
    return text + ("..." if len(path) > limit else "")


def _orjson_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        text = str(value) if value.is_finite() else token(value)
        return orjson.Fragment(text)
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _encode_exactly(value: Any) -> bytes:
    """What plain orjson would not write exactly: big integers and non-finite floats as
    raw number text, non-string keys as the stdlib writes them; else the stdlib encoder."""
    try:
        return orjson.dumps(_exact(value), default=_orjson_default, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, RecursionError):  # a lone surrogate, nesting beyond orjson's limit
        pass
    try:
        return json.dumps(value, default=_stdlib_default, separators=(",", ":")).encode()
    except RecursionError:
        raise TooDeep() from None


def _exact(value: Any) -> Any:
    """A copy of `value` with what orjson would alter as `orjson.Fragment`s of JSON text."""
    if isinstance(value, dict):
        return {key: _exact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_exact(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return orjson.Fragment(token(value))
    if isinstance(value, int) and not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        return orjson.Fragment(int.__repr__(value))  # bools are within the range
    return value


def has_non_finite(value: Any) -> bool:
    """Whether a NaN or ±Infinity float is anywhere in `value` (a fast walk, no paths)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if not isinstance(value, dict | list | tuple):
        return False
    stack = [value]
    push = stack.append
    while stack:
        node = stack.pop()
        for item in node.values() if isinstance(node, dict) else node:
            kind = type(item)
            if kind is float:
                if item - item:  # NaN - NaN and inf - inf are NaN, which is true
                    return True
            elif kind is str or kind is int or kind is bool or item is None:
                continue
            elif isinstance(item, dict | list | tuple):
                push(item)
            elif isinstance(item, float) and not math.isfinite(item):
                return True
    return False


def _deeper_than(value: Any, limit: int) -> tuple[str | int, ...] | None:
    """The path to a container nested deeper than `limit` levels, if there is one."""
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(value, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict):
            items: Any = node.items()
        elif isinstance(node, list | tuple):
            items = enumerate(node)
        else:
            continue
        if depth > limit:
            return path
        stack.extend((item, depth + 1, (*path, key)) for key, item in items)
    return None


def _stdlib_default(value: Any) -> Any:
    # The stdlib cannot write raw number text: integral Decimals stay exact, others are floats.
    if isinstance(value, Decimal):
        if not value.is_finite():
            return float(token(value))  # written as NaN, Infinity or -Infinity
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, date | time_of_day):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return _orjson_default(value)
