"""Workers kept warm between syncs (`keep_warm`), as AWS Lambda keeps an instance warm
between invocations: the next sync of the same function skips the interpreter's start,
the imports and the handler module's own initialisation.

A worker is kept under the exact command and environment that started it (the command
holds the function's whole spec: file, handler, connector, timeout, memory), so a
changed configuration starts a fresh one. `local.WarmWorker` decides what may be kept
and checks a kept worker's files before reusing it. Kept workers are stopped after their
time idle, when more than `MAX_KEPT` would be kept (the longest idle first), and when this
process exits; a process forked from this one (Celery's pool) keeps none of them.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connector_runtime.invokers._worker_process import WorkerProcess

MAX_KEPT = 8  # idle workers in one runtime process, each holding its function's memory


class KeptWorkers:
    """Idle workers by key, each until its deadline; a daemon thread stops the expired."""

    def __init__(self, limit: int = MAX_KEPT, clock: Callable[[], float] = time.monotonic):
        self.limit, self._clock = limit, clock
        self._kept: OrderedDict[Hashable, tuple[WorkerProcess, float]] = OrderedDict()
        self._changed = threading.Condition()
        self._reaper: threading.Thread | None = None

    def keep(self, key: Hashable, worker: WorkerProcess, seconds: float) -> None:
        """Keep `worker` idle under `key` for `seconds`, replacing one kept there."""
        with self._changed:
            replaced = self._kept.pop(key, None)
            self._kept[key] = (worker, self._clock() + seconds)
            evicted = [replaced] if replaced is not None else []
            while len(self._kept) > self.limit:
                evicted.append(self._kept.popitem(last=False)[1])
            self._start_reaper()
            self._changed.notify()
        for kept, _ in evicted:
            kept.stop()

    def take(self, key: Hashable) -> WorkerProcess | None:
        """The worker kept under `key`, no longer kept; None if there is none in time."""
        with self._changed:
            entry = self._kept.pop(key, None)
        if entry is None:
            return None
        worker, deadline = entry
        if self._clock() >= deadline:
            worker.stop()
            return None
        return worker

    def reap(self) -> None:
        """Stop the workers whose time is up."""
        now = self._clock()
        with self._changed:
            expired = [key for key, (_, deadline) in self._kept.items() if deadline <= now]
            workers = [self._kept.pop(key)[0] for key in expired]
        for worker in workers:
            worker.stop()

    def stop_all(self) -> None:
        with self._changed:
            workers = [worker for worker, _ in self._kept.values()]
            self._kept.clear()
        for worker in workers:
            worker.stop()

    def __len__(self) -> int:
        return len(self._kept)

    def forget_all(self) -> None:
        """In a forked child: the workers are the parent's, to neither use nor stop (and
        another thread may have held the lock when the process forked)."""
        self._kept = OrderedDict()
        self._changed = threading.Condition()
        self._reaper = None

    def _start_reaper(self) -> None:
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(target=self._reap_forever, name="kept-workers")
            self._reaper.daemon = True
            self._reaper.start()

    def _reap_forever(self) -> None:
        while True:
            self.reap()
            with self._changed:  # a worker kept from here on wakes the wait
                if not self._kept:
                    self._reaper = None
                    return
                following = min(deadline for _, deadline in self._kept.values())
                self._changed.wait(max(0.0, following - self._clock()))


KEPT = KeptWorkers()
atexit.register(KEPT.stop_all)
os.register_at_fork(after_in_child=KEPT.forget_all)
