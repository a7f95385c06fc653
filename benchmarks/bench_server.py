"""`connector serve` under a client: the sync's slowdown while a dashboard polls the API,
and the API's answer time over a warehouse holding a long history.

Called from `bench_sync.py` (`make bench`); see benchmarks/README.md. Everything runs
against a real `connector serve` subprocess (`python -m connector_runtime.cli serve`,
`server.listen: 127.0.0.1:0`) on a DuckDB file, found through its
`.connector-runtime/server.json` and asked with its bearer token, as a browser would.

1. polling: the bench's insert sync (the same handler and row shape), started with
   `POST /api/connectors/bench/run`, once per client mode: no client, a client polling
   `GET /api/connectors` and `GET /api/syncs/{id}` every 100 ms, and the same every 1 s
   (the dashboard's rate). Each sync runs in a fresh directory, warehouse and `serve`
   process; the modes are interleaved round by round (A, B, C, A, B, C, ...). A sync's
   time is `finished_at - started_at` of its `connector_runtime.syncs` row, read from the
   file after `serve` exits, with its status, row counts and the table's row count
   checked. Without a client nothing asks the API: the end of the sync is read from
   serve's own log lines (`sync_finished`).
2. API: a warehouse with API_CONNECTORS connectors synced once for real (`connector
   run`), then `--syncs` rows of `connector_runtime.syncs` and `--alerts` rows of
   `connector_runtime.alerts` inserted with SQL (`INSERT ... SELECT ... FROM range(n)`);
   `serve` on it, and each endpoint asked once to warm up, then `--requests` times in a
   row on one keep-alive connection, timed at the client.

Nothing here fails on a slow number: a part that cannot run (serve does not start, a
sync does not succeed, an endpoint does not answer 200) is a `skipped` row with the
reason, or a NOT RUN row that fails the benchmark under CI=true (or `--serve only`).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CLI = [sys.executable, "-m", "connector_runtime.cli"]
CONNECTOR = "bench"
TABLE = "customers"
START_TIMEOUT = 60.0  # serve: interpreter, imports, the warehouse opened once
SYNC_TIMEOUT = 600.0
STOP_TIMEOUT = 20.0
SLOWDOWN_GOAL = 5.0  # % (the goal)
PAGE_GOAL_MS = 300.0  # the dashboard's goal per page
CLIENT_MODES = {"no client": None, "poll 100 ms": 0.1, "poll 1 s": 1.0}
API_CONNECTORS = 5
API_ROWS = 1000  # rows each API connector syncs for real (its data table)
_UNSET = ("CONNECTOR_CONFIG", "CONNECTOR_RUNTIME_TOKEN", "COLUMNS", "LINES", "FORCE_COLOR")


class NotRun(Exception):
    """A part could not be measured; the message says why."""


# -- a `connector serve` subprocess and a keep-alive client --------------------------------


class Serve:
    """`connector -c CONFIG serve` in `root`; its stderr (JSON lines) read as it comes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "connectors.yaml"
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self.process: subprocess.Popen | None = None
        self.url = self.token = ""

    def __enter__(self) -> Serve:
        env = {k: v for k, v in os.environ.items() if k not in _UNSET}
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            [*CLI, "-c", str(self.config), "serve"],
            cwd=self.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.wait_for(lambda e: e.get("event") == "serving", START_TIMEOUT, "serve to start")
            info = json.loads((self.root / ".connector-runtime" / "server.json").read_text())
        except BaseException:
            self._end(signal.SIGKILL)
            raise
        self.url, self.token = info["url"], info["token"]
        return self

    def __exit__(self, kind: object, *exc_info: object) -> None:
        if kind is None:
            self.stop()
        elif self.process is not None and self.process.poll() is None:
            self._end(signal.SIGKILL)  # the measurement failed already: no second error

    def stop(self) -> None:
        """SIGTERM and wait; NotRun if serve does not exit 0 in time."""
        if self.process is None or self.process.poll() is not None:
            return
        code = self._end(signal.SIGTERM)
        if code != 0:
            raise NotRun(f"connector serve exited {code} after SIGTERM; {self.tail()}")

    def _end(self, signum: int) -> int | None:
        assert self.process is not None
        self.process.send_signal(signum)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict):
                        self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(
        self, wanted: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """The first log event that `wanted` accepts; NotRun if serve exits or time runs out."""
        deadline = time.monotonic() + timeout
        assert self.process is not None
        with self._changed:
            while True:
                found = next((e for e in self.events if wanted(e)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if self.process.poll() is not None:
                    raise NotRun(
                        f"connector serve exited {self.process.returncode} waiting for {what}; {self.tail()}"
                    )
                if left <= 0:
                    raise NotRun(f"no {what} within {timeout:.0f} s; {self.tail()}")
                self._changed.wait(min(left, 0.5))

    def cpu_seconds(self) -> float | None:
        """CPU time serve's process has used so far (every thread; not its worker's), from
        /proc; None where there is no /proc."""
        assert self.process is not None
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def tail(self) -> str:
        with self._changed:
            last = self.lines[-3:]
        return "serve's last log lines: " + (" | ".join(last) if last else "(none)")

    def client(self) -> Client:
        return Client(self.url, self.token)


class Client:
    """One keep-alive HTTP connection with the bearer token, as a browser tab keeps."""

    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.headers = {"Authorization": f"Bearer {token}"}
        self.connection: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str) -> tuple[int, bytes, float]:
        """(status, body, seconds); reconnects once if the server closed the connection."""
        for attempt in (1, 2):
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
            started = time.perf_counter()
            try:
                self.connection.request(method, path, headers=self.headers)
                response = self.connection.getresponse()
                body = response.read()
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt == 2:
                    raise
                continue
            return response.status, body, time.perf_counter() - started
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, expect: int = 200) -> Any:
        status, body, _ = self.request(method, path)
        if status != expect:
            raise NotRun(f"{method} {path} answered {status}: {body[:200]!r}")
        return json.loads(body) if body else None

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def _write_project(root: Path, handler_source: str, connectors: list[str]) -> None:
    root.mkdir(parents=True)
    (root / "handler.py").write_text(handler_source)
    config = {  # JSON is YAML
        "warehouse": "duckdb:///warehouse.duckdb",
        "server": {"listen": "127.0.0.1:0"},
        "connectors": {
            name: {"function": {"local": "handler.py", "timeout": "10m"}} for name in connectors
        },
    }
    (root / "connectors.yaml").write_text(json.dumps(config, indent=2) + "\n")


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[Any]:
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        yield con
    finally:
        con.close()


def _ms(seconds: list[float]) -> dict[str, float]:
    """median, p95 (nearest rank) and max in milliseconds; {} for no samples."""
    if not seconds:
        return {}
    ordered = sorted(seconds)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return {
        "median": statistics.median(ordered) * 1000,
        "p95": p95 * 1000,
        "max": ordered[-1] * 1000,
    }


# -- 1. the sync's slowdown under a polling client -----------------------------------------


class Poller:
    """A dashboard tab: every `interval` s, GET /api/connectors and GET /api/syncs/{id}.

    Ticks are on a fixed schedule (start + k * interval); a tick that comes due while the
    previous one is still waiting for answers starts as soon as it can."""

    def __init__(self, serve: Serve, interval: float, sync_id: str) -> None:
        self.client, self.interval = serve.client(), interval
        self.paths = ("/api/connectors", f"/api/syncs/{sync_id}")
        self.seconds: dict[str, list[float]] = {path: [] for path in self.paths}
        self.errors: list[str] = []
        self.late_ticks = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="poller", daemon=True)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()
        self.client.close()

    @property
    def requests(self) -> int:
        return sum(len(s) for s in self.seconds.values())

    def _poll(self) -> None:
        due = time.monotonic()
        while not self._done.is_set():
            for path in self.paths:
                try:
                    status, body, seconds = self.client.request("GET", path)
                except (OSError, http.client.HTTPException) as exc:
                    self.errors.append(f"GET {path}: {exc!r}")
                    continue
                if status != 200:
                    self.errors.append(f"GET {path} answered {status}: {body[:200]!r}")
                self.seconds[path].append(seconds)
            due += self.interval
            wait = due - time.monotonic()
            if wait < 0:
                self.late_ticks += 1
                due = time.monotonic()
            self._done.wait(max(0.0, wait))


@dataclass
class PolledSync:
    mode: str
    round: int
    seconds: float
    rows: int
    cpu_seconds: float | None = None  # serve's process from the POST to the sync's end
    requests: int = 0
    late_ticks: int = 0
    answer_seconds: dict[str, list[float]] = field(default_factory=dict)  # by path


def measure_polling(
    workdir: Path, handler_source: str, rows: int, *, repeat: int, log: Callable[[str], None]
) -> list[PolledSync]:
    """`repeat` rounds of one sync per client mode, interleaved; NotRun on any failure."""
    results = []
    for number in range(1, repeat + 1):
        for mode, interval in CLIENT_MODES.items():
            root = workdir / f"run{number}-{mode.replace(' ', '-')}"
            _write_project(root, handler_source, [CONNECTOR])
            result = _polled_sync(root, mode, number, interval, rows)
            log(f"serve polling round {number}, {mode}: {result.seconds:.2f} s")
            results.append(result)
    return results


def _polled_sync(root: Path, mode: str, number: int, interval: float | None, rows: int):
    with Serve(root) as serve:
        control = serve.client()
        cpu_before = serve.cpu_seconds()
        try:
            sync_id = control.json("POST", f"/api/connectors/{CONNECTOR}/run", expect=202)[
                "sync_id"
            ]
        finally:
            control.close()
        poller = Poller(serve, interval, sync_id) if interval else contextlib.nullcontext()
        with poller:
            serve.wait_for(
                lambda e: e.get("event") == "sync_finished" and e.get("sync_id") == sync_id,
                SYNC_TIMEOUT,
                f"the end of sync {sync_id}",
            )
            cpu_after = serve.cpu_seconds()
    if isinstance(poller, Poller) and poller.errors:
        raise NotRun(
            f"the {mode} client got {len(poller.errors)} errors; first: {poller.errors[0]}"
        )
    with _read_only(root / "warehouse.duckdb") as con:
        record = con.execute(
            "SELECT status, rows_upserted, (epoch_us(finished_at) - epoch_us(started_at)) / 1e6,"
            " error FROM connector_runtime.syncs WHERE sync_id = ?",
            [sync_id],
        ).fetchone()
        if record is None or record[0] != "succeeded":
            raise NotRun(f"the {mode} sync (round {number}) did not succeed: {record}")
        stored = con.execute(f"SELECT count(*) FROM {CONNECTOR}.{TABLE}").fetchone()[0]
    if record[1] != rows or stored != rows:
        raise NotRun(
            f"the {mode} sync (round {number}) upserted {record[1]:,} rows and "
            f"{CONNECTOR}.{TABLE} holds {stored:,}, not {rows:,}"
        )
    result = PolledSync(mode, number, record[2], rows)
    if cpu_before is not None and cpu_after is not None:
        result.cpu_seconds = cpu_after - cpu_before
    if isinstance(poller, Poller):
        result.requests, result.late_ticks = poller.requests, poller.late_ticks
        result.answer_seconds = {
            path.split("/")[2]: seconds for path, seconds in poller.seconds.items()
        }
    return result


# -- 2. the API's answer time over a long history ------------------------------------------

# Syncs every 15 min back in time (older than the real ones), 5% failed, each with a
# short kept function output; alerts every 2 h back, all resolved but the newest 10 of
# each connector (their sync ids are made up: nothing reads an alert's sync back).
FILL_SYNCS = """
INSERT INTO connector_runtime.syncs (sync_id, connector, trigger, started_at, finished_at,
  status, pages, rows_upserted, rows_deleted, error, function_output)
SELECT
  CAST(uuid() AS VARCHAR), 'bench_' || CAST(i % $connectors + 1 AS VARCHAR),
  CASE WHEN i % 50 = 0 THEN 'manual' ELSE 'schedule' END,
  $now - INTERVAL 15 MINUTE * (i // $connectors + 1) - INTERVAL 1 SECOND * (i % 60),
  $now - INTERVAL 15 MINUTE * (i // $connectors + 1) + INTERVAL 1 SECOND * (20 + i % 40),
  CASE WHEN i % 20 = 7 THEN 'failed' ELSE 'succeeded' END,
  1 + i % 30, 1000 * (1 + i % 30), i % 17,
  CASE WHEN i % 20 = 7 THEN 'function_error: ValueError: upstream answered 502 on page '
    || CAST(1 + i % 30 AS VARCHAR) END,
  repeat('fetched page ' || CAST(i AS VARCHAR) || E'\\n', 20)
FROM range($syncs) AS t(i)
"""
FILL_ALERTS = """
INSERT INTO connector_runtime.alerts (alert_id, connector, sync_id, created_at, severity, kind,
  error_type, message, stack_trace, resolved_at)
SELECT
  CAST(uuid() AS VARCHAR), 'bench_' || CAST(i % $connectors + 1 AS VARCHAR),
  CAST(uuid() AS VARCHAR),
  $now - INTERVAL 2 HOUR * (i // $connectors + 1),
  'error', 'function_error', 'ValueError',
  'upstream answered 502 Bad Gateway for page ' || CAST(i AS VARCHAR) || ': ' || repeat('x', 200),
  CAST(to_json(['  File "handler.py", line 12, in handler', '    page = fetch(cursor)',
    '  File "handler.py", line 40, in fetch', '    raise ValueError(message)']) AS JSON),
  CASE WHEN i // $connectors < 10 THEN NULL
    ELSE $now - INTERVAL 2 HOUR * (i // $connectors + 1) + INTERVAL 30 MINUTE END
FROM range($alerts) AS t(i)
"""


def api_paths(name: str) -> list[str]:
    return [
        "/api/connectors",
        f"/api/connectors/{name}",
        f"/api/connectors/{name}/syncs?limit=50",
        "/api/alerts?status=all",
        "/metrics",
        "/",  # the dashboard's three pages, as HTML
        f"/connectors/{name}",
        "/alerts",
    ]


@dataclass
class Timed:
    path: str
    seconds: list[float]
    size: int


def measure_api(
    workdir: Path,
    handler_source: str,
    *,
    syncs: int,
    alerts: int,
    requests: int,
    log: Callable[[str], None],
) -> list[Timed]:
    """Fill a warehouse, serve it, time each endpoint; NotRun on any failure."""
    names = [f"{CONNECTOR}_{n}" for n in range(1, API_CONNECTORS + 1)]
    _write_project(workdir, handler_source, names)
    config = workdir / "connectors.yaml"
    ran = subprocess.run(
        [*CLI, "-c", str(config), "run"], cwd=workdir, capture_output=True, text=True
    )
    if ran.returncode != 0:
        last = [line for line in ran.stdout.splitlines() + ran.stderr.splitlines() if line]
        raise NotRun(f"connector run exited {ran.returncode}: {' | '.join(last[-3:])}")
    _fill(workdir / "warehouse.duckdb", syncs=syncs, alerts=alerts)
    log(f"serve API: {syncs:,} syncs and {alerts:,} alerts stored for {len(names)} connectors")
    timed = []
    with Serve(workdir) as serve:
        client = serve.client()
        try:
            for path in api_paths(names[0]):
                seconds, size = [], 0
                for _ in range(1 + requests):  # the first one warms up, untimed
                    status, body, took = client.request("GET", path)
                    if status != 200:
                        raise NotRun(f"GET {path} answered {status}: {body[:200]!r}")
                    seconds.append(took)
                    size = len(body)
                timed.append(Timed(path, seconds[1:], size))
        finally:
            client.close()
    return timed


def _fill(path: Path, *, syncs: int, alerts: int) -> None:
    import duckdb

    con = duckdb.connect(str(path))
    try:
        con.execute("SET TimeZone = 'UTC'")
        now = con.execute("SELECT min(started_at) FROM connector_runtime.syncs").fetchone()[
            0
        ]  # older than the real syncs, which stay each connector's last
        for sql in (FILL_SYNCS, FILL_ALERTS):
            sql = sql.replace("$connectors", str(API_CONNECTORS)).replace("$syncs", str(syncs))
            sql = sql.replace("$alerts", str(alerts)).replace("$now", "CAST(? AS TIMESTAMPTZ)")
            con.execute(sql, [now] * sql.count("CAST(? AS TIMESTAMPTZ)"))
        con.execute("CHECKPOINT")
    finally:
        con.close()


# -- running both, and the report ------------------------------------------------------------


def run(
    workdir: Path,
    handler_source: str,
    rows: int,
    *,
    repeat: int,
    syncs: int,
    alerts: int,
    requests: int,
    required: bool,
) -> int:
    """Both parts, their tables; the exit status (1 only if a part did not run and
    `required`)."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=100)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    problems: dict[str, str] = {}
    polled: list[PolledSync] = []
    timed: list[Timed] = []
    try:
        polled = measure_polling(workdir / "polling", handler_source, rows, repeat=repeat, log=log)
    except Exception as exc:  # NotRun, or serve, DuckDB or the network failing: not measured
        problems["polling"] = _reason(exc)
    api_source = handler_source.replace(f"ROWS = {rows}\n", f"ROWS = {API_ROWS}\n", 1)
    try:
        timed = measure_api(
            workdir / "api", api_source, syncs=syncs, alerts=alerts, requests=requests, log=log
        )
    except Exception as exc:
        problems["api"] = _reason(exc)
    console.print(_polling_table(polled, rows, repeat, problems.get("polling"), required))
    _polling_notes(console, polled)
    console.print(_api_table(timed, syncs, alerts, requests, "api" in problems, required))
    _api_notes(console, timed)
    for part, reason in problems.items():
        if required:
            print(f"FAIL serve {part} not run (CI=true requires it): {reason}", file=sys.stderr)
        else:
            print(f"serve {part} row SKIPPED: {reason} (under CI=true this fails the benchmark)")
    return 1 if problems and required else 0


def _reason(exc: Exception) -> str:
    """The exception as one line (the table's footnote)."""
    text = str(exc) if isinstance(exc, NotRun) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def _table(title: str, columns: tuple[str, ...], text_columns: int):
    from rich.table import Table

    table = Table(*columns, title=title)
    for column in table.columns[:text_columns]:
        column.no_wrap = True
    for column in table.columns[text_columns:]:
        column.justify = "right"
    return table


POLLING_COLUMNS = (
    "warehouse",
    "client",
    "seconds",
    "slowdown",
    "serve CPU s",
    "CPU slowdown",
    "API GETs",
    "list p95 ms",
    "sync p95 ms",
)


def _polling_table(polled, rows, repeat, problem, required):
    title = (
        f"connector serve: a {rows:,}-row sync into DuckDB while a client polls the API, "
        f"median of {repeat}"
    )
    table = _table(title, POLLING_COLUMNS, 2)
    if problem is not None:
        table.add_row("duckdb", "NOT RUN" if required else "skipped", *["-"] * 7)
        return table
    seconds = {mode: _median(p.seconds for p in polled if p.mode == mode) for mode in CLIENT_MODES}
    cpu = {mode: _median(p.cpu_seconds for p in polled if p.mode == mode) for mode in CLIENT_MODES}
    baseline = "no client"
    for mode in CLIENT_MODES:
        mine = [p for p in polled if p.mode == mode]
        p95 = {
            path: _ms([s for p in mine for s in p.answer_seconds.get(path, [])])
            for path in ("connectors", "syncs")
        }
        table.add_row(
            "duckdb",
            mode,
            f"{seconds[mode]:.2f}",
            _change(seconds[mode], seconds[baseline]) if mode != baseline else "-",
            f"{cpu[mode]:.2f}" if cpu[mode] is not None else "n/a",
            _change(cpu[mode], cpu[baseline]) if mode != baseline else "-",
            f"{_median(p.requests for p in mine):.0f}" if mode != baseline else "-",
            *(f"{p95[path]['p95']:.1f}" if p95[path] else "-" for path in p95),
        )
    return table


def _median(values) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _change(value: float | None, baseline: float | None) -> str:
    if value is None or not baseline:
        return "n/a"
    return f"{(value / baseline - 1) * 100:+.1f}%"


def _polling_notes(console, polled: list[PolledSync]) -> None:
    if not polled:
        return
    for mode in CLIENT_MODES:
        mine = [p for p in polled if p.mode == mode]
        seconds = ", ".join(f"{p.seconds:.2f}" for p in mine)
        cpu = ", ".join("n/a" if p.cpu_seconds is None else f"{p.cpu_seconds:.2f}" for p in mine)
        console.print(
            f"serve {mode} by round: seconds {seconds}; serve CPU s {cpu}", highlight=False
        )
    late = sum(p.late_ticks for p in polled)
    console.print(
        "seconds: finished_at - started_at of the sync's row, each sync in a fresh serve "
        "process and warehouse, client modes interleaved round by round; slowdown: against "
        f"the no-client median (goal < {SLOWDOWN_GOAL:g}%); serve CPU s: CPU time of the "
        "serve process (sync and API threads, not the function's worker) from the POST to "
        "the sync's end, steadier than seconds on a busy machine; API GETs per sync, and the "
        "p95 answer time at the client of list (GET /api/connectors) and sync "
        "(GET /api/syncs/{id})"
        + (f"; {late} poll ticks came due while the previous one still waited" if late else ""),
        highlight=False,
    )
    if hasattr(os, "getloadavg"):
        console.print(
            f"load average after the runs: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
            "(other processes' load shows up in seconds, much less in CPU s)",
            highlight=False,
        )


API_COLUMNS = ("endpoint", "requests", "median ms", "p95 ms", "max ms", "KB")


def _api_table(timed, syncs, alerts, requests, not_run, required):
    title = (
        f"connector serve API: {syncs:,} syncs and {alerts:,} alerts stored, "
        f"{API_CONNECTORS} connectors, DuckDB, {requests} requests after one warm-up"
    )
    table = _table(title, API_COLUMNS, 1)
    if not_run:
        table.add_row("NOT RUN" if required else "skipped", *["-"] * 5)
        return table
    for each in timed:
        stats = _ms(each.seconds)
        table.add_row(
            each.path,
            f"{len(each.seconds)}",
            f"{stats['median']:.1f}",
            f"{stats['p95']:.1f}",
            f"{stats['max']:.1f}",
            f"{each.size / 1024:,.1f}",
        )
    return table


def _api_notes(console, timed: list[Timed]) -> None:
    slow = [t.path for t in timed if _ms(t.seconds)["p95"] > PAGE_GOAL_MS]
    if not timed:
        return
    if slow:
        console.print(
            f"over the dashboard's {PAGE_GOAL_MS:.0f} ms goal (p95): {', '.join(slow)}",
            highlight=False,
        )
    else:
        console.print(
            f"every endpoint under the dashboard's {PAGE_GOAL_MS:.0f} ms goal (p95); timed at "
            "the client on one keep-alive connection",
            highlight=False,
        )
