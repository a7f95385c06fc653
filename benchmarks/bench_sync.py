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
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONNECTOR = "bench"
TABLE = "customers"
PHASES = {1: "insert", 2: "update"}

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


def customer(i, version=1):
    return {
        "id": i,
        "name": f"customer {i} v{version}",
        "amount": i * 0.25 + (version - 1) * 1000.0,
        "active": (i + version) % 2 == 0,
        "updated_at": f"2026-{version:02d}-{i % 28 + 1:02d}T{i % 24:02d}:{i % 60:02d}:{i // 60 % 60:02d}Z",
        "tags": [f"t{i % 7}", f"v{version}"],
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
    if args.rows < 100 or args.page_size < 1:
        sys.exit("--rows must be at least 100 and --page-size at least 1")
    with tempfile.TemporaryDirectory(prefix="bench_sync_") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        return run_benchmark(workdir, args.rows, args.page_size, profile=args.profile)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the first sync")
    parser.add_argument("--page-size", type=int, default=10_000, help="rows per page")
    parser.add_argument(
        "--profile", action="store_true", help="run the insert sync under cProfile, print top 25"
    )
    parser.add_argument(
        "--workdir", help="write handler, config and warehouse here and keep them (must be empty)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one phase here
    parser.add_argument("--phase", type=int, default=1, help=argparse.SUPPRESS)
    return parser


# -- the parent: set up, run each phase in a fresh process, check, report --------------


def run_benchmark(workdir: Path, rows: int, page_size: int, *, profile: bool) -> int:
    constants = f"ROWS = {rows}\nPAGE_SIZE = {page_size}\n\n"
    (workdir / "handler.py").write_text(constants + HANDLER)
    (workdir / "connectors.yaml").write_text(CONFIG)
    handler = _load_handler(constants + HANDLER)
    results, failed = [], False
    for phase in PHASES:
        result = _run_phase(workdir, phase, profile=profile and phase == 1)
        problems = verify(workdir, phase, result, handler, page_size)
        results.append(result)
        for problem in problems:
            print(f"FAIL phase {phase} ({PHASES[phase]}): {problem}", file=sys.stderr)
        failed |= bool(problems)
    _report(results, rows, page_size, profile=profile)
    if failed:
        print("benchmark FAILED: the warehouse does not hold what was sent", file=sys.stderr)
        return 1
    print("all checks passed: rows, columns, deletes, state and sync records")
    return 0


def _load_handler(source: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(source, "handler.py", "exec"), namespace)  # the same code the worker runs
    return namespace


def _run_phase(workdir: Path, phase: int, *, profile: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(workdir), "--phase", str(phase)]
    subprocess.run(command + (["--profile"] if profile else []), check=True)
    return json.loads((workdir / f"phase{phase}.json").read_text())


def _report(results: list[dict], rows: int, page_size: int, *, profile: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"sync benchmark: {rows:,} rows, {page_size:,}-row pages, local process isolation → DuckDB"
    table = Table(title=title)
    for column in ("phase", "rows", "seconds", "rows/s", "peak RSS runtime MB", "peak RSS worker MB", "worker CPU s"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for result in results:
        name = PHASES[result["phase"]] + (" (cProfile)" if result["profiled"] else "")
        table.add_row(
            f"{result['phase']} {name}",
            f"{result['rows_sent']:,}",
            f"{result['seconds']:.2f}",
            f"{result['rows_sent'] / result['seconds']:,.0f}",
            f"{result['rss_runtime_mb']:.0f}",
            f"{result['rss_worker_mb']:.0f}",
            f"{result['worker_cpu_s']:.2f}",
        )
    console = Console()
    console.print(table)
    before = ", ".join(f"{r['rss_before_mb']:.0f}" for r in results)
    console.print(
        f"runtime RSS after imports, before the sync: {before} MB; the worker is the "
        "function's process (handler + JSON encoding)",
        highlight=False,
    )
    if profile:
        console.print("phase 1 ran under cProfile: its seconds are inflated", highlight=False)


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
    """Every row, column by column, against the handler's own row function."""
    columns = {name for name, *_ in con.execute(f"DESCRIBE {CONNECTOR}.{TABLE}").fetchall()}
    deleted_sql = "_fivetran_deleted" if "_fivetran_deleted" in columns else "false"
    stored = con.execute(
        f"SELECT id, name, amount, active, strftime(updated_at, '%Y-%m-%dT%H:%M:%SZ'),"
        f" CAST(tags AS VARCHAR), CAST(attrs AS VARCHAR), {deleted_sql}, _fivetran_synced IS NULL"
        f" FROM {CONNECTOR}.{TABLE} ORDER BY id"
    ).fetchall()
    rows, customer = handler["ROWS"], handler["customer"]
    problems = []
    if len(stored) != rows:
        problems.append(f"{len(stored):,} rows in {CONNECTOR}.{TABLE}, expected {rows:,}")
    updated = {handler["updated_id"](op) for op in range(handler["UPDATES"])}
    deleted = {handler["deleted_id"](op) for op in range(handler["UPDATES"], handler["UPDATES"] + handler["DELETES"])}
    if phase == 1:
        updated, deleted = set(), set()
    wrong = []
    for got in stored:
        i = got[0]
        want = customer(i, 2 if i in updated else 1)
        expected = (
            i,
            want["name"],
            want["amount"],
            want["active"],
            want["updated_at"],
            want["tags"],
            want["attrs"],
            i in deleted,
            False,
        )
        actual = (*got[:5], json.loads(got[5]), json.loads(got[6]), bool(got[7]), got[8])
        if actual != expected:
            wrong.append((actual, expected))
    ids = [row[0] for row in stored]
    if ids != list(range(1, rows + 1)):
        problems.append("ids are not exactly 1..ROWS once each (duplicates or gaps)")
    marked = sum(1 for row in stored if row[7])
    if marked != len(deleted):
        problems.append(f"{marked:,} rows have _fivetran_deleted = true, expected {len(deleted):,}")
    if wrong:
        actual, expected = wrong[0]
        problems.append(f"{len(wrong):,} rows differ; first: stored {actual}, sent {expected}")
    return problems


# -- the child: one sync in this process, measured ---------------------------------------


def run_child(workdir: Path, phase: int, *, profile: bool) -> int:
    """Run one sync through `build_job(load_config(...))` + `run_sync`, as the CLI does."""
    from connector_runtime.cli import configure_logging
    from connector_runtime.config import load_config
    from connector_runtime.jobs import build_job
    from connector_runtime.sync import run_sync

    import destinations.duckdb  # noqa: F401  imported once per process, as `serve` would

    configure_logging()
    job = build_job(load_config(workdir / "connectors.yaml"), CONNECTOR)
    first_state = _saved_state(job)
    rows_sent = 0

    def on_page(progress) -> None:
        nonlocal rows_sent
        rows_sent += progress.rows

    rss_before = _peak_rss_mb(resource.RUSAGE_SELF)
    profiler = _start_profiler() if profile else None
    started = time.perf_counter()
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
        "rss_runtime_mb": _peak_rss_mb(resource.RUSAGE_SELF),
        "rss_worker_mb": _peak_rss_mb(resource.RUSAGE_CHILDREN),
        "worker_cpu_s": children.ru_utime + children.ru_stime,
        "first_state": first_state,
    }
    (workdir / f"phase{phase}.json").write_text(json.dumps(result))
    return 0


def _saved_state(job) -> dict[str, Any]:
    from connector_runtime.destination import open_destination

    with open_destination(job.destination_url) as destination:
        return destination.load(job.connector).state


def _peak_rss_mb(who: int) -> float:
    peak = resource.getrusage(who).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


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
