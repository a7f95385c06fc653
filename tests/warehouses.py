"""Warehouses for the destination contract suite: one URL per backend, fresh for each test.

(Not `tests/destinations.py`: pytest puts `tests/` first on sys.path, where a module of
that name would hide the `destinations` package from every test.)

- `destination_url`: parametrised over DuckDB, SQLite, PostgreSQL and MariaDB. DuckDB and
  SQLite are files in `tmp_path`; PostgreSQL and MariaDB get a database of their own,
  created on the server for the test and dropped after it. The servers come from
  `CONNECTOR_TEST_POSTGRES` (default `postgresql://postgres@127.0.0.1:5432/test`) and
  `CONNECTOR_TEST_MARIADB` (default `mysql://root@127.0.0.1:3306/test`). An unreachable
  server or a missing driver skips the test with how to fix it, and fails it under CI=true.
- `postgres_url`, `mariadb_url`: a fresh PostgreSQL or MariaDB database alone, for
  tests of what only that database has.
- `Warehouse(url)`: reads what a backend stored, the same way for each: quoted names as
  the backend lays tables out, values normalised (`canon`).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import duckdb
import pytest

BACKENDS = ["duckdb", "sqlite", "postgresql", "mariadb"]


@dataclass(frozen=True)
class Server:
    title: str
    env: str
    default: str
    extra: str
    start: str

    @property
    def admin_url(self) -> str:
        return os.environ.get(self.env, self.default)


SERVERS = {
    "postgresql": Server(
        "PostgreSQL",
        "CONNECTOR_TEST_POSTGRES",
        "postgresql://postgres@127.0.0.1:5432/test",
        "postgres",
        "apt-get install postgresql && service postgresql start (trust auth for postgres on 127.0.0.1)",
    ),
    "mariadb": Server(
        "MariaDB",
        "CONNECTOR_TEST_MARIADB",
        "mysql://root@127.0.0.1:3306/test",
        "mysql",
        "apt-get install mariadb-server && service mariadb start (root without a password)",
    ),
}
_UNAVAILABLE: dict[str, str] = {}  # backend -> why, so a dead server costs one timeout


def _unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: a server the suite needs must be running)")
    pytest.skip(message)


def _admin_engine(backend: str):
    import sqlalchemy as sa

    from destinations.sqlalchemy import create_engine

    server = SERVERS[backend]
    if backend in _UNAVAILABLE:
        _unavailable(_UNAVAILABLE[backend])
    try:
        engine = create_engine(server.admin_url)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # a missing driver (ConfigError) or a refused connection
        detail = str(exc).strip().splitlines()[0]
        _UNAVAILABLE[backend] = (
            f"{server.title} at {server.admin_url} is not usable ({detail}); start it: "
            f"{server.start}; install the driver: pip install 'connector-runtime[{server.extra}]'; "
            f"or point {server.env} at another server"
        )
        _unavailable(_UNAVAILABLE[backend])
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def _fresh_database(backend: str):
    """Create a database for one test; returns its URL and a function that drops it."""
    import sqlalchemy as sa

    engine = _admin_engine(backend)
    name = f"cr_test_{uuid.uuid4().hex[:12]}"
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))

    def drop() -> None:
        force = " WITH (FORCE)" if backend == "postgresql" else ""
        with engine.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name}{force}"))
        engine.dispose()

    url = sa.engine.make_url(SERVERS[backend].admin_url).set(database=name)
    return url.render_as_string(hide_password=False), drop


@pytest.fixture(params=BACKENDS)
def destination_url(request, tmp_path) -> str:
    """A warehouse URL on each backend, empty at the start of the test."""
    backend = request.param
    if backend == "duckdb":
        yield f"duckdb:///{tmp_path}/warehouse.duckdb"
    elif backend == "sqlite":
        yield f"sqlite:///{tmp_path}/warehouse.sqlite"
    else:
        url, drop = _fresh_database(backend)
        try:
            yield url
        finally:
            drop()


def _database_alone(backend: str):
    url, drop = _fresh_database(backend)
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def postgres_url() -> str:
    """A fresh PostgreSQL database, for what only PostgreSQL has."""
    yield from _database_alone("postgresql")


@pytest.fixture
def mariadb_url() -> str:
    """A fresh MariaDB database, for what only MySQL and MariaDB do."""
    yield from _database_alone("mariadb")


def backend_of(url: str) -> str:
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    return "mariadb" if scheme in ("mysql", "mariadb") else scheme


def canon(value: Any) -> Any:
    """One form per value, whatever the backend returned: temporals as ISO-8601 text
    (`Z` when the value is an instant), decimals as their text, JSON text parsed."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode()
    return value


def instant(value: Any) -> str:
    """A UTC date-time as text whether it came back zoned, naive-in-UTC or as text."""
    text = canon(value)
    return text[:-1] if text.endswith("Z") else text


class Warehouse:
    """Reads one backend's tables through duckdb or SQLAlchemy, the same way for each."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.backend = backend_of(url)

    # -- names as each backend lays them out ------------------------------------------

    def ref(self, schema: str, table: str) -> str:
        if self.backend in ("duckdb", "postgresql"):
            return f"{self.q(schema)}.{self.q(table)}"
        return self.q(f"{schema}__{table}")

    def runtime(self, table: str) -> str:
        return self.ref("connector_runtime", table)

    def q(self, name: str) -> str:
        if self.backend == "mariadb":
            return "`" + name.replace("`", "``") + "`"
        return '"' + name.replace('"', '""') + '"'

    # -- reading ----------------------------------------------------------------------

    def query(self, sql: str, params: dict | None = None) -> list[tuple]:
        """Rows of `sql` (named parameters `:name`), values as the driver returns them."""
        if self.backend == "duckdb":
            con = duckdb.connect(self.url.split(":///", 1)[1], read_only=True)
            try:
                con.execute("SET TimeZone = 'UTC'")
                duck_sql = sql
                for key in params or {}:
                    duck_sql = duck_sql.replace(f":{key}", f"${key}")
                return [tuple(r) for r in con.execute(duck_sql, params or {}).fetchall()]
            finally:
                con.close()
        import sqlalchemy as sa

        from destinations.sqlalchemy import create_engine

        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(sa.text(sql), params or {})]
        finally:
            engine.dispose()

    def rows(self, table: str, columns: str, order_by: str = "id", schema: str = "demo") -> list:
        """`SELECT columns FROM schema.table ORDER BY order_by` (names, comma-separated,
        quoted here), each value `canon`."""
        names = ", ".join(self.q(c.strip()) for c in columns.split(","))
        order = ", ".join(self.q(c.strip()) for c in order_by.split(","))
        sql = f"SELECT {names} FROM {self.ref(schema, table)} ORDER BY {order}"
        return [tuple(canon(v) for v in row) for row in self.query(sql)]

    def column_type(self, table: str, column: str, schema: str = "demo") -> str:
        """The column's type as the database reports it, lowercase."""
        if self.backend == "sqlite":
            rows = self.query(f"SELECT name, type FROM pragma_table_info('{schema}__{table}')")
            return {name: kind for name, kind in rows}[column].lower()
        where = (
            "table_schema = DATABASE() AND table_name = :table"
            if self.backend == "mariadb"
            else "table_schema = :schema AND table_name = :table"
        )
        kind = "column_type" if self.backend == "mariadb" else "data_type"
        params = {"table": f"{schema}__{table}" if self.backend == "mariadb" else table}
        if self.backend != "mariadb":
            params["schema"] = schema
        rows = self.query(
            f"SELECT {kind} FROM information_schema.columns WHERE {where}"
            " AND column_name = :column",
            {**params, "column": column},
        )
        return canon(rows[0][0]).lower()

    def count(self, table: str, schema: str = "demo") -> int:
        return self.query(f"SELECT count(*) FROM {self.ref(schema, table)}")[0][0]
