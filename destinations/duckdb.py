"""DuckDB, the embedded default warehouse (`duckdb:///warehouse.duckdb`).

Data tables carry no PRIMARY KEY constraint: DuckDB's constraint-checked upserts run at
tens of thousands of rows a second, while a keyed delete-and-insert from an Arrow
staging view runs near a million. Uniqueness is ours to keep: every page is deduplicated
before it is staged, and each key is deleted before it is inserted, in one transaction.
The file is opened per sync and closed after it, so other processes can use it between.

A page's Arrow rows reach SQL as a local variable the SQL names (`_page_rows`: DuckDB's
replacement scan), not as a registered view: a view dropped inside a transaction keeps
its Arrow data alive until the commit, so a streamed page would hold all of its parts.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from connector_runtime.destination import (
    DELIVERY_STATS,
    RUNTIME_SCHEMA,
    Alert,
    Destination,
    PageResult,
    SchemaChange,
    Snapshot,
    SyncRecord,
    TableCounts,
    schema_changes_of,
)
from connector_runtime.errors import ConfigError, DestinationError
from connector_runtime.events import bus
from connector_runtime.jsonio import decode_json, encode_json
from connector_runtime.locks import file_lock
from connector_runtime.naming import NameEntry
from connector_runtime.page import PageWrite, TableInfo, TableWrite
from connector_runtime.types import JSON, LogicalType

from . import duckdb_history as history

SQL_TYPES = {
    "BOOLEAN": "BOOLEAN",
    "LONG": "BIGINT",
    "DOUBLE": "DOUBLE",
    "NAIVE_DATE": "DATE",
    "NAIVE_DATETIME": "TIMESTAMP",
    "UTC_DATETIME": "TIMESTAMPTZ",
    "STRING": "VARCHAR",
    "JSON": "JSON",
}
# How an existing value reads as text when its column widens to STRING (DESIGN §4)
_AS_TEXT = {
    "NAIVE_DATE": "strftime({c}, '%Y-%m-%d')",
    "NAIVE_DATETIME": "strftime({c}, '%Y-%m-%dT%H:%M:%S.%f')",
    "UTC_DATETIME": "strftime(timezone('UTC', {c}), '%Y-%m-%dT%H:%M:%S.%fZ')",
}
RUNTIME_TABLES = f"""
CREATE SCHEMA IF NOT EXISTS {RUNTIME_SCHEMA};
CREATE TABLE IF NOT EXISTS {RUNTIME_SCHEMA}.state (
  connector VARCHAR, state JSON, sync_id VARCHAR, updated_at TIMESTAMPTZ,
  cycle_started_at TIMESTAMPTZ, cycle_trigger VARCHAR);
CREATE TABLE IF NOT EXISTS {RUNTIME_SCHEMA}.syncs (
  sync_id VARCHAR, connector VARCHAR, trigger VARCHAR, started_at TIMESTAMPTZ,
  finished_at TIMESTAMPTZ, status VARCHAR, pages BIGINT, rows_upserted BIGINT,
  rows_deleted BIGINT, error VARCHAR);
CREATE TABLE IF NOT EXISTS {RUNTIME_SCHEMA}.alerts (
  alert_id VARCHAR, connector VARCHAR, sync_id VARCHAR, created_at TIMESTAMPTZ,
  severity VARCHAR, kind VARCHAR, error_type VARCHAR, message VARCHAR, stack_trace JSON,
  resolved_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS {RUNTIME_SCHEMA}.names (
  connector VARCHAR, source_table VARCHAR, source_column VARCHAR, name VARCHAR);
CREATE TABLE IF NOT EXISTS {RUNTIME_SCHEMA}.tables (
  connector VARCHAR, name VARCHAR, source VARCHAR, primary_key JSON, columns JSON,
  declared JSON, deleted_column BOOLEAN);
CREATE TABLE IF NOT EXISTS {RUNTIME_SCHEMA}.deliveries (
  sync_id VARCHAR, connector VARCHAR, delivered BIGINT, retried BIGINT, failed BIGINT,
  p50_ms DOUBLE, p95_ms DOUBLE, updated_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS {RUNTIME_SCHEMA}.schema_changes (
  connector VARCHAR, sync_id VARCHAR, changed_at TIMESTAMPTZ, "table" VARCHAR,
  "column" VARCHAR, change VARCHAR, from_type VARCHAR, to_type VARCHAR);
ALTER TABLE {RUNTIME_SCHEMA}.state ADD COLUMN IF NOT EXISTS paused BOOLEAN DEFAULT false;
ALTER TABLE {RUNTIME_SCHEMA}.syncs ADD COLUMN IF NOT EXISTS function_output VARCHAR;
ALTER TABLE {RUNTIME_SCHEMA}.tables ADD COLUMN IF NOT EXISTS history BOOLEAN DEFAULT false;
"""
_SYNC_COLUMNS = (
    "sync_id, connector, trigger, {started}, {finished}, status, pages, rows_upserted,"
    " rows_deleted, error"
).format(started="epoch_us(started_at)", finished="epoch_us(finished_at)")
_CHANGE_COLUMNS = 'connector, sync_id, changed_at, "table", "column", change, from_type, to_type'
_ALERT_COLUMNS = (
    "alert_id, connector, sync_id, epoch_us(created_at), severity, kind, error_type, message,"
    " CAST(stack_trace AS VARCHAR), epoch_us(resolved_at)"
)
OPEN_WAIT_SECONDS = 60.0  # another process may hold the file for one of its syncs
LOCK_WAIT_VARIABLE = "CONNECTOR_RUNTIME_LOCK_WAIT"  # seconds, instead of OPEN_WAIT_SECONDS


def open_wait_seconds() -> float:
    """How long opening waits for a file another process holds: $CONNECTOR_RUNTIME_LOCK_WAIT
    (seconds, read at each connect), else OPEN_WAIT_SECONDS."""
    text = os.environ.get(LOCK_WAIT_VARIABLE, "").strip()
    if not text:
        return OPEN_WAIT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ConfigError(
            f"{LOCK_WAIT_VARIABLE}={text!r}: not a number of seconds (e.g. 60 or 0.5)"
        )
    return seconds


def q(name: str) -> str:
    """A quoted identifier: any text, quotes doubled, safe to splice."""
    return '"' + name.replace('"', '""') + '"'


def _plain(name: str) -> str:
    """A name as a person would type it: bare when that is unambiguous, else quoted."""
    return name if re.fullmatch(r"[a-z_][a-z0-9_]*", name) else q(name)


def sql_type(logical: LogicalType) -> str:
    if logical.name == "DECIMAL":
        return f"DECIMAL({logical.precision},{logical.scale})"
    return SQL_TYPES[logical.name]


# DuckDB's memory limit while a streamed page is written (design §13): it holds the
# blocks of one part and what DuckDB keeps per row until the commit, not the page
STREAMED_MEMORY_LIMIT = "64MB"
# How much log (WAL) DuckDB writes before it checkpoints on a commit (its default: 16
# MB). Rows not yet checkpointed are held in memory, several times their size in the
# log: 100,000 upserted rows of `make bench` held 50 MB until the checkpoint at close.
# Smaller checkpoints, more often, also go by while the function makes the next page,
# where one large one at a sync's end was waited for. They cost CPU: each compresses the
# table's last, partly filled row group again (an insert sync of `make bench` took a
# fifth more instructions than with 16 MB); flat memory is worth that.
CHECKPOINT_THRESHOLD = "2MB"


class DuckDBDestination(Destination):
    """A DuckDB file (or `duckdb:///:memory:`)."""

    def __init__(self, url: str) -> None:
        self.path = _path_of(url)
        self._con: duckdb.DuckDBPyConnection | None = None
        self._catalog: str | None = None
        self._schemas: set[str] = set()  # data schemas this connection saw committed

    @classmethod
    def holds_nothing(cls, url: str) -> bool:
        path = _path_of(url)
        return path == ":memory:" or not Path(path).exists()

    # -- connection -------------------------------------------------------------------

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            # One thread at a time opens a file and checks its runtime tables: threads of
            # one process share DuckDB's instance, where concurrent DDL would conflict.
            with _opening(self.path):
                con = self._connect()
                try:
                    con.execute("SET TimeZone = 'UTC'")
                    con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
                    self._prepare(con)
                except duckdb.Error as exc:
                    con.close()
                    raise DestinationError(
                        f"cannot use the warehouse {self.path}: {_first_line(exc)}"
                    ) from None
            self._con = con
        return self._con

    def _prepare(self, con: duckdb.DuckDBPyConnection) -> None:
        """Create or update the runtime tables, once per file and process."""
        key = (self.path, _inode(self.path))
        if key not in _PREPARED:
            con.execute(RUNTIME_TABLES)
            _PREPARED.add(key)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        if self.path != ":memory:" and not Path(self.path).exists():
            self._create_file()
        wait = open_wait_seconds()
        deadline = time.monotonic() + wait
        waiting = False
        while True:
            try:
                return duckdb.connect(self.path)
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise DestinationError(
                        f"cannot open the warehouse {self.path}: {_first_line(exc)}"
                    ) from None
                holder = self._holder(exc)
                if time.monotonic() > deadline:
                    raise DestinationError(
                        f"the warehouse {self.path} is held by {holder} for more than "
                        f"{wait:g} s; try again when it ends, or run "
                        "`connector serve` so that other commands go through it"
                    ) from None
                if not waiting:
                    message = f"waiting for the warehouse: {holder}, up to {wait:g} s"
                    bus.publish("warehouse.waiting", {"path": self.path, "message": message})
                    waiting = True
                time.sleep(0.2)

    def _holder(self, exc: Exception) -> str:
        """Who holds the file: `a sync of NAME by pid N` when a sync lock says so."""
        match = re.search(r"PID (\d+)", str(exc))
        if match is None:
            return "another process"
        pid = match[1]
        for lock in sorted(Path(f"{self.path}.locks").glob("*.lock")):
            with suppress(OSError):
                if lock.read_text().strip() == pid:
                    return f"a sync of {lock.stem} by pid {pid}"
        return f"another process (pid {pid})"

    def _create_file(self) -> None:
        """Make a new warehouse under a temporary name, then rename it into place: a crash
        while DuckDB writes its first blocks must not leave a file that never opens."""
        path = Path(self.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            draft = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.creating")
            draft.unlink(missing_ok=True)
            con = duckdb.connect(str(draft))
            con.execute(RUNTIME_TABLES)
            con.close()
        except (OSError, duckdb.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else _first_line(exc)
            if isinstance(exc, FileExistsError):  # mkdir's word for a file in the folder's place
                reason = f"{path.parent} is not a directory"
            raise DestinationError(f"cannot create the warehouse {self.path}: {reason}") from None
        try:
            os.link(draft, path)  # fails if another process created it meanwhile: keep theirs
        except FileExistsError:
            pass
        finally:
            draft.unlink(missing_ok=True)

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    @contextmanager
    def _transaction(self):
        con = self.con
        con.begin()
        try:
            yield con
        except BaseException:
            con.rollback()
            raise
        con.commit()

    def _schema(self, schema: str) -> str:
        """`"catalog"."schema"`: DuckDB names the database after its file, so a schema
        called like the file (`transactions` in transactions.duckdb) would be ambiguous."""
        if self._catalog is None:
            self._catalog = self.con.execute("SELECT current_database()").fetchone()[0]
        return f"{q(self._catalog)}.{q(schema)}"

    def lock(self, connector: str):
        if self.path == ":memory:":
            return file_lock(None, connector)
        return file_lock(Path(f"{self.path}.locks") / f"{connector}.lock", connector)

    # -- runtime tables ---------------------------------------------------------------

    def load(self, connector: str) -> Snapshot:
        con = self.con
        row = con.execute(
            f"SELECT state, {_epoch('cycle_started_at')}, cycle_trigger FROM {RUNTIME_SCHEMA}.state"
            " WHERE connector = ?",
            [connector],
        ).fetchone()
        names = [
            NameEntry(*r)
            for r in con.execute(
                f"SELECT source_table, source_column, name FROM {RUNTIME_SCHEMA}.names"
                " WHERE connector = ?",
                [connector],
            ).fetchall()
        ]
        catalog = {
            r[0]: TableInfo.from_stored(r[0], r[1], *map(orjson.loads, r[2:5]), *r[5:7])
            for r in con.execute(
                f"SELECT name, source, primary_key, columns, declared, deleted_column, history"
                f" FROM {RUNTIME_SCHEMA}.tables WHERE connector = ?",
                [connector],
            ).fetchall()
        }
        if row is None:
            return Snapshot({}, catalog, names)
        return Snapshot(decode_json(row[0]), catalog, names, _time(row[1]), row[2])

    def begin_sync(self, record: SyncRecord, *, reset_state: bool = False) -> Snapshot:
        with self._transaction() as con:
            con.execute(
                f"UPDATE {RUNTIME_SCHEMA}.syncs SET status = 'failed', finished_at = ?, error ="
                " 'the process running this sync died' WHERE connector = ? AND status = 'running'",
                [record.started_at, record.connector],
            )
            con.execute(
                f"INSERT INTO {RUNTIME_SCHEMA}.syncs (sync_id, connector, trigger, started_at, status,"
                " pages, rows_upserted, rows_deleted) VALUES (?, ?, ?, ?, 'running', 0, 0, 0)",
                [record.sync_id, record.connector, record.trigger, record.started_at],
            )
            self._open_cycle(con, record, reset_state)
        return self.load(record.connector)

    def _open_cycle(self, con, record: SyncRecord, reset_state: bool) -> None:
        self._ensure_state_row(con, record.connector)
        if reset_state:
            con.execute(
                f"UPDATE {RUNTIME_SCHEMA}.state SET state = '{{}}', cycle_started_at = ?,"
                " cycle_trigger = 'resync' WHERE connector = ?",
                [record.started_at, record.connector],
            )
        else:
            con.execute(
                f"UPDATE {RUNTIME_SCHEMA}.state SET cycle_started_at = ?, cycle_trigger = ?"
                " WHERE connector = ? AND cycle_started_at IS NULL",
                [record.started_at, record.trigger, record.connector],
            )

    def end_sync(self, record: SyncRecord) -> None:
        with self._transaction() as con:
            con.execute(
                f"UPDATE {RUNTIME_SCHEMA}.syncs SET finished_at = ?, status = ?, pages = ?,"
                " rows_upserted = ?, rows_deleted = ?, error = ? WHERE sync_id = ?",
                [
                    record.finished_at,
                    record.status,
                    record.pages,
                    record.rows_upserted,
                    record.rows_deleted,
                    record.error,
                    record.sync_id,
                ],
            )
            if record.status == "succeeded":
                con.execute(
                    f"UPDATE {RUNTIME_SCHEMA}.alerts SET resolved_at = ?"
                    " WHERE connector = ? AND resolved_at IS NULL",
                    [record.finished_at, record.connector],
                )

    def record_alert(self, alert: Alert) -> None:
        with self._transaction() as con:
            con.execute(
                f"INSERT INTO {RUNTIME_SCHEMA}.alerts (alert_id, connector, sync_id, created_at, severity,"
                " kind, error_type, message, stack_trace) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    alert.alert_id,
                    alert.connector,
                    alert.sync_id,
                    alert.created_at,
                    alert.severity,
                    alert.kind,
                    alert.error_type,
                    alert.message,
                    None if alert.stack_trace is None else encode_json(alert.stack_trace).decode(),
                ],
            )

    def recent_syncs(
        self, connector: str, limit: int = 20, *, before: datetime | None = None
    ) -> list[SyncRecord]:
        rows = self.con.execute(
            f"SELECT {_SYNC_COLUMNS} FROM {RUNTIME_SCHEMA}.syncs WHERE connector = ?"
            " AND (CAST(? AS TIMESTAMPTZ) IS NULL OR started_at < ?)"
            " ORDER BY started_at DESC LIMIT ?",
            [connector, before, before, limit],
        ).fetchall()
        return [_sync(r) for r in rows]

    def get_sync(self, sync_id: str) -> SyncRecord | None:
        row = self.con.execute(
            f"SELECT {_SYNC_COLUMNS} FROM {RUNTIME_SCHEMA}.syncs WHERE sync_id = ?", [sync_id]
        ).fetchone()
        return None if row is None else _sync(row)

    def list_alerts(
        self,
        connector: str | None = None,
        *,
        include_resolved: bool = False,
        limit: int | None = None,
    ) -> list[Alert]:
        where = ["(connector = ? OR ? IS NULL)"] + (
            [] if include_resolved else ["resolved_at IS NULL"]
        )
        rows = self.con.execute(
            f"SELECT {_ALERT_COLUMNS} FROM {RUNTIME_SCHEMA}.alerts WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC LIMIT ?",
            [connector, connector, limit],
        ).fetchall()
        return [_alert(r) for r in rows]

    def resolve_alert(self, alert_id: str, at: datetime) -> Alert | None:
        with self._transaction() as con:
            con.execute(
                f"UPDATE {RUNTIME_SCHEMA}.alerts SET resolved_at = ?"
                " WHERE alert_id = ? AND resolved_at IS NULL",
                [at, alert_id],
            )
            resolved = con.execute(
                f"SELECT {_ALERT_COLUMNS} FROM {RUNTIME_SCHEMA}.alerts"
                " WHERE alert_id = ? AND resolved_at = ?",
                [alert_id, at],
            ).fetchone()
        return None if resolved is None else _alert(resolved)

    def save_state(self, connector: str, state: dict) -> None:
        with self._transaction() as con:
            self._ensure_state_row(con, connector)
            con.execute(
                f"UPDATE {RUNTIME_SCHEMA}.state SET state = ?, sync_id = NULL, updated_at = now(),"
                " cycle_started_at = NULL, cycle_trigger = NULL WHERE connector = ?",
                [encode_json(state).decode(), connector],
            )

    def set_paused(self, connector: str, paused: bool) -> None:
        with self._transaction() as con:
            self._ensure_state_row(con, connector)
            con.execute(
                f"UPDATE {RUNTIME_SCHEMA}.state SET paused = ? WHERE connector = ?",
                [paused, connector],
            )

    def paused(self) -> set[str]:
        rows = self.con.execute(f"SELECT connector FROM {RUNTIME_SCHEMA}.state WHERE paused")
        return {r[0] for r in rows.fetchall()}

    def _ensure_state_row(self, con, connector: str) -> None:
        con.execute(
            f"INSERT INTO {RUNTIME_SCHEMA}.state (connector, state, updated_at)"
            f" SELECT ?, '{{}}', now() WHERE NOT EXISTS"
            f" (SELECT 1 FROM {RUNTIME_SCHEMA}.state WHERE connector = ?)",
            [connector, connector],
        )

    def row_counts(self, schema: str, tables: list[TableInfo]) -> dict[str, int]:
        counts = {}
        for table in tables:
            target = f"{self._schema(schema)}.{q(table.name)}"
            try:
                counts[table.name] = self.con.execute(f"SELECT count(*) FROM {target}").fetchone()[
                    0
                ]
            except duckdb.CatalogException:  # in the catalog but dropped by hand
                continue
        return counts

    def table_reference(self, schema: str, table: str) -> str:
        return f"{_plain(schema)}.{_plain(table)}"

    def save_function_output(self, sync_id: str, output: str) -> None:
        with self._transaction() as con:
            con.execute(
                f"UPDATE {RUNTIME_SCHEMA}.syncs SET function_output = ? WHERE sync_id = ?",
                [output, sync_id],
            )

    def function_output(self, sync_id: str) -> str | None:
        row = self.con.execute(
            f"SELECT function_output FROM {RUNTIME_SCHEMA}.syncs WHERE sync_id = ?", [sync_id]
        ).fetchone()
        return None if row is None else row[0]

    def save_deliveries(self, sync_id: str, connector: str, stats: dict) -> None:
        values = [stats[k] for k in DELIVERY_STATS]
        try:
            with self._transaction() as con:
                con.execute(f"DELETE FROM {RUNTIME_SCHEMA}.deliveries WHERE sync_id = ?", [sync_id])
                con.execute(
                    f"INSERT INTO {RUNTIME_SCHEMA}.deliveries (sync_id, connector,"
                    f" {', '.join(DELIVERY_STATS)}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, now())",
                    [sync_id, connector, *values],
                )
        except duckdb.Error as exc:
            raise DestinationError(f"DuckDB refused the delivery counts: {exc}") from exc

    def deliveries(self, sync_ids: list[str]) -> dict[str, dict]:
        if not sync_ids:
            return {}
        rows = self.con.execute(
            f"SELECT sync_id, {', '.join(DELIVERY_STATS)} FROM {RUNTIME_SCHEMA}.deliveries"
            " WHERE list_contains(?, sync_id)",
            [list(sync_ids)],
        ).fetchall()
        return {r[0]: dict(zip(DELIVERY_STATS, r[1:], strict=True)) for r in rows}

    def schema_changes(
        self,
        connector: str,
        *,
        limit: int | None = 50,
        before: datetime | None = None,
        sync_id: str | None = None,
    ) -> list[SchemaChange]:
        rows = self.con.execute(
            f"SELECT {_CHANGE_COLUMNS.replace('changed_at', _epoch('changed_at'))}"
            f" FROM {RUNTIME_SCHEMA}.schema_changes WHERE connector = ?"
            " AND (CAST(? AS TIMESTAMPTZ) IS NULL OR changed_at < ?)"
            " AND (CAST(? AS VARCHAR) IS NULL OR sync_id = ?)"
            " ORDER BY changed_at DESC LIMIT ?",
            [connector, before, before, sync_id, sync_id, limit],
        ).fetchall()
        return [SchemaChange(r[0], r[1], _time(r[2]), *r[3:]).in_words_of(sql_type) for r in rows]

    def _record_schema_changes(self, con, page: PageWrite) -> list[SchemaChange]:
        """The page's changes of shape, written in its transaction (design §6)."""
        changes = schema_changes_of(page, datetime.now(UTC))
        if changes:
            con.executemany(
                f"INSERT INTO {RUNTIME_SCHEMA}.schema_changes ({_CHANGE_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    [c.connector, c.sync_id, c.changed_at, c.table, c.column, c.change]
                    + [c.from_type, c.to_type]
                    for c in changes
                ],
            )
        return [c.in_words_of(sql_type) for c in changes]

    # -- pages ------------------------------------------------------------------------

    def apply_parts(self, parts: Iterable[PageWrite]) -> PageResult:
        parts = iter(parts)
        first = next(parts, None)
        if first is None:
            return PageResult()
        if first.part is None:  # a whole page: its memory is its own
            return self._apply_parts(itertools.chain([first], parts))
        with self._memory_capped():
            return self._apply_parts(itertools.chain([first], parts))

    @contextmanager
    def _memory_capped(self):
        """DuckDB caches the blocks a transaction writes up to its memory limit (80% of
        the machine's by default): a streamed page of any size would end up cached whole.
        Capped, it spills what it no longer needs and stays near the cap."""
        capped = False
        try:
            self.con.execute(f"SET memory_limit = '{STREAMED_MEMORY_LIMIT}'")
            capped = True
        except duckdb.Error:  # cached data it cannot drop: write as before, uncapped
            pass
        try:
            yield
        finally:
            if capped:
                with suppress(duckdb.Error):
                    self.con.execute("RESET memory_limit")

    def _apply_parts(self, parts: Iterable[PageWrite]) -> PageResult:
        result = PageResult()
        page = None
        try:
            with self._transaction() as con:
                for page in parts:
                    if page.schema not in self._schemas:
                        con.execute(f"CREATE SCHEMA IF NOT EXISTS {self._schema(page.schema)}")
                        self._schemas.add(page.schema)
                    part = PageResult()
                    for write in page.tables:
                        part.tables[write.table.name] = self._apply_table(con, page, write)
                    self._save_catalog(con, page)
                    result.schema_changes += self._record_schema_changes(con, page)
                    con.execute(
                        f"UPDATE {RUNTIME_SCHEMA}.syncs SET pages = ?, rows_upserted ="
                        " rows_upserted + ?, rows_deleted = rows_deleted + ? WHERE sync_id = ?",
                        [page.number, part.upserted, part.deleted, page.sync_id],
                    )
                    for name, counts in part.tables.items():
                        result.add(name, counts)
        except duckdb.Error as exc:
            self._schemas.clear()  # a schema created in the transaction is gone again
            number = "" if page is None else f" {page.number}"
            raise DestinationError(f"DuckDB refused page{number}: {exc}") from exc
        except BaseException:
            self._schemas.clear()
            raise
        return result

    def _apply_table(self, con, page: PageWrite, write: TableWrite) -> TableCounts:
        target = f"{self._schema(page.schema)}.{q(write.table.name)}"
        self._evolve(con, target, write)
        counts = TableCounts()
        versions = write.table.history  # design §14: versions are closed, never replaced
        if write.upserts is not None and versions:
            counts.upserted = history.upsert(con, target, write, page.synced_at)
        elif write.upserts is not None:
            counts.upserted = self._upsert(con, target, page, write)
        if write.appends is not None:
            counts.upserted = self._append(con, target, page, write)
        if write.deletes is not None and versions:
            counts.deleted, counts.missing = history.close(con, target, write, page.synced_at)
        elif write.deletes is not None:
            counts.deleted, counts.missing = self._delete(con, target, page, write)
        return counts

    def _evolve(self, con, target: str, write: TableWrite) -> None:
        """Create the table, add new columns, widen changed ones: DDL is transactional here."""
        table = write.table
        if write.previous is None:
            columns = [f"{q(c)} {sql_type(t)}" for c, t in table.columns.items()]
            columns += ["_fivetran_synced TIMESTAMPTZ"]
            columns += (
                ["_fivetran_batch VARCHAR", "_fivetran_index BIGINT"]
                if not table.primary_key
                else []
            )
            columns += ["_fivetran_deleted BOOLEAN DEFAULT false"] if table.deleted_column else []
            columns += history.COLUMNS_DDL if table.history else []
            con.execute(f"CREATE TABLE {target} ({', '.join(columns)})")
            return
        for column, logical in write.added_columns.items():
            con.execute(f"ALTER TABLE {target} ADD COLUMN {q(column)} {sql_type(logical)}")
        for column, (old, new) in write.changed_columns.items():
            using = (
                _AS_TEXT.get(old.name, "CAST({c} AS VARCHAR)")
                if new.name == "STRING"
                else "CAST({c} AS " + sql_type(new) + ")"
            )
            con.execute(
                f"ALTER TABLE {target} ALTER {q(column)} SET DATA TYPE {sql_type(new)}"
                f" USING {using.format(c=q(column))}"
            )
        if table.deleted_column and not write.previous.deleted_column:
            con.execute(f"ALTER TABLE {target} ADD COLUMN _fivetran_deleted BOOLEAN DEFAULT false")
        if write.history_enabled:
            history.start(con, target, write.previous, table)
        elif table.history and write.changed_columns:  # values may read differently now
            history.rehash(con, target, table, active_only=True)

    def _upsert(self, con, target: str, page: PageWrite, write: TableWrite) -> int:
        rows = write.upserts
        columns = [c for c in rows.column_names if c != "__row"]
        _page_rows = _staged(rows, write.table)  # noqa: F841 - the SQL below reads it by name
        if _may_hold_keys(con, target, write):
            on = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in write.table.primary_key)
            con.execute(f"DELETE FROM {target} AS t USING _page_rows AS s WHERE {on}")
        extra, values = (
            ("", "") if not write.table.deleted_column else (", _fivetran_deleted", ", false")
        )
        select = ", ".join(f"s.{q(c)}" for c in columns)
        con.execute(
            f"INSERT INTO {target} ({', '.join(map(q, columns))}, _fivetran_synced{extra})"
            f" SELECT {select}, ?{values} FROM _page_rows AS s",
            [page.synced_at],
        )
        return rows.num_rows

    def _append(self, con, target: str, page: PageWrite, write: TableWrite) -> int:
        rows = write.appends
        columns = [c for c in rows.column_names if c != "__row"]
        _page_rows = _staged(rows, write.table)  # noqa: F841 - the SQL below reads it by name
        names = "".join(f"{q(c)}, " for c in columns)
        select = "".join(f"s.{q(c)}, " for c in columns)
        con.execute(
            f"INSERT INTO {target} ({names}_fivetran_synced, _fivetran_batch, _fivetran_index)"
            f" SELECT {select}?, ?, s.__row FROM _page_rows AS s",
            [page.synced_at, page.batch],
        )
        return rows.num_rows

    def _delete(self, con, target: str, page: PageWrite, write: TableWrite) -> tuple[int, int]:
        keys = write.table.primary_key
        _page_keys = write.deletes  # noqa: F841 - the SQL below reads it by name
        key_list = ", ".join(q(k) for k in keys)
        wanted = con.execute(
            f"SELECT count(*) FROM (SELECT DISTINCT {key_list} FROM _page_keys)"
        ).fetchone()[0]
        on = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in keys)
        marked = con.execute(
            f"UPDATE {target} AS t SET _fivetran_deleted = true, _fivetran_synced = ?"
            f" FROM (SELECT DISTINCT {key_list} FROM _page_keys) AS s WHERE {on}",
            [page.synced_at],
        ).fetchone()[0]
        return marked, wanted - marked

    def _save_catalog(self, con, page: PageWrite) -> None:
        for entry in page.names:
            con.execute(
                f"INSERT INTO {RUNTIME_SCHEMA}.names (connector, source_table, source_column, name)"
                " VALUES (?, ?, ?, ?)",
                [page.connector, entry.table, entry.column, entry.name],
            )
        for write in page.tables:
            if write.table != write.previous:
                self._save_table(con, page.connector, write.table)
        con.execute(
            f"UPDATE {RUNTIME_SCHEMA}.state SET state = ?, sync_id = ?, updated_at = now()"
            " WHERE connector = ?",
            [encode_json(page.state).decode(), page.sync_id, page.connector],
        )

    def _save_table(self, con, connector: str, table: TableInfo) -> None:
        stored = table.stored()
        con.execute(
            f"DELETE FROM {RUNTIME_SCHEMA}.tables WHERE connector = ? AND name = ?",
            [connector, table.name],
        )
        con.execute(
            f"INSERT INTO {RUNTIME_SCHEMA}.tables (connector, name, source, primary_key, columns,"
            " declared, deleted_column, history) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                connector,
                table.name,
                table.source,
                *(orjson.dumps(stored[k]).decode() for k in ("primary_key", "columns", "declared")),
                stored["deleted_column"],
                stored["history"],
            ],
        )

    def finish_cycle(
        self, connector: str, schema: str, tables: list[str], cutoff: datetime, synced_at: datetime
    ) -> dict[str, int]:
        marked = {}
        catalog = self.load(connector).catalog if tables else {}  # most syncs mark none
        try:
            with self._transaction() as con:
                for name in tables:
                    marked[name] = self._mark_unsent(
                        con, connector, schema, catalog[name], cutoff, synced_at
                    )
                con.execute(
                    f"UPDATE {RUNTIME_SCHEMA}.state SET cycle_started_at = NULL,"
                    " cycle_trigger = NULL WHERE connector = ?",
                    [connector],
                )
        except duckdb.Error as exc:
            raise DestinationError(f"DuckDB refused the end-of-sync soft deletes: {exc}") from exc
        return marked

    def _mark_unsent(
        self,
        con,
        connector: str,
        schema: str,
        table: TableInfo,
        cutoff: datetime,
        synced_at: datetime,
    ) -> int:
        target = f"{self._schema(schema)}.{q(table.name)}"
        if table.history:
            return history.close_unsent(con, target, cutoff, synced_at)
        if not table.deleted_column:
            con.execute(f"ALTER TABLE {target} ADD COLUMN _fivetran_deleted BOOLEAN DEFAULT false")
            self._save_table(con, connector, replace(table, deleted_column=True))
        return con.execute(
            f"UPDATE {target} SET _fivetran_deleted = true, _fivetran_synced = ?"
            " WHERE _fivetran_synced < ? AND NOT _fivetran_deleted",
            [synced_at, cutoff],
        ).fetchone()[0]


_OPENING: dict[str, threading.Lock] = {}
_OPENING_GUARD = threading.Lock()
_PREPARED: set[tuple[str, int | None]] = set()


def _path_of(url: str) -> str:
    return url.split(":///", 1)[1] if ":///" in url else ":memory:"


def _opening(path: str) -> threading.Lock:
    with _OPENING_GUARD:
        return _OPENING.setdefault(path, threading.Lock())


def _inode(path: str) -> int | None:
    """A file made anew (deleted and created again) must be prepared again."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _may_hold_keys(con, target: str, write: TableWrite) -> bool:
    """Whether the table may already hold one of the page's keys (so they must be deleted
    before the insert). Not when this page creates the table, nor when the page's keys
    are integers all above the table's largest: new rows of an ascending key, the usual
    insert. DuckDB answers `max` from the table's statistics, without a scan of it."""
    if write.previous is None:
        return False
    key = write.table.primary_key
    if len(key) != 1 or not pa.types.is_integer(write.upserts.schema.field(key[0]).type):
        return True
    largest = con.execute(f"SELECT max({q(key[0])}) FROM {target}").fetchone()[0]
    return largest is not None and pc.min(write.upserts[key[0]]).as_py() <= largest


def _staged(rows: pa.Table, table: TableInfo) -> pa.Table:
    """A page's rows as DuckDB reads them fastest: JSON columns typed as Arrow's JSON
    extension type, which DuckDB stores as JSON without parsing every value again (a
    VARCHAR cast to JSON is parsed; ours is JSON text we wrote). No data is copied."""
    for index, name in enumerate(rows.column_names):
        if table.columns.get(name) == JSON:
            column = rows.column(index)
            tagged = [pa.ExtensionArray.from_storage(_ARROW_JSON, chunk) for chunk in column.chunks]
            rows = rows.set_column(index, name, pa.chunked_array(tagged, _ARROW_JSON))
    return rows


_ARROW_JSON = pa.json_(pa.string())


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _epoch(column: str) -> str:
    """Fetching TIMESTAMPTZ as Python objects would need pytz: read microseconds instead."""
    return f"epoch_us({column})"


def _time(epoch_us: int | None) -> datetime | None:
    return None if epoch_us is None else datetime.fromtimestamp(epoch_us / 1e6, UTC)


def _sync(row: tuple) -> SyncRecord:
    return SyncRecord(row[0], row[1], row[2], _time(row[3]), _time(row[4]), *row[5:])


def _alert(row: tuple) -> Alert:
    trace = None if row[8] is None else decode_json(row[8])
    return Alert(*row[0:3], _time(row[3]), *row[4:8], trace, _time(row[9]))
