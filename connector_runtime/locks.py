"""Per-connector sync locks that die with the process holding them (`flock`)."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DestinationError, SyncInProgress

_IN_PROCESS: dict[str, threading.Lock] = {}
_GUARD = threading.Lock()


@contextmanager
def file_lock(path: Path | None, connector: str) -> Iterator[None]:
    """Hold `path` exclusively; `None` locks within this process only (in-memory warehouses).

    The kernel drops an flock when its process dies, so a crash never leaves a stale lock.
    """
    with _GUARD:
        local = _IN_PROCESS.setdefault(connector if path is None else str(path), threading.Lock())
    if not local.acquire(blocking=False):
        raise SyncInProgress(f"a sync of {connector!r} is already in progress")
    try:
        if path is None:
            yield
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise DestinationError(
                f"cannot make the sync lock {path}: {exc.strerror or exc}"
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
                raise SyncInProgress(
                    f"a sync of {connector!r} is already in progress (pid {holder})"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)
    finally:
        local.release()
