"""What syncs do, as events inside one process: the API's event stream, the metrics and
the notifications all listen here rather than each polling the warehouse.

Events (the names the API's `/api/events` stream uses):

    sync.started    {"sync": <sync document>}
    sync.progress   {"sync": <sync document with page, rows, rows_per_s, elapsed_s>}
    sync.finished   {"sync": <sync document>}
    alert.opened    {"alert": <alert document>}
    alert.resolved  {"alert": <alert document>}
    warehouse.waiting  {"path", "message"}: another process holds the warehouse file

A listener runs in the publishing thread (a sync's), so it must be quick: hand slow work
(an HTTP POST) to a thread of its own. A listener that raises is logged and skipped; it
never fails the sync that published.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog

Listener = Callable[[str, dict[str, Any]], None]


class EventBus:
    """Publish/subscribe within the process; thread-safe."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event, data)` for every event; returns the unsubscribe call."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def publish(self, event: str, data: dict[str, Any]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event, data)
            except Exception as exc:  # a listener's bug must not fail a sync
                structlog.get_logger().error("event_listener_failed", event=event, error=repr(exc))


bus = EventBus()
"""The process's bus: syncs publish here; the server, metrics and notifier subscribe."""
