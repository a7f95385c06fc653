"""What differs between SQL databases: types, bulk paths, widening, locks, transient errors.

`flavor_for(engine)` picks one `Flavor`. The base class works on any SQLAlchemy dialect
(SQLAlchemy's types, a temporary staging table, delete-and-insert, widening through a
shadow column, a lock that only holds within this process); each subclass replaces what
its database does better. Every statement touching a data table is built here, with
names quoted by the dialect; `SQLAlchemyDestination` decides when each one runs.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from connector_runtime.destination import RUNTIME_SCHEMA
from connector_runtime.errors import SyncInProgress
from connector_runtime.locks import file_lock
from connector_runtime.page import TableInfo
from connector_runtime.types import BOOLEAN, JSON, LONG, STRING, LogicalType, decimal

SYNCED, BATCH, INDEX, DELETED = (
    "_fivetran_synced",
    "_fivetran_batch",
    "_fivetran_index",
    "_fivetran_deleted",
)
MYSQL_NAMES = ("mysql", "mariadb")


def fit(name: str, limit: int) -> str:
    """`name` if the database takes it whole, else a prefix plus a hash: stable and distinct."""
    raw = name.encode()
    if len(raw) <= limit:
        return name
    digest = hashlib.sha1(raw).hexdigest()[:8]
    return raw[: limit - 9].decode(errors="ignore") + "_" + digest


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UtcTimestamp(sa.types.TypeDecorator):
    """An instant: timestamptz; DATETIME(6) holding UTC on MySQL; ISO-8601 text on SQLite."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.Text())
        if dialect.name in MYSQL_NAMES:
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime(timezone=True))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = as_utc(value)
        if dialect.name == "sqlite":
            return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # fixed width: sorts as text
        return value.replace(tzinfo=None) if dialect.name in MYSQL_NAMES else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return as_utc(datetime.fromisoformat(value) if isinstance(value, str) else value)


@dataclass(frozen=True)
class DataTable:
    """A data table as the database names it; `core.c[name]` is the column of a warehouse name."""

    schema: str | None  # as the database names it, unquoted; None: no schemas here
    name: str
    ref: str  # quoted, schema-qualified
    core: sa.Table
    info: TableInfo

    def q(self, column: str) -> str:
        """The column of warehouse name `column`, quoted."""
        return self.core.c[column].name


class Flavor:
    """Any SQLAlchemy dialect: portable SQL, SQLAlchemy's generic types."""

    title = "the SQL warehouse"
    runtime_schema: str | None = None  # None: runtime tables are `connector_runtime__<name>`
    transactional_ddl = True  # False: DDL commits by itself, so it runs before the page
    table_options = ""  # after CREATE TABLE (...)

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self.limit = self.dialect.max_identifier_length or 63
        # statements always go out with parameters, so a driver unescapes `%%`
        self.pct = "%%" if self.dialect.paramstyle in ("format", "pyformat") else "%"

    def configure(self, engine: sa.Engine) -> None:
        """Hook per-connection settings onto a new engine."""

    def is_transient(self, error: BaseException) -> bool:
        """A driver error after which nothing was committed and a retry may succeed."""
        return False

    def lock(self, connector: str):
        return file_lock(None, connector)  # no portable cross-process lock: this process only

    # -- names and types --------------------------------------------------------------

    def q(self, name: str) -> str:
        return self.dialect.identifier_preparer.quote_identifier(name)

    def runtime_name(self, table: str) -> tuple[str | None, str]:
        return None, f"{RUNTIME_SCHEMA}__{table}"

    def data_name(self, schema: str, table: str) -> tuple[str | None, str]:
        return None, fit(f"{schema}__{table}", self.limit)

    def data_table(self, schema: str, info: TableInfo) -> DataTable:
        schema_name, name = self.data_name(schema, info.name)
        columns = [self.column(fit(c, self.limit), c) for c in info.columns]
        columns.append(self.column(SYNCED, SYNCED, UtcTimestamp()))
        if not info.primary_key:
            columns += [self.column(BATCH, BATCH), self.column(INDEX, INDEX)]
        if info.deleted_column:
            columns.append(self.column(DELETED, DELETED, sa.Boolean()))
        ref = ".".join(self.q(part) for part in (schema_name, name) if part)
        core = sa.Table(sa.sql.quoted_name(ref, False), sa.MetaData(), *columns)
        return DataTable(schema_name, name, ref, core, info)

    def column(self, name: str, key: str, kind=None) -> sa.Column:
        """A Core column whose name is quoted here already, so SQLAlchemy splices it as is."""
        return sa.Column(sa.sql.quoted_name(self.q(name), False), kind, key=key)

    def sql_type(self, logical: LogicalType, *, key: int = 0) -> str:
        """DDL type of `logical`; `key`: how many columns the primary key has, if in it."""
        generic = {
            "BOOLEAN": sa.Boolean(),
            "LONG": sa.BigInteger(),
            "DOUBLE": sa.Double(),
            "NAIVE_DATE": sa.Date(),
            "NAIVE_DATETIME": sa.DateTime(),
            "UTC_DATETIME": sa.DateTime(timezone=True),
            "STRING": sa.String(255) if key else sa.Text(),
            "JSON": sa.JSON(),
        }
        if logical.name == "DECIMAL":
            kind = sa.Numeric(logical.precision, logical.scale)
        else:
            kind = generic[logical.name]
        try:
            return kind.compile(dialect=self.dialect)
        except sa.exc.CompileError:  # a dialect without JSON keeps its text
            return sa.Text().compile(dialect=self.dialect)

    def column_type(self, info: TableInfo, column: str) -> str:
        key = len(info.primary_key) if column in info.primary_key else 0
        return self.sql_type(info.columns[column], key=key)

    def deleted_column(self) -> str:
        false = sa.false().compile(dialect=self.dialect)
        return f"{self.q(DELETED)} {self.sql_type(BOOLEAN)} DEFAULT {false}"

    def create_sql(self, dt: DataTable, ref: str | None = None) -> str:
        info = dt.info
        keys = info.primary_key
        defs = [
            f"{dt.q(c)} {self.column_type(info, c)}{' NOT NULL' if c in keys else ''}"
            for c in info.columns
        ]
        defs.append(f"{self.q(SYNCED)} {UtcTimestamp().compile(dialect=self.dialect)}")
        if not keys:
            defs += [
                f"{self.q(BATCH)} {self.sql_type(STRING)}",
                f"{self.q(INDEX)} {self.sql_type(LONG)}",
            ]
        if info.deleted_column:
            defs.append(self.deleted_column())
        if keys:
            defs.append(f"PRIMARY KEY ({', '.join(dt.q(k) for k in keys)})")
        return f"CREATE TABLE {ref or dt.ref} ({', '.join(defs)}){self.table_options}"

    def ddl(self, conn: sa.Connection, statement: str) -> None:
        conn.exec_driver_sql(statement)

    # -- evolution --------------------------------------------------------------------

    def evolve(self, conn: sa.Connection, dt: DataTable, previous: TableInfo | None) -> None:
        """Create the table, or add and widen its columns; `previous` is what the catalog holds."""
        if previous is None:
            self.ddl(conn, self.create_sql(dt))
            return
        added = [c for c in dt.info.columns if c not in previous.columns]
        changed = {
            c: (previous.columns[c], new)
            for c, new in dt.info.columns.items()
            if c in previous.columns and self.rewrites(previous.columns[c], new)
        }
        add_deleted = dt.info.deleted_column and not previous.deleted_column
        if added or changed or add_deleted:
            self.alter(conn, dt, previous, added, changed, add_deleted)

    def rewrites(self, old: LogicalType, new: LogicalType) -> bool:
        """Whether widening `old` to `new` changes the stored column or its values."""
        return old != new and (
            self.sql_type(old) != self.sql_type(new) or self.convert(old, new, "c") != "c"
        )

    def alter(self, conn, dt: DataTable, previous: TableInfo, added, changed, add_deleted) -> None:
        for column in added:
            self.ddl(
                conn, f"ALTER TABLE {dt.ref} ADD {dt.q(column)} {self.column_type(dt.info, column)}"
            )
        for column, (old, new) in changed.items():
            self.shadow_widen(conn, dt, column, old, new)
        if add_deleted:
            self.ddl(conn, f"ALTER TABLE {dt.ref} ADD {self.deleted_column()}")

    def shadow_widen(self, conn, dt: DataTable, column: str, old, new) -> None:
        """Portable widening: a new column, filled from the old one, then renamed over it."""
        shadow = self.q(fit(f"{fit(column, self.limit)}__cr_new", self.limit))
        self.ddl(conn, f"ALTER TABLE {dt.ref} ADD {shadow} {self.column_type(dt.info, column)}")
        self.ddl(conn, f"UPDATE {dt.ref} SET {shadow} = {self.convert(old, new, dt.q(column))}")
        self.ddl(conn, f"ALTER TABLE {dt.ref} DROP COLUMN {dt.q(column)}")
        self.ddl(conn, f"ALTER TABLE {dt.ref} RENAME COLUMN {shadow} TO {dt.q(column)}")

    def convert(self, old: LogicalType, new: LogicalType, column: str) -> str:
        """SQL for a value of `old` as a value of `new` (DESIGN §4: text is true/false, ISO-8601)."""
        if new.name in ("STRING", "JSON"):
            return self.as_text(old, column)
        return f"CAST({column} AS {self.sql_type(new)})"

    def as_text(self, old: LogicalType, column: str) -> str:
        if old == BOOLEAN:
            return (
                f"CASE WHEN {column} IS NULL THEN NULL WHEN {column} THEN 'true' ELSE 'false' END"
            )
        return f"CAST({column} AS {self.sql_type(STRING)})"

    # -- bulk writes ------------------------------------------------------------------

    def values(self, column: pa.ChunkedArray, logical: LogicalType) -> list:
        """A typed Arrow column as the Python values the driver binds."""
        return column.to_pylist()

    def records(self, rows: pa.Table, types: dict[str, LogicalType]) -> list[dict]:
        columns = {c: self.values(rows.column(c), types.get(c, LONG)) for c in rows.column_names}
        return [
            dict(zip(columns, values, strict=True))
            for values in zip(*columns.values(), strict=True)
        ]

    @contextmanager
    def stage(self, conn, dt: DataTable, rows: pa.Table, name: str) -> Iterator[sa.Table]:
        """A temporary table holding `rows`; its columns are keyed by warehouse name.

        Staged columns are called `__row`, `c0`, `c1`...: no name from a function reaches
        the staging DDL, the COPY or the executemany.
        """
        staged = {c: c if c == "__row" else f"c{i}" for i, c in enumerate(rows.column_names)}
        defs = [
            f"{self.q(s)} {self.sql_type(LONG) if c == '__row' else self.column_type(dt.info, c)}"
            for c, s in staged.items()
        ]
        self.ddl(conn, self.stage_sql(self.q(name), ", ".join(defs)))
        table = sa.Table(name, sa.MetaData(), *(sa.Column(s, key=c) for c, s in staged.items()))
        self.fill(conn, table, rows, dt.info.columns)
        yield table
        self.drop_stage(conn, self.q(name))

    def stage_sql(self, name: str, defs: str) -> str:
        return f"CREATE TEMPORARY TABLE {name} ({defs})"

    def drop_stage(self, conn, name: str) -> None:
        self.ddl(conn, f"DROP TABLE {name}")

    def fill(self, conn, table: sa.Table, rows: pa.Table, types: dict[str, LogicalType]) -> None:
        conn.execute(sa.insert(table), self.records(rows, types))

    def matches(self, dt: DataTable, staged: sa.Table):
        keys = dt.info.primary_key
        return sa.exists().where(sa.and_(*(dt.core.c[k] == staged.c[k] for k in keys)))

    def insert_select(self, dt: DataTable, staged: sa.Table, extra: dict, insert=sa.insert):
        names = [c.key for c in staged.c if c.key != "__row"]
        select = sa.select(*(staged.c[c] for c in names), *extra.values())
        return insert(dt.core).from_select([*names, *extra], select)

    def upserted(self, dt: DataTable, synced_at: datetime) -> dict:
        """What every upserted row gets besides its values (DESIGN §3)."""
        extra = {SYNCED: sa.literal(synced_at, UtcTimestamp())}
        if dt.info.deleted_column:
            extra[DELETED] = sa.false()
        return extra

    def replacement(self, dt: DataTable, names: list[str], incoming) -> dict:
        """The SET of an upsert: the whole row replaced, columns absent from the page NULL."""
        keys = dt.info.primary_key
        values = {
            c: incoming[c] if c in names else sa.null() for c in dt.info.columns if c not in keys
        }
        values[SYNCED] = incoming[SYNCED]
        if dt.info.deleted_column:
            values[DELETED] = sa.false()
        return values

    def upsert(self, conn, dt: DataTable, rows: pa.Table, synced_at: datetime, name: str) -> None:
        with self.stage(conn, dt, rows, name) as staged:
            conn.execute(sa.delete(dt.core).where(self.matches(dt, staged)))
            conn.execute(self.insert_select(dt, staged, self.upserted(dt, synced_at)))

    def append(self, conn, dt: DataTable, rows: pa.Table, synced_at, batch: str, name: str) -> None:
        with self.stage(conn, dt, rows, name) as staged:
            extra = {
                SYNCED: sa.literal(synced_at, UtcTimestamp()),
                BATCH: sa.literal(batch, sa.Text()),
                INDEX: staged.c["__row"],
            }
            conn.execute(self.insert_select(dt, staged, extra))

    def mark_deleted(self, conn, dt: DataTable, keys: pa.Table, synced_at, name: str):
        """Mark rows with these keys deleted: (rows marked, distinct keys not found)."""
        keys = keys.group_by(list(dt.info.primary_key)).aggregate([])
        with self.stage(conn, dt, keys, name) as staged:
            marked = conn.execute(
                sa.update(dt.core)
                .where(self.matches(dt, staged))
                .values({DELETED: sa.true(), SYNCED: synced_at})
            ).rowcount
        return marked, keys.num_rows - marked

    def mark_unsent(self, conn, dt: DataTable, cutoff: datetime, synced_at: datetime) -> int:
        t = dt.core
        return conn.execute(
            sa.update(t)
            .where(t.c[SYNCED] < cutoff, t.c[DELETED] == sa.false())
            .values({DELETED: sa.true(), SYNCED: synced_at})
        ).rowcount


class Postgres(Flavor):
    """COPY into an ON COMMIT DROP staging table, then INSERT ... ON CONFLICT DO UPDATE."""

    title = "PostgreSQL"
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
        return fit(schema, self.limit), fit(table, self.limit)

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
        text = io.BytesIO()
        options = pa_csv.WriteOptions(include_header=False, quoting_style="all_valid")
        pa_csv.write_csv(rows, text, options)  # nulls unquoted and empty, strings quoted
        cursor = conn.connection.driver_connection.cursor()
        with cursor, cursor.copy(f"COPY {table.name} FROM STDIN (FORMAT csv)") as copy:
            copy.write(text.getbuffer())

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


MYSQL_TRANSIENT = {1205, 1213, 2002, 2003, 2006, 2013, 2055, 1053, 1927, 4031}


class MySQL(Flavor):
    """MySQL and MariaDB: DDL first, idempotent, then the page in one transaction.

    MySQL commits before and after every DDL statement, so a page's schema changes cannot
    share its transaction. They run first, each one derived from what the table holds now
    (information_schema), not from the catalog: after a failure between the DDL and the
    page's commit, the replayed page finds its columns there and only writes the rows.
    Conversions that rewrite values (booleans and date-times to text, anything to JSON)
    build a new table and swap it in with one atomic RENAME TABLE; the others are one
    ALTER TABLE ... MODIFY. Key columns of type STRING are VARCHAR with a binary collation,
    so keys compare exactly as elsewhere ('a' is not 'A').
    """

    title = "MySQL"
    transactional_ddl = False
    table_options = " DEFAULT CHARSET=utf8mb4"
    TYPES = {
        "BOOLEAN": "BOOLEAN",
        "LONG": "BIGINT",
        "DOUBLE": "DOUBLE",
        "NAIVE_DATE": "DATE",
        "NAIVE_DATETIME": "DATETIME(6)",
        "UTC_DATETIME": "DATETIME(6)",
        "STRING": "LONGTEXT",
        "JSON": "JSON",
    }
    # information_schema DATA_TYPE of each stored type
    STORED = {
        "BOOLEAN": {"tinyint"},
        "LONG": {"bigint"},
        "DOUBLE": {"double"},
        "NAIVE_DATE": {"date"},
        "NAIVE_DATETIME": {"datetime"},
        "UTC_DATETIME": {"datetime"},
        "STRING": {"longtext", "varchar"},
        "JSON": {"json"},
    }
    READ_BACK = {"tinyint": BOOLEAN, "bigint": LONG, "json": JSON}

    def configure(self, engine: sa.Engine) -> None:
        @sa.event.listens_for(engine, "connect")
        def session(dbapi_connection, _record) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET time_zone = '+00:00'")
                cursor.execute(
                    "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@sql_mode, ''), 'STRICT_ALL_TABLES')"
                )

    def is_transient(self, error: BaseException) -> bool:
        code = error.args[0] if error.args else None
        return code in MYSQL_TRANSIENT

    @contextmanager
    def lock(self, connector: str) -> Iterator[None]:
        """GET_LOCK on its own connection: server-wide, so the name carries the database."""
        name = fit(f"connector-runtime/{self.engine.url.database}/{connector}", 64)
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if conn.execute(sa.text("SELECT GET_LOCK(:n, 0)"), {"n": name}).scalar() != 1:
                raise SyncInProgress(f"a sync of {connector!r} is already in progress")
            try:
                yield
            finally:
                with suppress(sa.exc.DBAPIError):  # gone with its connection, or released
                    conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": name})

    @property
    def binary_collation(self) -> str:
        if self.dialect.is_mariadb:
            return "utf8mb4_nopad_bin"
        return "utf8mb4_0900_bin" if self.dialect.server_version_info >= (8,) else "utf8mb4_bin"

    def sql_type(self, logical: LogicalType, *, key: int = 0) -> str:
        if logical.name == "DECIMAL":
            return f"DECIMAL({logical.precision},{logical.scale})"
        if key and logical.name == "STRING":
            # InnoDB keys hold 3072 bytes: 768 four-byte characters across the key
            length = min(255, 768 // key)
            return f"VARCHAR({length}) CHARACTER SET utf8mb4 COLLATE {self.binary_collation}"
        return self.TYPES[logical.name]

    def values(self, column: pa.ChunkedArray, logical: LogicalType) -> list:
        if logical.name == "UTC_DATETIME":
            column = column.cast(pa.timestamp("us"))  # the UTC wall clock, as stored
        return column.to_pylist()

    def convert(self, old: LogicalType, new: LogicalType, column: str) -> str:
        return self.as_text(old, column) if new.name in ("STRING", "JSON") else column

    def as_text(self, old: LogicalType, column: str) -> str:
        p = self.pct
        formats = {
            "NAIVE_DATE": f"{p}Y-{p}m-{p}d",
            "NAIVE_DATETIME": f"{p}Y-{p}m-{p}dT{p}H:{p}i:{p}s.{p}f",
            "UTC_DATETIME": f"{p}Y-{p}m-{p}dT{p}H:{p}i:{p}s.{p}fZ",
        }
        if old.name in formats:
            return f"DATE_FORMAT({column}, '{formats[old.name]}')"
        if old == BOOLEAN:
            return super().as_text(old, column)
        if old.name == "DOUBLE":  # integral values as Python and DuckDB write them: 1.0
            return (
                f"CASE WHEN {column} = TRUNCATE({column}, 0) AND ABS({column}) < 1e16"
                f" THEN CONCAT(CAST({column} AS SIGNED), '.0') ELSE CAST({column} AS CHAR) END"
            )
        return f"CAST({column} AS CHAR)"

    def rewrites_values(self, old: LogicalType, new: LogicalType) -> bool:
        """Conversions MODIFY would get wrong: 1/0 for booleans, no ISO `T`, JSON parsing."""
        rewritten = ("BOOLEAN", "DOUBLE", "NAIVE_DATETIME", "UTC_DATETIME")
        return new == JSON or (new == STRING and old.name in rewritten)

    def evolve(self, conn, dt: DataTable, previous: TableInfo | None) -> None:
        name = dt.name
        old_copy = fit(f"{name}__cr_old", self.limit)
        stored = self.stored(conn, [name, old_copy])
        if old_copy in stored:  # a swap that stopped before its last step
            self.ddl(conn, f"DROP TABLE IF EXISTS {self.q(old_copy)}")
        actual = stored.get(name)
        if actual is None:
            self.ddl(conn, self.create_sql(dt))
            return
        info = dt.info
        keys = info.primary_key
        physical = {c: fit(c, self.limit) for c in info.columns}
        added = [c for c in info.columns if physical[c] not in actual]
        changed = {
            c: (self.read_back(actual[physical[c]], previous, c), new)
            for c, new in info.columns.items()
            if physical[c] in actual and not self.holds(actual[physical[c]], new, bool(c in keys))
        }
        add_deleted = info.deleted_column and DELETED not in actual
        if any(self.rewrites_values(old, new) for old, new in changed.values()):
            self.swap(conn, dt, name, actual, changed)
            return
        actions = [f"ADD COLUMN {dt.q(c)} {self.column_type(info, c)}" for c in added]
        actions += [
            f"MODIFY COLUMN {dt.q(c)} {self.column_type(info, c)}{' NOT NULL' if c in keys else ''}"
            for c in changed
        ]
        if add_deleted:
            actions.append(f"ADD COLUMN {self.deleted_column()}")
        if actions:
            self.ddl(conn, f"ALTER TABLE {dt.ref} {', '.join(actions)}")

    def stored(self, conn, tables: list[str]) -> dict[str, dict[str, tuple]]:
        """Columns of `tables` as they are now: {table: {column: (type, precision, scale)}}."""
        rows = conn.execute(
            sa.text(
                "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE"
                " FROM information_schema.COLUMNS"
                " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN :tables"
            ).bindparams(sa.bindparam("tables", expanding=True)),
            {"tables": tables},
        )
        found: dict[str, dict[str, tuple]] = {}
        for table, column, kind, precision, scale in rows:
            found.setdefault(table, {})[column] = (kind.lower(), precision, scale)
        if self.dialect.is_mariadb:  # its JSON is a LONGTEXT with a json_valid() check
            checked = conn.execute(
                sa.text(
                    "SELECT TABLE_NAME, CONSTRAINT_NAME FROM information_schema.CHECK_CONSTRAINTS"
                    " WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME IN :tables"
                    " AND LEVEL = 'Column' AND CHECK_CLAUSE LIKE 'json\\_valid(%'"
                ).bindparams(sa.bindparam("tables", expanding=True)),
                {"tables": tables},
            )
            for table, column in checked:
                if column in found.get(table, {}):
                    found[table][column] = ("json", None, None)
        return found

    def holds(self, stored: tuple, logical: LogicalType, key: bool) -> bool:
        kind, precision, scale = stored
        if logical.name == "DECIMAL":
            return kind == "decimal" and (precision, scale) == (logical.precision, logical.scale)
        if logical.name == "STRING" and key:
            return kind == "varchar"
        return kind in self.STORED[logical.name]

    def read_back(self, stored: tuple, previous: TableInfo | None, column: str) -> LogicalType:
        """The logical type a stored column holds: the catalog's if it agrees, else its own."""
        known = previous.columns.get(column) if previous else None
        if known is not None and self.holds(stored, known, False):
            return known
        kind, precision, scale = stored
        if kind == "decimal":
            return decimal(precision, scale)
        if kind in ("date", "datetime", "double"):
            return LogicalType(
                {"date": "NAIVE_DATE", "datetime": "NAIVE_DATETIME"}.get(kind, "DOUBLE")
            )
        return self.READ_BACK.get(kind, STRING)

    def swap(self, conn, dt: DataTable, name: str, actual: dict, changed: dict) -> None:
        """Copy into a new table with the new types, then swap names in one RENAME TABLE."""
        new_name = fit(f"{name}__cr_new", self.limit)
        old_name = fit(f"{name}__cr_old", self.limit)
        self.ddl(conn, f"DROP TABLE IF EXISTS {self.q(new_name)}")
        self.ddl(conn, self.create_sql(dt, self.q(new_name)))
        kept = [c for c in dt.info.columns if fit(c, self.limit) in actual]
        meta = [m for m in (SYNCED, BATCH, INDEX, DELETED) if m in actual and m in dt.core.c]
        targets = [dt.q(c) for c in kept] + [self.q(m) for m in meta]
        sources = [
            self.convert(*changed[c], dt.q(c)) if c in changed else dt.q(c) for c in kept
        ] + [self.q(m) for m in meta]
        self.ddl(
            conn,
            f"INSERT INTO {self.q(new_name)} ({', '.join(targets)})"
            f" SELECT {', '.join(sources)} FROM {dt.ref}",
        )
        self.ddl(
            conn,
            f"RENAME TABLE {dt.ref} TO {self.q(old_name)}, {self.q(new_name)} TO {dt.ref}",
        )
        self.ddl(conn, f"DROP TABLE {self.q(old_name)}")

    def stage(self, conn, dt, rows, name):
        # a TEMPORARY table neither commits the transaction nor goes away on rollback
        self.ddl(conn, f"DROP TEMPORARY TABLE IF EXISTS {self.q(name)}")
        return super().stage(conn, dt, rows, name)

    def drop_stage(self, conn, name: str) -> None:
        self.ddl(conn, f"DROP TEMPORARY TABLE IF EXISTS {name}")

    def upsert(self, conn, dt: DataTable, rows: pa.Table, synced_at: datetime, name: str) -> None:
        with self.stage(conn, dt, rows, name) as staged:
            insert = self.insert_select(dt, staged, self.upserted(dt, synced_at), mysql.insert)
            names = [c.key for c in staged.c if c.key != "__row"]
            conn.execute(
                insert.on_duplicate_key_update(self.replacement(dt, names, self.new_values(dt)))
            )

    def new_values(self, dt: DataTable) -> dict:
        """`VALUES(col)` of every column. Not `insert.inserted`: SQLAlchemy escapes `%` in a
        quoted name twice there. literal_column escapes it once, so the name goes in raw."""
        physical = {c: fit(c, self.limit) for c in dt.info.columns} | {SYNCED: SYNCED}
        return {
            c: sa.literal_column("VALUES(`" + name.replace("`", "``") + "`)")
            for c, name in physical.items()
        }


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
        new_name = self.q(fit(f"{dt.name}__cr_new", self.limit))
        self.ddl(conn, self.create_sql(dt, new_name))
        kept = [c for c in dt.info.columns if c in previous.columns]
        meta = [SYNCED] + ([] if previous.primary_key else [BATCH, INDEX])
        meta += [DELETED] if previous.deleted_column else []
        targets = [dt.q(c) for c in kept] + [self.q(m) for m in meta]
        sources = [self.convert(*changed[c], dt.q(c)) if c in changed else dt.q(c) for c in kept]
        sources += [self.q(m) for m in meta]
        self.ddl(
            conn,
            f"INSERT INTO {new_name} ({', '.join(targets)}) SELECT {', '.join(sources)} FROM {dt.ref}",
        )
        self.ddl(conn, f"DROP TABLE {dt.ref}")
        self.ddl(conn, f"ALTER TABLE {new_name} RENAME TO {self.q(dt.name)}")

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


def flavor_for(engine: sa.Engine) -> Flavor:
    name = engine.dialect.name
    kind = Postgres if name == "postgresql" else MySQL if name in MYSQL_NAMES else None
    kind = kind or (SQLite if name == "sqlite" else Flavor)
    flavor = kind(engine)
    flavor.configure(engine)
    return flavor
