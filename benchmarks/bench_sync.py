"""Throughput and memory of a sync through the real code path, checked for correctness.

Run it:  make bench        (or .venv/bin/python benchmarks/bench_sync.py --rows 20000)

A handler file and a connectors.yaml are written into a temporary directory; the
connector runs under the local runner's default `process` isolation (a real worker
subprocess) into a real DuckDB file. Two syncs of the same connector, each in a fresh
runtime process so its peak memory is its own:

1. insert: ROWS rows of 7 columns (int key, string, float, bool, UTC timestamp text,
   list, object) in PAGE_SIZE-row pages;
2. update: the handler sees `phase` in its state, re-sends 10% of the keys with new
   values and deletes 1%.

After each sync the warehouse is read back and compared with what the handler sent:
every row and column, `_fivetran_deleted`, the saved state, the `syncs` row. Any
difference exits 1. `--profile` runs the insert sync under cProfile (the runtime
process only; the worker's time shows up as waiting in the invoker).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CONNECTOR = "bench"
TABLE = "customers"
PHASES = {1: "insert", 2: "update"}
WORKER_MODULE = b"connector_runtime.invokers._worker"  # what LocalPythonInvoker runs

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

CONFIG = f"""\
warehouse: duckdb:///warehouse.duckdb
connectors:
  {CONNECTOR}:
    function:
      local: handler.py
      timeout: 10m
"""

EXPECTED_TYPES = {
    "id": "BIGINT",
    "name": "VARCHAR",
    "amount": "DOUBLE",
    "active": "BOOLEAN",
    "updated_at": "TIMESTAMP WITH TIME ZONE",
    "tags": "JSON",
    "attrs": "JSON",
}


def main() -> int:
    args = _parser().parse_args()
    if args.child:
        return run_child(Path(args.child), args.phase, profile=args.profile)
    if args.rows < 100 or args.page_size < 1 or args.repeat < 1:
        sys.exit("--rows must be at least 100, --page-size and --repeat at least 1")
    with tempfile.TemporaryDirectory(prefix="bench_sync_") as tmp:
        return run_benchmark(
            Path(args.workdir or tmp),
            args.rows,
            args.page_size,
            profile=args.profile,
            repeat=args.repeat,
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the first sync")
    parser.add_argument("--page-size", type=int, default=10_000, help="rows per page")
    parser.add_argument(
        "--profile", action="store_true", help="run the insert sync under cProfile, print top 25"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run both phases N times, report the median"
    )
    parser.add_argument(
        "--workdir", help="keep handler, config and warehouse here (runN/ must not exist yet)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one phase here
    parser.add_argument("--phase", type=int, default=1, help=argparse.SUPPRESS)
    return parser


# -- the parent: set up, run each phase in a fresh process, check, report --------------


def run_benchmark(workdir: Path, rows: int, page_size: int, *, profile: bool, repeat: int) -> int:
    """`repeat` runs of both phases, each in a fresh directory; returns the exit status."""
    runs, failed = [], False
    for number in range(1, repeat + 1):
        results, problems = _run_once(
            workdir / f"run{number}", rows, page_size, profile=profile and number == 1
        )
        runs.append(results)
        for problem in problems:
            print(f"FAIL run {number}, {problem}", file=sys.stderr)
        failed |= bool(problems)
    _report(runs, rows, page_size)
    if failed:
        print("benchmark FAILED: the warehouse does not hold what was sent", file=sys.stderr)
        return 1
    print("all checks passed: rows, columns, deletes, state and sync records")
    return 0


def _run_once(
    workdir: Path, rows: int, page_size: int, *, profile: bool
) -> tuple[list[dict], list[str]]:
    workdir.mkdir(parents=True)
    constants = f"ROWS = {rows}\nPAGE_SIZE = {page_size}\n\n"
    (workdir / "handler.py").write_text(constants + HANDLER)
    (workdir / "connectors.yaml").write_text(CONFIG)
    handler = _load_handler(constants + HANDLER)
    results, problems = [], []
    for phase in PHASES:
        result = _run_phase(workdir, phase, profile=profile and phase == 1)
        results.append(result)
        found = verify(workdir, phase, result, handler, page_size)
        problems += [f"phase {phase} ({PHASES[phase]}): {problem}" for problem in found]
    return results, problems


def _load_handler(source: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(source, "handler.py", "exec"), namespace)  # the same code the worker runs
    return namespace


def _run_phase(workdir: Path, phase: int, *, profile: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(workdir), "--phase", str(phase)]
    subprocess.run(command + (["--profile"] if profile else []), check=True)
    return json.loads((workdir / f"phase{phase}.json").read_text())


COLUMNS = (
    "phase",
    "rows",
    "seconds",
    "rows/s",
    "peak RSS runtime MB",
    "peak RSS worker MB",
    "worker CPU s",
)


def _report(runs: list[list[dict]], rows: int, page_size: int) -> None:
    """One line per phase: the median run (by seconds); the spread below when repeated."""
    from rich.console import Console
    from rich.table import Table

    title = f"sync benchmark: {rows:,} rows, {page_size:,}-row pages, local process → DuckDB"
    if len(runs) > 1:
        title += f", median of {len(runs)} runs"
    table = Table(*COLUMNS, title=title)
    for column in table.columns[1:]:
        column.justify = "right"
    console = Console()
    for index, phase in enumerate(PHASES):
        timed = sorted((run[index] for run in runs), key=lambda result: result["seconds"])
        table.add_row(*_cells(phase, timed[len(timed) // 2]))
    console.print(table)
    for index, phase in enumerate(PHASES):
        if len(runs) > 1:
            seconds = ", ".join(f"{run[index]['seconds']:.2f}" for run in runs)
            console.print(f"phase {phase} seconds by run: {seconds}", highlight=False)
    before = max(result["rss_before_mb"] for run in runs for result in run)
    console.print(
        f"runtime RSS after imports, before the sync: {before:.0f} MB; the worker is the "
        "function's own process (handler + JSON encoding)",
        highlight=False,
    )
    if runs[0][0]["profiled"]:
        console.print(
            "run 1's phase 1 ran under cProfile: its seconds are inflated", highlight=False
        )


def _cells(phase: int, result: dict) -> list[str]:
    name = PHASES[phase] + (" (cProfile)" if result["profiled"] else "")
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
    workdir: Path, phase: int, result: dict, handler: dict[str, Any], page_size: int
) -> list[str]:
    """Every way the warehouse could differ from what the handler sent, as messages."""
    if result["status"] != "succeeded":
        return [f"sync {result['status']}: {result['error']}"]
    import duckdb

    rows, updates, deletes = handler["ROWS"], handler["UPDATES"], handler["DELETES"]
    sent = rows if phase == 1 else updates + deletes
    con = duckdb.connect(str(workdir / "warehouse.duckdb"), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        problems = _check_sync_record(con, result, sent, page_size, phase, updates, deletes)
        problems += _check_state(con, handler, result, phase)
        problems += _check_types(con)
        problems += _check_rows(con, handler, phase)
    finally:
        con.close()
    if result["rows_sent"] != sent:
        problems.append(f"the function sent {result['rows_sent']:,} rows, expected {sent:,}")
    return problems


def _check_sync_record(con, result, sent, page_size, phase, updates, deletes) -> list[str]:
    pages = math.ceil(sent / page_size)
    upserted, deleted = (sent, 0) if phase == 1 else (updates, deletes)
    expected = ("succeeded", pages, upserted, deleted)
    record = con.execute(
        "SELECT status, pages, rows_upserted, rows_deleted FROM connector_runtime.syncs"
        " WHERE sync_id = ?",
        [result["sync_id"]],
    ).fetchone()
    if record != expected:
        return [f"syncs row (status, pages, upserted, deleted) is {record}, expected {expected}"]
    return []


def _check_state(con, handler, result, phase) -> list[str]:
    """The saved state is the state of the sync's last page (replayed from the handler)."""
    saved = con.execute(
        "SELECT CAST(state AS VARCHAR) FROM connector_runtime.state WHERE connector = ?",
        [CONNECTOR],
    ).fetchone()
    saved = json.loads(saved[0]) if saved else None
    page = handler["handler"]({"state": result["first_state"]})
    while page["hasMore"]:
        page = handler["handler"]({"state": page["state"]})
    if saved != page["state"]:
        return [f"saved state {saved} differs from the last page's state {page['state']}"]
    expected_phase = "update" if phase == 1 else "done"
    if saved.get("phase") != expected_phase:
        return [f"saved state {saved} should be in phase {expected_phase!r}"]
    return []


def _check_types(con) -> list[str]:
    described = con.execute(f"DESCRIBE {CONNECTOR}.{TABLE}").fetchall()
    types = {name: kind for name, kind, *_ in described if name in EXPECTED_TYPES}
    if types != EXPECTED_TYPES:
        return [f"column types {types}, expected {EXPECTED_TYPES}"]
    return []


def _check_rows(con, handler, phase) -> list[str]:
    """Every row, column by column, against the handler's own row function; also
    `_fivetran_deleted` and `_fivetran_synced` (the start of the sync that last wrote it)."""
    stored = _stored_rows(con)
    syncs = [
        r[0]
        for r in con.execute(
            "SELECT epoch_us(started_at) FROM connector_runtime.syncs WHERE connector = ?"
            " ORDER BY started_at",
            [CONNECTOR],
        ).fetchall()
    ]
    rows, updates, deletes = handler["ROWS"], handler["UPDATES"], handler["DELETES"]
    updated, deleted = set(), set()
    if phase == 2:
        updated = {handler["updated_id"](op) for op in range(updates)}
        deleted = {handler["deleted_id"](op) for op in range(updates, updates + deletes)}
    wrong = []
    for got in stored:
        i = got[0]
        want = handler["customer"](i, 2 if i in updated else 1)
        expected = (
            *(want[c] for c in EXPECTED_TYPES),
            i in deleted,
            syncs[-1] if i in updated | deleted else syncs[0],
        )
        actual = (*got[:5], json.loads(got[5]), json.loads(got[6]), *got[7:])
        if actual != expected:
            wrong.append((actual, expected))
    problems = []
    if len(stored) != rows:
        problems.append(f"{len(stored):,} rows in {CONNECTOR}.{TABLE}, expected {rows:,}")
    if [row[0] for row in stored] != list(range(1, rows + 1)):
        problems.append("ids are not exactly 1..ROWS once each (duplicates or gaps)")
    marked = sum(1 for row in stored if row[7] is True)
    if marked != len(deleted):
        problems.append(f"{marked:,} rows have _fivetran_deleted = true, expected {len(deleted):,}")
    if wrong:
        actual, expected = wrong[0]
        problems.append(f"{len(wrong):,} rows differ; first: stored {actual}, sent {expected}")
    return problems


def _stored_rows(con) -> list[tuple]:
    """The table in id order, as the handler's values plus deleted flag and synced time."""
    columns = {name for name, *_ in con.execute(f"DESCRIBE {CONNECTOR}.{TABLE}").fetchall()}
    deleted = "_fivetran_deleted" if "_fivetran_deleted" in columns else "false"
    return con.execute(
        "SELECT id, name, amount, active, strftime(updated_at, '%Y-%m-%dT%H:%M:%SZ'),"
        f" CAST(tags AS VARCHAR), CAST(attrs AS VARCHAR), {deleted}, epoch_us(_fivetran_synced)"
        f" FROM {CONNECTOR}.{TABLE} ORDER BY id"
    ).fetchall()


# -- the child: one sync in this process, measured ---------------------------------------


def run_child(workdir: Path, phase: int, *, profile: bool) -> int:
    """Run one sync through `build_job(load_config(...))` + `run_sync`, as the CLI does."""
    import destinations.duckdb  # noqa: F401  imported once per process, as `serve` would
    from connector_runtime.cli import configure_logging
    from connector_runtime.config import load_config
    from connector_runtime.jobs import build_job
    from connector_runtime.sync import run_sync

    configure_logging()
    job = build_job(load_config(workdir / "connectors.yaml"), CONNECTOR)
    first_state = _saved_state(job)
    rows_sent = 0

    def on_page(progress) -> None:
        nonlocal rows_sent
        rows_sent += progress.rows

    rss_before = _peak_rss_mb()
    workers = _WorkerPeak()
    profiler = _start_profiler() if profile else None
    started = time.perf_counter()
    with workers:
        outcome = run_sync(job, on_page=on_page)
    seconds = time.perf_counter() - started
    if profiler is not None:
        _print_profile(profiler)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {
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
        "worker_cpu_s": children.ru_utime + children.ru_stime,
        "first_state": first_state,
    }
    (workdir / f"phase{phase}.json").write_text(json.dumps(result))
    return 0


def _saved_state(job) -> dict[str, Any]:
    from connector_runtime.destination import open_destination

    with open_destination(job.destination_url) as destination:
        return destination.load(job.connector).state


def _peak_rss_mb() -> float:
    """This process's peak RSS since it was exec'd (VmHWM).

    Not `getrusage(RUSAGE_SELF).ru_maxrss` on Linux: it keeps the high-water mark of
    the process this one was forked from, so phase 2 would inherit the size of the
    parent that just checked phase 1's 200,000 rows.
    """
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

    INTERVAL = 0.01

    def __init__(self) -> None:
        self.peaks: dict[int, int] = {}  # pid -> VmHWM in KiB
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def peak_mb(self) -> float:
        return max(self.peaks.values(), default=0) / 1024

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


def _print_profile(profiler) -> None:
    import pstats

    profiler.disable()
    print("\n== cProfile of phase 1 (runtime process), top 25 by cumulative time ==")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    sys.exit(main())
