"""Secret values never leave the process: every text that could carry one is masked.

Connectors register their secret values when a sync starts; `mask` replaces each with
`***` in any text (an alert message, a stack trace, a log line) before it is stored.
"""

from __future__ import annotations

import threading
from typing import Any

MASK = "***"
MIN_LENGTH = 3  # shorter values ("1", "on") would mask ordinary text without protecting much

_secrets: set[str] = set()
_lock = threading.Lock()


def register(values: Any) -> None:
    """Remember every string inside `values` (a dict, list or str) as secret."""
    found = set(_strings(values))
    with _lock:
        _secrets.update(v for v in found if len(v) >= MIN_LENGTH)


def mask(value: Any) -> Any:
    """`value` with every registered secret replaced; recurses into lists and dicts."""
    if isinstance(value, str):
        for secret in sorted(_secrets, key=len, reverse=True):  # longest first: no partial leaks
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, list):
        return [mask(v) for v in value]
    if isinstance(value, tuple):
        return tuple(mask(v) for v in value)
    if isinstance(value, dict):
        return {k: mask(v) for k, v in value.items()}
    return value


def structlog_processor(_logger: Any, _method: str, event_dict: dict) -> dict:
    """A structlog processor that masks every value of a log event."""
    return {k: mask(v) for k, v in event_dict.items()} if _secrets else event_dict


def _strings(values: Any):
    if isinstance(values, str):
        yield values
    elif isinstance(values, dict):
        for v in values.values():
            yield from _strings(v)
    elif isinstance(values, (list, tuple)):
        for v in values:
            yield from _strings(v)
