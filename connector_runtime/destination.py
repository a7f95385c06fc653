"""The destination seam: a warehouse that applies pages and keeps the runtime's tables.

The core never imports a backend: `open_destination` picks one by URL scheme and
imports it then. Backends live in the top-level `destinations` package.
"""

from __future__ import annotations

import difflib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import ConfigError
from .naming import NameEntry
from .page import PageWrite, TableInfo
from .types import LogicalType

RUNTIME_SCHEMA = "connector_runtime"
# what a sync into a destination function counts, as `connector_runtime.deliveries` keeps it
DELIVERY_STATS = ("delivered", "retried", "failed", "p50_ms", "p95_ms")


@dataclass(frozen=True)
class SyncRecord:
    """A row of `connector_runtime.syncs`."""

    sync_id: str
    connector: str
    trigger: str  # manual | schedule | resync
    started_at: datetime
    finished_at: datetime | None = None
    status: str = "running"  # running | succeeded | failed | rescheduled
    pages: int = 0
    rows_upserted: int = 0
    rows_deleted: int = 0
    error: str | None = None

    def document(self) -> dict[str, Any]:
        """The sync as JSON-ready data (times as ISO 8601 UTC), for the API and `--json`."""
        return _document(self)


@dataclass(frozen=True)
class Alert:
    """A row of `connector_runtime.alerts`."""

    alert_id: str
    connector: str
    sync_id: str | None
    created_at: datetime
    severity: str  # error | warning
    kind: str
    error_type: str | None
    message: str
    stack_trace: list | None = None
    resolved_at: datetime | None = None

    def document(self) -> dict[str, Any]:
        """The alert as JSON-ready data (times as ISO 8601 UTC), for the API and `--json`."""
        return _document(self)


# what `connector_runtime.schema_changes` records (design §6), in the order a page applies them
SCHEMA_CHANGES = ("table_created", "history_enabled", "column_added", "column_widened")


@dataclass(frozen=True)
class SchemaChange:
    """A row of `connector_runtime.schema_changes`: one change to a data table's shape.

    `table` and `column` are warehouse names (`column` is None for `table_created` and
    `history_enabled`); `from_type`/`to_type` are logical types as text (`LONG`,
    `DECIMAL(38,0)`), as stored. `from_sql_type`/`to_sql_type` are the same types in the
    warehouse's own words (`BIGINT`), filled in by the destination that read or wrote the
    row, for people to read; they are not stored.
    """

    connector: str
    sync_id: str
    changed_at: datetime
    table: str
    column: str | None
    change: str  # one of SCHEMA_CHANGES
    from_type: str | None = None
    to_type: str | None = None
    from_sql_type: str | None = None
    to_sql_type: str | None = None

    def document(self) -> dict[str, Any]:
        """The change as JSON-ready data (times as ISO 8601 UTC), for the API and `--json`."""
        return _document(self)

    def in_words_of(self, sql_type: Callable[[LogicalType], str]) -> SchemaChange:
        """This change with `from_sql_type`/`to_sql_type` named by `sql_type`."""

        def named(text: str | None) -> str | None:
            return None if text is None else sql_type(LogicalType.parse(text))

        return replace(self, from_sql_type=named(self.from_type), to_sql_type=named(self.to_type))


def schema_changes_of(page: PageWrite, at: datetime) -> list[SchemaChange]:
    """What `page` changes in its tables' shape (design §6), in the order it is applied;
    each one microsecond after the one before, so that ordering by `changed_at` alone
    replays a page's changes in order. A new table is one `table_created` (its first
    columns come with it); system columns (`_fivetran_*`) are the runtime's, not recorded."""
    changes: list[tuple[str, str | None, str, str | None, str | None]] = []
    for write in page.tables:
        name, previous = write.table.name, write.previous
        if write.table == previous:  # the usual page: its tables as they were
            continue
        if previous is None:
            changes.append((name, None, "table_created", None, None))
            continue
        if not getattr(previous, "history", False) and getattr(write.table, "history", False):
            changes.append((name, None, "history_enabled", None, None))
        for column, logical in write.added_columns.items():
            changes.append((name, column, "column_added", None, str(logical)))
        for column, (old, new) in write.changed_columns.items():
            changes.append((name, column, "column_widened", str(old), str(new)))
    return [
        SchemaChange(page.connector, page.sync_id, at + timedelta(microseconds=i), *change)
        for i, change in enumerate(changes)
    ]


@dataclass(frozen=True)
class Snapshot:
    """What a sync needs to know before its first page."""

    state: dict[str, Any]
    catalog: dict[str, TableInfo]
    names: list[NameEntry]
    cycle_started_at: datetime | None = None  # start of the oldest sync not yet succeeded
    cycle_trigger: str | None = None  # "resync" while a re-sync has not yet succeeded


@dataclass
class TableCounts:
    """What one page did to one table."""

    upserted: int = 0
    deleted: int = 0
    missing: int = 0  # delete keys not found in the table


@dataclass
class PageResult:
    tables: dict[str, TableCounts] = field(default_factory=dict)
    schema_changes: list[SchemaChange] = field(default_factory=list)  # as recorded, in order

    def add(self, table: str, counts: TableCounts) -> None:
        """Count what another part of the page did to `table`."""
        kept = self.tables.setdefault(table, TableCounts())
        kept.upserted += counts.upserted
        kept.deleted += counts.deleted
        kept.missing += counts.missing

    @property
    def upserted(self) -> int:
        return sum(c.upserted for c in self.tables.values())

    @property
    def deleted(self) -> int:
        return sum(c.deleted for c in self.tables.values())


class Destination(ABC):
    """A warehouse. One instance serves one sync (or one command) and is then closed.

    Contract, for every backend:
    - `apply_page` applies the whole page *and* its state in one transaction: after a
      crash at any instant, either all of it is there or none of it.
    - errors leave as `errors.DestinationError` (terminal: the warehouse refused the
      data) or `errors.TransientDestinationError` (the connection failed before commit;
      the page may be applied again and nothing doubles).
    - names from functions are always quoted; no name is spliced into SQL unquoted.
    """

    # Whether DDL is part of a transaction (not on MySQL, where it commits by itself): a
    # streamed page's tables must then take their final shape before its rows are written.
    transactional_ddl = True

    @classmethod
    def holds_nothing(cls, url: str) -> bool:
        """Whether the warehouse at `url` surely holds no state yet, known without opening
        it (a DuckDB file not yet made); False when that cannot be known so cheaply."""
        return False

    @abstractmethod
    def lock(self, connector: str) -> AbstractContextManager[None]:
        """Hold the connector's sync lock; raise SyncInProgress if another process has it.
        The lock dies with the process that holds it."""

    @abstractmethod
    def load(self, connector: str) -> Snapshot:
        """The saved state, table catalog, names and open sync cycle of a connector."""

    @abstractmethod
    def begin_sync(self, record: SyncRecord, *, reset_state: bool = False) -> Snapshot:
        """Record a running sync; mark rows left `running` by dead processes `failed`;
        open a sync cycle if none is open (`reset_state`: a re-sync, from state {})."""

    def apply_page(self, page: PageWrite) -> PageResult:
        """Create, widen, upsert, append, delete, save names, catalog and state, record the
        page's `schema_changes_of` in `connector_runtime.schema_changes` (returned in the
        result), and count the page in the sync's row (pages, rows): one transaction."""
        return self.apply_parts([page])

    @abstractmethod
    def apply_parts(self, parts: Iterable[PageWrite]) -> PageResult:
        """`apply_page` for a page that arrives in parts (a streamed answer, design §13):
        each part applied as `apply_page` would, in order, all in one transaction, and
        `parts` read one at a time while it is open (so memory holds one part). The page
        counts once in the sync's row; the state saved is the last part's. An exception
        raised by `parts` rolls everything back and propagates unchanged."""

    @abstractmethod
    def finish_cycle(
        self, connector: str, schema: str, tables: list[str], cutoff: datetime, synced_at: datetime
    ) -> dict[str, int]:
        """At a sync's successful end: mark deleted the rows of `tables` not written since
        `cutoff`, and close the sync cycle; one transaction. Returns rows marked, by table."""

    @abstractmethod
    def end_sync(self, record: SyncRecord) -> None:
        """Save the sync's outcome; a succeeded sync resolves the connector's open alerts."""

    @abstractmethod
    def record_alert(self, alert: Alert) -> None:
        """Write an alert in its own transaction (the page's has been rolled back)."""

    # -- reading and steering, for the operator's commands ----------------------------
    # Not abstract: a backend without them can still sync; the commands say so.

    def recent_syncs(
        self, connector: str, limit: int = 20, *, before: datetime | None = None
    ) -> list[SyncRecord]:
        """The connector's latest syncs, newest first; only those started before `before`."""
        raise NotImplementedError(f"{type(self).__name__} cannot list syncs")

    def get_sync(self, sync_id: str) -> SyncRecord | None:
        """One sync by its id."""
        raise NotImplementedError(f"{type(self).__name__} cannot read syncs")

    def list_alerts(
        self,
        connector: str | None = None,
        *,
        include_resolved: bool = False,
        limit: int | None = None,
    ) -> list[Alert]:
        """Alerts, newest first: open ones only unless `include_resolved`."""
        raise NotImplementedError(f"{type(self).__name__} cannot list alerts")

    def resolve_alert(self, alert_id: str, at: datetime) -> Alert | None:
        """Resolve one open alert; the alert as now resolved, None if none was open."""
        raise NotImplementedError(f"{type(self).__name__} cannot resolve alerts")

    def set_paused(self, connector: str, paused: bool) -> None:
        """Pause or resume a connector's schedule; kept in `connector_runtime.state`."""
        raise NotImplementedError(f"{type(self).__name__} cannot pause connectors")

    def paused(self) -> set[str]:
        """The paused connectors."""
        raise NotImplementedError(f"{type(self).__name__} cannot pause connectors")

    def row_counts(self, schema: str, tables: list[TableInfo]) -> dict[str, int]:
        """Rows per data table of `schema` (soft-deleted rows included)."""
        raise NotImplementedError(f"{type(self).__name__} cannot count rows")

    def table_reference(self, schema: str, table: str) -> str:
        """How a person names the table in this warehouse's SQL (quoted where needed)."""
        raise NotImplementedError(f"{type(self).__name__} cannot name tables")

    def save_function_output(self, sync_id: str, output: str) -> None:
        """Keep the tail of what the function printed during a sync (already masked)."""
        raise NotImplementedError(f"{type(self).__name__} cannot keep function output")

    def function_output(self, sync_id: str) -> str | None:
        """The function output kept for a sync, if any."""
        raise NotImplementedError(f"{type(self).__name__} cannot keep function output")

    def save_deliveries(self, sync_id: str, connector: str, stats: dict[str, Any]) -> None:
        """Keep a sync's delivery counts and latencies (`DELIVERY_STATS`: `delivered`,
        `retried`, `failed` as ints, `p50_ms`, `p95_ms` as floats or None), replacing what
        the sync kept before: called after each page and at the end, in its own transaction."""
        raise NotImplementedError(f"{type(self).__name__} cannot keep delivery counts")

    def deliveries(self, sync_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The kept delivery stats by sync id, for those of `sync_ids` that have them, in one
        query. A backend that cannot keep them has none to show."""
        return {}

    def schema_changes(
        self,
        connector: str,
        *,
        limit: int | None = 50,
        before: datetime | None = None,
        sync_id: str | None = None,
    ) -> list[SchemaChange]:
        """The connector's recorded schema changes, newest first, named in this warehouse's
        words (`from_sql_type`, `to_sql_type`): only those changed before `before`, only
        those of the sync `sync_id`. A backend that cannot keep them has none to show."""
        return []

    def save_state(self, connector: str, state: dict[str, Any]) -> None:
        """Replace the saved state (the caller holds the connector's lock); `{}` resets it
        and closes any open sync cycle, so the next sync starts afresh."""
        raise NotImplementedError(f"{type(self).__name__} cannot set state")

    def close(self) -> None:
        """Release the connection. Idempotent."""

    def __enter__(self) -> Destination:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_SQLALCHEMY = "destinations.sqlalchemy:SQLAlchemyDestination"
_BACKENDS = {
    "duckdb": "destinations.duckdb:DuckDBDestination",
    **dict.fromkeys(("postgresql", "postgres", "mysql", "mariadb", "sqlite"), _SQLALCHEMY),
}
# Any other scheme goes to SQLAlchemy, which refuses (ConfigError) one it has no dialect for.
_FALLBACK = _SQLALCHEMY


def check_url(url: str) -> None:
    """ValueError naming the problem if no backend here can take `url` (a typo'd scheme
    gets a "did you mean"); SQLAlchemy's installed dialects count as known."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    known = ", ".join(sorted(_BACKENDS))
    if ":" not in url or not scheme:
        raise ValueError(f"not a warehouse URL; use a scheme such as {known}")
    if scheme in _BACKENDS or _sqlalchemy_dialect(url):
        return
    close = difflib.get_close_matches(scheme, _BACKENDS, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ValueError(f"unknown warehouse scheme {scheme}{hint}; known: {known}")


def _sqlalchemy_dialect(url: str) -> bool:
    try:
        import sqlalchemy

        sqlalchemy.engine.make_url(url).get_dialect()
    except Exception:  # not installed, not a dialect, or not a URL SQLAlchemy reads
        return False
    return True


def open_destination(url: str) -> Destination:
    """The destination for `url`, chosen by its scheme; the backend is imported only now."""
    return destination_class(url)(url)


def destination_class(url: str) -> type[Destination]:
    """The backend `open_destination` would use for `url`, imported."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if ":" not in url or not scheme:
        known = ", ".join(sorted(_BACKENDS))
        raise ConfigError(f"destination {url!r}: not a URL; use one of {known}")
    target = _BACKENDS.get(scheme, _FALLBACK)
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def iso(moment: datetime | None) -> str | None:
    """`2026-12-01T10:00:00.123456Z`: how every time leaves the runtime as text."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _document(record: Any) -> dict[str, Any]:
    return {k: iso(v) if isinstance(v, datetime) else v for k, v in asdict(record).items()}
