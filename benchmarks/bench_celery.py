"""Syncs per minute on Celery workers: N connectors whose functions wait like remote APIs.

Run it:  make bench   (or .venv/bin/python benchmarks/bench_celery.py --workers 1,2,4)

For each worker count, in a fresh PostgreSQL database and a fresh RabbitMQ queue: a
connectors.yaml with `executor: celery` and `--connectors` connectors (default 100) on a
`--schedule` (default 3s), whose function waits `--page-wait` (default 200 ms) per page
for `--pages` pages (default 3), one row per page; one `connector serve` and that many
`connector worker --concurrency C` processes (default 4 syncs each). After `--warmup`
seconds, the syncs that finish in the next `--seconds` (default 60) are counted. Then
every connector is paused, what was sent finishes, and the warehouse is checked: every
sync succeeded with all its pages, each page's row written once, and no connector ever
had two syncs at once. A failed check exits 1.

An unreachable PostgreSQL or RabbitMQ skips the run with the reason, or fails it under
CI=true.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import yaml
from bench_report import BenchRow, Goal, goals_table, print_notes, write_results

ROOT = Path(__file__).resolve().parent.parent
SCALING = Goal(at_least=2.0)  # 4 workers over 1: the functions only wait, so they should scale
CLI = [sys.executable, "-m", "connector_runtime.cli"]
HANDLER = """\
import time


def handler(request):
    settings = request["secrets"]
    page = request["state"].get("page", 0) + 1
    time.sleep(settings["wait"])  # a remote API answering
    more = page < settings["pages"]
    return {
        "state": {"page": page if more else 0},
        "insert": {"pages": [{"sync_id": request["sync_id"], "page": page}]},
        "hasMore": more,
    }
"""


def main() -> int:
    args = _parser().parse_args()
    unavailable = _unavailable(args)
    if unavailable:
        print(f"celery bench SKIPPED: {unavailable}")
        return 1 if os.environ.get("CI") == "true" else 0
    rows, problems = [], []
    for workers in [int(n) for n in args.workers.split(",")]:
        result = run(args, workers)
        rows.append(result)
        problems += result["problems"]
    _report(args, rows)
    _goals(args, rows)
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    return 1 if problems else 0


def run(args, workers: int) -> dict:
    """One configuration: start everything, count, drain, check, clean up."""
    database, url = _fresh_database(args.postgres_url)
    queue = f"bench-celery-{uuid.uuid4().hex[:8]}"
    processes: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="bench-celery-") as folder:
        root = Path(folder)
        config = _write_project(root, args, url, queue)
        try:
            start = lambda *a: processes.append(_start(root, config, *a)) or processes[-1]  # noqa: E731
            serve = start("serve")
            for _ in range(workers):
                start("worker", "--concurrency", str(args.concurrency))
            _wait(lambda: _server(root) is not None, 60, "serve to answer")
            time.sleep(args.warmup)
            begin = time.time()
            time.sleep(args.seconds)
            end = time.time()
            for n in range(args.connectors):
                _api(root, f"/api/connectors/c{n:03d}/pause", "POST")
            _wait(lambda: _drained(url), 120, "the sent syncs to finish")
            syncs = _syncs(url)
            done = [s for s in syncs if begin <= s["finished"] < end]
            cpu = _cpu_seconds([p.pid for p in processes])
            serve.send_signal(signal.SIGTERM)
        finally:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
            _delete_queue(args.broker, queue)
        problems = [f"{workers} worker(s): {p}" for p in _check(url, syncs, args.pages)]
        _drop_database(args.postgres_url, database)
    per_minute = len(done) * 60 / (end - begin)
    return {
        "workers": workers,
        "slots": workers * args.concurrency,
        "syncs": len(done),
        "per_minute": per_minute,
        "ceiling": workers * args.concurrency * 60 / (args.pages * args.page_wait),
        "cpu": cpu,
        "problems": problems,
    }


# -- the project and its processes ----------------------------------------------------


def _write_project(root: Path, args, url: str, queue: str) -> Path:
    (root / "handler.py").write_text(HANDLER)
    secrets = {"wait": args.page_wait, "pages": args.pages}
    function = {"local": "handler.py", "isolation": "inline"}
    document = {
        "warehouse": url,
        "server": {"listen": "127.0.0.1:0"},
        "executor": {"celery": {"broker": args.broker, "queue": queue}},
        "connectors": {
            f"c{n:03d}": {"function": function, "schedule": args.schedule, "secrets": secrets}
            for n in range(args.connectors)
        },
    }
    config = root / "connectors.yaml"
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    return config


def _start(root: Path, config: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = (root / f"{args[0]}-{time.monotonic_ns()}.log").open("w")
    return subprocess.Popen(
        [*CLI, "-c", str(config), *args], cwd=root, env=env, stdout=log, stderr=log
    )


def _server(root: Path) -> dict | None:
    found = root / ".connector-runtime" / "server.json"
    return json.loads(found.read_text()) if found.exists() else None


def _api(root: Path, path: str, method: str = "GET"):
    server = _server(root)
    request = urllib.request.Request(
        server["url"] + path,
        method=method,
        headers={"Authorization": f"Bearer {server['token']}", "Origin": server["url"]},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: no {what} within {timeout}s")
        time.sleep(0.5)


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the runtime's processes so far (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


# -- the warehouse and the broker -------------------------------------------------------


def _engine(url: str):
    sys.path.insert(0, str(ROOT))
    from destinations.sqlalchemy import create_engine

    return create_engine(url)


def _sql(url: str, query: str) -> list[tuple]:
    import sqlalchemy as sa

    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(query))]
    finally:
        engine.dispose()


def _fresh_database(admin_url: str) -> tuple[str, str]:
    import sqlalchemy as sa

    name = f"bench_celery_{uuid.uuid4().hex[:8]}"
    engine = _engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    url = sa.engine.make_url(admin_url).set(database=name)
    return name, url.render_as_string(hide_password=False)


def _drop_database(admin_url: str, name: str) -> None:
    import sqlalchemy as sa

    engine = _engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    engine.dispose()


def _syncs(url: str) -> list[dict]:
    rows = _sql(
        url,
        "SELECT connector, sync_id, status, pages, extract(epoch FROM started_at),"
        " extract(epoch FROM finished_at) FROM connector_runtime.syncs ORDER BY started_at",
    )
    keys = ("connector", "sync_id", "status", "pages", "started", "finished")
    return [
        {
            **dict(zip(keys, row, strict=True)),
            "started": float(row[4]),
            "finished": float(row[5] or 0),
        }
        for row in rows
    ]


def _drained(url: str) -> bool:
    return not _sql(url, "SELECT 1 FROM connector_runtime.syncs WHERE status = 'running'")


def _check(url: str, syncs: list[dict], pages: int) -> list[str]:
    problems = [
        f"sync {s['sync_id']} ended {s['status']}" for s in syncs if s["status"] != "succeeded"
    ]
    problems += [f"sync {s['sync_id']}: {s['pages']} pages" for s in syncs if s["pages"] != pages]
    written = (
        _sql(
            url,
            "SELECT sync_id, count(*), count(DISTINCT page) FROM ("
            + " UNION ALL ".join(
                f'SELECT sync_id, page FROM "{name}"."pages"'
                for name in {s["connector"] for s in syncs}
            )
            + ") p GROUP BY sync_id",
        )
        if syncs
        else []
    )
    counted = {sync_id: (n, distinct) for sync_id, n, distinct in written}
    for sync in syncs:
        if counted.get(sync["sync_id"]) != (pages, pages):
            problems.append(f"sync {sync['sync_id']}: rows {counted.get(sync['sync_id'])}")
    for name in {s["connector"] for s in syncs}:
        mine = sorted((s for s in syncs if s["connector"] == name), key=lambda s: s["started"])
        for before, after in zip(mine, mine[1:], strict=False):
            if before["finished"] > after["started"]:
                problems.append(f"{name}: syncs {before['sync_id']} and {after['sync_id']} overlap")
    return problems


def _delete_queue(broker: str, queue: str) -> None:
    from kombu import Connection

    with Connection(broker) as conn:
        channel = conn.default_channel
        for delete, name in ((channel.queue_delete, queue), (channel.exchange_delete, queue)):
            with contextlib.suppress(Exception):  # never declared
                delete(name)
        with contextlib.suppress(Exception):
            channel.exchange_delete(f"{queue}.events")


def _unavailable(args) -> str | None:
    try:
        _sql(args.postgres_url, "SELECT 1")
    except Exception as exc:
        return f"PostgreSQL at {args.postgres_url}: {str(exc).splitlines()[0]}"
    try:
        from kombu import Connection

        with Connection(args.broker, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        return f"the broker at {args.broker}: {exc}"
    return None


# -- the report -------------------------------------------------------------------------


def _report(args, rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{args.connectors} connectors, {args.pages} pages of {args.page_wait * 1000:.0f} ms "
        f"each, every {args.schedule}; {args.concurrency} syncs per worker",
    )
    for column in (
        "workers",
        "syncs at once",
        "syncs counted",
        "syncs/min",
        "ideal syncs/min",
        "CPU s",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row["workers"]),
            str(row["slots"]),
            f"{row['syncs']:,}",
            f"{row['per_minute']:,.0f}",
            f"{row['ceiling']:,.0f}",
            f"{row['cpu']:.0f}",
        )
    Console().print(table)
    print(
        f"syncs/min: syncs that finished within {args.seconds}s after {args.warmup}s of warm-up; "
        "ideal: if a sync cost only its function's waits. CPU s: serve and workers, whole run "
        f"(this machine has {os.cpu_count()} CPUs; PostgreSQL's and RabbitMQ's are not counted)."
    )


def _goals(args, rows: list[dict]) -> None:
    """The figures as `make bench` shows them: a row each, and how 4 workers scale over 1."""
    from rich.console import Console

    figures = [
        BenchRow.of_runs(
            f"celery, {row['workers']} worker(s) × {args.concurrency}",
            [row["per_minute"]],
            "syncs/min",
            detail={k: row[k] for k in ("slots", "syncs", "ceiling", "cpu")},
        )
        for row in rows
    ]
    by_workers = {row["workers"]: row["per_minute"] for row in rows}
    if 1 in by_workers and 4 in by_workers:
        ratio = by_workers[4] / by_workers[1]
        figures.append(BenchRow.of_runs("celery, 4 workers over 1", [ratio], "×", SCALING))
    console = Console() if Console().is_terminal else Console(width=120)
    title = (
        f"bench_celery: {args.connectors} connectors, {args.pages} pages of "
        f"{args.page_wait * 1000:.0f} ms each"
    )
    console.print(goals_table(figures, title))
    print_notes(console, figures)
    if args.json:
        write_results(Path(args.json), figures, vars(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts to run (default 1,2,4)")
    parser.add_argument("--concurrency", type=int, default=4, help="syncs per worker (default 4)")
    parser.add_argument("--connectors", type=int, default=100)
    parser.add_argument("--pages", type=int, default=3)
    parser.add_argument("--page-wait", type=float, default=0.2, help="seconds per page")
    parser.add_argument("--schedule", default="3s")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "CONNECTOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument(
        "--json", help="also write the figures to this file (bench_report's format)"
    )
    parser.add_argument(
        "--broker",
        default=os.environ.get("CONNECTOR_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//"),
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
