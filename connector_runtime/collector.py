"""Cyclic garbage collection paused while pages are parsed and planned."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_GC_PAUSES = [0, False]  # pauses under way in this process; whether gc was on before them
_GC_PAUSES_LOCK = threading.Lock()


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a page is parsed and planned.

    A page allocates tens of thousands of row dicts and no reference cycles; without
    this, the collector rescans every live object of the process again and again (a
    sixth of a sync's time in `make bench`). Collection resumes when the last pause of
    the process ends: pauses overlap (the prefetch thread parses the next page while
    this one is written; `serve` runs several syncs), so they are counted.
    """
    with _GC_PAUSES_LOCK:
        if _GC_PAUSES[0] == 0:
            _GC_PAUSES[1] = gc.isenabled()
            gc.disable()
        _GC_PAUSES[0] += 1
    try:
        yield
    finally:
        with _GC_PAUSES_LOCK:
            _GC_PAUSES[0] -= 1
            if _GC_PAUSES[0] == 0 and _GC_PAUSES[1]:
                gc.enable()
