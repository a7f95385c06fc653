"""Throughput and memory of a sync through the real code path, checked for correctness.

Run it:  make bench        (or .venv/bin/python benchmarks/bench_sync.py --rows 20000)

A handler file and a connectors.yaml are written into a temporary directory; the
connector runs under the local runner's default `process` isolation (a real worker
subprocess) into each warehouse of `--warehouse` (default all): a real DuckDB file, and
a PostgreSQL server (`--postgres-url`) in a fresh schema per run, and a MariaDB (or
MySQL) server (`--mariadb-url`) in fresh tables per run, dropped afterwards. An
unreachable server is skipped with the reason, or fails the run under CI=true.
Two syncs of the same connector, each in a fresh runtime process so its peak memory is
its own:

1. insert: ROWS rows of 7 columns (int key, string, float, bool, UTC timestamp text,
   list, object) in PAGE_SIZE-row pages;
2. update: the handler sees `phase` in its state, re-sends 10% of the keys with new
   values and deletes 1%.

Then, unless `--history off`, both syncs again for a connector whose table keeps its
history (`tables: {customers: {history: true}}`, design §14): the report adds that
update phase as "2 update, history", and its seconds over the plain update phase's
(goal on DuckDB: at most 2×). Its check reads every version: one per key after the insert; after the update a closed and
an open version per updated key, a closed one per deleted key.

After each sync the warehouse is read back (duckdb; SQLAlchemy for the servers) and
compared with what the handler sent: every row and column, `_fivetran_deleted`, the
saved state, the `syncs` row. Any difference exits 1. `--profile` runs each insert sync
under cProfile (the runtime process only; the worker's time shows up as waiting in the
invoker, the database server's as waiting in its driver).

Then, unless `--serve off`, `bench_server.py` times `connector serve`: the insert sync
while a client polls the API, and the API's answers over 10,000 stored syncs.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import importlib
import json
import math
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench_report import (
    BenchRow,
    Goal,
    goals_table,
    print_notes,
    results_document,
    write_results,
)

CONNECTOR = "bench"
TABLE = "customers"
PHASES = {1: "insert", 2: "update"}
HISTORY_LABEL = "update, history"  # the update phase again, with history mode on the table
WORKER_MODULE = b"connector_runtime.invokers._worker"  # what LocalPythonInvoker runs (_worker_main now; _worker before)

# The connector under test. Rows are pure functions of their id, built by a list
# comprehension from the cursor, so the handler stays cheap beside the runtime.
HANDLER = '''\
"""Benchmark connector: ROWS customers, then an update pass (10% updated, 1% deleted).

The state's `phase` drives it: "insert" pages through every row once, "update" pages
through the updates and then the deletes, "done" sends nothing.
"""

TABLE = "customers"
SCHEMA = {TABLE: {"primary_key": ["id"]}}
UPDATES = ROWS // 10  # ids 10, 20, 30, ...
DELETES = ROWS // 100  # ids 1, 101, 201, ... (never an updated id)


# Precomputed texts keep the handler cheap; every value is still parsed by the runtime.
STAMPS = {
    v: [f"2026-{v:02d}-{n % 28 + 1:02d}T{n % 24:02d}:{n % 60:02d}:00Z" for n in range(1680)]
    for v in (1, 2)
}
TAGS = {v: [[f"t{k}", f"v{v}"] for k in range(7)] for v in (1, 2)}


def customer(i, version=1):
    return {
        "id": i,
        "name": f"customer {i} v{version}",
        "amount": i * 0.25 + (version - 1) * 1000.0,
        "active": (i + version) % 2 == 0,
        "updated_at": STAMPS[version][i % 1680],
        "tags": TAGS[version][i % 7],
        "attrs": {"tier": i % 3, "version": version},
    }


def updated_id(op):
    return 10 * (op + 1)


def deleted_id(op):
    return 100 * (op - UPDATES) + 1


def handler(request):
    if SLEEP:
        time.sleep(SLEEP)  # a round trip, as to AWS Lambda (the paging-ahead row)
    state = request["state"]
    phase, start = state.get("phase", "insert"), state.get("next", 0)
    if phase == "insert":
        return insert_page(start)
    if phase == "update":
        return update_page(start)
    return {"state": state, "hasMore": False}


def insert_page(start):
    stop = min(start + PAGE_SIZE, ROWS)
    done = stop == ROWS
    return {
        "state": {"phase": "update", "next": 0, "inserted": ROWS} if done else {"phase": "insert", "next": stop},
        "insert": {TABLE: [customer(i) for i in range(start + 1, stop + 1)]},
        "schema": SCHEMA,
        "hasMore": not done,
    }


def update_page(start):
    stop = min(start + PAGE_SIZE, UPDATES + DELETES)
    done = stop == UPDATES + DELETES
    page = {
        "state": {"phase": "done", "next": 0, "changed": stop} if done else {"phase": "update", "next": stop},
        "schema": SCHEMA,
        "hasMore": not done,
    }
    updates = [customer(updated_id(op), 2) for op in range(start, min(stop, UPDATES))]
    deletes = [{"id": deleted_id(op)} for op in range(max(start, UPDATES), stop)]
    if updates:
        page["insert"] = {TABLE: updates}
    if deletes:
        page["delete"] = {TABLE: deletes}
    return page
'''

CONFIG = """\
warehouse: {url}
connectors:
  {connector}:
    function:
      local: handler.py
      timeout: 10m
"""
HISTORY_TABLES = "    tables:\n      customers: {history: true}\n"  # appended to CONFIG

WAREHOUSES = ("duckdb", "postgresql", "mariadb")
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_MARIADB_URL = "mysql://root@127.0.0.1:3306/test"
# imported by the child before it is measured, as `connector serve` would have them
BACKEND_MODULES = {
    "duckdb": "destinations.duckdb",
    "postgresql": "destinations.sqlalchemy",
    "mariadb": "destinations.sqlalchemy",
}

# the data columns as each warehouse reports their types
EXPECTED_TYPES = {
    "duckdb": {
        "id": "BIGINT",
        "name": "VARCHAR",
        "amount": "DOUBLE",
        "active": "BOOLEAN",
        "updated_at": "TIMESTAMP WITH TIME ZONE",
        "tags": "JSON",
        "attrs": "JSON",
    },
    "postgresql": {  # information_schema.columns.data_type
        "id": "bigint",
        "name": "text",
        "amount": "double precision",
        "active": "boolean",
        "updated_at": "timestamp with time zone",
        "tags": "jsonb",
        "attrs": "jsonb",
    },
    "mariadb": {  # information_schema.columns.data_type; MariaDB's JSON is a checked LONGTEXT
        "id": "bigint",
        "name": "longtext",
        "amount": "double",
        "active": "tinyint",
        "updated_at": "datetime",
        "tags": "longtext",
        "attrs": "longtext",
    },
}
DATA_COLUMNS = tuple(EXPECTED_TYPES["duckdb"])
# The goal of each warehouse's phase, in rows/s (issue 16; medians of --repeat runs)
# issue 15: history mode's update phase within 2× of the same phase without it, on DuckDB
HISTORY_GOALS = {"duckdb": Goal(at_most=2.0)}
THROUGHPUT_GOALS = {
    ("duckdb", "insert"): Goal(at_least=300_000),
    ("duckdb", "update"): Goal(at_least=150_000),
    ("postgresql", "insert"): Goal(at_least=100_000),
    ("postgresql", "update"): Goal(at_least=60_000),
}
DEFAULT_RESULTS = "bench-results.json"
# what bench-results.json keeps of each run of a phase, beside its rows/s
DETAIL_FIELDS = {
    "seconds": "seconds",
    "peak_rss_mb": "rss_runtime_mb",
    "runtime_cpu_s": "runtime_cpu_s",
    "worker_cpu_s": "worker_cpu_s",
}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def main() -> int:
    args = _parser().parse_args()
    if args.child:
        return run_child(Path(args.child), args.connector, args.warehouse, profile=args.profile)
    if args.rows < 100 or args.page_size < 1 or min(args.repeat, args.serve_repeat) < 1:
        sys.exit("--rows must be at least 100, --page-size and the repeats at least 1")
    if args.memory_rows < 0 or 0 < args.incremental_rows <= 10_000:
        sys.exit("--incremental-rows must be above 10,000 (or 0), --memory-rows at least 0")
    if min(args.syncs, args.alerts, args.requests) < 1:
        sys.exit("--syncs, --alerts and --requests must be at least 1")
    if args.serve == "only" and args.warehouse not in ("duckdb", "all"):
        sys.exit(
            f"--serve only times `connector serve` on DuckDB: drop --warehouse {args.warehouse}"
        )
    ci = os.environ.get("CI") == "true"
    compile_bytecode(Path(__file__).resolve().parent.parent)
    status = 0
    figures: list[BenchRow] = []
    before: list[BenchRow] | None = [] if args.baseline else None
    if args.serve != "only":
        targets = [
            _target(name, args)
            for name in (WAREHOUSES if args.warehouse == "all" else (args.warehouse,))
        ]
        with (
            tempfile.TemporaryDirectory(prefix="bench_sync_") as tmp,
            checkout(args.baseline) as baseline,
        ):
            status = run_benchmark(
                Path(args.workdir or tmp),
                args.rows,
                args.page_size,
                targets,
                profile=args.profile,
                repeat=args.repeat,
                required=args.warehouse != "all" or ci,
                history=args.history == "on",
                figures=figures,
                baseline=baseline,
                baseline_figures=before,
                per_sync=args.process == "per-sync",
            )
            if args.warehouse in ("duckdb", "all"):
                status |= duckdb_rows(args, Path(args.workdir or tmp), baseline, figures, before)
    if args.serve != "off" and args.warehouse in ("duckdb", "all"):
        import bench_server  # beside this file: `connector serve` under a client

        with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
            status |= bench_server.run(
                Path(args.workdir or tmp) / "serve",
                handler_source(args.rows, args.page_size),
                args.rows,
                repeat=args.serve_repeat,
                syncs=args.syncs,
                alerts=args.alerts,
                requests=args.requests,
                required=ci or args.serve == "only",
            )
    if figures:
        report_figures(figures, args, before)
    return status


def duckdb_rows(args, workdir: Path, baseline: Path | None, figures, before) -> int:
    """Memory at `--memory-rows`, incremental cost, paging ahead (bench_duckdb.py); 1 if
    a check failed."""
    sys.modules.setdefault("bench_sync", sys.modules[__name__])  # one copy of this module
    import bench_duckdb

    variants = {"before": baseline, "now": None} if baseline else {"now": None}
    figures_of = {"now": figures, "before": before if before is not None else []}
    problems = bench_duckdb.run(args, workdir / "duckdb-rows", variants, figures_of)
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    return 1 if problems else 0


def _commit_of(revision: str) -> str | None:
    """The full commit id a revision names, or None if git cannot say."""
    done = subprocess.run(
        ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", revision],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or None


@contextlib.contextmanager
def checkout(revision: str | None) -> Iterator[Path | None]:
    """A git worktree of `revision` in a temporary directory (removed after), or None."""
    if revision is None:
        yield None
        return
    repository = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="bench_baseline_") as tmp:
        tree = Path(tmp) / "code"
        subprocess.run(
            ["git", "-C", str(repository), "worktree", "add", "--detach", str(tree), revision],
            check=True,
            capture_output=True,
        )
        try:
            compile_bytecode(tree)
            yield tree
        finally:
            subprocess.run(
                ["git", "-C", str(repository), "worktree", "remove", "--force", str(tree)],
                check=False,
                capture_output=True,
            )


def compile_bytecode(code: Path) -> None:
    """Compile the runtime's modules in checkout `code`, as installing a package does:
    otherwise, where PYTHONDONTWRITEBYTECODE is set (as on CI machines), every worker would
    compile them again as it starts, about 30 ms that an installed runtime never spends."""
    for package in ("connector_runtime", "destinations"):
        compileall.compile_dir(code / package, quiet=2)


def report_figures(
    figures: list[BenchRow], args: argparse.Namespace, before: list[BenchRow] | None = None
) -> None:
    """The goals table (with the baseline's figures beside, if any), then
    bench-results.json (`--json`)."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=150)
    repeats = f"medians of {args.repeat} runs" if args.repeat > 1 else "1 run each"
    title = f"make bench: figures and goals ({repeats})"
    if before is not None:
        title += f"; before: {args.baseline}"
    console.print(goals_table(figures, title, before))
    print_notes(console, figures)
    options = {k: v for k, v in vars(args).items() if k not in ("child", "phase", "connector")}
    path = Path(args.json)
    baseline = None
    if before is not None:
        baseline = results_document(before, options) | {
            "revision": args.baseline,
            "git": {"commit": _commit_of(args.baseline), "dirty": False},
        }
    write_results(path, figures, options, baseline=baseline)
    console.print(f"figures written to {path}", highlight=False)


def handler_source(rows: int, page_size: int, sleep: float = 0.0) -> str:
    """handler.py as the worker runs it: the constants, then HANDLER. `sleep`: seconds
    each call waits before it answers."""
    return f"import time\n\nROWS = {rows}\nPAGE_SIZE = {page_size}\nSLEEP = {sleep}\n\n" + HANDLER


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the first sync")
    parser.add_argument("--page-size", type=int, default=10_000, help="rows per page")
    parser.add_argument(
        "--warehouse",
        choices=(*WAREHOUSES, "all"),
        default="all",
        help="where to sync (default all: DuckDB, then PostgreSQL and MariaDB if reachable)",
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help=f"PostgreSQL server to sync into, in a fresh schema (default {DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument(
        "--mariadb-url",
        default=DEFAULT_MARIADB_URL,
        help=f"MariaDB or MySQL server to sync into, in fresh tables (default {DEFAULT_MARIADB_URL})",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run each warehouse's insert sync under cProfile, print top 25",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="run every timed part N times and report the median (default 3; 1 for a quick run)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure the code of git revision REV (a worktree), alternating with this "
        "checkout run by run; the goals table shows both, bench-results.json keeps both",
    )
    parser.add_argument(
        "--memory-rows",
        type=int,
        default=1_000_000,
        help="DuckDB's memory row: both syncs with this many rows, peak RSS against the main "
        "runs' (default 1,000,000; 0 skips it)",
    )
    parser.add_argument(
        "--incremental-rows",
        type=int,
        default=10_000_000,
        help="DuckDB's incremental row: one 10,000-row update page into a table of this many "
        "rows against a 10,000-row table (default 10,000,000; 0 skips it)",
    )
    parser.add_argument(
        "--prefetch",
        choices=("on", "off"),
        default="on",
        help="the paging-ahead row: a function sleeping 50 ms per page, with and without "
        "prefetch (default on)",
    )
    parser.add_argument(
        "--json",
        default=DEFAULT_RESULTS,
        help=f"write the figures and goals here as JSON (default {DEFAULT_RESULTS})",
    )
    parser.add_argument(
        "--workdir",
        help="keep handler, config and DuckDB file here (WAREHOUSE/runN/ must not exist yet)",
    )
    parser.add_argument(
        "--serve",
        choices=("on", "off", "only"),
        default="on",
        help="also time `connector serve` under a polling client and its API over a long "
        "history (DuckDB; default on), skip it (off), or run only that (only)",
    )
    parser.add_argument(
        "--serve-repeat",
        type=int,
        default=3,
        help="syncs per client mode under serve, interleaved; the median is reported",
    )
    parser.add_argument("--syncs", type=int, default=10_000, help="syncs stored for the API timing")
    parser.add_argument(
        "--alerts", type=int, default=1_000, help="alerts stored for the API timing"
    )
    parser.add_argument("--requests", type=int, default=30, help="timed requests per API endpoint")
    parser.add_argument(
        "--history",
        choices=("on", "off"),
        default="on",
        help="also run both syncs with history mode on the table and report its update phase "
        "against the plain one (default on)",
    )
    parser.add_argument(
        "--process",
        choices=("serve", "per-sync"),
        default="serve",
        help="run a run's syncs one after another in one runtime process, as `connector "
        "serve` and `connector worker` do (serve; default), or each in a fresh process, as "
        "`connector sync` from cron does (per-sync)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: a runtime process
    parser.add_argument("--connector", default=CONNECTOR, help=argparse.SUPPRESS)
    return parser


# -- the warehouses: where a run writes, how it is read back, how it is cleaned up ----


class DuckDBTarget:
    """A DuckDB file in the run's directory: fresh by construction, nothing to clean up."""

    name = "duckdb"
    history = True  # also run with history mode on

    def unavailable(self) -> str | None:
        return None

    def new_connector(self) -> str:
        return CONNECTOR

    def url(self, workdir: Path) -> str:
        return "duckdb:///warehouse.duckdb"  # relative to connectors.yaml

    @contextlib.contextmanager
    def reader(self, workdir: Path, connector: str) -> Iterator[DuckDBReader]:
        import duckdb

        con = duckdb.connect(str(workdir / "warehouse.duckdb"), read_only=True)
        try:
            con.execute("SET TimeZone = 'UTC'")
            yield DuckDBReader(con, connector)
        finally:
            con.close()

    def cleanup(self, connector: str) -> str | None:
        return None


class PostgresTarget:
    """A PostgreSQL server: each run is a connector `bench_<random>`, so its tables live
    in a schema of their own and its runtime rows (`connector_runtime.*`) are its own.
    Both are dropped after the run's checks."""

    name = "postgresql"
    title, option = "PostgreSQL", "--postgres-url"
    history = True  # also run with history mode on
    RUNTIME_TABLES = ("state", "syncs", "alerts", "names", "tables")

    def __init__(self, url: str) -> None:
        self.server_url = url

    @property
    def shown(self) -> str:
        """The URL without its password, for messages."""
        import sqlalchemy as sa

        with contextlib.suppress(sa.exc.ArgumentError):
            return sa.engine.make_url(self.server_url).render_as_string(hide_password=True)
        return self.server_url.split("@")[-1]

    def _engine(self):
        from destinations.sqlalchemy import create_engine  # the runtime's driver and options

        return create_engine(self.server_url)

    def unavailable(self) -> str | None:
        """Why the server cannot be used, or None: one connection and a query."""
        import sqlalchemy as sa

        try:
            engine = self._engine()
            try:
                with engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
            finally:
                engine.dispose()
        except Exception as exc:  # a missing driver (ConfigError) or a refused connection
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return (
                f"{self.title} at {self.shown} cannot be used ({detail}); start it, or point "
                f"{self.option} at a server where this user may create tables"
            )
        return None

    def new_connector(self) -> str:
        return f"{CONNECTOR}_{secrets.token_hex(4)}"

    def url(self, workdir: Path) -> str:
        return self.server_url

    @contextlib.contextmanager
    def reader(self, workdir: Path, connector: str) -> Iterator[PostgresReader]:
        engine = self._engine()
        try:
            with engine.connect() as conn:
                yield self.read(conn, connector)
        finally:
            engine.dispose()

    def read(self, conn, connector: str) -> PostgresReader:
        return PostgresReader(conn, connector)

    def cleanup(self, connector: str) -> str | None:
        """Drop the run's schema and its rows in the runtime tables; a problem, or None."""
        import sqlalchemy as sa

        engine = self._engine()
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{connector}" CASCADE'))
                for table in self.RUNTIME_TABLES:
                    name = f"connector_runtime.{table}"
                    if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": name}).scalar():
                        conn.execute(
                            sa.text(f"DELETE FROM {name} WHERE connector = :c"), {"c": connector}
                        )
        except Exception as exc:
            return f"could not drop schema {connector} on {self.shown}: {exc}"
        finally:
            engine.dispose()
        return None


class MariaDBTarget(PostgresTarget):
    """A MariaDB or MySQL server: the run's tables are `bench_<random>__<table>` in the
    URL's database, its runtime rows its own; both are dropped after the run's checks."""

    name = "mariadb"
    title, option = "MariaDB", "--mariadb-url"
    history = True  # also run with history mode on

    def read(self, conn, connector: str) -> PostgresReader:
        return MariaDBReader(conn, connector)

    def cleanup(self, connector: str) -> str | None:
        import sqlalchemy as sa

        engine = self._engine()
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS `{connector}__{TABLE}`"))
                for table in self.RUNTIME_TABLES:
                    conn.execute(
                        sa.text(f"DELETE FROM connector_runtime__{table} WHERE connector = :c"),
                        {"c": connector},
                    )
        except Exception as exc:
            return f"could not drop the tables of {connector} on {self.shown}: {exc}"
        finally:
            engine.dispose()
        return None


def _target(name: str, args: argparse.Namespace) -> DuckDBTarget | PostgresTarget:
    if name == "postgresql":
        return PostgresTarget(args.postgres_url)
    return MariaDBTarget(args.mariadb_url) if name == "mariadb" else DuckDBTarget()


# Readers: the warehouse as the checks compare it, the same shape from each backend.
# Instants are integer microseconds since the epoch and JSON values are parsed, so the
# comparison is exact (no text formatting that could hide a fraction of a second).


class DuckDBReader:
    def __init__(self, con, connector: str) -> None:
        self.con, self.connector = con, connector

    def sync_record(self, sync_id: str) -> tuple | None:
        return self.con.execute(
            "SELECT status, pages, rows_upserted, rows_deleted FROM connector_runtime.syncs"
            " WHERE sync_id = ?",
            [sync_id],
        ).fetchone()

    def saved_state(self) -> str | None:
        saved = self.con.execute(
            "SELECT CAST(state AS VARCHAR) FROM connector_runtime.state WHERE connector = ?",
            [self.connector],
        ).fetchone()
        return saved[0] if saved else None

    def sync_starts(self) -> list[int]:
        return [
            r[0]
            for r in self.con.execute(
                "SELECT epoch_us(started_at) FROM connector_runtime.syncs WHERE connector = ?"
                " ORDER BY started_at",
                [self.connector],
            ).fetchall()
        ]

    def column_types(self) -> dict[str, str]:
        described = self.con.execute(f"DESCRIBE {self.connector}.{TABLE}").fetchall()
        return {name: kind for name, kind, *_ in described}

    def rows(self) -> list[tuple]:
        deleted = "_fivetran_deleted" if "_fivetran_deleted" in self.column_types() else "false"
        stored = self.con.execute(
            "SELECT id, name, amount, active, epoch_us(updated_at),"
            f" CAST(tags AS VARCHAR), CAST(attrs AS VARCHAR), {deleted}, epoch_us(_fivetran_synced)"
            f" FROM {self.connector}.{TABLE} ORDER BY id"
        ).fetchall()
        return [(*r[:4], _iso(r[4]), json.loads(r[5]), json.loads(r[6]), *r[7:]) for r in stored]

    def versions(self) -> list[tuple]:
        """A history table's versions: the data columns, then start, end, active, synced."""
        times = ", ".join(f"epoch_us({c})" for c in ("_fivetran_start", "_fivetran_end"))
        stored = self.con.execute(
            "SELECT id, name, amount, active, epoch_us(updated_at), CAST(tags AS VARCHAR),"
            f" CAST(attrs AS VARCHAR), {times}, _fivetran_active, epoch_us(_fivetran_synced)"
            f" FROM {self.connector}.{TABLE} ORDER BY id, _fivetran_start"
        ).fetchall()
        return [(*r[:4], _iso(r[4]), json.loads(r[5]), json.loads(r[6]), *r[7:]) for r in stored]


class PostgresReader:
    """Through SQLAlchemy (the runtime's own engine settings), as tests/warehouses.py reads."""

    def __init__(self, conn, connector: str) -> None:
        self.conn, self.connector = conn, connector

    def runtime(self, table: str) -> str:
        return f"connector_runtime.{table}"

    @property
    def data(self) -> str:
        return f'"{self.connector}".{TABLE}'

    def text(self, column: str) -> str:
        return f"CAST({column} AS text)"

    def _query(self, sql: str, **params: Any) -> list[tuple]:
        import sqlalchemy as sa

        return [tuple(r) for r in self.conn.execute(sa.text(sql), params)]

    def sync_record(self, sync_id: str) -> tuple | None:
        found = self._query(
            "SELECT status, pages, rows_upserted, rows_deleted"
            f" FROM {self.runtime('syncs')} WHERE sync_id = :id",
            id=sync_id,
        )
        return found[0] if found else None

    def saved_state(self) -> str | None:
        found = self._query(
            f"SELECT {self.text('state')} FROM {self.runtime('state')} WHERE connector = :c",
            c=self.connector,
        )
        return found[0][0] if found else None

    def sync_starts(self) -> list[int]:
        found = self._query(
            f"SELECT started_at FROM {self.runtime('syncs')} WHERE connector = :c"
            " ORDER BY started_at",
            c=self.connector,
        )
        return [_epoch_us(r[0]) for r in found]

    def column_types(self) -> dict[str, str]:
        found = self._query(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = :s AND table_name = :t",
            s=self.connector,
            t=TABLE,
        )
        return dict(found)

    def rows(self) -> list[tuple]:
        deleted = "_fivetran_deleted" if "_fivetran_deleted" in self.column_types() else "false"
        stored = self._query(
            f"SELECT id, name, amount, active, updated_at, {self.text('tags')},"
            f" {self.text('attrs')}, {deleted}, _fivetran_synced FROM {self.data} ORDER BY id"
        )
        return [
            (
                *r[:3],
                _bool(r[3]),
                _iso(_epoch_us(r[4])),
                json.loads(r[5]),
                json.loads(r[6]),
                _bool(r[7]),
                _epoch_us(r[8]),
            )
            for r in stored
        ]

    def versions(self) -> list[tuple]:
        """A history table's versions: the data columns, then start, end, active, synced."""
        stored = self._query(
            f"SELECT id, name, amount, active, updated_at, {self.text('tags')},"
            f" {self.text('attrs')}, _fivetran_start, _fivetran_end, _fivetran_active,"
            f" _fivetran_synced FROM {self.data} ORDER BY id, _fivetran_start"
        )
        return [
            (*r[:3], _bool(r[3]), _iso(_epoch_us(r[4])), json.loads(r[5]), json.loads(r[6]))
            + (_epoch_us(r[7]), _epoch_us(r[8]), _bool(r[9]), _epoch_us(r[10]))
            for r in stored
        ]


class MariaDBReader(PostgresReader):
    """The same reads in MySQL's layout: `<schema>__<table>` in the URL's database."""

    def runtime(self, table: str) -> str:
        return f"connector_runtime__{table}"

    @property
    def data(self) -> str:
        return f"`{self.connector}__{TABLE}`"

    def text(self, column: str) -> str:
        return f"CAST({column} AS CHAR)"

    def column_types(self) -> dict[str, str]:
        found = self._query(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = DATABASE() AND table_name = :t",
            t=f"{self.connector}__{TABLE}",
        )
        return dict(found)


def _epoch_us(moment: datetime | None) -> int | None:
    """A datetime as integer microseconds since the epoch (exact); a naive one is in UTC,
    as MySQL's DATETIME holds instants here."""
    if moment is None:
        return None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(microseconds=1)


def _bool(value: Any) -> bool | None:
    """A boolean as read: MySQL's BOOLEAN is a TINYINT, read as 0 or 1."""
    return None if value is None else bool(value)


def _iso(micros: int | None) -> str | None:
    """Microseconds since the epoch as the handler writes instants; a fraction only if any."""
    if micros is None:
        return None
    moment = EPOCH + timedelta(microseconds=micros)
    fraction = f".{moment.microsecond:06d}" if moment.microsecond else ""
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


# -- the parent: set up, run each phase in a fresh process, check, report --------------


def run_benchmark(
    workdir: Path,
    rows: int,
    page_size: int,
    targets: list,
    *,
    profile: bool,
    repeat: int,
    required: bool,
    history: bool = False,
    figures: list[BenchRow] | None = None,
    baseline: Path | None = None,
    baseline_figures: list[BenchRow] | None = None,
    per_sync: bool = False,
) -> int:
    """`repeat` runs of both phases per warehouse, each in a fresh directory (and, on
    PostgreSQL, a fresh schema); returns the exit status. `required`: a warehouse that
    cannot be reached fails the benchmark instead of being skipped. `history`: each run
    also syncs a history-mode connector, whose update phase joins the run's results.
    `baseline`: a checkout of older code, run as well, alternating with this one run by
    run (its figures go to `baseline_figures`). A run's two syncs run in one runtime
    process, as under `connector serve`; `per_sync`: each in a fresh one."""
    variants = {"before": baseline, "now": None} if baseline else {"now": None}
    by_variant: dict[str, dict[str, list[list[dict]]]] = {v: {} for v in variants}
    skipped: dict[str, str] = {}
    failed = False
    for target in targets:
        reason = target.unavailable()
        if reason:
            skipped[target.name] = reason
            continue
        for number in range(1, repeat + 1):
            for variant, code in variants.items():
                where = (
                    workdir / target.name if variant == "now" else workdir / variant / target.name
                )
                with running(code):
                    results, problems = _run_once(
                        target,
                        where / f"run{number}",
                        rows,
                        page_size,
                        profile=profile and number == 1,
                        per_sync=per_sync,
                    )
                    if history and target.history:
                        kept, found = _run_once(
                            target,
                            where / f"run{number}-history",
                            rows,
                            page_size,
                            profile=False,
                            history=True,
                            per_sync=per_sync,
                        )
                        results.append(kept[-1] | {"label": HISTORY_LABEL})
                        problems += [f"history mode, {problem}" for problem in found]
                by_variant[variant].setdefault(target.name, []).append(results)
                for problem in problems:
                    print(
                        f"FAIL {target.name} run {number} ({variant}), {problem}", file=sys.stderr
                    )
                failed |= bool(problems)
    for variant, by_warehouse in by_variant.items():
        heading = f" ({variant}: {baseline})" if variant == "before" else ""
        _report(by_warehouse, skipped, rows, page_size, required=required, heading=heading)
        rows_of_variant = figures if variant == "now" else baseline_figures
        if rows_of_variant is not None:
            rows_of_variant += throughput_rows(by_warehouse, skipped) + history_rows(by_warehouse)
    by_warehouse = by_variant["now"]
    if failed:
        print("benchmark FAILED: the warehouse does not hold what was sent", file=sys.stderr)
        return 1
    if skipped and required:
        return 1
    if by_warehouse:
        checked = ", ".join(by_warehouse)
        print(f"all checks passed ({checked}): rows, columns, deletes, state and sync records")
    return 0


def _run_once(
    target,
    workdir: Path,
    rows: int,
    page_size: int,
    *,
    profile: bool,
    history: bool = False,
    per_sync: bool = False,
) -> tuple[list[dict], list[str]]:
    workdir.mkdir(parents=True)
    connector = target.new_connector()
    source = handler_source(rows, page_size)
    (workdir / "handler.py").write_text(source)
    url = json.dumps(target.url(workdir))  # a JSON string is a YAML double-quoted scalar
    config = CONFIG.format(url=url, connector=connector) + (HISTORY_TABLES if history else "")
    (workdir / "connectors.yaml").write_text(config)
    handler = _load_handler(source)
    results, problems = [], []
    try:
        with contextlib.ExitStack() as stack:
            runtime = stack.enter_context(Runtime(workdir, connector, target.name, profile))
            for phase in PHASES:
                if per_sync and phase > 1:  # the last one's process ends: a fresh one
                    stack.close()
                    runtime = stack.enter_context(Runtime(workdir, connector, target.name))
                results.append(result := runtime.sync(phase))
                found = verify(
                    target, workdir, connector, phase, result, handler, page_size, history=history
                )
                problems += [f"phase {phase} ({PHASES[phase]}): {problem}" for problem in found]
    finally:
        trouble = target.cleanup(connector)
        if trouble:
            print(f"warning: {trouble}", file=sys.stderr)
    return results, problems


def _load_handler(source: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(source, "handler.py", "exec"), namespace)  # the same code the worker runs
    return namespace


def _run_phase(
    workdir: Path, phase: int, connector: str, warehouse: str, *, profile: bool
) -> dict[str, Any]:
    """One sync in a runtime process of its own."""
    with Runtime(workdir, connector, warehouse, profile) as runtime:
        return runtime.sync(phase)


PHASE_DONE = "\x00bench-phase-done"  # the child's line after each sync's figures


class Runtime:
    """A runtime process (`--child`) that runs one sync of `connector` per `sync` call,
    one after another, as `connector serve` does; its first one under cProfile if
    `profile`. It runs in `workdir`: a worker started by older code puts its current
    directory first on sys.path, and in the repository that would load this checkout's
    worker."""

    def __init__(self, workdir: Path, connector: str, warehouse: str, profile: bool = False):
        workdir = workdir.resolve()
        self.workdir = workdir
        command = [sys.executable, str(Path(__file__).resolve()), "--child", str(workdir)]
        command += ["--connector", connector, "--warehouse", warehouse]
        self._process = subprocess.Popen(
            command + (["--profile"] if profile else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
            cwd=workdir,
        )

    def sync(self, phase: int) -> dict[str, Any]:
        """Run phase `phase`'s sync; its figures (`run_child`)."""
        self._process.stdin.write(f"{phase}\n")
        self._process.stdin.flush()
        for line in self._process.stdout:
            if line.rstrip("\n") == PHASE_DONE:
                return json.loads((self.workdir / f"phase{phase}.json").read_text())
            print(line, end="")  # the profile
        raise RuntimeError(f"the runtime process ended during phase {phase}")

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._process.stdin.close()
        self._process.wait()


_CODE: list[Path] = []  # the checkout whose code the children run; none: this one


@contextlib.contextmanager
def running(code: Path | None) -> Iterator[None]:
    """Children started inside run the code of checkout `code` (None: this checkout)."""
    _CODE.append(code)
    try:
        yield
    finally:
        _CODE.pop()


def child_env() -> dict[str, str] | None:
    """The environment of a child: PYTHONPATH leads to the chosen checkout, whose
    `connector_runtime` and `destinations` then come before the installed ones (its
    worker processes inherit it)."""
    code = _CODE[-1] if _CODE else None
    if code is None:
        return None
    paths = [str(code), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


COLUMNS = (
    "warehouse",
    "phase",
    "rows",
    "seconds",
    "rows/s",
    "peak RSS runtime MB",
    "peak RSS worker MB",
    "worker CPU s",
)


def _report(
    by_warehouse: dict[str, list[list[dict]]],
    skipped: dict[str, str],
    rows: int,
    page_size: int,
    *,
    required: bool,
    heading: str = "",
) -> None:
    """One line per warehouse and phase: the median run (by seconds); the spread below
    when repeated; then why a warehouse was not run."""
    from rich.console import Console
    from rich.table import Table

    repeats = max((len(runs) for runs in by_warehouse.values()), default=1)
    title = f"sync benchmark: {rows:,} rows, {page_size:,}-row pages, local process → warehouse"
    if repeats > 1:
        title += f", median of {repeats} runs"
    table = Table(*COLUMNS, title=title + heading)
    for column in table.columns[:2]:
        column.no_wrap = True  # "postgresql", "1 insert": the numbers' headers wrap instead
    for column in table.columns[2:]:
        column.justify = "right"
    console = Console()
    if not console.is_terminal:  # a log or a pipe: rich would assume 80 columns
        console = Console(width=100)
    for warehouse, runs in by_warehouse.items():
        for index, phase in enumerate(_phases(runs)):
            timed = sorted((run[index] for run in runs), key=lambda result: result["seconds"])
            last = index == len(runs[0]) - 1
            table.add_row(warehouse, *_cells(phase, timed[len(timed) // 2]), end_section=last)
    for warehouse in skipped:
        table.add_row(warehouse, "NOT RUN" if required else "skipped", *["-"] * (len(COLUMNS) - 2))
    console.print(table)
    for warehouse, runs in by_warehouse.items():
        for index, phase in enumerate(_phases(runs)):
            if len(runs) > 1:
                seconds = ", ".join(f"{run[index]['seconds']:.2f}" for run in runs)
                console.print(
                    f"{warehouse} phase {phase} seconds by run: {seconds}", highlight=False
                )
    if by_warehouse:
        before = ", ".join(
            f"{warehouse} {max(run[0]['rss_before_mb'] for run in runs):.0f} MB"
            for warehouse, runs in by_warehouse.items()
        )
        console.print(
            f"runtime RSS after imports, before the sync: {before}; the worker is the "
            "function's own process (handler + JSON encoding); a database server's own "
            "memory and CPU are not counted",
            highlight=False,
        )
    if any(runs[0][0]["profiled"] for runs in by_warehouse.values()):
        console.print(
            "run 1's phase 1 ran under cProfile: its seconds are inflated", highlight=False
        )
    for warehouse, reason in skipped.items():
        if required:
            why = "CI=true" if os.environ.get("CI") == "true" else f"--warehouse {warehouse}"
            print(f"FAIL {warehouse} not run ({why} requires it): {reason}", file=sys.stderr)
        else:
            print(f"{warehouse} row SKIPPED: {reason} (under CI=true this fails the benchmark)")


def throughput_rows(
    by_warehouse: dict[str, list[list[dict]]], skipped: dict[str, str]
) -> list[BenchRow]:
    """Rows/s of each warehouse's phase, median of the runs, against its goal; a warehouse
    that was not run still has its rows, without figures."""
    figures = []
    for warehouse, runs in by_warehouse.items():
        for index, phase in enumerate(_phases(runs)):
            label = runs[0][index].get("label", PHASES[phase])
            speeds = [run[index]["rows_sent"] / run[index]["seconds"] for run in runs]
            profiled = any(run[index]["profiled"] for run in runs)
            figures.append(
                BenchRow.of_runs(
                    f"{warehouse} {label}",
                    speeds,
                    "rows/s",
                    THROUGHPUT_GOALS.get((warehouse, label)),
                    note="one run under cProfile (slower)" if profiled else "",
                    detail={
                        key: [run[index][field] for run in runs]
                        for key, field in DETAIL_FIELDS.items()
                        if field in runs[0][index]
                    },
                )
            )
    for warehouse, reason in skipped.items():
        for label in PHASES.values():
            goal = THROUGHPUT_GOALS.get((warehouse, label))
            figures.append(BenchRow.not_run(f"{warehouse} {label}", "rows/s", goal, reason))
    return figures


def _phases(runs: list[list[dict]]) -> list[int]:
    """The phase of each result in a run: 1, 2, and 2 again for history mode's update."""
    return [result["phase"] for result in runs[0]]


def history_rows(by_warehouse: dict[str, list[list[dict]]]) -> list[BenchRow]:
    """History mode's update phase against the plain one: each run's seconds over the
    same run's plain update seconds (neighbours in time, so the machine's load weighs on
    both alike), the median against the goal."""
    figures = []
    for warehouse, runs in by_warehouse.items():
        if len(runs[0]) <= len(PHASES):  # --history off
            continue
        history, plain = len(PHASES), len(PHASES) - 1
        ratios = [run[history]["seconds"] / run[plain]["seconds"] for run in runs]
        name = f"{warehouse} {HISTORY_LABEL} ÷ update"
        figures.append(BenchRow.of_runs(name, ratios, "×", HISTORY_GOALS.get(warehouse)))
    return figures


def _cells(phase: int, result: dict) -> list[str]:
    name = result.get("label", PHASES[phase]) + (" (cProfile)" if result["profiled"] else "")
    return [
        f"{phase} {name}",
        f"{result['rows_sent']:,}",
        f"{result['seconds']:.2f}",
        f"{result['rows_sent'] / result['seconds']:,.0f}",
        f"{result['rss_runtime_mb']:.0f}",
        f"{result['rss_worker_mb']:.0f}" if result["rss_worker_mb"] else "n/a",
        f"{result['worker_cpu_s']:.2f}",
    ]


# -- checks -----------------------------------------------------------------------------


def verify(
    target,
    workdir: Path,
    connector: str,
    phase: int,
    result: dict,
    handler: dict[str, Any],
    page_size: int,
    *,
    history: bool = False,
) -> list[str]:
    """Every way the warehouse could differ from what the handler sent, as messages."""
    if result["status"] != "succeeded":
        return [f"sync {result['status']}: {result['error']}"]
    rows, updates, deletes = handler["ROWS"], handler["UPDATES"], handler["DELETES"]
    sent = rows if phase == 1 else updates + deletes
    with target.reader(workdir, connector) as reader:
        problems = _check_sync_record(reader, result, sent, page_size, phase, updates, deletes)
        problems += _check_state(reader, handler, result, phase)
        problems += _check_types(reader, target.name)
        check = _check_versions if history else _check_rows
        problems += check(reader, handler, phase)
    if result["rows_sent"] != sent:
        problems.append(f"the function sent {result['rows_sent']:,} rows, expected {sent:,}")
    return problems


def _check_sync_record(reader, result, sent, page_size, phase, updates, deletes) -> list[str]:
    pages = math.ceil(sent / page_size)
    upserted, deleted = (sent, 0) if phase == 1 else (updates, deletes)
    expected = ("succeeded", pages, upserted, deleted)
    record = reader.sync_record(result["sync_id"])
    record = tuple(record) if record is not None else None
    if record != expected:
        return [f"syncs row (status, pages, upserted, deleted) is {record}, expected {expected}"]
    return []


def _check_state(reader, handler, result, phase) -> list[str]:
    """The saved state is the state of the sync's last page (replayed from the handler)."""
    saved = reader.saved_state()
    saved = json.loads(saved) if saved else None
    page = handler["handler"]({"state": result["first_state"]})
    while page["hasMore"]:
        page = handler["handler"]({"state": page["state"]})
    if saved != page["state"]:
        return [f"saved state {saved} differs from the last page's state {page['state']}"]
    expected_phase = "update" if phase == 1 else "done"
    if saved.get("phase") != expected_phase:
        return [f"saved state {saved} should be in phase {expected_phase!r}"]
    return []


def _check_types(reader, warehouse: str) -> list[str]:
    expected = EXPECTED_TYPES[warehouse]
    types = {name: kind for name, kind in reader.column_types().items() if name in expected}
    if types != expected:
        return [f"column types {types}, expected {expected}"]
    return []


def _check_rows(reader, handler, phase) -> list[str]:
    """Every row, column by column, against the handler's own row function; also
    `_fivetran_deleted` and `_fivetran_synced` (the start of the sync that last wrote it)."""
    stored = reader.rows()
    syncs = reader.sync_starts()
    if len(syncs) != phase:
        return [f"{len(syncs)} syncs recorded for {reader.connector}, expected {phase}"]
    rows, updates, deletes = handler["ROWS"], handler["UPDATES"], handler["DELETES"]
    updated, deleted = set(), set()
    if phase == 2:
        updated = {handler["updated_id"](op) for op in range(updates)}
        deleted = {handler["deleted_id"](op) for op in range(updates, updates + deletes)}
    touched = updated | deleted
    wrong = []
    for got in stored:
        i = got[0]
        want = handler["customer"](i, 2 if i in updated else 1)
        expected = (
            *(want[c] for c in DATA_COLUMNS),
            i in deleted,
            syncs[-1] if i in touched else syncs[0],
        )
        if got != expected:
            wrong.append((got, expected))
    problems = []
    if len(stored) != rows:
        problems.append(f"{len(stored):,} rows in {reader.connector}.{TABLE}, expected {rows:,}")
    if [row[0] for row in stored] != list(range(1, rows + 1)):
        problems.append("ids are not exactly 1..ROWS once each (duplicates or gaps)")
    marked = sum(1 for row in stored if row[7] is True)
    if marked != len(deleted):
        problems.append(f"{marked:,} rows have _fivetran_deleted = true, expected {len(deleted):,}")
    if wrong:
        actual, expected = wrong[0]
        problems.append(f"{len(wrong):,} rows differ; first: stored {actual}, sent {expected}")
    return problems


def _check_versions(reader, handler, phase) -> list[str]:
    """A history table (design §14), version by version: after the insert one active
    version per key from sync 1; after the update each updated key's first version closed
    a millisecond before sync 2 and its second open from sync 2, each deleted key's only
    version closed likewise; `_fivetran_synced` the start of the sync that last wrote it."""
    from connector_runtime.history import END_OF_TIME

    stored = reader.versions()
    syncs = reader.sync_starts()
    if len(syncs) != phase:
        return [f"{len(syncs)} syncs recorded for {reader.connector}, expected {phase}"]
    rows, updates, deletes = handler["ROWS"], handler["UPDATES"], handler["DELETES"]
    updated, deleted = set(), set()
    if phase == 2:
        updated = {handler["updated_id"](op) for op in range(updates)}
        deleted = {handler["deleted_id"](op) for op in range(updates, updates + deletes)}
    forever, first = _epoch_us(END_OF_TIME), syncs[0]

    def version(i: int, number: int, start: int, end: int, synced: int) -> tuple:
        want = handler["customer"](i, number)
        return (*(want[c] for c in DATA_COLUMNS), start, end, end == forever, synced)

    expected = []
    for i in range(1, rows + 1):
        if i in updated or i in deleted:
            closed = syncs[-1] - 1000  # a millisecond before the sync that closed it
            expected.append(version(i, 1, first, closed, syncs[-1]))
        else:
            expected.append(version(i, 1, first, forever, first))
        if i in updated:
            expected.append(version(i, 2, syncs[-1], forever, syncs[-1]))
    if len(stored) != len(expected):
        return [
            f"{len(stored):,} versions in {reader.connector}.{TABLE}, expected {len(expected):,}"
        ]
    wrong = [(got, want) for got, want in zip(stored, expected, strict=True) if got != want]
    if wrong:
        got, want = wrong[0]
        return [f"{len(wrong):,} versions differ; first: stored {got}, expected {want}"]
    return []


# -- the child: one sync in this process, measured ---------------------------------------


def run_child(workdir: Path, connector: str, warehouse: str, *, profile: bool) -> int:
    """A runtime process: for each phase number read from stdin, one sync through
    `build_job(load_config(...))` + `run_sync`, as the CLI does; its figures go to
    `phaseN.json`, then `PHASE_DONE` to stdout."""
    from connector_runtime import sync as sync_module
    from connector_runtime.cli import configure_logging

    importlib.import_module(BACKEND_MODULES[warehouse])  # once per process, as `serve` would
    configure_logging()
    applying = _Stopwatch(sync_module._Sync, "apply")  # planning and writing each page
    for line in sys.stdin:
        phase = int(line)
        applying.seconds = 0.0
        result = _measured_sync(workdir, phase, connector, warehouse, applying, profile=profile)
        (workdir / f"phase{phase}.json").write_text(json.dumps(result))
        print(PHASE_DONE, flush=True)
        profile = False  # the first sync only
    return 0


def _measured_sync(
    workdir: Path, phase: int, connector: str, warehouse: str, applying, *, profile: bool
) -> dict[str, Any]:
    from connector_runtime import sync as sync_module
    from connector_runtime.config import load_config
    from connector_runtime.jobs import build_job
    from connector_runtime.sync import run_sync

    job = build_job(load_config(workdir / "connectors.yaml"), connector)
    first_state = _saved_state(job)
    rows_sent = 0

    page_times: list[float] = []  # seconds from the start of run_sync to each page's commit

    def on_page(progress) -> None:
        nonlocal rows_sent
        rows_sent += progress.rows
        page_times.append(time.perf_counter() - started)

    workers = _WorkerPeak()  # kept from the sync before, if any: their peaks start afresh
    rss_before = _peak_rss_mb(reset=True)
    profiler = _start_profiler() if profile else None
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with workers:
        outcome = run_sync(job, on_page=on_page)
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    if profiler is not None:
        _print_profile(profiler, warehouse)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped = (children_after.ru_utime + children_after.ru_stime) - (
        children.ru_utime + children.ru_stime
    )
    return {
        "phase": phase,
        "profiled": profile,
        "status": outcome.record.status,
        "error": outcome.record.error,
        "sync_id": outcome.record.sync_id,
        "rows_sent": rows_sent,
        "seconds": seconds,
        "rss_before_mb": rss_before,
        "rss_runtime_mb": _peak_rss_mb(),
        "rss_worker_mb": workers.peak_mb,
        "worker_cpu_s": workers.cpu_s(reaped),
        "runtime_cpu_s": (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu.ru_utime + cpu.ru_stime),
        "page_times": page_times,
        "apply_s": applying.seconds,
        "code": str(Path(sync_module.__file__).resolve().parent.parent),  # which checkout ran
        "first_state": first_state,
    }


class _Stopwatch:
    """The seconds spent in one method of a class (children only: a measuring hook)."""

    def __init__(self, owner: type, name: str) -> None:
        self.seconds = 0.0
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - began

        setattr(owner, name, timed)


def _saved_state(job) -> dict[str, Any]:
    """The state the sync starts from. A warehouse that surely holds nothing yet is not
    opened: opening a DuckDB file makes it, and the sync would no longer be what a first
    sync into a new file is (it makes the file, and asks for page 1 meanwhile)."""
    from connector_runtime.destination import destination_class, open_destination

    if destination_class(job.destination_url).holds_nothing(job.destination_url):
        return {}
    with open_destination(job.destination_url) as destination:
        return destination.load(job.connector).state


def _peak_rss_mb(*, reset: bool = False) -> float:
    """This process's peak RSS since it was exec'd, or since the last `reset` (VmHWM);
    `reset`: its RSS now, from which the next peak counts.

    Not `getrusage(RUSAGE_SELF).ru_maxrss` on Linux: it keeps the high-water mark of
    the process this one was forked from, and of syncs before this one.
    """
    if reset:
        _reset_peak("self")
    hwm = _vm_hwm_kib("self")
    if hwm:
        return hwm / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; bytes on macOS
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class _WorkerPeak:
    """The worker's own peak RSS (VmHWM), sampled from /proc while the sync runs.

    Not `RUSAGE_CHILDREN.ru_maxrss`: for the same reason as in `_peak_rss_mb`, it
    would report the runtime's own size (~120 MB of pyarrow and duckdb), not the
    function's. VmHWM only grows, so the last sample before the worker exits holds
    its peak; the worker then idles while the runtime writes the last page.
    """

    INTERVAL = 0.05  # VmHWM only grows: the last sample before the worker ends holds its peak

    def __init__(self) -> None:
        self.peaks: dict[int, int] = {}  # pid -> VmHWM in KiB
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._cpu_before: dict[int, float] = {}  # of workers kept from a sync before
        for pid in _worker_pids():
            _reset_peak(pid)
            self._cpu_before[pid] = _cpu_s(pid)

    @property
    def peak_mb(self) -> float:
        return max(self.peaks.values(), default=0) / 1024

    def cpu_s(self, reaped: float) -> float:
        """The workers' CPU seconds in this sync, given those of the children reaped
        meanwhile (whole lives, kept workers' earlier seconds included)."""
        alive = {pid: _cpu_s(pid) for pid in _worker_pids()}
        used = reaped + sum(cpu - self._cpu_before.get(pid, 0.0) for pid, cpu in alive.items())
        return used - sum(cpu for pid, cpu in self._cpu_before.items() if pid not in alive)

    def __enter__(self) -> _WorkerPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.wait(self.INTERVAL):
            for pid in _worker_pids():
                self.peaks[pid] = max(self.peaks.get(pid, 0), _vm_hwm_kib(pid))


def _worker_pids() -> set[int]:
    """Children that already run the worker module: between fork and exec a child
    is still a copy of this process, and its VmHWM would be this process's."""
    pids: set[int] = set()
    for children in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids.update(int(pid) for pid in children.read_text().split())
    return {pid for pid in pids if WORKER_MODULE in _command_line(pid)}


def _command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _reset_peak(pid: int | str) -> None:
    """Start `pid`'s VmHWM afresh from its RSS now (Linux's clear_refs)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def _cpu_s(pid: int) -> float:
    """User and system CPU seconds of a live process, from /proc (0 if it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def _vm_hwm_kib(pid: int | str) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _start_profiler():
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def _print_profile(profiler, warehouse: str) -> None:
    import pstats

    profiler.disable()
    print(
        f"\n== cProfile of phase 1 into {warehouse} (runtime process), top 25 by cumulative time =="
    )
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    sys.exit(main())
