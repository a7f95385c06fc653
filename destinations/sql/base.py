"""The flavor every SQL database starts from, and what all of them share.

`Flavor` works on any SQLAlchemy dialect (SQLAlchemy's types, a temporary staging table,
delete-and-insert, widening through a shadow column, a lock that only holds within this
process); each database's module replaces what it does better. Every statement touching
a data table is built by a flavor, with names quoted by the dialect; `SQLAlchemyDestination`
decides when each one runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from connector_runtime.destination import RUNTIME_SCHEMA
from connector_runtime.history import HASH
from connector_runtime.locks import file_lock
from connector_runtime.page import TableInfo
from connector_runtime.types import BOOLEAN, LONG, STRING, UTC_DATETIME, LogicalType

from . import history  # history mode's statements, built on this module's flavor

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
    keyed_table_options = ""  # and then, for a table with a primary key (upserted)

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
        return None, self.fit(f"{schema}__{table}")

    def fit(self, name: str) -> str:
        """The identifier this database gets for `name` (stable; distinct names stay distinct)."""
        return fit(name, self.limit)

    def data_table(self, schema: str, info: TableInfo) -> DataTable:
        schema_name, name = self.data_name(schema, info.name)
        columns = [self.column(self.fit(c), c) for c in info.columns]
        columns.append(self.column(SYNCED, SYNCED, UtcTimestamp()))
        if not info.primary_key:
            columns += [self.column(BATCH, BATCH), self.column(INDEX, INDEX)]
        if info.deleted_column:
            columns.append(self.column(DELETED, DELETED, sa.Boolean()))
        if info.history:
            columns += history.core_columns(self)
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
        key = [dt.q(k) for k in keys]
        if info.history:  # design §14: a version's key is the row's key plus its start
            defs += history.column_defs(self)
            key.append(self.q(history.START))
        if keys:
            defs.append(f"PRIMARY KEY ({', '.join(key)})")
        options = self.table_options + (self.keyed_table_options if keys else "")
        return f"CREATE TABLE {ref or dt.ref} ({', '.join(defs)}){options}"

    def ddl(self, conn: sa.Connection, statement: str) -> None:
        conn.exec_driver_sql(statement)

    # -- evolution --------------------------------------------------------------------

    def evolve(self, conn: sa.Connection, dt: DataTable, previous: TableInfo | None) -> None:
        """Create the table, or add and widen its columns; `previous` is what the catalog holds."""
        if previous is None:
            self.ddl(conn, self.create_sql(dt))
            return
        if dt.info.history and not previous.history:  # the copy takes new columns and types
            history.start(self, conn, dt, dict(previous.columns), previous.deleted_column)
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
        if dt.info.history and history.widened(previous, dt.info):  # values may read anew
            history.rehash(self, conn, dt, active_only=True)

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
        shadow = self.q(self.fit(f"{self.fit(column)}__cr_new"))
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
        numbers = ("__row", HASH)  # the row's position; a history version's hash
        defs = [
            f"{self.q(s)} {self.sql_type(LONG) if c in numbers else self.column_type(dt.info, c)}"
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

    def drop_leftover(self, conn, dt: DataTable) -> None:
        """Drop a copy a stopped table swap left behind (only MySQL can leave one)."""

    def swap_in(self, conn, dt: DataTable, copy: DataTable) -> None:
        """Replace table `dt` by `copy`, its new version, in this transaction."""
        self.ddl(conn, f"DROP TABLE {dt.ref}")
        self.ddl(conn, f"ALTER TABLE {copy.ref} RENAME TO {self.q(dt.name)}")

    def fill(self, conn, table: sa.Table, rows: pa.Table, types: dict[str, LogicalType]) -> None:
        conn.execute(sa.insert(table), self.records(rows, types))

    def matches(self, dt: DataTable, staged: sa.Table):
        """Rows of `dt` whose key is staged. One key column: `IN (SELECT ...)`, which finds
        them through the key's index (a correlated EXISTS makes SQLite scan the table once
        per staged key: 2,000 deletes into 200,000 rows took 100 s)."""
        keys = dt.info.primary_key
        if len(keys) == 1:
            return dt.core.c[keys[0]].in_(sa.select(staged.c[keys[0]]))
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

    def written_columns(
        self, dt: DataTable, rows: pa.Table, synced_at: datetime, batch: str | None = None
    ) -> tuple[list[str], dict[str, LogicalType], dict[str, tuple]]:
        """What rows written straight into `dt`, not through a staging table, carry (DESIGN
        §3): the quoted target columns; the types of `rows`' columns to send; the
        `(value, type)` every row gets: `_fivetran_synced`, and `_fivetran_deleted` false
        for an upsert, or an append's batch (its position in the page is `_fivetran_index`)."""
        names = [c for c in rows.column_names if c != "__row"]
        types = {c: dt.info.columns[c] for c in names}
        constants: dict[str, tuple] = {SYNCED: (synced_at, UTC_DATETIME)}
        if batch is not None:
            types["__row"] = LONG
            names.append(INDEX)
            constants[BATCH] = (batch, STRING)
        elif dt.info.deleted_column:
            constants[DELETED] = (False, BOOLEAN)
        return [dt.q(c) for c in [*names, *constants]], types, constants

    def insert_new(self, conn, dt: DataTable, rows: pa.Table, synced_at: datetime) -> bool:
        """Insert upserted `rows` straight into the table if none of their keys is there:
        True if done; False, with nothing written, if a key was there or this database
        has no faster path than `upsert`."""
        return False

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
