"""How the CLI fails, through the real `connector` command in subprocesses: expected
failures are one line and an exit code, never a traceback; a warehouse file held by a sync
is waited for out loud; SIGINT/SIGTERM on `run` stop after the page and resume cleanly;
what the function printed is shown, kept bounded and masked; global options work after
the command; a closed stdout is not an error.

The table of commands × failures starts its ~80 commands a few at a time
(`table_results`); each case still passes or fails alone. PostgreSQL on a closed port
needs only the driver, not a server: without psycopg those cases skip (fail under CI=true).
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest
import yaml
from conftest import CLI, CliResult, cli_env

# -- helpers ----------------------------------------------------------------------------

TRIVIAL = """\
def handler(request):
    return {"state": {"n": 1}, "insert": {"t": [{"id": 1}]}, "schema": {"t": {"primary_key": ["id"]}}}
"""

# Pages of 10 rows; `hold` (a page number) makes that page, and any after it, wait while
# the file exists, after announcing itself in `held`; `calls.jsonl` logs every request.
PAGED = """\
import json
import os
import pathlib
import time

HERE = pathlib.Path(__file__).parent
PAGES, ROWS = 30, 10


def handler(request):
    n = request["state"].get("page", 0)
    with open(HERE / "calls.jsonl", "a") as calls:
        calls.write(json.dumps({"state": request["state"], "sync_id": request["sync_id"]}) + "\\n")
    hold = HERE / "hold"
    try:
        hold_at = int(hold.read_text())
    except FileNotFoundError:
        hold_at = None
    if hold_at is not None and n >= hold_at:
        (HERE / "held.tmp").write_text(str(n))
        os.replace(HERE / "held.tmp", HERE / "held")
        while hold.exists():
            time.sleep(0.02)
    time.sleep(0.1)
    rows = [{"id": n * ROWS + i, "page": n} for i in range(ROWS)]
    return {
        "state": {"page": n + 1},
        "insert": {"t": rows},
        "schema": {"t": {"primary_key": ["id"]}},
        "hasMore": n + 1 < PAGES,
    }
"""
PAGES, ROWS = 30, 10

# Known progress on stderr (off a terminal): not part of an error's one line.
PROGRESS = re.compile(
    r"^(\w+: page \d+, [\d,]+ upserted, [\d,]+ deleted \(committed\)"
    r"|waiting for the warehouse: .*)$"
)
WAIT = 20.0  # the longest any wait for a file or a line may take before the test fails


def error_lines(stderr: str) -> list[str]:
    """stderr's lines without blank ones and known progress lines."""
    return [
        line for line in stderr.splitlines() if line.strip() and not PROGRESS.match(line.strip())
    ]


def assert_no_traceback(result: CliResult) -> None:
    text = result.stdout + result.stderr
    for marker in ("Traceback", "Exception ignored"):
        assert marker not in text, text


def free_port() -> int:
    """A port nothing listens on: bound once, then closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(root: Path, warehouse: str, **connector) -> Path:
    config = root / "connectors.yaml"
    document = {
        "warehouse": warehouse,
        "server": {"listen": "127.0.0.1:0"},
        "connectors": {"demo": {"function": {"local": "handler.py"}, **connector}},
    }
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    return config


def run(config: Path, *args: str, env: dict | None = None, timeout: float = 90) -> CliResult:
    """`connector -c CONFIG ARGS...` from the config's folder, to its end."""
    done = subprocess.run(
        [*CLI, "-c", str(config), *args],
        cwd=config.parent,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def wait_until(condition, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


class Background:
    """`connector -c CONFIG ARGS...` running, in a process group of its own (as a shell
    job: `signal` reaches the group as Ctrl-C would); stderr read as it comes."""

    def __init__(self, config: Path, *args: str, env: dict | None = None) -> None:
        self.process = subprocess.Popen(
            [*CLI, "-c", str(config), *args],
            cwd=config.parent,
            env=env or cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.pid = self.process.pid
        self._stderr: list[str] = []
        self._stdout: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in (
                (self.process.stderr, self._stderr),
                (self.process.stdout, self._stdout),
            )
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line)
                self._changed.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = WAIT) -> tuple[re.Match, bool]:
        """The first stderr line matching `pattern`, and whether the process ran when it came."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self._stderr:
                    match = regex.search(line)
                    if match:
                        return match, self.process.poll() is None
                left = deadline - time.monotonic()
                if left <= 0 or (
                    self.process.poll() is not None and not self._readers[0].is_alive()
                ):
                    raise AssertionError(
                        f"no stderr line like {pattern!r}:\n{''.join(self._stderr)}"
                    )
                self._changed.wait(min(left, 0.1))

    def signal(self, sig: int) -> None:
        os.killpg(self.pid, sig)

    def finish(self, timeout: float = 60.0) -> CliResult:
        try:
            returncode = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"still running after {timeout}s:\n{''.join(self._stderr)}"
            ) from None
        for reader in self._readers:
            reader.join(timeout=10)
        return CliResult(returncode, "".join(self._stdout), "".join(self._stderr))

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc_info) -> None:
        self.kill()


# -- 1. no traceback for an expected failure, as a table ---------------------------------

COMMANDS = {
    "status": ("status",),
    "status --json": ("status", "--json"),
    "alerts": ("alerts",),
    "syncs demo": ("syncs", "demo"),
    "show demo": ("show", "demo"),
    "state show demo": ("state", "show", "demo"),
    "state set demo": ("state", "set", "demo", "{}"),
    "state reset demo": ("state", "reset", "demo"),
    "run demo": ("run", "demo"),
    "resync demo": ("resync", "demo"),
    "pause demo": ("pause", "demo"),
    "resume demo": ("resume", "demo"),
    "test demo": ("test", "demo"),
    "validate": ("validate",),
}
WAREHOUSE_COMMANDS = [c for c in COMMANDS if c not in ("test demo", "validate")]
NAMED_COMMANDS = [c for c in COMMANDS if "demo" in c] + ["alerts"]  # `alerts NAME` too
FUNCTION_COMMANDS = ["run demo", "resync demo", "test demo", "validate"]  # they read secrets

INVALID_YAML = """\
warehouse: duckdb:///warehouse.duckdb
connectors:
  demo:
    function: {local: handler.py
    schedule: 1h
"""


@dataclass
class Case:
    """One command against one failure, in a folder of its own."""

    failure: str
    command: str
    root: Path = None
    config: Path = None
    args: tuple[str, ...] = ()
    drop_dac: bool = False  # run without CAP_DAC_OVERRIDE: root obeys permission bits
    expect: dict = field(default_factory=dict)

    def setup(self, root: Path) -> None:
        self.root = root
        (root / "handler.py").write_text(TRIVIAL)
        self.args = COMMANDS[self.command]
        getattr(self, f"_{self.failure}")()
        self.config = self.config or root / "connectors.yaml"

    def _closed_port(self) -> None:
        port = free_port()
        write_config(self.root, f"postgresql://postgres@127.0.0.1:{port}/test")
        self.expect = {"code": 1, "label": "warehouse error:", "names": ["127.0.0.1", str(port)]}

    def _under_a_file(self) -> None:
        (self.root / "somefile").write_text("not a folder\n")
        write_config(self.root, "duckdb:///somefile/warehouse.duckdb")
        where = str(self.root / "somefile")
        self.expect = {"code": 1, "label": "warehouse error:", "names": [where, "not a directory"]}

    def _read_only_dir(self) -> None:
        # Root ignores permission bits (CAP_DAC_OVERRIDE): the command runs with that
        # capability dropped from its bounding set, so a 0555 folder is read-only to it too.
        readonly = self.root / "readonly"
        readonly.mkdir()
        readonly.chmod(0o555)
        write_config(self.root, "duckdb:///readonly/warehouse.duckdb")
        self.drop_dac = os.geteuid() == 0
        names = [str(readonly), "permission denied"]
        self.expect = {"code": 1, "label": "warehouse error:", "names": names}

    def _unknown_scheme(self) -> None:
        write_config(self.root, "duckbd:///x.duckdb")
        config = self.root / "connectors.yaml"
        names = [f"{config}:1: warehouse:", "duckbd", "did you mean duckdb"]
        self.expect = {"code": 2, "label": "config error:", "names": names}

    def _unset_env(self) -> None:
        config = write_config(
            self.root, "duckdb:///warehouse.duckdb", secrets={"token": "${env:NOPE}"}
        )
        line = config.read_text().splitlines().index("      token: ${env:NOPE}") + 1
        names = [f"{config}:{line}: connectors.demo.secrets.token:", "NOPE"]
        self.expect = {"code": 2, "label": "config error:", "names": names}

    def _unknown_connector(self) -> None:
        config = write_config(self.root, "duckdb:///warehouse.duckdb")
        if self.command == "alerts":
            self.args = ("alerts", "nosuch")
        else:
            self.args = tuple("nosuch" if a == "demo" else a for a in self.args)
        names = [str(config), "'nosuch'", "(configured: demo)"]
        self.expect = {"code": 2, "label": "config error:", "names": names}

    def _invalid_yaml(self) -> None:
        config = self.root / "connectors.yaml"
        config.write_text(INVALID_YAML)
        names = [f"{config}:5:", "YAML syntax error", "line 4"]
        self.expect = {"code": 2, "label": "config error:", "names": names}


FAILURES = {
    "closed_port": WAREHOUSE_COMMANDS,
    "under_a_file": WAREHOUSE_COMMANDS,
    "read_only_dir": WAREHOUSE_COMMANDS,
    "unknown_scheme": list(COMMANDS),
    "unset_env": FUNCTION_COMMANDS,
    "unknown_connector": NAMED_COMMANDS,
    "invalid_yaml": list(COMMANDS),
}
CASES = [(failure, command) for failure, commands in FAILURES.items() for command in commands]
CASE_IDS = [f"{failure}:{command.replace(' ', '_')}" for failure, command in CASES]


def _can_drop_dac() -> str | None:
    """Why the read-only case cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return None
    status = Path("/proc/self/status").read_text()
    effective = int(re.search(r"^CapEff:\s*([0-9a-f]+)$", status, re.M)[1], 16)
    if not effective & (1 << 8):  # CAP_SETPCAP: needed to drop from the bounding set
        return "running as root without CAP_SETPCAP: a read-only folder cannot be made for root"
    return None


def _drop_dac_override() -> None:  # in the child, before exec; no threads run then
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _run_cases(cases: list[Case], parallel: int) -> dict[tuple[str, str], CliResult]:
    """Every case's result, `parallel` commands at a time. Processes are started from
    this thread alone (no helper threads: `preexec_fn` is only safe without them); their
    output goes to files beside the case's config, so no pipe can fill up."""
    env = cli_env()
    env.pop("NOPE", None)
    results: dict[tuple[str, str], CliResult] = {}
    pending, running = list(cases), []
    while pending or running:
        while pending and len(running) < parallel:
            case = pending.pop(0)
            with open(case.root / "cli.out", "w") as out, open(case.root / "cli.err", "w") as err:
                process = subprocess.Popen(
                    [*CLI, "-c", str(case.config), *case.args],
                    cwd=case.root,
                    env=env,
                    stdout=out,
                    stderr=err,
                    preexec_fn=_drop_dac_override if case.drop_dac else None,
                )
            running.append((case, process, time.monotonic()))
        for entry in list(running):
            case, process, started = entry
            if process.poll() is None and time.monotonic() - started < 60:
                continue
            if process.poll() is None:
                process.kill()
                process.wait()
            results[case.failure, case.command] = CliResult(
                process.returncode,
                (case.root / "cli.out").read_text(),
                (case.root / "cli.err").read_text(),
            )
            running.remove(entry)
        time.sleep(0.02)
    return results


@pytest.fixture(scope="module")
def table_results(request, tmp_path_factory) -> dict:
    """The result of each case the session selected, run together the first time asked."""
    selected = [
        (item.callspec.params["failure"], item.callspec.params["command"])
        for item in request.session.items
        if item.originalname == "test_expected_failure_is_one_line_and_an_exit_code"
    ]
    cases = []
    unusable = _can_drop_dac()
    for failure, command in selected:
        if failure == "read_only_dir" and unusable:
            continue
        case = Case(failure, command)
        case.setup(tmp_path_factory.mktemp(f"{failure}-{command.replace(' ', '-')}"))
        cases.append(case)
    results = _run_cases(cases, parallel=min(8, 2 * (os.cpu_count() or 1)))
    return {"results": results, "cases": {(c.failure, c.command): c for c in cases}}


@pytest.mark.slow  # ~80 CLI starts: 25-50 s on two cores, more than the rest of the file
@pytest.mark.parametrize(("failure", "command"), CASES, ids=CASE_IDS)
def test_expected_failure_is_one_line_and_an_exit_code(table_results, failure, command):
    if failure == "read_only_dir" and _can_drop_dac():
        pytest.skip(_can_drop_dac())
    if failure == "closed_port":
        need_psycopg()
    result = table_results["results"][failure, command]
    expect = table_results["cases"][failure, command].expect
    assert_no_traceback(result)
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr  # one line: what failed and what to do
    (line,) = lines
    assert line.startswith(expect["label"]), line
    for name in expect["names"]:
        assert name.lower() in line.lower(), (name, line)
    assert result.returncode == expect["code"], result
    assert result.stdout == "", result.stdout  # no half a report


def need_psycopg() -> None:
    if importlib.util.find_spec("psycopg") is None:
        message = "psycopg is not installed: pip install 'connector-runtime[postgres]'"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def test_a_closed_postgresql_port_fails_within_seconds(tmp_path):
    need_psycopg()
    (tmp_path / "handler.py").write_text(TRIVIAL)
    port = free_port()
    config = write_config(tmp_path, f"postgresql://postgres@127.0.0.1:{port}/test")
    started = time.monotonic()
    result = run(config, "status")
    elapsed = time.monotonic() - started
    assert result.returncode == 1 and str(port) in result.stderr, result
    # refused at once, not retried with backoff: the bound only has to tell seconds (a
    # loaded machine starts Python slowly) from the minutes retries would take
    assert "retrying" not in result.stderr, result.stderr
    assert elapsed < 30, f"`connector status` took {elapsed:.1f}s against a closed port"


# -- 2. a DuckDB file held by another process --------------------------------------------


@pytest.fixture
def paged(tmp_path) -> Iterator[Path]:
    """The PAGED handler's connectors.yaml; a page still held at the end is let go, so
    that no worker process outlives a failed test."""
    (tmp_path / "handler.py").write_text(PAGED)
    config = write_config(tmp_path, "duckdb:///warehouse.duckdb")
    # one call at a time: "the page in flight" is then the page being written (paging
    # ahead would have the next one in flight while this one commits)
    document = yaml.safe_load(config.read_text())
    document["connectors"]["demo"]["function"]["prefetch"] = False
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    yield config
    (tmp_path / "hold").unlink(missing_ok=True)


def sync_rows(config: Path) -> list[dict]:
    con = duckdb.connect(str(config.parent / "warehouse.duckdb"), read_only=True)
    try:
        cursor = con.execute(
            "SELECT sync_id, status, pages, rows_upserted, error FROM connector_runtime.syncs"
            " WHERE connector = 'demo' ORDER BY started_at"
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()


def query(config: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(config.parent / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def saved_state(config: Path) -> dict:
    rows = query(
        config,
        "SELECT CAST(state AS VARCHAR) FROM connector_runtime.state WHERE connector = 'demo'",
    )
    return json.loads(rows[0][0]) if rows else {}


def calls(root: Path) -> list[dict]:
    log = root / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def assert_every_row_once(config: Path, pages: int = PAGES) -> None:
    count, distinct, low, high = query(
        config, "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM demo.t"
    )[0]
    assert (count, distinct, low, high) == (pages * ROWS, pages * ROWS, 0, pages * ROWS - 1)


def held_page(root: Path) -> int:
    held = root / "held"
    return int(wait_until(lambda: held.exists() and held.read_text(), "the handler to hold"))


@pytest.mark.slow  # waits out a held warehouse
def test_a_warehouse_held_by_a_sync_is_waited_for_out_loud_then_one_line(tmp_path, paged):
    config = paged
    (tmp_path / "hold").write_text("2")  # pages 0 and 1 commit, page 2 waits
    with Background(config, "run", "demo") as sync:
        assert held_page(tmp_path) == 2
        env = {**cli_env(), "CONNECTOR_RUNTIME_LOCK_WAIT": "2"}
        started = time.monotonic()
        with Background(config, "status", env=env) as status:
            match, running = status.wait_for_line(
                r"waiting for the warehouse: a sync of demo by pid (\d+), up to 2 s"
            )
            said_after = time.monotonic() - started
            assert int(match[1]) == sync.pid
            assert running, "the waiting line came only when status ended, not at once"
            result = status.finish()
        waited = time.monotonic() - started
        assert_no_traceback(result)
        (line,) = error_lines(result.stderr)
        path = str(tmp_path / "warehouse.duckdb")
        assert line.startswith("warehouse error:") and path in line, line
        assert f"held by a sync of demo by pid {sync.pid} for more than 2 s" in line, line
        assert result.returncode == 1 and result.stdout == ""
        assert said_after < waited and waited >= 2, (said_after, waited)
        (tmp_path / "hold").unlink()
        done = sync.finish()
    assert done.returncode == 0, done.stderr
    assert_every_row_once(config)


def test_the_lock_wait_variable_must_be_seconds(paged):
    config = paged
    result = run(config, "status", env={**cli_env(), "CONNECTOR_RUNTIME_LOCK_WAIT": "soon"})
    assert_no_traceback(result)
    assert error_lines(result.stderr) == [
        "config error: CONNECTOR_RUNTIME_LOCK_WAIT='soon': not a number of seconds (e.g. 60 or 0.5)"
    ]
    assert result.returncode == 2


# -- 3. signals on `connector run` ---------------------------------------------------------


@pytest.mark.slow  # signals mid-sync, runs resumed
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_run_after_the_page_and_the_next_run_resumes(tmp_path, paged, sig, code):
    config = paged
    (tmp_path / "hold").write_text("3")  # pages 0-2 commit, page 3 is in flight
    with Background(config, "run", "demo") as sync:
        assert held_page(tmp_path) == 3
        sync.signal(sig)
        sync.wait_for_line(rf"{sig.name}: stopping after the current page")
        (tmp_path / "hold").unlink()  # the page in flight finishes, and is committed
        result = sync.finish()
    assert_no_traceback(result)
    assert result.returncode == code, result.stderr
    resume = [line for line in result.stderr.splitlines() if "connector run demo" in line]
    assert len(resume) == 1 and "interrupted after page 4" in resume[0], result.stderr
    (record,) = sync_rows(config)
    assert record["status"] == "rescheduled", record
    assert (record["pages"], record["rows_upserted"]) == (4, 4 * ROWS), record
    assert saved_state(config) == {"page": 4}
    assert_every_row_once(config, pages=4)

    again = run(config, "run", "demo")
    assert again.returncode == 0, again.stderr
    first, second = sync_rows(config)
    new_calls = [c for c in calls(tmp_path) if c["sync_id"] == second["sync_id"]]
    assert new_calls[0]["state"] == {"page": 4}  # resumed where the signal left it
    assert (second["status"], second["pages"]) == ("succeeded", PAGES - 4), second
    assert second["rows_upserted"] == (PAGES - 4) * ROWS
    assert first["status"] == "rescheduled"
    assert_every_row_once(config)


@pytest.mark.slow  # signals mid-sync, runs resumed
def test_a_second_sigint_exits_at_once_and_the_next_run_recovers(tmp_path, paged):
    config = paged
    (tmp_path / "hold").write_text("3")
    with Background(config, "run", "demo") as sync:
        assert held_page(tmp_path) == 3
        sync.signal(signal.SIGINT)
        sync.wait_for_line(r"SIGINT: stopping after the current page")
        sync.signal(signal.SIGINT)
        result = sync.finish(timeout=10)
        still_held = (tmp_path / "hold").exists()  # the page in flight never finished
    assert still_held
    assert result.returncode != 0 and result.returncode == 130, result.stderr
    assert_no_traceback(result)
    (tmp_path / "hold").unlink()
    (record,) = sync_rows(config)
    # left as it died (its pages and rows are written only when a sync ends, so they read 0)
    assert record["status"] == "running", record
    assert saved_state(config) == {"page": 3}  # the last committed page's

    again = run(config, "run", "demo")
    assert again.returncode == 0, again.stderr
    first, second = sync_rows(config)
    assert first["status"] == "failed" and "died" in first["error"], first
    assert second["status"] == "succeeded", second
    new_calls = [c for c in calls(tmp_path) if c["sync_id"] == second["sync_id"]]
    assert new_calls[0]["state"] == {"page": 3}  # the last committed page's state
    assert_every_row_once(config)


# -- 4. what the function printed ------------------------------------------------------------

SECRET = "hunter2-sekrit-value"
CHATTY = """\
import pathlib
import sys

HERE = pathlib.Path(__file__).parent


def handler(request):
    n = request["state"].get("n", 0)
    token = request["secrets"]["token"]
    for i in range(int((HERE / "lines").read_text())):
        print(f"out {n}.{i} token={token} " + "x" * 80)
    print(f"err {n} token={token}", file=sys.stderr)
    print(f"last of page {n}", flush=True)
    if (HERE / "fail").exists() and n == 2:
        raise RuntimeError("boom at page 2")
    return {
        "state": {"n": n + 1},
        "insert": {"t": [{"id": n}]},
        "schema": {"t": {"primary_key": ["id"]}},
        "hasMore": n < 3,
    }
"""


@pytest.fixture
def chatty(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DEMO_TOKEN", SECRET)
    (tmp_path / "handler.py").write_text(CHATTY)
    (tmp_path / "lines").write_text("2")
    return write_config(
        tmp_path, "duckdb:///warehouse.duckdb", secrets={"token": "${env:DEMO_TOKEN}"}
    )


def test_connector_test_shows_what_the_function_printed_masked(chatty):
    result = run(chatty, "test", "demo")
    assert result.returncode == 0, result.stderr
    assert result.said("out 0.1 token=*** ") and result.said("err 0 token=***"), result.stderr
    assert result.said("last of page 0")
    assert SECRET not in result.stdout + result.stderr


def test_a_failed_run_shows_the_last_printed_lines_after_the_alert_and_syncs_logs_keeps_them(
    chatty,
):
    (chatty.parent / "fail").write_text("")
    (chatty.parent / "lines").write_text("30")  # more lines than a failure shows
    result = run(chatty, "run", "demo")
    assert result.returncode == 1
    assert_no_traceback(result)
    assert SECRET not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    alert = next(i for i, line in enumerate(lines) if "function_error (RuntimeError): boom" in line)
    heading = next(i for i, line in enumerate(lines) if line.startswith("function output"))
    assert alert < heading, result.stderr
    shown = lines[heading + 1 :]
    assert shown[-1] == "last of page 2", result.stderr
    assert "err 2 token=***" in shown and "out 2.29 token=*** " + "x" * 80 in shown
    assert not any(line.startswith("out 0.") for line in shown)  # only the last lines

    logs = run(chatty, "syncs", "demo", "--logs")
    assert logs.returncode == 0, logs.stderr
    assert logs.printed("err 2 token=***") and logs.printed("out 0.0 token=***")
    assert logs.stdout.rstrip().endswith("last of page 2"), logs.stdout
    assert SECRET not in logs.stdout + logs.stderr


def test_the_kept_output_is_the_last_64_kb(chatty):
    (chatty.parent / "lines").write_text("250")  # 4 pages of ~28 KB: > 64 KB in all
    result = run(chatty, "run", "demo")
    assert result.returncode == 0, result.stderr
    logs = run(chatty, "syncs", "demo", "--logs", "--json")
    assert logs.returncode == 0, logs.stderr
    output = json.loads(logs.stdout)["function_output"]
    assert len(output.encode()) <= 64 * 1024
    # bounded, not emptied: 64 KB are kept before masking, which shortens every line here
    assert len(output.encode()) > 48 * 1024
    assert re.match(r"out \d\.\d+ token=\*\*\* x{80}\n", output), output[:200]  # whole lines
    assert output.endswith("last of page 3"), output[-200:]
    assert "out 0.0 " not in output and "out 3.0 token=*** " in output  # oldest dropped
    assert SECRET not in output and "token=***" in output


# -- 5. validate ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("warehouse", "typo", "meant"),
    [
        ("duckbd:///x.duckdb", "duckbd", "duckdb"),
        ("postgressql://postgres@127.0.0.1/test", "postgressql", "postgresql"),
    ],
)
def test_validate_suggests_the_scheme_meant(tmp_path, warehouse, typo, meant):
    (tmp_path / "handler.py").write_text(TRIVIAL)
    config = write_config(tmp_path, warehouse)
    result = run(config, "validate")
    assert result.returncode == 2
    assert_no_traceback(result)
    (line,) = error_lines(result.stderr)
    assert f"{config}:1: warehouse:" in line and typo in line, line
    assert f"did you mean {meant}?" in line, line


UNSET = [
    (
        "secret",
        {"secrets": {"token": "${env:NOPE_X}"}},
        "      token: ${env:NOPE_X}",
        "connectors.demo.secrets.token",
    ),
    (
        "header",
        {
            "function": {
                "http": "https://fn.example.com/sync",
                "headers": {"Authorization": "Bearer ${env:NOPE_X}"},
            }
        },
        "        Authorization: Bearer ${env:NOPE_X}",
        "connectors.demo.function.headers.Authorization",
    ),
    (
        "webhook",
        {"notify": [{"webhook": "https://hooks.example.com/${env:NOPE_X}"}]},
        "    - webhook: https://hooks.example.com/${env:NOPE_X}",
        "connectors.demo.notify.0.webhook",
    ),
]


@pytest.mark.parametrize(
    ("where", "options", "text", "field_name"), UNSET, ids=[u[0] for u in UNSET]
)
def test_validate_names_file_line_and_field_of_an_unset_variable(
    tmp_path, where, options, text, field_name
):
    (tmp_path / "handler.py").write_text(TRIVIAL)
    config = write_config(tmp_path, "duckdb:///warehouse.duckdb", **options)
    line = config.read_text().splitlines().index(text) + 1
    env = cli_env()
    env.pop("NOPE_X", None)
    result = run(config, "validate", env=env)
    assert result.returncode == 2, result.stderr
    assert_no_traceback(result)
    (said,) = error_lines(result.stderr)
    assert said.startswith(f"config error: {config}:{line}: {field_name}:"), said
    assert "NOPE_X" in said, said


def test_validate_names_an_unset_variable_in_a_top_level_webhook(tmp_path):
    (tmp_path / "handler.py").write_text(TRIVIAL)
    config = write_config(tmp_path, "duckdb:///warehouse.duckdb")
    document = yaml.safe_load(config.read_text())
    document["notify"] = [{"webhook": "${env:NOPE_X}"}]
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    line = config.read_text().splitlines().index("- webhook: ${env:NOPE_X}") + 1
    env = cli_env()
    env.pop("NOPE_X", None)
    result = run(config, "validate", env=env)
    assert result.returncode == 2
    (said,) = error_lines(result.stderr)
    assert said.startswith(f"config error: {config}:{line}: notify.0.webhook:"), said


# -- 6. global options after the command; a closed stdout ------------------------------------


def test_global_options_after_the_command(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "handler.py").write_text(TRIVIAL)
    config = write_config(project, "duckdb:///warehouse.duckdb")
    elsewhere = tmp_path / "elsewhere"  # no connectors.yaml here: only -c finds it
    elsewhere.mkdir()

    def connector(*args: str) -> CliResult:
        done = subprocess.run(
            [*CLI, *args], cwd=elsewhere, env=cli_env(), capture_output=True, text=True, timeout=90
        )
        return CliResult(done.returncode, done.stdout, done.stderr)

    ran = connector("run", "demo", "-v", "-c", str(config))
    assert ran.returncode == 0, ran.stderr
    assert '"event": "sync_started"' in ran.stderr  # -v: info logs too
    status = connector("status", "-c", str(config))
    assert status.returncode == 0, status.stderr
    assert status.printed("demo") and status.printed("succeeded")
    assert connector("status").returncode == 2  # and without -c it is not found


@pytest.mark.parametrize(
    "args",
    [("status",), ("status", "--json"), ("syncs", "demo", "--logs"), ("state", "show", "demo")],
    ids=lambda args: "_".join(args),
)
def test_a_closed_stdout_is_no_error(tmp_path, args):
    (tmp_path / "handler.py").write_text(TRIVIAL)
    config = write_config(tmp_path, "duckdb:///warehouse.duckdb")
    env = cli_env()
    env.pop("PYTHONUNBUFFERED")  # as a user's shell has it: stdout is block-buffered
    reader, writer = os.pipe()
    os.close(reader)  # `| head -0`: the reader left before the first write
    try:
        done = subprocess.run(
            [*CLI, "-c", str(config), *args],
            cwd=tmp_path,
            env=env,
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=90,
        )
    finally:
        os.close(writer)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
