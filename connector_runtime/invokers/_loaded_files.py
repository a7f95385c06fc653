"""The files a worker's Python has loaded, and whether any has changed since.

A worker kept warm between syncs (`local.WarmWorker`, `keep_warm`) must not run code older
than what is on disk: a worker is reused only while every module file it loaded (the
handler, its sibling modules, installed packages, the runtime's own worker) still has the
modification time and size it had when it was loaded. That is the test Python's own
bytecode cache uses to decide that a source file changed.
"""

from __future__ import annotations

import os
import sys


class LoadedFiles:
    """`note` records the files of modules loaded since its last call; `changed` names
    the first recorded file that is now different or gone, or None."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int] | None] = {}  # path: (mtime_ns, size)
        self._modules = 0  # len(sys.modules) at the last note: nothing new if unchanged

    def note(self, *paths: str) -> None:
        """Record the files of new modules (and `paths`), as they are now."""
        for path in paths:
            self._record(path)
        if len(sys.modules) == self._modules:
            return
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None)
            if isinstance(path, str) and path not in self._seen:
                self._record(path)
        self._modules = len(sys.modules)

    def changed(self) -> str | None:
        for path, seen in self._seen.items():
            if _signature(path) != seen:
                return path
        return None

    def _record(self, path: str) -> None:
        self._seen.setdefault(path, _signature(path))


def _signature(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:  # a file gone (or never there, as a frozen module's) stays None
        return None
    return status.st_mtime_ns, status.st_size
