"""What the operator reads and steers: the one set of functions behind both the CLI's
commands (`status`, `alerts`, `syncs`, `show`, `state`, `pause`, ...) and the API that
`connector serve` answers. Everything returns JSON-ready documents.

`Control` opens the warehouse per call and closes it after, so that between syncs other
processes can use a DuckDB file. Inside `connector serve` it also knows the syncs running
in the process (`live`) and when the scheduler fires next (`next_fire`); outside it,
nothing is scheduled, so no next run is claimed.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

from . import first_page
from .config import Config
from .destination import Destination, iso, open_destination
from .errors import DestinationError, SyncInProgress, TransientDestinationError
from .events import bus

# `scheme://user:password@host`: the password never leaves the process
_PASSWORD = re.compile(r"(?<=://)([^:/@]*):[^@/]*@")
SCHEMA_CHANGES_SHOWN = 20  # the latest schema changes a connector's document lists


def display_url(url: str) -> str:
    """A warehouse URL with its password masked."""
    return _PASSWORD.sub(r"\1:***@", url)


def schedule_text(schedule) -> str | None:
    """`every 15m`, `cron */15 * * * *`, or None for manual-only."""
    if schedule is None:
        return None
    cron = getattr(schedule, "cron", None)
    if cron is not None:
        return f"cron {cron}"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if schedule >= size and schedule % size == 0:
            return f"every {int(schedule // size)}{unit}"
    return f"every {schedule:g}s"


def parse_time(moment: str | datetime) -> datetime:
    """A document's ISO 8601 time (`…Z`) as an aware datetime; a datetime passes through."""
    if isinstance(moment, datetime):
        return moment
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


def sync_seconds(sync: dict[str, Any]) -> float | None:
    """How long a sync document's sync ran: so far while it runs, None if unknown."""
    if sync.get("elapsed_s") is not None and sync["status"] == "running":
        return sync["elapsed_s"]
    if not sync.get("finished_at") or not sync.get("started_at"):
        return None
    return (parse_time(sync["finished_at"]) - parse_time(sync["started_at"])).total_seconds()


def delivery_text(stats: dict[str, Any] | None) -> str:
    """`1,200 (3 retried, 1 failed, p95 41 ms)`: a sync's deliveries to a destination
    function in one line; "" for a sync without any."""
    if not stats:
        return ""
    notes = [f"{stats[k]:,} {k}" for k in ("retried", "failed") if stats[k]]
    if stats["p95_ms"] is not None:
        p95 = stats["p95_ms"]
        notes.append(f"p95 {p95:,.0f} ms" if p95 >= 10 else f"p95 {p95:.1f} ms")
    return f"{stats['delivered']:,}" + (f" ({', '.join(notes)})" if notes else "")


def schema_change_text(change: dict[str, Any]) -> str:
    """`orders.amount widened BIGINT → DOUBLE`: one schema change as a person reads it.

    Types are named as the warehouse names them, as its own `DESCRIBE` would show them;
    where the warehouse stores both types alike (SQLite keeps DECIMAL and STRING as TEXT)
    the logical types say what changed instead."""
    table, kind = change["table"], change["change"]
    if kind == "table_created":
        return f"{table} created"
    if kind == "history_enabled":
        return f"{table} keeps history from now on"
    old, new = change.get("from_sql_type"), change.get("to_sql_type")
    if new is None or old == new:
        old, new = change["from_type"], change["to_type"]
    where = f"{table}.{change['column']}"
    if kind == "column_added":
        return f"{where} added as {str(new).upper()}"
    if kind == "column_widened":
        return f"{where} widened {str(old).upper()} → {str(new).upper()}"
    return f"{where}: {kind}"


def frame_text(frame, separator: str = ": ") -> str:
    """One stack frame as text: Lambda's `[file, line, function, code]` or a plain line."""
    if isinstance(frame, list) and len(frame) == 4:
        file, line, function, code = frame
        return f'File "{file}", line {line}, in {function}{separator}{code}'
    return str(frame)


class NotFound(LookupError):
    """No such sync or alert."""


class LiveView(Protocol):
    """What `connector serve` knows of its syncs beyond the warehouse (`server.live`)."""

    def running(self) -> dict[str, dict[str, Any]]:
        """connector -> the progress document of its running sync."""

    def finished(self, sync_id: str) -> dict[str, Any] | None:
        """A just-finished sync with its per-table counts and alert."""


class Warehouses:
    """Warehouse connections kept open across the calls of a long-lived process
    (`connector serve`): opening a DuckDB file costs tens of milliseconds, which a
    dashboard polling every second would otherwise pay each time, beside the syncs.

    One connection per URL, used by one call at a time, and closed after `idle_seconds`
    without use, so that between syncs nobody watching leaves a DuckDB file free for other
    processes. A call that fails drops its connection; the next one reconnects.
    """

    def __init__(self, idle_seconds: float = 10.0) -> None:
        self.idle_seconds = idle_seconds
        self._open: dict[str, tuple[Destination, threading.Lock]] = {}
        self._last_used: dict[str, float] = {}
        self._guard = threading.Lock()
        self._closing = threading.Event()
        threading.Thread(target=self._close_idle, name="warehouses", daemon=True).start()

    @contextmanager
    def use(self, url: str) -> Iterator[Destination]:
        with self._guard:
            if url not in self._open:
                self._open[url] = (open_destination(url), threading.Lock())
            destination, lock = self._open[url]
        with lock:
            try:
                yield destination
            except Exception:
                self._drop(url, destination)
                raise
            finally:
                self._last_used[url] = time.monotonic()

    def close(self) -> None:
        self._closing.set()
        with self._guard:
            urls = list(self._open)
        for url in urls:
            self._drop(url, self._open[url][0])

    def _drop(self, url: str, destination: Destination) -> None:
        with self._guard:
            if self._open.get(url, (None,))[0] is destination:
                del self._open[url]
        destination.close()

    def _close_idle(self) -> None:
        while not self._closing.wait(1.0):
            now = time.monotonic()
            with self._guard:
                idle = [
                    (url, pair)
                    for url, pair in self._open.items()
                    if now - self._last_used.get(url, now) > self.idle_seconds
                    and not pair[1].locked()
                ]
            for url, (destination, lock) in idle:
                with lock:
                    self._drop(url, destination)


class Control:
    """The operator's reads and commands over one config's connectors.

    Inside `connector serve` (`live` given) it keeps warehouses open between calls
    (`Warehouses`) and remembers each connector's stored overview (last sync, open alerts,
    paused) until an event says it changed, so that polling clients cost the syncs
    almost nothing; the live parts (a running sync's progress, the next run) are always
    fresh.
    """

    def __init__(
        self,
        config: Config,
        *,
        live: LiveView | None = None,
        next_fire: Callable[[str], datetime | None] | None = None,
    ) -> None:
        self.config = config
        self.live = live  # the syncs running in this process, inside `connector serve`
        self.next_fire = next_fire  # None: nothing schedules syncs right now
        self._warehouses = Warehouses() if live is not None else None
        self._stored: dict[str, dict[str, Any]] = {}  # connector -> its stored overview
        self._changes: dict[str, int] = {}  # connector -> events that made it stale
        if live is not None:
            bus.subscribe(self._forget)

    @contextmanager
    def warehouse(self, name: str) -> Iterator[Destination]:
        """The connector's warehouse for one call (ConfigError for an unknown name)."""
        url = self.config.destination_url(name)
        if self._warehouses is not None:
            with self._warehouses.use(url) as destination:
                yield destination
            return
        with open_destination(url) as destination:
            yield destination

    def close(self) -> None:
        if self._warehouses is not None:
            self._warehouses.close()

    def _forget(self, event: str, data: dict[str, Any]) -> None:
        """A sync started or ended, or an alert changed: that connector's overview is stale."""
        if event in ("sync.started", "sync.finished"):
            self._stale(data["sync"]["connector"])
        elif event.startswith("alert."):
            self._stale(data["alert"]["connector"])

    def _stale(self, name: str) -> None:
        self._changes[name] = self._changes.get(name, 0) + 1
        self._stored.pop(name, None)

    # -- reading ----------------------------------------------------------------------

    def connectors(self) -> list[dict[str, Any]]:
        """Every connector: schedule, paused, status, last sync, next run, open alerts."""
        missing: dict[str, list[str]] = {}
        for name in self.config.connectors:
            if name not in self._stored:
                missing.setdefault(self.config.destination_url(name), []).append(name)
        stored = dict(self._stored)
        for names in missing.values():
            with self.warehouse(names[0]) as destination:
                paused = destination.paused()
                for name in names:
                    stored[name] = self._stored_overview(destination, name, name in paused)
        running = self._running()
        return [self._overview(stored[name], running) for name in self.config.connectors]

    def connector(self, name: str) -> dict[str, Any]:
        """One connector's overview plus its state and tables (columns, types, keys, rows)."""
        with self.warehouse(name) as destination:
            paused = name in destination.paused()
            document = self._overview(
                self._stored_overview(destination, name, paused), self._running()
            )
            snapshot = destination.load(name)
            schema = self.config.schema_name(name)
            tables = sorted(snapshot.catalog.values(), key=lambda t: t.name)
            rows = destination.row_counts(schema, tables)
            document["state"] = snapshot.state
            document["tables"] = [
                {
                    "name": table.name,
                    "source": table.source,
                    "reference": destination.table_reference(schema, table.name),
                    "primary_key": list(table.primary_key),
                    "columns": [{"name": c, "type": str(t)} for c, t in table.columns.items()],
                    "rows": rows.get(table.name),
                }
                for table in tables
            ]
            changes = destination.schema_changes(name, limit=SCHEMA_CHANGES_SHOWN)
            document["schema_changes"] = [change.document() for change in changes]
        return document

    def _stored_overview(self, destination: Destination, name: str, paused: bool) -> dict[str, Any]:
        """What the warehouse says of a connector; kept inside serve until it changes."""
        changes = self._changes.get(name, 0)
        connector = self.config.connector(name)
        last = next(iter(destination.recent_syncs(name, 1)), None)
        document = {
            "name": name,
            "schema": self.config.schema_name(name),
            "warehouse": display_url(self.config.destination_url(name)),
            "schedule": schedule_text(connector.schedule),
            "paused": paused,
            "last_sync": last.document() if last else None,
            "open_alerts": len(destination.list_alerts(name)),
        }
        if self.live is not None and self._changes.get(name, 0) == changes:
            self._stored[name] = document  # unless an event made it stale meanwhile
        return document

    def _overview(self, stored: dict[str, Any], live: dict[str, dict]) -> dict[str, Any]:
        """The stored overview with what is true now: status, running sync, next run."""
        name, last = stored["name"], stored["last_sync"]
        running = live.get(name)
        if running is not None:
            status = "running"
        else:
            status = "failed" if last is not None and last["status"] == "failed" else "idle"
        return {
            **stored,
            "status": status,
            "running": running,
            "next_run": self._next_run(name, stored["paused"]),
            "scheduled": self.next_fire is not None,
        }

    def _next_run(self, name: str, paused: bool) -> str | None:
        if self.next_fire is None or paused:
            return None
        return iso(self.next_fire(name))

    def syncs(
        self, name: str, *, limit: int = 20, before: datetime | None = None
    ) -> list[dict[str, Any]]:
        """The connector's sync history, newest first; a running sync with its progress;
        each with its `delivery` counts (None unless its records went to a function)."""
        self.config.connector(name)
        with self.warehouse(name) as destination:
            records = destination.recent_syncs(name, limit, before=before)
            delivered = destination.deliveries([r.sync_id for r in records])
        running = self._running().get(name)
        return [
            _with_delivery(
                running if running and running["sync_id"] == r.sync_id else r.document(),
                delivered.get(r.sync_id),
            )
            for r in records
        ]

    def schema_changes(
        self, name: str, *, limit: int = 50, before: datetime | None = None
    ) -> list[dict[str, Any]]:
        """The connector's schema changes, newest first; only those before `before`."""
        self.config.connector(name)
        with self.warehouse(name) as destination:
            changes = destination.schema_changes(name, limit=limit, before=before)
        return [change.document() for change in changes]

    def sync(self, sync_id: str, *, logs: bool = False) -> dict[str, Any]:
        """One sync; while it runs, with page, rows, rows_per_s and elapsed_s (what the
        running sync reports, nothing read from the warehouse); once it ended, with its
        `delivery` counts and its `schema_changes` in the order applied."""
        for running in self._running().values():
            if running["sync_id"] == sync_id:
                return running
        kept = self.live.finished(sync_id) if self.live is not None else None
        if kept is not None and not logs:
            return self._kept_with_delivery(kept)
        for name in self._names_by_warehouse():
            with self.warehouse(name) as destination:
                record = destination.get_sync(sync_id)
                if record is not None:
                    stats = destination.deliveries([sync_id]).get(sync_id)
                    document = _with_delivery(record.document(), stats)
                    changes = destination.schema_changes(
                        record.connector, limit=None, sync_id=sync_id
                    )
                    document["schema_changes"] = [c.document() for c in reversed(changes)]
                    if logs:
                        document["function_output"] = destination.function_output(sync_id)
                    return document
        raise NotFound(f"no sync {sync_id}")

    def _kept_with_delivery(self, kept: dict[str, Any]) -> dict[str, Any]:
        """A just-finished sync as kept in memory, with its delivery counts when the
        warehouse answers: the kept document must still answer when it does not (the sync
        may have failed because it is down)."""
        if "delivery" in kept:
            return kept
        try:
            with self.warehouse(kept["connector"]) as destination:
                stats = destination.deliveries([kept["sync_id"]]).get(kept["sync_id"])
        except (DestinationError, TransientDestinationError):
            return kept
        return _with_delivery(kept, stats)

    def alerts(
        self, name: str | None = None, *, include_resolved: bool = False, limit: int = 200
    ) -> list[dict[str, Any]]:
        """Alerts, newest first, open ones only unless `include_resolved`."""
        names = [name] if name else self._names_by_warehouse()
        found = []
        for each in names:
            self.config.connector(each)
            with self.warehouse(each) as destination:
                found += destination.list_alerts(
                    name, include_resolved=include_resolved, limit=limit
                )
        known = set(self.config.connectors)
        found = [a for a in found if a.connector in known]
        found.sort(key=lambda a: a.created_at, reverse=True)
        return [a.document() for a in found[:limit]]

    def state(self, name: str) -> dict[str, Any]:
        with self.warehouse(name) as destination:
            return destination.load(name).state

    def _running(self) -> dict[str, dict[str, Any]]:
        return self.live.running() if self.live is not None else {}

    def _names_by_warehouse(self) -> list[str]:
        """One connector name per distinct warehouse, to visit each warehouse once."""
        first: dict[str, str] = {}
        for name in self.config.connectors:
            first.setdefault(self.config.destination_url(name), name)
        return list(first.values())

    # -- steering ---------------------------------------------------------------------

    def set_state(self, name: str, state: dict[str, Any]) -> None:
        """Replace the saved state; SyncInProgress while a sync of it runs."""
        if name in self._running():
            raise SyncInProgress(f"a sync of {name!r} is already in progress")
        with self.warehouse(name) as destination, destination.lock(name):
            destination.save_state(name, state)
        first_page.remember_state(self.config.destination_url(name), name, state)

    def set_paused(self, name: str, paused: bool) -> None:
        with self.warehouse(name) as destination:
            destination.set_paused(name, paused)
        self._stale(name)

    def resolve_alert(self, alert_id: str) -> dict[str, Any]:
        """Resolve an open alert and publish `alert.resolved`, as a sync's success does (the
        notifier, the metrics and the event stream listen); NotFound if no open alert has
        that id."""
        for name in self._names_by_warehouse():
            with self.warehouse(name) as destination:
                alert = destination.resolve_alert(alert_id, datetime.now(UTC))
            if alert is not None:
                document = alert.document()
                bus.publish("alert.resolved", {"alert": document})
                return document
        raise NotFound(f"no open alert {alert_id}")


def _with_delivery(document: dict[str, Any], stats: dict[str, Any] | None) -> dict[str, Any]:
    """A sync document with its stored delivery counts, unless it carries its own (a
    running sync's progress may be fresher than the warehouse)."""
    return document if "delivery" in document else {**document, "delivery": stats}
