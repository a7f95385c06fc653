"""What `connector serve` knows between warehouse reads: the syncs running in it, their
progress, the outcome of the ones that just finished, and the metrics (from the events
of `connector_runtime.events`)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from ..events import EventBus

disable_created_metrics()  # no `_created` series: they double the output and nobody reads them
KEEP_FINISHED = 200  # finished syncs whose table counts a following client can still read


class LiveSyncs:
    """The progress of each running sync (by connector) and the last finished ones, with
    their per-table counts and alert (from `sync.finished`)."""

    def __init__(self, bus: EventBus) -> None:
        self._running: dict[str, dict[str, Any]] = {}
        self._finished: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.unsubscribe = bus.subscribe(self._on_event)

    def running(self) -> dict[str, dict[str, Any]]:
        """connector -> the progress document of its running sync."""
        with self._lock:
            return dict(self._running)

    def finished(self, sync_id: str) -> dict[str, Any] | None:
        """A recently finished sync with its per-table counts and alert, if still kept."""
        with self._lock:
            return self._finished.get(sync_id)

    def queued(self, connector: str, sync_id: str, trigger: str) -> None:
        """A sync asked for and about to start: readable by its id at once."""
        document = {
            "sync_id": sync_id,
            "connector": connector,
            "trigger": trigger,
            "started_at": None,
            "finished_at": None,
            "status": "running",
            "pages": 0,
            "rows_upserted": 0,
            "rows_deleted": 0,
            "error": None,
        }
        self._on_event("sync.started", {"sync": document})

    def not_started(self, connector: str, sync_id: str, error: str) -> None:
        """A queued sync that never started (another process held it, say)."""
        with self._lock:
            queued = self._running.get(connector)
            if queued is not None and queued["sync_id"] == sync_id:
                del self._running[connector]
            self._finished[sync_id] = {
                **(queued or {"sync_id": sync_id, "connector": connector}),
                "status": "failed",
                "error": error,
            }

    def _on_event(self, event: str, data: dict[str, Any]) -> None:
        if not event.startswith("sync."):
            return
        sync = data["sync"]
        with self._lock:
            if event == "sync.finished":
                self._running.pop(sync["connector"], None)
                self._finished[sync["sync_id"]] = dict(sync)
                while len(self._finished) > KEEP_FINISHED:
                    self._finished.popitem(last=False)
            else:
                self._running[sync["connector"]] = {
                    "page": 0,
                    "rows": 0,
                    "rows_per_s": None,
                    "elapsed_s": 0.0,
                    **sync,
                }


class Metrics:
    """The Prometheus metrics, kept from events; alert and success gauges start from the
    warehouse (`seed`) so a restart does not reset them."""

    def __init__(self, bus: EventBus, live: LiveSyncs) -> None:
        self.registry = CollectorRegistry()
        labels = {"registry": self.registry}
        self.syncs = Counter(
            "connector_syncs", "Syncs finished, by status.", ["connector", "status"], **labels
        )
        self.rows = Counter(
            "connector_rows", "Rows written, by operation.", ["connector", "operation"], **labels
        )
        self.duration = Histogram(
            "connector_sync_duration_seconds",
            "How long syncs take.",
            ["connector"],
            buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600),
            **labels,
        )
        self.alerts_open = Gauge("connector_alerts_open", "Open alerts.", ["connector"], **labels)
        self.last_success = Gauge(
            "connector_last_success_timestamp_seconds",
            "When the last successful sync finished (Unix time).",
            ["connector"],
            **labels,
        )
        running = Gauge("connector_running_syncs", "Syncs running now.", **labels)
        running.set_function(lambda: len(live.running()))
        self._counted: dict[str, tuple[int, int]] = {}  # sync_id -> rows counted so far
        self._open: dict[str, int] = {}  # connector -> open alerts
        self._lock = threading.Lock()
        self.unsubscribe = bus.subscribe(self._on_event)

    def seed(self, connectors: list[dict[str, Any]], last_success: dict[str, datetime]) -> None:
        """Start the gauges from the warehouse: open alerts, last successful sync."""
        with self._lock:
            for connector in connectors:
                self._open[connector["name"]] = connector["open_alerts"]
                self.alerts_open.labels(connector["name"]).set(connector["open_alerts"])
        for name, finished in last_success.items():
            self.last_success.labels(name).set(finished.timestamp())

    def _on_event(self, event: str, data: dict[str, Any]) -> None:
        if event.startswith("alert."):
            name = data["alert"]["connector"]
            with self._lock:
                step = 1 if event == "alert.opened" else -1
                self._open[name] = max(0, self._open.get(name, 0) + step)
                self.alerts_open.labels(name).set(self._open[name])
            return
        sync = data["sync"]
        if event in ("sync.progress", "sync.finished"):
            self._count_rows(sync, finished=event == "sync.finished")
        if event == "sync.finished":
            name = sync["connector"]
            self.syncs.labels(name, sync["status"]).inc()
            started = datetime.fromisoformat(sync["started_at"])
            finished = datetime.fromisoformat(sync["finished_at"])
            self.duration.labels(name).observe((finished - started).total_seconds())
            if sync["status"] == "succeeded":
                self.last_success.labels(name).set(finished.timestamp())

    def _count_rows(self, sync: dict[str, Any], *, finished: bool) -> None:
        """Add the rows written since the last event of this sync."""
        with self._lock:
            upserted, deleted = self._counted.get(sync["sync_id"], (0, 0))
            if finished:
                self._counted.pop(sync["sync_id"], None)
            else:
                self._counted[sync["sync_id"]] = (sync["rows_upserted"], sync["rows_deleted"])
        name = sync["connector"]
        self.rows.labels(name, "upserted").inc(max(0, sync["rows_upserted"] - upserted))
        self.rows.labels(name, "deleted").inc(max(0, sync["rows_deleted"] - deleted))
