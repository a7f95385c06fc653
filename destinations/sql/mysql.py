"""MySQL and MariaDB: DDL that commits by itself runs first, then the page's rows as
multi-row INSERT ... ON DUPLICATE KEY UPDATE statements built in bulk (`mysql_values.py`)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
import structlog

from connector_runtime.errors import SyncInProgress
from connector_runtime.naming import HISTORY_COLUMNS
from connector_runtime.page import TableInfo
from connector_runtime.types import BOOLEAN, JSON, LONG, STRING, LogicalType, decimal

from . import history, mysql_values
from .base import BATCH, DELETED, INDEX, SYNCED, DataTable, Flavor, as_utc, fit

MYSQL_TRANSIENT = {1205, 1213, 2002, 2003, 2006, 2013, 2055, 1053, 1927, 4031}
MAX_IDENTIFIER = 64


def _in_bmp(name: str) -> bool:
    return all(ord(c) <= 0xFFFF for c in name)


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

    def fit(self, name: str) -> str:
        """MySQL/MariaDB identifiers hold at most 64 characters, no trailing space and only
        characters of the Basic Multilingual Plane: any other name gets a stable stand-in,
        its fitting prefix plus a hash of the whole name."""
        if len(name) <= MAX_IDENTIFIER and not name.endswith(" ") and _in_bmp(name):
            return name
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        kept = "".join(c if ord(c) <= 0xFFFF else "_" for c in name)
        return f"{kept[: MAX_IDENTIFIER - 9].rstrip(' ')}_{digest}"

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

    def finite(self, rows: pa.Table, types: Mapping[str, LogicalType]) -> pa.Table:
        """`rows` with NaN, Infinity and -Infinity in DOUBLE columns as NULL.

        MySQL's and MariaDB's DOUBLE hold no NaN or infinity (the server refuses them), and
        refusing the page would stop the connector at that row for good: NULL, "no
        number", is kept instead and a warning logged with how many. (DuckDB and
        PostgreSQL keep the IEEE values; SQLite keeps ±Infinity and, like any SQLite
        database, stores NaN as NULL.)
        """
        for index, name in enumerate(rows.column_names):
            if name not in types or types[name].name != "DOUBLE":
                continue
            column = rows.column(index)
            finite = pc.is_finite(column)  # null where the value is null
            if count := pc.sum(pc.invert(finite).cast(pa.int64())).as_py():
                structlog.get_logger().warning(
                    "non_finite_doubles_stored_as_null",
                    values=count,
                    reason="MySQL's DOUBLE has no NaN or Infinity",
                )
                column = pc.if_else(finite, column, pa.scalar(None, column.type))
                rows = rows.set_column(index, name, column)
        return rows

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
        self.evolve_table(conn, dt, previous)
        if dt.info.history and previous and previous.history and history.widened(previous, dt.info):
            # by the catalog, not the table: a page replayed after its DDL hashes again
            history.rehash(self, conn, dt, active_only=True)

    def evolve_table(self, conn, dt: DataTable, previous: TableInfo | None) -> None:
        """Create, convert to history, add and widen, as the table now needs."""
        name = dt.name
        old_copy = self.fit(f"{name}__cr_old")
        stored = self.stored(conn, [name, old_copy])
        if old_copy in stored:  # a swap that stopped before its last step
            self.ddl(conn, f"DROP TABLE IF EXISTS {self.q(old_copy)}")
        actual = stored.get(name)
        if actual is None:
            self.ddl(conn, self.create_sql(dt))
            return
        info = dt.info
        keys = info.primary_key
        physical = {c: self.fit(c) for c in info.columns}
        if info.history and history.START not in actual:  # turned on: copy and swap
            old = {c: self.read_back(actual[physical[c]], previous, c) for c in info.columns}
            old = {c: t for c, t in old.items() if physical[c] in actual}
            history.start(self, conn, dt, old, DELETED in actual)
            return
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
        new_name = self.fit(f"{name}__cr_new")
        old_name = self.fit(f"{name}__cr_old")
        self.ddl(conn, f"DROP TABLE IF EXISTS {self.q(new_name)}")
        self.ddl(conn, self.create_sql(dt, self.q(new_name)))
        kept = [c for c in dt.info.columns if self.fit(c) in actual]
        meta = (SYNCED, BATCH, INDEX, DELETED, *HISTORY_COLUMNS)
        meta = [m for m in meta if m in actual and m in dt.core.c]
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

    def drop_leftover(self, conn, dt: DataTable) -> None:
        self.ddl(conn, f"DROP TABLE IF EXISTS {dt.ref}")

    def swap_in(self, conn, dt: DataTable, copy: DataTable) -> None:
        """One RENAME TABLE: readers see the old table or the new one, never neither."""
        old = self.q(self.fit(f"{dt.name}__cr_old"))
        self.ddl(conn, f"RENAME TABLE {dt.ref} TO {old}, {copy.ref} TO {dt.ref}")
        self.ddl(conn, f"DROP TABLE {old}")

    def stage(self, conn, dt, rows, name):
        # a TEMPORARY table neither commits the transaction nor goes away on rollback
        self.ddl(conn, f"DROP TEMPORARY TABLE IF EXISTS {self.q(name)}")
        return super().stage(conn, dt, rows, name)

    def drop_stage(self, conn, name: str) -> None:
        self.ddl(conn, f"DROP TEMPORARY TABLE IF EXISTS {name}")

    def insert(
        self,
        conn,
        target: str,
        columns: list[str],
        rows: pa.Table,
        types: Mapping[str, LogicalType],
        constants: Mapping[str, tuple[Any, LogicalType]] | None = None,
        tail: str = "",
    ) -> None:
        """Multi-row INSERT into `target`'s quoted `columns`: `rows`' columns of `types`,
        then `constants`; `tail` follows the rows (ON DUPLICATE KEY UPDATE ...).

        A row whose statement would not fit in the server's max_allowed_packet (its text
        as hex is twice as long) goes alone through the driver's own escaping instead."""
        rows, constants = self.finite(rows, types), constants or {}
        head = f"INSERT INTO {target} ({', '.join(columns)}) VALUES "
        tail = f" {tail}" if tail else ""
        # names are quoted for statements with parameters (`%` doubled); these have none
        raw_head, raw_tail = (part.replace(self.pct, "%").encode() for part in (head, tail))
        packet = self.packet_bytes(conn) - 1024  # the protocol's own bytes, and some room
        limit = min(mysql_values.STATEMENT_BYTES, packet - len(raw_head) - len(raw_tail))
        cursor = conn.connection.driver_connection.cursor()
        with cursor:
            for first, statement in mysql_values.statements(
                raw_head, rows, types, constants, raw_tail, limit
            ):
                if len(statement) <= packet:
                    cursor.execute(statement)
                else:  # one row, alone: `limit` is below the packet
                    marks = ", ".join(["%s"] * (len(types) + len(constants)))
                    row = self.driver_row(rows.slice(first, 1), types, constants)
                    cursor.execute(f"{head}({marks}){tail}", row)

    def packet_bytes(self, conn) -> int:
        """The server's max_allowed_packet, asked once per connection."""
        info = conn.connection.info
        if "max_allowed_packet" not in info:
            asked = conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar()
            info["max_allowed_packet"] = int(asked)
        return info["max_allowed_packet"]

    def driver_row(self, row: pa.Table, types, constants) -> list:
        """A one-row table's values as the driver binds them: instants as UTC wall clocks."""
        values = [row.column(c)[0].as_py() for c in types]
        values += [value for value, _ in constants.values()]
        return [as_utc(v).replace(tzinfo=None) if isinstance(v, datetime) else v for v in values]

    def fill(self, conn, table: sa.Table, rows: pa.Table, types) -> None:
        staged = {c: types.get(c, LONG) for c in rows.column_names}  # `__row`, a hash: LONG
        columns = [self.q(table.c[c].name) for c in staged]
        self.insert(conn, self.q(table.name), columns, rows, staged)

    def upsert(self, conn, dt: DataTable, rows: pa.Table, synced_at: datetime, name: str) -> None:
        """Straight into the table, no staging: the page's keys are distinct already."""
        columns, types, constants = self.written_columns(dt, rows, synced_at)
        tail = f"ON DUPLICATE KEY UPDATE {', '.join(self.replaced(dt, list(types)))}"
        self.insert(conn, dt.ref, columns, rows, types, constants, tail)

    def replaced(self, dt: DataTable, names: list[str]) -> list[str]:
        """An upsert's assignments: the whole row replaced, columns the page lacks NULL."""
        keys = dt.info.primary_key
        new = [*names, SYNCED]
        sets = [
            f"{dt.q(c)} = {f'VALUES({dt.q(c)})' if c in new else 'NULL'}"
            for c in [*dt.info.columns, SYNCED]
            if c not in keys
        ]
        return sets + ([f"{self.q(DELETED)} = FALSE"] if dt.info.deleted_column else [])

    def append(self, conn, dt: DataTable, rows: pa.Table, synced_at, batch: str, name: str) -> None:
        columns, types, constants = self.written_columns(dt, rows, synced_at, batch)
        self.insert(conn, dt.ref, columns, rows, types, constants)

    def mark_deleted(self, conn, dt: DataTable, keys: pa.Table, synced_at, name: str):
        """A join with the staged keys, not EXISTS: MariaDB would scan the whole table once
        per key."""
        keys = keys.group_by(list(dt.info.primary_key)).aggregate([])
        with self.stage(conn, dt, keys, name) as staged:
            same = sa.and_(*(dt.core.c[k] == staged.c[k] for k in dt.info.primary_key))
            marked = conn.execute(
                sa.update(dt.core).where(same).values({DELETED: sa.true(), SYNCED: synced_at})
            ).rowcount
        return marked, keys.num_rows - marked
