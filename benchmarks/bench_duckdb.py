"""DuckDB rows of `make bench` beyond the two phases (issue 16), run from `bench_sync.py`.

1. memory: the insert and update syncs with `--memory-rows` rows (default 1,000,000),
   checked row by row like the main runs; the runtime's peak RSS against the main runs'
   (goal: within 10%).
2. incremental: one 10,000-row update page, on scattered ids, into a 10,000-row table
   and into a `--incremental-rows`-row table (default 10,000,000). The small table is
   synced for real; the big one gets its other rows from DuckDB's `range()` (the same
   values the handler would send, computed in SQL), then the same real update sync runs
   on it: an empty page first (the file opened, the worker started), then the page that
   is timed, from the empty page's commit to its own. Every row of the table is then
   compared with what it should hold, in SQL. Goal: the big table's page at most 2× the
   small one's.
3. paging ahead: the insert sync of `PREFETCH_PAGES` pages by a function that sleeps
   50 ms per call (a Lambda round trip), with `prefetch: true` and `prefetch: false`
   side by side. From the second page on, a page takes about max(invoke, apply) with
   paging ahead and their sum without; invoke and apply are measured in the run without
   (the time in `_Sync.apply` is planning and writing). Goal: within 1.2× of max.

Every part alternates its variants run by run (small/big table, on/off, before/now), so
load on a shared machine weighs on both sides alike.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import bench_sync as bench
from bench_report import BenchRow, Goal

INCREMENTAL_PAGE = 10_000
INCREMENTAL_SEED = 16  # the scattered ids of the update page
INCREMENTAL_GOAL = Goal(at_most=2.0)
MEMORY_GOAL = Goal(at_most=10.0)  # % over the main runs' peak
PREFETCH_PAGES = 10
PREFETCH_SLEEP = 0.05
PREFETCH_GOAL_FACTOR = 1.2  # × max(invoke, apply)
MAIN_ROWS = ("duckdb insert", "duckdb update")

# After the bench handler: the incremental connector's own `handler`. It seeds the table
# with ROWS rows, then (phase "update") answers one empty page, then the timed page.
INCREMENTAL_HANDLER = """

TABLE_ROWS = {table_rows}
UPDATED = random.Random({seed}).sample(range(1, TABLE_ROWS + 1), {page})


def handler(request):
    state = request["state"]
    phase = state.get("phase", "insert")
    if phase == "insert":
        return insert_page(state.get("next", 0))
    if phase == "update":
        return {{"state": {{"phase": "timed"}}, "schema": SCHEMA, "hasMore": True}}
    if phase == "timed":
        rows = [customer(i, 2) for i in UPDATED]
        return {{"state": {{"phase": "done"}}, "insert": {{TABLE: rows}}, "schema": SCHEMA}}
    return {{"state": state}}
"""

# The handler's `customer(i, v)` in SQL, for rows made by range() and for the checks.
VALUES_SQL = {
    "name": "'customer ' || {i} || ' v' || {v}",
    "amount": "{i} * 0.25::DOUBLE + ({v} - 1) * 1000.0::DOUBLE",
    "active": "({i} + {v}) % 2 = 0",
    "updated_at": "make_timestamptz(2026, {v}, ({i} % 1680) % 28 + 1, ({i} % 1680) % 24,"
    " ({i} % 1680) % 60, 0, 'UTC')",
    "tags": "('[\"t' || ({i} % 7) || '\",\"v' || {v} || '\"]')::JSON",
    "attrs": "('{{\"tier\":' || ({i} % 3) || ',\"version\":' || {v} || '}}')::JSON",
}


def run(
    args, workdir: Path, variants: dict[str, Path | None], figures_of: dict[str, list[BenchRow]]
) -> list[str]:
    """The three parts for each variant, their rows added to `figures_of[variant]` (which
    holds the main runs' rows already); returns the problems found by the checks."""
    problems: list[str] = []
    parts = [
        (args.memory_rows, memory_rows),
        (args.incremental_rows, incremental_rows),
        (args.prefetch == "on", prefetch_rows),
    ]
    for wanted, part in parts:
        if wanted:
            found, trouble = part(args, workdir, variants, figures_of)
            for variant, figures in found.items():
                figures_of[variant] += figures
            problems += trouble
    return problems


def main_peaks(figures: list[BenchRow]) -> list[float]:
    """The runtime's peak RSS of each main DuckDB run, over its insert and update."""
    by_phase = [r.detail.get("peak_rss_mb", []) for r in figures if r.name in MAIN_ROWS]
    return [max(peaks) for peaks in zip(*by_phase, strict=True)] if by_phase else []


# -- 1. memory ----------------------------------------------------------------------------


def memory_rows(args, workdir: Path, variants, figures_of) -> tuple[dict, list[str]]:
    """Peak RSS of the runtime over both phases with `--memory-rows` rows, over the
    main runs' (read from each variant's throughput rows in `figures_of`)."""
    found: dict[str, list[BenchRow]] = {}
    problems: list[str] = []
    target = bench.DuckDBTarget()
    for variant, code in variants.items():
        with bench.running(code):
            results, trouble = bench._run_once(
                target,
                workdir / variant / "memory",
                args.memory_rows,
                args.page_size,
                profile=False,
            )
        problems += [f"memory run ({variant}), {problem}" for problem in trouble]
        peak = max(result["rss_runtime_mb"] for result in results)
        main = main_peaks(figures_of[variant])
        name = f"duckdb peak RSS, {args.memory_rows:,} rows over {args.rows:,}"
        if not main:
            found[variant] = [BenchRow.not_run(name, "%", MEMORY_GOAL, "no main DuckDB run")]
            continue
        growth = (peak / statistics.median(main) - 1) * 100
        detail = {"peak_mb": peak, "main_peaks_mb": main}
        note = f"{peak:.0f} MB against {statistics.median(main):.0f} MB"
        found[variant] = [BenchRow(name, growth, "%", MEMORY_GOAL, note=note, detail=detail)]
    return found, problems


# -- 2. incremental cost ------------------------------------------------------------------


def incremental_rows(args, workdir: Path, variants, figures_of) -> tuple[dict, list[str]]:
    big = args.incremental_rows
    sizes = (INCREMENTAL_PAGE, big)
    problems: list[str] = []
    try:
        bases = {
            size: _incremental_base(workdir / "incremental" / f"{size}", size) for size in sizes
        }
    except RuntimeError as exc:
        name = f"duckdb update page, {big:,}-row table over {sizes[0]:,}"
        row = BenchRow.not_run(name, "×", INCREMENTAL_GOAL, str(exc))
        return {variant: [row] for variant in variants}, [f"incremental: {exc}"]
    pages: dict[str, dict[int, list[float]]] = {v: {size: [] for size in sizes} for v in variants}
    for number in range(1, args.repeat + 1):
        for variant, code in variants.items():
            for size in sizes:
                run_dir = workdir / "incremental" / variant / f"{size}-run{number}"
                shutil.copytree(bases[size], run_dir)
                with bench.running(code):
                    result = bench._run_phase(run_dir, 2, bench.CONNECTOR, "duckdb", profile=False)
                trouble = _check_incremental(run_dir, size, result)
                problems += [f"incremental, {size:,} rows ({variant}): {t}" for t in trouble]
                if not trouble:
                    pages[variant][size].append(result["page_times"][1] - result["page_times"][0])
                shutil.rmtree(run_dir)
    found = {}
    for variant, by_size in pages.items():
        small, large = by_size[sizes[0]], by_size[big]
        name = f"duckdb update page, {big:,}-row table over {sizes[0]:,}"
        if not small or not large:
            found[variant] = [BenchRow.not_run(name, "×", INCREMENTAL_GOAL, "a check failed")]
            continue
        ratios = [b / s for s, b in zip(small, large, strict=False)]
        detail = {"small_page_s": small, "big_page_s": large}
        note = (
            f"{INCREMENTAL_PAGE:,} scattered ids: {statistics.median(small) * 1000:.0f} ms into "
            f"{sizes[0]:,} rows, {statistics.median(large) * 1000:.0f} ms into {big:,}"
        )
        found[variant] = [
            BenchRow.of_runs(name, ratios, "×", INCREMENTAL_GOAL, note=note, detail=detail)
        ]
    return found, problems


def _incremental_base(base: Path, table_rows: int) -> Path:
    """A warehouse after the seeding sync (INCREMENTAL_PAGE rows, synced for real) and,
    for a bigger table, the rest of its rows from range(); state at phase "update"."""
    import duckdb

    base.mkdir(parents=True)
    seeded = min(table_rows, INCREMENTAL_PAGE)
    source = bench.handler_source(seeded, INCREMENTAL_PAGE)
    source = (
        "import random\n"
        + source
        + INCREMENTAL_HANDLER.format(
            table_rows=table_rows, seed=INCREMENTAL_SEED, page=INCREMENTAL_PAGE
        )
    )
    (base / "handler.py").write_text(source)
    url = json.dumps("duckdb:///warehouse.duckdb")
    (base / "connectors.yaml").write_text(bench.CONFIG.format(url=url, connector=bench.CONNECTOR))
    seeding = bench._run_phase(base, 1, bench.CONNECTOR, "duckdb", profile=False)
    if seeding["status"] != "succeeded":
        raise RuntimeError(f"the seeding sync {seeding['status']}: {seeding['error']}")
    if table_rows > seeded:
        print(f"incremental: {table_rows - seeded:,} more rows from range()", file=sys.stderr)
        con = duckdb.connect(str(base / "warehouse.duckdb"))
        try:
            con.execute("SET TimeZone = 'UTC'")
            [(synced,)] = con.execute(
                "SELECT epoch_us(started_at) FROM connector_runtime.syncs"
            ).fetchall()
            columns = ", ".join(VALUES_SQL)
            values = ", ".join(sql.format(i="i", v=1) for sql in VALUES_SQL.values())
            con.execute(
                f"INSERT INTO {bench.CONNECTOR}.{bench.TABLE} (id, {columns}, _fivetran_synced)"
                f" SELECT i, {values}, make_timestamp(?::BIGINT)::TIMESTAMPTZ"
                " FROM range(?, ?) AS r(i)",
                [synced, seeded + 1, table_rows + 1],
            )
            con.execute("CHECKPOINT")
        finally:
            con.close()
    return base


def _check_incremental(run_dir: Path, table_rows: int, result: dict) -> list[str]:
    """Every row of the table against the handler's values (version 2 for the page's
    ids, with the update sync's start as `_fivetran_synced`), in SQL; the sync's row."""
    import duckdb
    import pyarrow as pa

    if result["status"] != "succeeded":
        return [f"sync {result['status']}: {result['error']}"]
    namespace: dict[str, Any] = {}
    exec(compile((run_dir / "handler.py").read_text(), "handler.py", "exec"), namespace)
    updated = pa.table({"id": pa.array(namespace["UPDATED"], pa.int64())})
    con = duckdb.connect(str(run_dir / "warehouse.duckdb"), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        starts = [
            r[0]
            for r in con.execute(
                "SELECT epoch_us(started_at) FROM connector_runtime.syncs ORDER BY started_at"
            ).fetchall()
        ]
        record = con.execute(
            "SELECT status, pages, rows_upserted, rows_deleted FROM connector_runtime.syncs"
            " WHERE sync_id = ?",
            [result["sync_id"]],
        ).fetchall()
        con.register("updated", updated)
        table = f"{bench.CONNECTOR}.{bench.TABLE}"
        differ = " OR ".join(
            f"t.{column} IS DISTINCT FROM {sql.format(i='e.id', v='e.v')}"
            for column, sql in VALUES_SQL.items()
        )
        synced = "epoch_us(t._fivetran_synced) IS DISTINCT FROM CASE e.v WHEN 1 THEN ? ELSE ? END"
        count, distinct, wrong = con.execute(
            "WITH e AS (SELECT i AS id, CASE WHEN u.id IS NULL THEN 1 ELSE 2 END AS v"
            " FROM range(1, ?) AS r(i) LEFT JOIN updated AS u ON u.id = i)"
            f" SELECT (SELECT count(*) FROM {table}), (SELECT count(DISTINCT id) FROM {table}),"
            f" count(*) FILTER (WHERE {differ} OR {synced}) FROM e LEFT JOIN {table} AS t USING (id)",
            [table_rows + 1, starts[0], starts[-1]],
        ).fetchall()[0]
        state = con.execute("SELECT CAST(state AS VARCHAR) FROM connector_runtime.state").fetchall()
    finally:
        con.close()
    problems = []
    if record != [("succeeded", 2, INCREMENTAL_PAGE, 0)]:
        problems.append(f"syncs row {record}, expected ('succeeded', 2, {INCREMENTAL_PAGE}, 0)")
    if (count, distinct) != (table_rows, table_rows):
        problems.append(f"{count:,} rows ({distinct:,} ids), expected {table_rows:,}")
    if wrong:
        problems.append(f"{wrong:,} rows differ from what the handler sent")
    if len(state) != 1 or json.loads(state[0][0]) != {"phase": "done"}:
        problems.append(f"saved state {state}, expected phase done")
    return problems


# -- 3. paging ahead ----------------------------------------------------------------------


def prefetch_rows(args, workdir: Path, variants, figures_of) -> tuple[dict, list[str]]:
    rows = PREFETCH_PAGES * args.page_size
    source = bench.handler_source(rows, args.page_size, sleep=PREFETCH_SLEEP)
    handler = bench._load_handler(source)
    problems: list[str] = []
    per_page: dict[str, dict[bool, list[dict]]] = {v: {True: [], False: []} for v in variants}
    for number in range(1, args.repeat + 1):
        for variant, code in variants.items():
            # an older checkout (`--baseline`) may predate paging ahead and its setting:
            # it runs as written, which is paging ahead's "off"
            pages_ahead = code is None or _has_prefetch(code)
            for prefetch in (True, False) if pages_ahead else (False,):
                run_dir = workdir / "prefetch" / variant / f"{'on' if prefetch else 'off'}{number}"
                run_dir.mkdir(parents=True)
                (run_dir / "handler.py").write_text(source)
                config = bench.CONFIG.format(
                    url=json.dumps("duckdb:///warehouse.duckdb"), connector=bench.CONNECTOR
                )
                if not prefetch and pages_ahead:
                    config = config.replace(
                        "timeout: 10m\n", "timeout: 10m\n      prefetch: false\n"
                    )
                (run_dir / "connectors.yaml").write_text(config)
                with bench.running(code):
                    result = bench._run_phase(run_dir, 1, bench.CONNECTOR, "duckdb", profile=False)
                found = bench.verify(
                    bench.DuckDBTarget(),
                    run_dir,
                    bench.CONNECTOR,
                    1,
                    result,
                    handler,
                    args.page_size,
                )
                problems += [f"paging ahead ({variant}, prefetch {prefetch}): {p}" for p in found]
                if not found:
                    per_page[variant][prefetch].append(_page_figures(result))
                shutil.rmtree(run_dir)
    return {variant: _prefetch_figures(runs) for variant, runs in per_page.items()}, problems


def _has_prefetch(code: Path) -> bool:
    """Whether a checkout has paging ahead (and its `prefetch` setting)."""
    config = code / "connector_runtime" / "config.py"
    return config.exists() and "prefetch" in config.read_text()


def _page_figures(result: dict) -> dict[str, float]:
    """Seconds per page from the second page on (the first starts the worker), and the
    time in planning and writing per page."""
    times = result["page_times"]
    return {
        "page_s": (times[-1] - times[0]) / (len(times) - 1),
        "apply_s": result["apply_s"] / len(times),
    }


def _prefetch_figures(runs: dict[bool, list[dict]]) -> list[BenchRow]:
    name = f"paging ahead, {PREFETCH_SLEEP * 1000:.0f} ms function: ms per page"
    on, off = runs[True], runs[False]
    if off and not on:  # an older checkout, without paging ahead
        return [BenchRow.of_runs(f"{name}, prefetch off", [r["page_s"] * 1000 for r in off], "ms")]
    if not on or not off:
        return [BenchRow.not_run(f"{name}, prefetch on", "ms", None, "a check failed")]
    apply_ms = statistics.median(r["apply_s"] for r in off) * 1000
    invoke_ms = statistics.median(r["page_s"] for r in off) * 1000 - apply_ms
    bound = max(invoke_ms, apply_ms) * PREFETCH_GOAL_FACTOR
    note = (
        f"without paging ahead a page is invoke {invoke_ms:.0f} ms + apply {apply_ms:.0f} ms; "
        f"the goal is {PREFETCH_GOAL_FACTOR}× the larger"
    )
    return [
        BenchRow.of_runs(f"{name}, prefetch off", [r["page_s"] * 1000 for r in off], "ms"),
        BenchRow.of_runs(
            f"{name}, prefetch on",
            [r["page_s"] * 1000 for r in on],
            "ms",
            Goal(at_most=round(bound, 1)),
            note=note,
            detail={"invoke_ms": invoke_ms, "apply_ms": apply_ms},
        ),
    ]
