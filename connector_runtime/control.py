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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

from .config import Config
from .destination import Destination, iso, open_destination
from .errors import SyncInProgress
from .events import bus

# `scheme://user:password@host`: the password never leaves the process
_PASSWORD = re.compile(r"(?<=://)([^:/@]*):[^@/]*@")


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


class Control:
    """The operator's reads and commands over one config's connectors."""

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

    @contextmanager
    def warehouse(self, name: str) -> Iterator[Destination]:
        """The connector's warehouse, open for one call (ConfigError for an unknown name)."""
        with open_destination(self.config.destination_url(name)) as destination:
            yield destination

    # -- reading ----------------------------------------------------------------------

    def connectors(self) -> list[dict[str, Any]]:
        """Every connector: schedule, paused, status, last sync, next run, open alerts."""
        by_url: dict[str, list[str]] = {}
        for name in self.config.connectors:
            by_url.setdefault(self.config.destination_url(name), []).append(name)
        documents = {}
        live = self._running()
        for names in by_url.values():
            with self.warehouse(names[0]) as destination:
                paused = destination.paused()
                for name in names:
                    documents[name] = self._overview(destination, name, name in paused, live)
        return [documents[name] for name in self.config.connectors]

    def connector(self, name: str) -> dict[str, Any]:
        """One connector's overview plus its state and tables (columns, types, keys, rows)."""
        with self.warehouse(name) as destination:
            document = self._overview(
                destination, name, name in destination.paused(), self._running()
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
        return document

    def _overview(
        self, destination: Destination, name: str, paused: bool, live: dict[str, dict]
    ) -> dict[str, Any]:
        connector = self.config.connector(name)
        last = next(iter(destination.recent_syncs(name, 1)), None)
        running = live.get(name)
        if running is not None:
            status = "running"
        else:
            status = "failed" if last is not None and last.status == "failed" else "idle"
        return {
            "name": name,
            "schema": self.config.schema_name(name),
            "warehouse": display_url(self.config.destination_url(name)),
            "schedule": schedule_text(connector.schedule),
            "paused": paused,
            "status": status,
            "running": running,
            "last_sync": last.document() if last else None,
            "next_run": self._next_run(name, paused),
            "scheduled": self.next_fire is not None,
            "open_alerts": len(destination.list_alerts(name)),
        }

    def _next_run(self, name: str, paused: bool) -> str | None:
        if self.next_fire is None or paused:
            return None
        return iso(self.next_fire(name))

    def syncs(
        self, name: str, *, limit: int = 20, before: datetime | None = None
    ) -> list[dict[str, Any]]:
        """The connector's sync history, newest first; a running sync with its progress."""
        self.config.connector(name)
        with self.warehouse(name) as destination:
            records = destination.recent_syncs(name, limit, before=before)
        running = self._running().get(name)
        return [
            running if running and running["sync_id"] == r.sync_id else r.document()
            for r in records
        ]

    def sync(self, sync_id: str, *, logs: bool = False) -> dict[str, Any]:
        """One sync; while it runs, with page, rows, rows_per_s and elapsed_s."""
        for running in self._running().values():
            if running["sync_id"] == sync_id:
                return running
        kept = self.live.finished(sync_id) if self.live is not None else None
        if kept is not None and not logs:
            return kept
        for name in self._names_by_warehouse():
            with self.warehouse(name) as destination:
                record = destination.get_sync(sync_id)
                if record is not None:
                    document = record.document()
                    if logs:
                        document["function_output"] = destination.function_output(sync_id)
                    return document
        raise NotFound(f"no sync {sync_id}")

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

    def set_paused(self, name: str, paused: bool) -> None:
        with self.warehouse(name) as destination:
            destination.set_paused(name, paused)

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
