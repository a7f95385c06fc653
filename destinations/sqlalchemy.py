"""Any SQLAlchemy URL as the warehouse; PostgreSQL, MySQL/MariaDB and SQLite tested for real.

    postgresql://user@host/db   (psycopg 3)    pip install 'connector-runtime[postgres]'
    mysql://user@host/db        (PyMySQL)      pip install 'connector-runtime[mysql]'
    mariadb://user@host/db      (PyMySQL)      pip install 'connector-runtime[mysql]'
    sqlite:///warehouse.sqlite                 pip install 'connector-runtime[sqlite]'
    any other SQLAlchemy URL whose dialect is installed (generic SQL, see sql/base.py)

Where tables live. PostgreSQL has schemas: data tables are `<schema>.<table>`, the
runtime's tables `connector_runtime.state`, `.syncs`, `.alerts`, `.names`, `.tables`,
`.deliveries`.
MySQL and SQLite keep everything in the URL's database (a MySQL "schema" is a database the
URL's user may not be allowed to create): data tables are `<schema>__<table>`, the
runtime's `connector_runtime__state` and so on. Names longer than the database allows are
cut and end in a hash of the whole name. The runtime tables have DuckDB's columns.

Transactions. A page, its catalog and names and the new state commit together. On
PostgreSQL and SQLite the DDL is part of that transaction. MySQL commits around each DDL
statement, so there the page's DDL runs first, derived from the table as it is, and the
rows, catalog and state follow in one transaction: a page replayed after a failure finds
its columns in place and only writes its rows (see `sql/mysql.py`).

Errors. A lost or refused connection, a deadlock or lock timeout leaves as
TransientDestinationError (nothing was committed: the sync retries the page on a new
connection); anything else the database refuses as DestinationError.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import orjson

from connector_runtime.destination import (
    _BACKENDS,
    DELIVERY_STATS,
    Alert,
    Destination,
    PageResult,
    SchemaChange,
    Snapshot,
    SyncRecord,
    TableCounts,
    schema_changes_of,
)
from connector_runtime.errors import ConfigError, DestinationError, TransientDestinationError
from connector_runtime.jsonio import decode_json, encode_json, json_depth_exceeds
from connector_runtime.naming import NameEntry
from connector_runtime.page import PageWrite, TableInfo, TableWrite

try:
    import sqlalchemy as sa
    from sqlalchemy.dialects import mysql, postgresql
    from sqlalchemy.pool import NullPool
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installed extras
    raise ConfigError(
        "destination: SQL warehouses need SQLAlchemy and a driver: pip install "
        "'connector-runtime[postgres]' (or [mysql], [sqlite])"
    ) from exc

from .sql import MYSQL_NAMES, DataTable, UtcTimestamp, flavor_for, history

DEFAULT_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}
EXTRAS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}
CONNECT_ARGS = {
    "psycopg": {"connect_timeout": 10, "application_name": "connector-runtime"},
    "pymysql": {"connect_timeout": 10, "charset": "utf8mb4"},
    "pysqlite": {"timeout": 30.0},
}


class JsonDocument(sa.types.TypeDecorator):
    """A JSON value (the state, a stack trace, a table's catalog entry): jsonb on
    PostgreSQL, JSON on MySQL, its text elsewhere; integers beyond 64 bits stay exact.

    MySQL's JSON type holds 100 levels of nesting and turns integers beyond 64 bits into
    doubles; MariaDB's (text checked by JSON_VALID) holds 32 levels. A document either
    would refuse or alter is stored there as a JSON string of its exact text, which reading
    undoes (every document stored here is an object or an array, never a string).
    """

    impl = sa.Text()
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.JSONB(none_as_null=True))
        if dialect.name in MYSQL_NAMES:
            return dialect.type_descriptor(mysql.JSON(none_as_null=True))
        return dialect.type_descriptor(sa.Text())

    def process_bind_param(self, value, dialect):
        if value is None or dialect.name == "postgresql":
            return value
        if dialect.name in MYSQL_NAMES and not _beyond_mysql_json(value, dialect):
            return value
        # as text; on MySQL the JSON type's own encoder then makes it a JSON string
        return encode_json(value).decode()

    def process_result_value(self, value, dialect):
        while isinstance(value, str | bytes):  # text, or a JSON string of a document's text
            value = decode_json(value)
        return value


MYSQL_JSON_DEPTH = 32  # MariaDB's JSON_VALID; MySQL's JSON type holds 100


def _beyond_mysql_json(value, dialect) -> bool:
    """Whether MySQL's or MariaDB's JSON type would refuse or alter `value` (see JsonDocument)."""
    if not getattr(dialect, "is_mariadb", False):  # MariaDB keeps the text as it is
        try:
            orjson.dumps(value)  # refuses integers beyond 64 bits (and other non-JSON values)
        except TypeError:
            return True
    return json_depth_exceeds(value, MYSQL_JSON_DEPTH)


def runtime_tables(flavor) -> dict[str, sa.Table]:
    """`connector_runtime.*` (DESIGN §6), with DuckDB's columns, for this database."""
    metadata = sa.MetaData()
    # MySQL keys need a length; a binary collation compares names exactly ('Name' is not
    # 'name'), as every other warehouse does
    key = sa.Text().with_variant(sa.String(255, collation="utf8mb4_bin"), *MYSQL_NAMES)
    text = sa.Text().with_variant(mysql.LONGTEXT(collation="utf8mb4_bin"), *MYSQL_NAMES)
    when = UtcTimestamp

    def table(name: str, *columns: sa.Column) -> sa.Table:
        schema, physical = flavor.runtime_name(name)
        return sa.Table(physical, metadata, *columns, schema=schema, quote=True)

    return {
        "state": table(
            "state",
            sa.Column("connector", key, primary_key=True),
            sa.Column("state", JsonDocument()),
            sa.Column("sync_id", key),
            sa.Column("updated_at", when()),
            sa.Column("cycle_started_at", when()),
            sa.Column("cycle_trigger", key),
            sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        ),
        "syncs": table(
            "syncs",
            sa.Column("sync_id", key, primary_key=True),
            *(sa.Column(c, key) for c in ("connector", "trigger")),
            sa.Column("started_at", when()),
            sa.Column("finished_at", when()),
            sa.Column("status", key),
            *(sa.Column(c, sa.BigInteger()) for c in ("pages", "rows_upserted", "rows_deleted")),
            sa.Column("error", text),
            sa.Column("function_output", text),
        ),
        "alerts": table(
            "alerts",
            sa.Column("alert_id", key, primary_key=True),
            *(sa.Column(c, key) for c in ("connector", "sync_id")),
            sa.Column("created_at", when()),
            *(sa.Column(c, key) for c in ("severity", "kind")),
            *(sa.Column(c, text) for c in ("error_type", "message")),
            sa.Column("stack_trace", JsonDocument()),
            sa.Column("resolved_at", when()),
        ),
        "names": table(
            "names",
            sa.Column("connector", key),
            *(sa.Column(c, text) for c in ("source_table", "source_column", "name")),
        ),
        "tables": table(
            "tables",
            sa.Column("connector", key),
            *(sa.Column(c, text) for c in ("name", "source")),
            *(sa.Column(c, JsonDocument()) for c in ("primary_key", "columns", "declared")),
            sa.Column("deleted_column", sa.Boolean()),
            sa.Column("history", sa.Boolean()),  # design §14; NULL in older catalogs: off
        ),
        "deliveries": table(
            "deliveries",
            sa.Column("sync_id", key, primary_key=True),
            sa.Column("connector", key),
            *(sa.Column(c, sa.BigInteger()) for c in ("delivered", "retried", "failed")),
            *(sa.Column(c, sa.Double()) for c in ("p50_ms", "p95_ms")),
            sa.Column("updated_at", when()),
        ),
        "schema_changes": table(
            "schema_changes",
            *(sa.Column(c, key) for c in ("connector", "sync_id")),
            sa.Column("changed_at", when()),
            *(sa.Column(c, text) for c in ("table", "column")),  # quoted: reserved words
            *(sa.Column(c, key) for c in ("change", "from_type", "to_type")),
        ),
    }


# The columns of some tables, as (table, column) rows: on the servers, one catalog query
# instead of SQLAlchemy's reflection (which costs ~20 ms a sync on PostgreSQL).
_COLUMNS_QUERIES = {
    "postgresql": sa.text(
        "SELECT c.relname, a.attname FROM pg_catalog.pg_attribute a"
        " JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = :schema AND c.relname IN :names"
        " AND a.attnum > 0 AND NOT a.attisdropped"
    ).bindparams(sa.bindparam("names", expanding=True)),
    "mysql": sa.text(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = COALESCE(:schema, DATABASE()) AND table_name IN :names"
    ).bindparams(sa.bindparam("names", expanding=True)),
}
_COLUMNS_QUERIES["mariadb"] = _COLUMNS_QUERIES["mysql"]


def create_engine(url: str) -> sa.Engine:
    """An engine for `url` with this runtime's default driver; ConfigError names the extra."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"destination {url.split(':', 1)[0]}: not a database URL: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend in DEFAULT_DRIVERS and "+" not in parsed.drivername:
        parsed = parsed.set(drivername=DEFAULT_DRIVERS[backend])
    elif backend == "postgres":
        parsed = parsed.set(drivername=f"postgresql+{parsed.get_driver_name()}")
    shown = parsed.render_as_string(hide_password=True)
    try:
        dialect = parsed.get_dialect()
    except sa.exc.NoSuchModuleError as exc:
        known = ", ".join(sorted(_BACKENDS))
        raise ConfigError(
            f"destination {backend}: unsupported scheme; use one of {known}, or a URL of an "
            "installed SQLAlchemy dialect"
        ) from exc
    connect_args = {
        k: v for k, v in CONNECT_ARGS.get(dialect.driver, {}).items() if k not in parsed.query
    }
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    try:
        return sa.create_engine(parsed, poolclass=NullPool, connect_args=connect_args)
    except ImportError as exc:
        raise ConfigError(
            f"destination {shown}: the driver {exc.name!r} is not installed; {_install(parsed)}"
        ) from exc


def _install(url: sa.engine.URL) -> str:
    backend, extra = url.get_backend_name(), EXTRAS.get(url.get_backend_name())
    default = DEFAULT_DRIVERS.get(backend, "").partition("+")[2]
    if extra and (url.get_driver_name() == default or not default):
        return f"pip install 'connector-runtime[{extra}]'"
    if extra:
        return (
            f"install it, or write {backend}:// for the default driver "
            f"(pip install 'connector-runtime[{extra}]')"
        )
    return "install the driver SQLAlchemy names for this URL"


class SQLAlchemyDestination(Destination):
    """A SQL database through SQLAlchemy Core; per-dialect parts live in `sql/`."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)
        self.flavor = flavor_for(self.engine)
        self.runtime = runtime_tables(self.flavor)
        self._conn: sa.Connection | None = None
        self._stages = itertools.count(1)
        # (schema, table) -> the sync that created it, while no key of its came back
        self._created: dict[tuple[str, str], str] = {}

    @classmethod
    def holds_nothing(cls, url: str) -> bool:
        """A SQLite file not made yet holds nothing; a database server can hold anything."""
        try:
            parsed = sa.engine.make_url(url)
        except sa.exc.ArgumentError:
            return False
        if parsed.get_backend_name() != "sqlite" or "uri" in parsed.query:
            return False  # a `file:` URI names its file its own way
        return parsed.database in (None, "", ":memory:") or not Path(parsed.database).exists()

    # -- connection -------------------------------------------------------------------

    @property
    def conn(self) -> sa.Connection:
        if self._conn is None:
            conn = self.engine.connect()
            try:
                with conn.begin():
                    present = self._runtime_columns(conn)
                    tables = self.runtime.values()
                    if any(
                        {c.name for c in t.columns} - present.get(t.name, set()) for t in tables
                    ):
                        self._create_runtime_tables(conn, present)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _runtime_columns(self, conn: sa.Connection) -> dict[str, set[str]]:
        """The columns of the runtime tables there are, by table: one catalog query on
        PostgreSQL and MySQL/MariaDB, SQLAlchemy's reflection elsewhere, so that opening a
        warehouse set up already is cheap."""
        tables = list(self.runtime.values())
        names = [t.name for t in tables]
        query = _COLUMNS_QUERIES.get(conn.dialect.name)
        if query is None:  # SQLite and others: SQLAlchemy's reflection
            found = sa.inspect(conn).get_multi_columns(schema=tables[0].schema, filter_names=names)
            return {name: {c["name"] for c in columns} for (_, name), columns in found.items()}
        present: dict[str, set[str]] = {}
        for table, column in conn.execute(query, {"schema": tables[0].schema, "names": names}):
            present.setdefault(table, set()).add(column)
        return present

    def _create_runtime_tables(self, conn: sa.Connection, present: dict[str, set[str]]) -> None:
        """Create what is missing; runtime tables made by an earlier version get the
        columns added since."""
        if self.flavor.runtime_schema:
            schema = self.flavor.runtime_schema
            conn.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
        next(iter(self.runtime.values())).metadata.create_all(conn)
        for table in self.runtime.values():
            for column in table.columns:
                if table.name in present and column.name not in present[table.name]:
                    ddl = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
                    target = self.engine.dialect.identifier_preparer.format_table(table)
                    conn.execute(sa.text(f"ALTER TABLE {target} ADD COLUMN {ddl}"))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.engine.dispose()

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sa.Connection]:
        """One transaction; driver errors leave translated (see the module docstring)."""
        try:
            conn = self.conn
            with conn.begin():
                yield conn
        except (sa.exc.DBAPIError, self.engine.dialect.loaded_dbapi.Error) as exc:
            raise self._translated(exc, what) from exc
        except sa.exc.SQLAlchemyError as exc:
            raise DestinationError(f"{self.flavor.title} refused {what}: {exc}") from exc

    def _translated(self, exc: Exception, what: str) -> Exception:
        error = getattr(exc, "orig", None) or exc
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if getattr(exc, "connection_invalidated", False) or self.flavor.is_transient(error):
            self._drop_connection()
            return TransientDestinationError(
                f"{self.flavor.title}: {what} failed before commit: {detail}"
            )
        return DestinationError(f"{self.flavor.title} refused {what}: {detail}")

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with suppress(sa.exc.SQLAlchemyError):  # it is broken already
                self._conn.invalidate()
                self._conn.close()
            self._conn = None

    @contextmanager
    def lock(self, connector: str) -> Iterator[None]:
        with ExitStack() as held:
            try:
                held.enter_context(self.flavor.lock(connector))
            except (sa.exc.DBAPIError, self.engine.dialect.loaded_dbapi.Error) as exc:
                raise self._translated(exc, "taking the sync lock") from exc
            yield

    # -- runtime tables ---------------------------------------------------------------

    def load(self, connector: str) -> Snapshot:
        state, names, tables = (self.runtime[t] for t in ("state", "names", "tables"))
        with self._transaction("reading the saved state") as conn:
            row = conn.execute(
                sa.select(state.c.state, state.c.cycle_started_at, state.c.cycle_trigger).where(
                    state.c.connector == connector
                )
            ).first()
            stored_names = conn.execute(
                sa.select(names.c.source_table, names.c.source_column, names.c.name).where(
                    names.c.connector == connector
                )
            ).all()
            catalog_rows = conn.execute(
                sa.select(
                    tables.c.name,
                    tables.c.source,
                    tables.c.primary_key,
                    tables.c.columns,
                    tables.c.declared,
                    tables.c.deleted_column,
                    tables.c.history,
                ).where(tables.c.connector == connector)
            ).all()
        names = [NameEntry(*r) for r in stored_names]
        catalog = {r[0]: TableInfo.from_stored(*r) for r in catalog_rows}
        if row is None:
            return Snapshot({}, catalog, names)
        return Snapshot(row.state or {}, catalog, names, row.cycle_started_at, row.cycle_trigger)

    def begin_sync(self, record: SyncRecord, *, reset_state: bool = False) -> Snapshot:
        syncs, state = self.runtime["syncs"], self.runtime["state"]
        with self._transaction("recording the sync") as conn:
            conn.execute(
                sa.update(syncs)
                .where(syncs.c.connector == record.connector, syncs.c.status == "running")
                .values(
                    status="failed",
                    finished_at=record.started_at,
                    error="the process running this sync died",
                )
            )
            conn.execute(
                sa.insert(syncs).values(
                    sync_id=record.sync_id,
                    connector=record.connector,
                    trigger=record.trigger,
                    started_at=record.started_at,
                    status="running",
                    pages=0,
                    rows_upserted=0,
                    rows_deleted=0,
                )
            )
            mine = state.c.connector == record.connector
            self._ensure_state_row(conn, record.connector)
            if reset_state:
                cycle = {
                    "state": {},
                    "cycle_started_at": record.started_at,
                    "cycle_trigger": "resync",
                }
                conn.execute(sa.update(state).where(mine).values(cycle))
            else:
                conn.execute(
                    sa.update(state)
                    .where(mine, state.c.cycle_started_at.is_(None))
                    .values(cycle_started_at=record.started_at, cycle_trigger=record.trigger)
                )
        return self.load(record.connector)

    def end_sync(self, record: SyncRecord) -> None:
        syncs, alerts = self.runtime["syncs"], self.runtime["alerts"]
        with self._transaction("recording the sync's outcome") as conn:
            conn.execute(
                sa.update(syncs)
                .where(syncs.c.sync_id == record.sync_id)
                .values(
                    finished_at=record.finished_at,
                    status=record.status,
                    pages=record.pages,
                    rows_upserted=record.rows_upserted,
                    rows_deleted=record.rows_deleted,
                    error=record.error,
                )
            )
            if record.status == "succeeded":
                conn.execute(
                    sa.update(alerts)
                    .where(alerts.c.connector == record.connector, alerts.c.resolved_at.is_(None))
                    .values(resolved_at=record.finished_at)
                )

    def record_alert(self, alert: Alert) -> None:
        with self._transaction("recording an alert") as conn:
            conn.execute(
                sa.insert(self.runtime["alerts"]).values(
                    alert_id=alert.alert_id,
                    connector=alert.connector,
                    sync_id=alert.sync_id,
                    created_at=alert.created_at,
                    severity=alert.severity,
                    kind=alert.kind,
                    error_type=alert.error_type,
                    message=alert.message,
                    stack_trace=alert.stack_trace,
                )
            )

    def recent_syncs(
        self, connector: str, limit: int = 20, *, before: datetime | None = None
    ) -> list[SyncRecord]:
        syncs = self.runtime["syncs"]
        query = sa.select(*self._sync_columns()).where(syncs.c.connector == connector)
        if before is not None:
            query = query.where(syncs.c.started_at < before)
        with self._transaction("reading syncs") as conn:
            rows = conn.execute(query.order_by(syncs.c.started_at.desc()).limit(limit)).mappings()
            return [_sync(row) for row in rows.all()]

    def get_sync(self, sync_id: str) -> SyncRecord | None:
        syncs = self.runtime["syncs"]
        query = sa.select(*self._sync_columns()).where(syncs.c.sync_id == sync_id)
        with self._transaction("reading a sync") as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _sync(row)

    def _sync_columns(self) -> list[sa.Column]:
        return [c for c in self.runtime["syncs"].c if c.name != "function_output"]

    def list_alerts(
        self,
        connector: str | None = None,
        *,
        include_resolved: bool = False,
        limit: int | None = None,
    ) -> list[Alert]:
        alerts = self.runtime["alerts"]
        query = sa.select(alerts).order_by(alerts.c.created_at.desc()).limit(limit)
        if connector is not None:
            query = query.where(alerts.c.connector == connector)
        if not include_resolved:
            query = query.where(alerts.c.resolved_at.is_(None))
        with self._transaction("reading alerts") as conn:
            return [_alert(row) for row in conn.execute(query).mappings().all()]

    def resolve_alert(self, alert_id: str, at: datetime) -> Alert | None:
        alerts = self.runtime["alerts"]
        mine = alerts.c.alert_id == alert_id
        with self._transaction("resolving an alert") as conn:
            updated = conn.execute(
                sa.update(alerts).where(mine, alerts.c.resolved_at.is_(None)).values(resolved_at=at)
            ).rowcount
            row = conn.execute(sa.select(alerts).where(mine)).mappings().first()
        return _alert(row) if updated and row is not None else None

    def save_state(self, connector: str, state: dict) -> None:
        table = self.runtime["state"]
        with self._transaction("saving the state") as conn:
            self._ensure_state_row(conn, connector)
            conn.execute(
                sa.update(table)
                .where(table.c.connector == connector)
                .values(
                    state=state,
                    sync_id=None,
                    updated_at=datetime.now(UTC),
                    cycle_started_at=None,
                    cycle_trigger=None,
                )
            )

    def set_paused(self, connector: str, paused: bool) -> None:
        table = self.runtime["state"]
        what = "pausing a connector" if paused else "resuming a connector"
        with self._transaction(what) as conn:
            self._ensure_state_row(conn, connector)
            conn.execute(
                sa.update(table).where(table.c.connector == connector).values(paused=paused)
            )

    def paused(self) -> set[str]:
        table = self.runtime["state"]
        with self._transaction("reading paused connectors") as conn:
            rows = conn.execute(sa.select(table.c.connector).where(table.c.paused.is_(True)))
            return {r[0] for r in rows}

    def _ensure_state_row(self, conn: sa.Connection, connector: str) -> None:
        state = self.runtime["state"]
        mine = state.c.connector == connector
        if conn.execute(sa.select(sa.func.count()).where(mine)).scalar() == 0:
            conn.execute(
                sa.insert(state).values(connector=connector, state={}, updated_at=datetime.now(UTC))
            )

    def row_counts(self, schema: str, tables: list[TableInfo]) -> dict[str, int]:
        counts = {}
        with self._transaction("counting rows") as conn:
            for info in tables:
                table = self.flavor.data_table(schema, info).core
                try:
                    with conn.begin_nested():
                        counts[info.name] = conn.execute(
                            sa.select(sa.func.count()).select_from(table)
                        ).scalar()
                except sa.exc.DBAPIError:  # in the catalog but dropped by hand
                    continue
        return counts

    def table_reference(self, schema: str, table: str) -> str:
        return self.flavor.data_table(schema, TableInfo(table, table)).ref

    def save_function_output(self, sync_id: str, output: str) -> None:
        syncs = self.runtime["syncs"]
        with self._transaction("keeping the function output") as conn:
            conn.execute(
                sa.update(syncs).where(syncs.c.sync_id == sync_id).values(function_output=output)
            )

    def function_output(self, sync_id: str) -> str | None:
        syncs = self.runtime["syncs"]
        with self._transaction("reading the function output") as conn:
            return conn.execute(
                sa.select(syncs.c.function_output).where(syncs.c.sync_id == sync_id)
            ).scalar()

    def save_deliveries(self, sync_id: str, connector: str, stats: dict) -> None:
        table = self.runtime["deliveries"]
        mine = table.c.sync_id == sync_id
        values = {k: stats[k] for k in DELIVERY_STATS}
        values.update(connector=connector, updated_at=datetime.now(UTC))
        with self._transaction("recording the delivery counts") as conn:
            # a plain read, then a write by key: no gap locks on MySQL for concurrent syncs
            if conn.execute(sa.select(sa.func.count()).where(mine)).scalar():
                conn.execute(sa.update(table).where(mine).values(values))
            else:
                conn.execute(sa.insert(table).values(sync_id=sync_id, **values))

    def deliveries(self, sync_ids: list[str]) -> dict[str, dict]:
        if not sync_ids:
            return {}
        table = self.runtime["deliveries"]
        columns = [table.c[k] for k in DELIVERY_STATS]
        query = sa.select(table.c.sync_id, *columns).where(table.c.sync_id.in_(sync_ids))
        with self._transaction("reading the delivery counts") as conn:
            rows = conn.execute(query).all()
        return {r[0]: dict(zip(DELIVERY_STATS, r[1:], strict=True)) for r in rows}

    def schema_changes(
        self,
        connector: str,
        *,
        limit: int | None = 50,
        before: datetime | None = None,
        sync_id: str | None = None,
    ) -> list[SchemaChange]:
        table = self.runtime["schema_changes"]
        query = sa.select(table).where(table.c.connector == connector)
        if before is not None:
            query = query.where(table.c.changed_at < before)
        if sync_id is not None:
            query = query.where(table.c.sync_id == sync_id)
        query = query.order_by(table.c.changed_at.desc()).limit(limit)
        with self._transaction("reading schema changes") as conn:
            rows = conn.execute(query).mappings().all()
        return [
            SchemaChange(**{**row, "changed_at": _aware(row["changed_at"])}).in_words_of(
                self.flavor.sql_type
            )
            for row in rows
        ]

    def _record_schema_changes(self, conn, changes: list[SchemaChange]) -> None:
        """Write the page's changes of shape (design §6), each once: on MySQL this runs with
        the page's DDL, which commits by itself, and again with its rows, and a page may be
        replayed after a failure; what its sync already recorded is not written again."""
        if not changes:
            return
        table = self.runtime["schema_changes"]
        fields = ("table", "column", "change", "from_type", "to_type")
        mine = (table.c.connector == changes[0].connector) & (table.c.sync_id == changes[0].sync_id)
        recorded = {
            tuple(r) for r in conn.execute(sa.select(*(table.c[f] for f in fields)).where(mine))
        }
        rows = [
            {f: getattr(c, f) for f in ("connector", "sync_id", "changed_at", *fields)}
            for c in changes
            if tuple(getattr(c, f) for f in fields) not in recorded
        ]
        if rows:
            conn.execute(sa.insert(table), rows)

    # -- pages ------------------------------------------------------------------------

    @property
    def transactional_ddl(self) -> bool:
        return self.flavor.transactional_ddl

    def apply_parts(self, parts: Iterable[PageWrite]) -> PageResult:
        parts = iter(parts)
        first = next(parts, None)
        if first is None:
            return PageResult()
        changes = schema_changes_of(first, datetime.now(UTC))
        if not self.flavor.transactional_ddl:
            self._evolve_first(first, changes)
        result = PageResult()
        with self._transaction(f"page {first.number}") as conn:
            for page in itertools.chain([first], parts):
                if page is not first:
                    changes = schema_changes_of(page, datetime.now(UTC))
                result.schema_changes += self._apply_part(conn, page, result, changes)
        return result

    def _evolve_first(self, page: PageWrite, changes: list[SchemaChange]) -> None:
        """Without transactional DDL (MySQL), a page's DDL commits by itself first; the
        catalog and the change log follow it at once, so they never lag the tables."""
        changed = [w for w in page.tables if w.table != w.previous]
        if not changed:
            return
        with self._transaction(f"the DDL of page {page.number}") as conn:
            for write in changed:
                self.flavor.evolve(
                    conn, self.flavor.data_table(page.schema, write.table), write.previous
                )
            self._save_tables(conn, page)
            self._record_schema_changes(conn, changes)

    def _apply_part(self, conn, page: PageWrite, result: PageResult, changes: list[SchemaChange]):
        """Write one page (or one part of a streamed one, whose shape `changes` are) in the
        open transaction; count it into `result`; return its schema changes as recorded."""
        writes = [(w, self.flavor.data_table(page.schema, w.table)) for w in page.tables]
        changed = [w for w, _ in writes if w.table != w.previous]
        if changed and page.part not in (None, 1) and not self.flavor.transactional_ddl:
            raise DestinationError(  # the sync reads such a stream ahead to prevent this
                f"{self.flavor.title} cannot change a table inside a transaction, and part "
                f"{page.part} of streamed page {page.number} changes "
                + ", ".join(sorted({repr(w.table.name) for w in changed}))
            )
        part = PageResult()
        for write, table in writes:
            if self.flavor.transactional_ddl and write.table != write.previous:
                self.flavor.evolve(conn, table, write.previous)
            part.tables[write.table.name] = self._write(conn, page, write, table)
        self._save_catalog(conn, page)
        self._record_schema_changes(conn, changes)
        syncs = self.runtime["syncs"]
        conn.execute(
            sa.update(syncs)
            .where(syncs.c.sync_id == page.sync_id)
            .values(
                pages=page.number,
                rows_upserted=syncs.c.rows_upserted + part.upserted,
                rows_deleted=syncs.c.rows_deleted + part.deleted,
            )
        )
        for name, counts in part.tables.items():
            result.add(name, counts)
        return [c.in_words_of(self.flavor.sql_type) for c in changes]

    def _write(self, conn, page: PageWrite, write: TableWrite, table: DataTable) -> TableCounts:
        counts = TableCounts()
        stage = f"_cr_stage_{next(self._stages)}"
        versions = write.table.history  # design §14: versions are closed, never replaced
        if write.upserts is not None:
            upsert = partial(history.upsert, self.flavor) if versions else self.flavor.upsert
            if versions or not self._inserted_new(conn, page, write, table):
                upsert(conn, table, write.upserts, page.synced_at, stage)
            counts.upserted = write.upserts.num_rows
        if write.appends is not None:
            self.flavor.append(conn, table, write.appends, page.synced_at, page.batch, stage)
            counts.upserted = write.appends.num_rows
        if write.deletes is not None:
            mark = partial(history.close, self.flavor) if versions else self.flavor.mark_deleted
            counts.deleted, counts.missing = mark(
                conn, table, write.deletes, page.synced_at, f"{stage}_keys"
            )
        return counts

    def _inserted_new(self, conn, page: PageWrite, write: TableWrite, table: DataTable) -> bool:
        """Rows for a table this sync created go straight in while none of their keys is
        there yet (a COPY, not staging and an upsert, on PostgreSQL); once a key comes back
        the table takes upserts for the rest of the sync. Exact either way: `insert_new`
        writes nothing when a key is there."""
        created = (page.schema, write.table.name)
        if write.previous is None:
            self._created[created] = page.sync_id
        if self._created.get(created) != page.sync_id:
            return False
        if self.flavor.insert_new(conn, table, write.upserts, page.synced_at):
            return True
        del self._created[created]
        return False

    def _save_catalog(self, conn, page: PageWrite) -> None:
        self._save_tables(conn, page)
        state = self.runtime["state"]
        conn.execute(
            sa.update(state)
            .where(state.c.connector == page.connector)
            .values(state=page.state, sync_id=page.sync_id, updated_at=datetime.now(UTC))
        )

    def _save_tables(self, conn, page: PageWrite) -> None:
        """The page's names and changed tables; saved twice over, they are still stored once."""
        names = self.runtime["names"]
        if page.names:
            entries = [
                {"c": page.connector, "t": e.table, "s": e.column, "name": e.name}
                for e in page.names
            ]
            same = (
                (names.c.connector == sa.bindparam("c"))
                & (names.c.source_table == sa.bindparam("t"))
                & (names.c.source_column == sa.bindparam("s"))
            )
            conn.execute(sa.delete(names).where(same), entries)
            conn.execute(
                sa.insert(names).values(
                    connector=sa.bindparam("c"),
                    source_table=sa.bindparam("t"),
                    source_column=sa.bindparam("s"),
                    name=sa.bindparam("name"),
                ),
                entries,
            )
        for write in page.tables:
            if write.table != write.previous:
                self._save_table(conn, page.connector, write.table)

    def _save_table(self, conn, connector: str, table: TableInfo) -> None:
        tables = self.runtime["tables"]
        conn.execute(
            sa.delete(tables).where(tables.c.connector == connector, tables.c.name == table.name)
        )
        conn.execute(
            sa.insert(tables).values(
                connector=connector,
                name=table.name,
                source=table.source,
                **table.stored(),
            )
        )

    def finish_cycle(
        self, connector: str, schema: str, tables: list[str], cutoff: datetime, synced_at: datetime
    ) -> dict[str, int]:
        catalog = self.load(connector).catalog if tables else {}  # most syncs mark none
        marked_tables = [  # a history table closes versions instead (design §14)
            (t, replace(t, deleted_column=not t.history)) for t in map(catalog.get, tables)
        ]
        targets = [(old, new, self.flavor.data_table(schema, new)) for old, new in marked_tables]
        what = "the end-of-sync soft deletes"
        if not self.flavor.transactional_ddl:
            with self._transaction(what) as conn:
                for old, _new, table in targets:
                    self.flavor.evolve(conn, table, old)
        marked = {}
        with self._transaction(what) as conn:
            for old, new, table in targets:
                if self.flavor.transactional_ddl:
                    self.flavor.evolve(conn, table, old)
                if new != old:
                    self._save_table(conn, connector, new)
                mark = history.close_unsent if new.history else self.flavor.mark_unsent
                marked[new.name] = mark(conn, table, cutoff, synced_at)
            state = self.runtime["state"]
            conn.execute(
                sa.update(state)
                .where(state.c.connector == connector)
                .values(cycle_started_at=None, cycle_trigger=None)
            )
        return marked


def _sync(row) -> SyncRecord:
    return SyncRecord(
        **{
            **row,
            "started_at": _aware(row["started_at"]),
            "finished_at": _aware(row["finished_at"]),
        }
    )


def _alert(row) -> Alert:
    return Alert(
        **{
            **row,
            "created_at": _aware(row["created_at"]),
            "resolved_at": _aware(row["resolved_at"]),
        }
    )


def _aware(moment: datetime | None) -> datetime | None:
    """Times are stored in UTC; drivers without zones (MySQL, SQLite) hand back naive ones."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
