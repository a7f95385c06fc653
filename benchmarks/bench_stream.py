"""Memory of a streamed page: a 1 GB page applies within the memory of a 10 MB one.

Run it:  .venv/bin/python benchmarks/bench_stream.py            (part of `make bench`)
         .venv/bin/python benchmarks/bench_stream.py --sizes 10,200

A server process answers every POST with one page streamed as NDJSON
(`Content-Type: application/x-ndjson`), made as it is sent: parts of `--part-rows` rows
of the bench's 7-column shape (int key, string, float, bool, UTC timestamp text, list,
object), then a last part with the state. For each size, a fresh runtime process syncs
one such page from `http:` into a new DuckDB file; its peak resident memory (VmHWM) is
the figure. The warehouse is then read back: every key once, the state saved, one page
counted. Any difference exits 1.

Goal: the largest page peaks within 100 MB of the smallest (both are reported).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
from bench_report import BenchRow, Goal, goals_table, print_notes, write_results
from rich.console import Console

GROWTH_GOAL_MB = 100.0

SERVER = r"""
import http.server, json, sys
import orjson

PART_ROWS = int(sys.argv[1])


def row(i):
    return {
        "id": i,
        "name": f"customer {i}",
        "score": i * 0.5,
        "active": i % 2 == 0,
        "seen_at": f"2026-01-{1 + i % 28:02d}T10:00:00Z",
        "tags": ["a", "b", str(i % 7)],
        "address": {"city": "Lisbon", "zip": f"{i % 10000:04d}"},
    }


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        target = int(request["secrets"]["bytes"])
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent, key = 0, 0
        schema = {"customers": {"primary_key": ["id"]}}
        while sent < target:
            part = {"insert": {"customers": [row(key + n) for n in range(PART_ROWS)]}}
            if key == 0:
                part["schema"] = schema
            key += PART_ROWS
            sent += self.chunk(orjson.dumps(part) + b"\n")
        self.chunk(orjson.dumps({"state": {"rows": key}, "hasMore": False}) + b"\n")
        self.wfile.write(b"0\r\n\r\n")

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        return len(data)

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""

RUNTIME = r"""
import json, sys, time
from connector_runtime.invokers.http import HttpInvoker
from connector_runtime.sync import SyncJob, run_sync

url, warehouse, size = sys.argv[1], sys.argv[2], sys.argv[3]
job = SyncJob("stream", "bench", "duckdb:///" + warehouse,
              lambda: HttpInvoker(url, timeout=120), secrets={"bytes": size})
started = time.perf_counter()
outcome = run_sync(job)
seconds = time.perf_counter() - started
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status")
               if line.startswith("VmHWM:"))
print(json.dumps({"status": outcome.record.status, "seconds": seconds, "peak_kb": peak_kb,
                  "rows": outcome.record.rows_upserted, "pages": outcome.record.pages,
                  "alert": outcome.alert.message if outcome.alert else None}))
"""


def run(sizes_mb: list[int], part_rows: int, console: Console) -> tuple[list[BenchRow], bool]:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(part_rows)], stdout=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}/page"
        measured, ok = {}, True
        for size in sizes_mb:
            figures, problem = _sync(url, size, console)
            measured[size] = figures
            ok &= problem is None
            if problem:
                console.print(f"[red]{size} MB: {problem}[/red]")
    finally:
        server.kill()
        server.wait()
    rows = [
        BenchRow.of_runs(
            f"streamed page {size} MB: peak RSS",
            [figures["peak_kb"] / 1024],
            "MB",
            detail={k: v for k, v in figures.items() if k != "peak_kb"},
            note=f"{figures['rows']:,} rows in {figures['seconds']:.1f} s "
            f"({figures['rows'] / figures['seconds']:,.0f} rows/s)",
        )
        for size, figures in measured.items()
    ]
    if len(measured) > 1:
        smallest, largest = min(measured), max(measured)
        growth = (measured[largest]["peak_kb"] - measured[smallest]["peak_kb"]) / 1024
        rows.append(
            BenchRow.of_runs(
                f"streamed page {largest} MB over {smallest} MB: peak RSS growth",
                [growth],
                "MB",
                Goal(at_most=GROWTH_GOAL_MB),
            )
        )
    return rows, ok


def _sync(url: str, size_mb: int, console: Console) -> tuple[dict, str | None]:
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as scratch:
        warehouse = str(Path(scratch) / "stream.duckdb")
        console.print(f"syncing a {size_mb} MB streamed page ...", highlight=False)
        done = subprocess.run(
            [sys.executable, "-c", RUNTIME, url, warehouse, str(size_mb * 1024 * 1024)],
            capture_output=True,
            text=True,
            env={**os.environ, "CONNECTOR_LOG_LEVEL": "warning"},
        )
        if done.returncode != 0:
            return {}, f"the runtime failed: {done.stderr.strip()[-2000:]}"
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        if figures["status"] != "succeeded":
            return figures, f"the sync {figures['status']}: {figures['alert']}"
        return figures, _check(warehouse, figures)


def _check(warehouse: str, figures: dict) -> str | None:
    con = duckdb.connect(warehouse, read_only=True)
    try:
        count, distinct, low, high = con.execute(
            "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM bench.customers"
        ).fetchone()
        (state,) = con.execute("SELECT state FROM connector_runtime.state").fetchone()
    finally:
        con.close()
    sent = json.loads(state)["rows"]
    if not count == distinct == sent == figures["rows"] or (low, high) != (0, sent - 1):
        return f"read back {count} rows ({distinct} keys, {low}..{high}) of {sent} sent"
    if figures["pages"] != 1:
        return f"counted {figures['pages']} pages, not 1"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,1024", help="page sizes in MB (default 10,1024)")
    parser.add_argument("--part-rows", type=int, default=2000, help="rows per part (2000)")
    parser.add_argument("--json", default="bench-stream-results.json")
    args = parser.parse_args()
    console = Console()
    started = time.perf_counter()
    rows, ok = run([int(s) for s in args.sizes.split(",")], args.part_rows, console)
    console.print(goals_table(rows, f"Streamed pages ({time.perf_counter() - started:.0f} s)"))
    print_notes(console, rows)
    write_results(Path(args.json), rows, vars(args))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
