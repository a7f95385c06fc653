"""Shared fixtures for end-to-end tests: a project folder, the real CLI, the real warehouse.

- `project(handler_source, **connector_options)` writes `handler.py` and a
  `connectors.yaml` for one connector (`demo` by default) into `tmp_path`; the returned
  `Project` runs the real `connector` command on it and reads its DuckDB warehouse.
- `run_connector(*args, config=...)` runs `python -m connector_runtime.cli` (what the
  `connector` console script runs) as a subprocess and returns `(returncode, stdout,
  stderr)`.
- `open_warehouse(path)` opens a DuckDB file read-only with `SET TimeZone = 'UTC'`; close
  it before the next `connector` command, which needs the file for writing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from socketserver import BaseServer
from typing import Any, NamedTuple

import duckdb
import pytest
import yaml

CLI = [sys.executable, "-m", "connector_runtime.cli"]
CLI_TIMEOUT = 90.0
# A user's terminal settings must not change what the tests see.
_UNSET = ("COLUMNS", "LINES", "CONNECTOR_CONFIG", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE")


class CliResult(NamedTuple):
    """What one `connector` command did."""

    returncode: int
    stdout: str
    stderr: str

    def said(self, text: str) -> bool:
        """`text` is on stderr, ignoring whitespace: rich wraps lines to 80 columns off a terminal."""
        return _squeezed(text) in _squeezed(self.stderr)

    def printed(self, text: str) -> bool:
        """`text` is in the report on stdout, ignoring whitespace."""
        return _squeezed(text) in _squeezed(self.stdout)


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text)


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _UNSET}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _command(args: tuple[str, ...], config: Path | None) -> list[str]:
    return [*CLI, *(["-c", str(config)] if config is not None else []), *args]


def run_connector(
    *args: str, config: Path | None = None, cwd: Path | None = None, timeout: float = CLI_TIMEOUT
) -> CliResult:
    """Run `connector [-c CONFIG] ARGS...` to its end; without `config`, it finds its own."""
    done = subprocess.run(
        _command(args, config),
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def start_connector(*args: str, config: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start `connector -c CONFIG ARGS...` in the background (kill it or `communicate()`)."""
    return subprocess.Popen(
        _command(args, config),
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextmanager
def serving(server: BaseServer, poll_seconds: float = 0.05) -> Iterator[BaseServer]:
    """`server` answering in a daemon thread until the block ends; then shut down and
    closed. Its poll interval bounds how long the shutdown waits."""
    thread = threading.Thread(target=server.serve_forever, args=(poll_seconds,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def open_warehouse(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to the DuckDB file at `path`, times in UTC."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()


class Project:
    """A folder with `handler.py`, `connectors.yaml` and, once synced, `warehouse.duckdb`."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.config = root / "connectors.yaml"
        self.handler = root / "handler.py"
        self.warehouse_path = root / "warehouse.duckdb"

    # -- files --------------------------------------------------------------------

    def write_handler(self, source: str) -> None:
        self.handler.write_text(textwrap.dedent(source))

    def write_config(self, *, function: dict | None = None, **options: Any) -> None:
        """One connector `self.name` calling handler.py; `options` go in its config."""
        connector = {"function": {"local": self.handler.name, **(function or {})}, **options}
        document = {
            "warehouse": "duckdb:///warehouse.duckdb",
            "server": {"listen": "127.0.0.1:0"},  # a free port: tests never collide
            "connectors": {self.name: connector},
        }
        self.config.write_text(yaml.safe_dump(document, sort_keys=False))

    # -- the CLI ------------------------------------------------------------------

    def connector(self, *args: str, timeout: float = CLI_TIMEOUT) -> CliResult:
        """`connector -c connectors.yaml ARGS...`, from the project folder."""
        return run_connector(*args, config=self.config, cwd=self.root, timeout=timeout)

    def run(self, timeout: float = CLI_TIMEOUT) -> CliResult:
        """`connector run NAME`."""
        return self.connector("run", self.name, timeout=timeout)

    def start(self, *args: str) -> subprocess.Popen:
        return start_connector(*args, config=self.config, cwd=self.root)

    # -- the warehouse ------------------------------------------------------------

    def warehouse(self):
        return open_warehouse(self.warehouse_path)

    def query(self, sql: str, *params: Any) -> list[tuple]:
        """Rows of one query, the file closed again afterwards."""
        with self.warehouse() as con:
            return con.execute(sql, list(params)).fetchall()

    def records(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        """Rows of one query as dicts by column name."""
        with self.warehouse() as con:
            cursor = con.execute(sql, list(params))
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def state(self) -> dict:
        """The saved state, read from `connector_runtime.state`."""
        rows = self.query(
            "SELECT CAST(state AS VARCHAR) FROM connector_runtime.state WHERE connector = ?",
            self.name,
        )
        return json.loads(rows[0][0]) if rows else {}

    def syncs(self) -> list[dict[str, Any]]:
        """`connector_runtime.syncs` rows of this connector, oldest first."""
        return self.records(
            "SELECT sync_id, trigger, status, pages, rows_upserted, rows_deleted, error,"
            " finished_at IS NOT NULL AS finished FROM connector_runtime.syncs"
            " WHERE connector = ? ORDER BY started_at",
            self.name,
        )

    def alerts(self) -> list[dict[str, Any]]:
        """`connector_runtime.alerts` rows of this connector, oldest first; `stack_trace` parsed."""
        rows = self.records(
            "SELECT alert_id, sync_id, severity, kind, error_type, message,"
            " CAST(stack_trace AS VARCHAR) AS stack_trace,"
            " resolved_at IS NOT NULL AS resolved, resolved_at >= created_at AS resolved_after"
            " FROM connector_runtime.alerts WHERE connector = ? ORDER BY created_at",
            self.name,
        )
        for row in rows:
            row["stack_trace"] = (
                None if row["stack_trace"] is None else json.loads(row["stack_trace"])
            )
        return rows

    def tables(self, schema: str | None = None) -> list[str]:
        """Table names in the connector's schema (default: its name), sorted."""
        rows = self.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ? ORDER BY 1",
            schema or self.name,
        )
        return [name for (name,) in rows]


@pytest.fixture
def project(tmp_path: Path):
    """`project(handler_source, *, name="demo", function={...}, **connector_options)`."""

    def make(
        handler_source: str, *, name: str = "demo", function: dict | None = None, **options: Any
    ) -> Project:
        made = Project(tmp_path, name)
        made.write_handler(handler_source)
        made.write_config(function=function, **options)
        return made

    return make


@pytest.fixture
def node() -> str:
    """The path of `node`; the test skips without it, or fails under CI=true."""
    found = shutil.which("node")
    if found is None:
        message = "node is not on PATH; install Node.js 18+ to run the JavaScript tests"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def connector():
    """`connector(*args, config=PATH, cwd=DIR)` → `(returncode, stdout, stderr)`."""
    return run_connector


@pytest.fixture
def warehouse():
    """`with warehouse(path) as con:` a read-only DuckDB connection, times in UTC."""
    return open_warehouse
