"""PostgreSQL: COPY into a staging table, ON CONFLICT upserts, one ALTER TABLE per widening."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from connector_runtime.destination import RUNTIME_SCHEMA
from connector_runtime.errors import SyncInProgress
from connector_runtime.page import TableInfo
from connector_runtime.types import LONG, LogicalType

from . import pgcopy
from .base import DataTable, Flavor

UNIQUE_VIOLATION = "23505"


class Postgres(Flavor):
    """Binary COPY: into an ON COMMIT DROP staging table, then INSERT ... ON CONFLICT DO
    UPDATE; straight into the table for appends and for a table this sync created."""

    title = "PostgreSQL"
    # Room on each page for a row's new version: an upsert that changes no key then
    # writes it beside the old one (a HOT update) instead of into a new page and the key's
    # index too. 10,000 upserts into 200,000 rows: 55-60 ms at the default 100, 32 at 85.
    keyed_table_options = " WITH (fillfactor = 85)"
    runtime_schema = RUNTIME_SCHEMA
    TYPES = {
        "BOOLEAN": "boolean",
        "LONG": "bigint",
        "DOUBLE": "double precision",
        "NAIVE_DATE": "date",
        "NAIVE_DATETIME": "timestamp",
        "UTC_DATETIME": "timestamptz",
        "STRING": "text",
        "JSON": "jsonb",
    }
    # serialization failure, deadlock, lock timeout, shutdowns; class 08: connection
    TRANSIENT_STATES = {"40001", "40P01", "55P03", "57P01", "57P02", "57P03"}

    def is_transient(self, error: BaseException) -> bool:
        state = getattr(error, "sqlstate", None)
        if state is None:  # raised by the client: connection refused, lost, closed
            return isinstance(error, self.dialect.loaded_dbapi.OperationalError)
        return state in self.TRANSIENT_STATES or state.startswith("08")

    @contextmanager
    def lock(self, connector: str) -> Iterator[None]:
        """A session advisory lock on its own connection: it dies with the connection."""
        digest = hashlib.blake2b(f"connector-runtime/{connector}".encode(), digest_size=8)
        key = int.from_bytes(digest.digest(), "big", signed=True)
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("SET application_name = 'connector-runtime lock'"))
            if not conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                raise SyncInProgress(f"a sync of {connector!r} is already in progress")
            try:
                yield
            finally:
                with suppress(sa.exc.DBAPIError):  # gone with its connection, or released
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})

    def runtime_name(self, table: str) -> tuple[str | None, str]:
        return RUNTIME_SCHEMA, table

    def data_name(self, schema: str, table: str) -> tuple[str | None, str]:
        return self.fit(schema), self.fit(table)

    def sql_type(self, logical: LogicalType, *, key: int = 0) -> str:
        if logical.name == "DECIMAL":
            return f"numeric({logical.precision},{logical.scale})"
        return self.TYPES[logical.name]

    def evolve(self, conn, dt: DataTable, previous: TableInfo | None) -> None:
        if previous is None:
            self.ddl(conn, f"CREATE SCHEMA IF NOT EXISTS {self.q(dt.schema)}")
        super().evolve(conn, dt, previous)

    def alter(self, conn, dt: DataTable, previous: TableInfo, added, changed, add_deleted) -> None:
        """One ALTER TABLE: the table is rewritten at most once."""
        actions = [f"ADD COLUMN {dt.q(c)} {self.column_type(dt.info, c)}" for c in added]
        actions += [
            f"ALTER COLUMN {dt.q(c)} TYPE {self.column_type(dt.info, c)}"
            f" USING {self.convert(old, new, dt.q(c))}"
            for c, (old, new) in changed.items()
        ]
        if add_deleted:
            actions.append(f"ADD COLUMN {self.deleted_column()}")
        self.ddl(conn, f"ALTER TABLE {dt.ref} {', '.join(actions)}")

    def convert(self, old: LogicalType, new: LogicalType, column: str) -> str:
        if new.name == "STRING":
            return self.as_text(old, column)
        if new.name == "JSON":
            return f"to_jsonb({column})"
        if new.name == "UTC_DATETIME":
            return f"{column}::timestamp AT TIME ZONE 'UTC'"  # naive values are read as UTC
        return f"{column}::{self.sql_type(new)}"

    def as_text(self, old: LogicalType, column: str) -> str:
        if old.name == "NAIVE_DATE":
            return f"to_char({column}, 'YYYY-MM-DD')"
        if old.name == "NAIVE_DATETIME":
            return f"""to_char({column}, 'YYYY-MM-DD"T"HH24:MI:SS.US')"""
        if old.name == "UTC_DATETIME":
            return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
        if old.name == "DOUBLE":  # integral values as Python and DuckDB write them: 1.0
            return (
                f"CASE WHEN {column} = trunc({column}) AND abs({column}) < 1e16"
                f" THEN {column}::bigint::text || '.0' ELSE {column}::text END"
            )
        return f"{column}::text"  # booleans read true/false

    def stage_sql(self, name: str, defs: str) -> str:
        return f"CREATE TEMPORARY TABLE {name} ({defs}) ON COMMIT DROP"

    def drop_stage(self, conn, name: str) -> None:
        """Dropped at commit, and never there after a rollback."""

    def fill(self, conn, table: sa.Table, rows: pa.Table, types) -> None:
        if self.dialect.driver != "psycopg":
            return super().fill(conn, table, rows, types)
        staged = {c: types.get(c, LONG) for c in rows.column_names}  # `__row`, a hash: LONG
        self.copy(conn, self.q(table.name), [self.q(table.c[c].name) for c in staged], rows, staged)

    def copy(
        self,
        conn,
        target: str,
        columns: list[str],
        rows: pa.Table,
        types: Mapping[str, LogicalType],
        constants: Mapping[str, tuple[Any, LogicalType]] | None = None,
    ) -> None:
        """Binary COPY into `target`'s quoted `columns`: `rows`' columns of `types`, then
        `constants` (see `pgcopy`)."""
        statement = f"COPY {target} ({', '.join(columns)}) FROM STDIN (FORMAT binary)"
        # names are quoted for statements with parameters (`%` doubled); COPY has none
        statement = statement.replace(self.pct, "%")
        cursor = conn.connection.driver_connection.cursor()
        with cursor, cursor.copy(statement) as copy:
            for data in pgcopy.stream(rows, types, constants):
                copy.write(data)

    def insert_new(self, conn, dt: DataTable, rows: pa.Table, synced_at: datetime) -> bool:
        """COPY straight into the table, no staging and no upsert, under a savepoint: a key
        already there makes the COPY fail whole, and False sends the rows the usual way."""
        if self.dialect.driver != "psycopg":
            return False
        columns, types, constants = self.written_columns(dt, rows, synced_at)
        try:
            with conn.begin_nested():
                self.copy(conn, dt.ref, columns, rows, types, constants)
        except self.dialect.loaded_dbapi.IntegrityError as exc:
            if getattr(exc, "sqlstate", None) != UNIQUE_VIOLATION:
                raise
            return False
        return True

    def append(self, conn, dt: DataTable, rows: pa.Table, synced_at, batch: str, name: str) -> None:
        """Straight into the table: rows without a key never collide."""
        if self.dialect.driver != "psycopg":
            return super().append(conn, dt, rows, synced_at, batch, name)
        columns, types, constants = self.written_columns(dt, rows, synced_at, batch)
        self.copy(conn, dt.ref, columns, rows, types, constants)

    def upsert(self, conn, dt: DataTable, rows: pa.Table, synced_at: datetime, name: str) -> None:
        with self.stage(conn, dt, rows, name) as staged:
            insert = self.insert_select(dt, staged, self.upserted(dt, synced_at), postgresql.insert)
            names = [c.key for c in staged.c if c.key != "__row"]
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[dt.core.c[k] for k in dt.info.primary_key],
                    set_=self.replacement(dt, names, insert.excluded),
                )
            )
