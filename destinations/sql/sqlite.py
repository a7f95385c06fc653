"""SQLite: text for dates and decimals, executemany upserts, widening by copying the table."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from connector_runtime.locks import file_lock
from connector_runtime.naming import HISTORY_COLUMNS
from connector_runtime.page import TableInfo
from connector_runtime.types import BOOLEAN, LogicalType

from .base import BATCH, DELETED, INDEX, SYNCED, DataTable, Flavor


class SQLite(Flavor):
    """INSERT ... ON CONFLICT DO UPDATE by executemany; widening copies the table."""

    title = "SQLite"
    TYPES = {
        "BOOLEAN": "INTEGER",
        "LONG": "INTEGER",
        "DECIMAL": "TEXT",
        "DOUBLE": "REAL",
        "NAIVE_DATE": "TEXT",
        "NAIVE_DATETIME": "TEXT",
        "UTC_DATETIME": "TEXT",
        "STRING": "TEXT",
        "JSON": "TEXT",
    }
    # ISO-8601 with fixed widths, the same text DuckDB gives when such a column widens
    FORMATS = {
        "NAIVE_DATE": "%Y-%m-%d",
        "NAIVE_DATETIME": "%Y-%m-%dT%H:%M:%S",  # Arrow's %S carries the microseconds
        "UTC_DATETIME": "%Y-%m-%dT%H:%M:%SZ",
    }

    def configure(self, engine: sa.Engine) -> None:
        """pysqlite's own transaction handling skips BEGIN before DDL: take it over."""

        @sa.event.listens_for(engine, "connect")
        def connect(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None

        @sa.event.listens_for(engine, "begin")
        def begin(conn) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock now, not mid-page

    def is_transient(self, error: BaseException) -> bool:
        code = getattr(error, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED

    def lock(self, connector: str):
        database = self.engine.url.database
        if not database or database == ":memory:":
            return file_lock(None, connector)
        return file_lock(Path(f"{database}.locks") / f"{connector}.lock", connector)

    def sql_type(self, logical: LogicalType, *, key: int = 0) -> str:
        return self.TYPES[logical.name]

    def values(self, column: pa.ChunkedArray, logical: LogicalType) -> list:
        if logical.name in self.FORMATS:
            column = pc.strftime(column, self.FORMATS[logical.name])
        elif logical.name == "DECIMAL":
            column = column.cast(pa.string())  # exact, with its scale: "0.10"
        return column.to_pylist()

    def convert(self, old: LogicalType, new: LogicalType, column: str) -> str:
        if new.name in ("STRING", "JSON"):
            return self.as_text(old, column)
        if new.name == "DOUBLE":
            return f"CAST({column} AS REAL)"
        if new.name == "DECIMAL":
            return self.rescaled(old, new, column)
        suffix = {
            ("NAIVE_DATE", "NAIVE_DATETIME"): "T00:00:00.000000",
            ("NAIVE_DATE", "UTC_DATETIME"): "T00:00:00.000000Z",
            ("NAIVE_DATETIME", "UTC_DATETIME"): "Z",
        }[old.name, new.name]
        return f"{column} || '{suffix}'"

    def rescaled(self, old: LogicalType, new: LogicalType, column: str) -> str:
        """Decimal text with `new`'s scale: "5" → "5.00" (values are text, no float on the way)."""
        scale = old.scale or 0
        if new.scale == scale:
            return column if old.name == "DECIMAL" else f"CAST({column} AS TEXT)"
        zeros = "0" * (new.scale - scale)
        return f"CAST({column} AS TEXT) || '{'' if scale else '.'}{zeros}'"

    def as_text(self, old: LogicalType, column: str) -> str:
        if old == BOOLEAN:
            return super().as_text(old, column)
        if old.name in ("LONG", "DOUBLE"):
            return f"CAST({column} AS TEXT)"
        return column  # already text

    def alter(self, conn, dt: DataTable, previous: TableInfo, added, changed, add_deleted) -> None:
        if not changed:
            return super().alter(conn, dt, previous, added, changed, add_deleted)
        # SQLite cannot change a column's type: copy into a new table, in this transaction
        new_name = self.q(self.fit(f"{dt.name}__cr_new"))
        self.ddl(conn, self.create_sql(dt, new_name))
        kept = [c for c in dt.info.columns if c in previous.columns]
        meta = [SYNCED] + ([] if previous.primary_key else [BATCH, INDEX])
        meta += [DELETED] if previous.deleted_column else []
        meta += list(HISTORY_COLUMNS) if previous.history else []
        targets = [dt.q(c) for c in kept] + [self.q(m) for m in meta]
        sources = [self.convert(*changed[c], dt.q(c)) if c in changed else dt.q(c) for c in kept]
        sources += [self.q(m) for m in meta]
        self.ddl(
            conn,
            f"INSERT INTO {new_name} ({', '.join(targets)}) SELECT {', '.join(sources)} FROM {dt.ref}",
        )
        self.ddl(conn, f"DROP TABLE {dt.ref}")
        self.ddl(conn, f"ALTER TABLE {new_name} RENAME TO {self.q(dt.name)}")

    def matches(self, dt: DataTable, staged: sa.Table):
        """A compound key too as `(a, b) IN (SELECT ...)`: SQLite's row values use the index."""
        keys = dt.info.primary_key
        incoming = sa.select(*(staged.c[k] for k in keys))
        return sa.tuple_(*(dt.core.c[k] for k in keys)).in_(incoming)

    def stage_sql(self, name: str, defs: str) -> str:
        return f"CREATE TEMPORARY TABLE {name} ({defs})"

    def drop_stage(self, conn, name: str) -> None:
        self.ddl(conn, f"DROP TABLE temp.{name}")

    def upsert(self, conn, dt: DataTable, rows: pa.Table, synced_at: datetime, name: str) -> None:
        names = [c for c in rows.column_names if c != "__row"]
        records = self.records(rows.select(names), dict(dt.info.columns))
        extra = {SYNCED: synced_at} | ({DELETED: False} if dt.info.deleted_column else {})
        for record in records:
            record.update(extra)
        insert = sqlite.insert(dt.core)
        statement = insert.on_conflict_do_update(
            index_elements=[dt.core.c[k] for k in dt.info.primary_key],
            set_=self.replacement(dt, names, insert.excluded),
        )
        conn.execute(statement, records)

    def append(self, conn, dt: DataTable, rows: pa.Table, synced_at, batch: str, name: str) -> None:
        records = self.records(rows, dict(dt.info.columns))
        for record in records:
            record.update({SYNCED: synced_at, BATCH: batch, INDEX: record.pop("__row")})
        conn.execute(sa.insert(dt.core), records)
