"""The commands that run things: `run`, `resync`, `test`, `validate`, `serve`, `secrets`.

`run` and `resync` sync in this process, or, when `connector serve` runs for the same
config, ask it to and follow the sync's progress through its API: the display is the
same. In this process, SIGINT/SIGTERM work as under `serve`: the current page finishes,
the sync is recorded `rescheduled` with its pages and rows, and the exit code is 130/143;
a second signal exits at once (the page in flight is rolled back with the process).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import masking
from .config import Config
from .control import schema_change_text, sync_seconds
from .errors import SyncFailure, SyncInProgress
from .events import bus
from .jobs import build_job
from .ops import emit_json, frame_text, show_function_output
from .sync import PageProgress, run_sync
from .terminal import FAILED, OK, USAGE, console, out

FOLLOW_EVERY_SECONDS = 0.25
OUTPUT_LINES_ON_FAILURE = 40
ALERT_LINE_CHARS = 300  # `run`'s line for a failed sync's alert
ERROR_TYPE_CHARS = 80  # of an error type on one of those lines
TEST_MESSAGE_CHARS = 4000  # `test` shows this much of a failure's message
TEST_TRACE_CHARS = 8000  # and of its stack trace (as JSON), each frame up to
TEST_FRAME_CHARS = 500
SCHEMA_CHANGE_LINES = 20  # of a sync's schema changes in `run`'s summary (all are in the table)


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    names = args.names or list(config.connectors)
    return _run_all(config, names, "manual", args)


def cmd_resync(config: Config, args: argparse.Namespace) -> int:
    return _run_all(config, [args.name], "resync", args)


def _run_all(config: Config, names: list[str], trigger: str, args: argparse.Namespace) -> int:
    from .client import connect

    jobs = [build_job(config, name) for name in names]  # every config error before any sync
    server = connect(config)
    if server is not None:
        console.print(f"connector serve (pid {server.pid}) runs the sync", highlight=False)
        return _follow_all(server, names, trigger, args)
    from . import notify

    notifier = notify.start(config)
    try:
        with _Interrupts() as interrupts:
            failed = False
            for job in jobs:
                if interrupts.stop.is_set():
                    break
                failed |= not _run_one(job, trigger, interrupts.stop, args.json)
    finally:
        if notifier is not None:
            notifier.close()
    if interrupts.signum is not None:
        return 128 + interrupts.signum
    return FAILED if failed else OK


def _run_one(job, trigger: str, stop: threading.Event, as_json: bool) -> bool:
    started = time.monotonic()
    unsubscribe = bus.subscribe(_say_waiting)
    try:
        with _progress(job.connector) as on_page:
            outcome = run_sync(job, trigger=trigger, on_page=on_page, stop=stop)
    except SyncInProgress as exc:
        console.print(f"[yellow]{job.connector}:[/yellow] {escape(str(exc))}", highlight=False)
        return False
    finally:
        unsubscribe()
    document = outcome.document()
    if as_json:
        emit_json(document)
    _summary(document, time.monotonic() - started)
    if stop.is_set() and outcome.record.status == "rescheduled":
        console.print(
            f"{job.connector}: interrupted after page {outcome.record.pages}; the sync is "
            f"recorded rescheduled and `connector run {job.connector}` resumes from there",
            highlight=False,
        )
    if outcome.record.status == "failed" and outcome.function_output:
        _output_tail(outcome.function_output)
    return outcome.ok


def _say_waiting(event: str, data: dict[str, Any]) -> None:
    if event == "warehouse.waiting":
        console.print(f"[yellow]{escape(data['message'])}[/yellow]", highlight=False)


def _output_tail(output: str) -> None:
    lines = output.splitlines()[-OUTPUT_LINES_ON_FAILURE:]
    show_function_output(console, "\n".join(lines), "this sync")


class _Interrupts:
    """SIGINT/SIGTERM while syncing: the first stops after the current page, the second
    exits at once."""

    def __enter__(self) -> _Interrupts:
        self.stop = threading.Event()
        self.signum: int | None = None
        self.previous = {
            s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)
        }
        return self

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stop.is_set():
            os._exit(128 + signum)
        self.signum = signum
        self.stop.set()
        console.print(
            f"{signal.Signals(signum).name}: stopping after the current page "
            "(signal again to exit now)",
            highlight=False,
        )

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class _progress:
    """A live line per connector: page, rows upserted and deleted so far."""

    def __init__(self, connector: str) -> None:
        self.connector = connector
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )

    def __enter__(self) -> Callable[[PageProgress], None]:
        self.upserted = self.deleted = 0
        self.bar.start()
        self.task = self.bar.add_task(f"{self.connector}: starting")
        return self.on_page

    def on_page(self, page: PageProgress) -> None:
        self.upserted += page.result.upserted
        self.deleted += page.result.deleted
        self.show(page.number, self.upserted, self.deleted)

    def show(self, page: int, upserted: int, deleted: int) -> None:
        text = f"{self.connector}: page {page}, {upserted:,} upserted, {deleted:,} deleted"
        self.bar.update(self.task, description=text)
        if not console.is_terminal:
            console.print(f"{text} (committed)", highlight=False)

    def __exit__(self, *exc_info: object) -> None:
        self.bar.stop()


def _summary(sync: dict[str, Any], seconds: float) -> None:
    status = sync["status"]
    colour = {"succeeded": "green", "rescheduled": "yellow"}.get(status, "red")
    console.print(
        f"[{colour}]{sync['connector']}: {status}[/{colour}] in {seconds:.1f}s, "
        f"{sync['pages']} page(s), {sync['rows_upserted']:,} rows upserted, "
        f"{sync['rows_deleted']:,} deleted",
        highlight=False,
    )
    delivery = sync.get("delivery")
    if delivery:
        latency = (
            f", p50 {delivery['p50_ms']:.0f} ms, p95 {delivery['p95_ms']:.0f} ms"
            if delivery["p95_ms"] is not None
            else ""
        )
        console.print(
            f"destination function: {delivery['delivered']:,} records delivered, "
            f"{delivery['retried']:,} retried, {delivery['failed']:,} failed{latency}",
            highlight=False,
        )
    if sync.get("tables"):
        table = Table("table", "upserted", "deleted", "delete keys not found", box=None)
        for name, counts in sorted(sync["tables"].items()):
            table.add_row(
                escape(name),
                f"{counts['upserted']:,}",
                f"{counts['deleted']:,}",
                f"{counts['missing']:,}",
            )
        console.print(table)
    _schema_change_lines(sync)
    alert = sync.get("alert")
    if alert is not None:
        console.print(_alert_line(sync["connector"], alert), highlight=False)
        if status == "failed":
            console.print(
                "the state stays at the last committed page; the next sync resumes there",
                highlight=False,
            )


def _schema_change_lines(sync: dict[str, Any]) -> None:
    """One line per change of the tables' shape, as applied: `orders.amount widened BIGINT
    → DOUBLE`."""
    changes = sync.get("schema_changes") or []
    for change in changes[:SCHEMA_CHANGE_LINES]:
        console.print(escape(schema_change_text(change)), highlight=False)
    if len(changes) > SCHEMA_CHANGE_LINES:
        more = len(changes) - SCHEMA_CHANGE_LINES
        console.print(
            f"… and {more} more schema changes, all in connector_runtime.schema_changes",
            highlight=False,
        )


def _alert_line(connector: str, alert: dict[str, Any]) -> str:
    """The alert as one short line (its message may be 64 KB): the rest is in `alerts`."""
    error_type = masking.excerpt(alert["error_type"], ERROR_TYPE_CHARS, one_line=True)
    head = f"{alert['kind']} ({error_type}): "
    message = masking.excerpt(
        alert["message"],
        max(ALERT_LINE_CHARS - len(head), 80),
        one_line=True,
        note=f"… see `connector alerts {connector}`",
    )
    return f"[red]{alert['kind']}[/red] ({escape(error_type)}): {escape(message)}"


# -- through a running server ---------------------------------------------------------


def _follow_all(server, names: list[str], trigger: str, args: argparse.Namespace) -> int:
    failed = False
    for name in names:
        try:
            sync_id = server.start(name, trigger)
        except SyncInProgress as exc:
            console.print(f"[yellow]{name}:[/yellow] {escape(str(exc))}", highlight=False)
            failed = True
            continue
        try:
            document = _follow(server, name, sync_id)
        except KeyboardInterrupt:
            console.print(
                f"stopped following; the sync goes on in connector serve "
                f"(see it with `connector syncs {name}`)",
                highlight=False,
            )
            return 130
        if args.json:
            emit_json(document)
        _summary(document, sync_seconds(document) or 0.0)
        if document["status"] == "failed":
            output = server.sync(sync_id, logs=True).get("function_output")
            if output:
                _output_tail(output)
        failed |= document["status"] not in ("succeeded", "rescheduled")
    return FAILED if failed else OK


def _follow(server, name: str, sync_id: str) -> dict[str, Any]:
    """Poll the sync until it ends, showing its progress; its final document."""
    progress = _progress(name)
    with progress:
        shown = None
        while True:
            document = server.sync(sync_id)
            if document["status"] != "running":
                return document
            now = (document.get("page", 0), document["rows_upserted"], document["rows_deleted"])
            if now != shown and now[0]:
                progress.show(*now)
                shown = now
            time.sleep(FOLLOW_EVERY_SECONDS)


# -- test, validate, serve, secrets ---------------------------------------------------


def cmd_test(config: Config, args: argparse.Namespace) -> int:
    """One call, judged exactly as a sync would judge it, with nothing written anywhere."""
    from .sync import check_function

    job = build_job(config, args.name)
    try:
        summary, output = check_function(job)
    except SyncFailure as failure:
        error_type = masking.excerpt(failure.error_type, ERROR_TYPE_CHARS, one_line=True)
        message = masking.excerpt(failure.message, TEST_MESSAGE_CHARS, note=masking.CUT)
        console.print(
            f"[red]{job.connector}: {failure.kind}[/red] ({escape(error_type)}): {escape(message)}",
            highlight=False,
        )
        frames = masking.excerpt_frames(
            failure.stack_trace, TEST_TRACE_CHARS, frame_limit=TEST_FRAME_CHARS
        )
        for frame in frames:
            console.print(f"    {escape(masking.mask(frame_text(frame)))}", highlight=False)
        show_function_output(console, getattr(failure, "function_output", None), "this call")
        return FAILED
    show_function_output(console, output, "this call")
    console.print(
        f"[green]{job.connector}: the function answered with a valid response[/green] "
        f"({escape(summary)})",
        highlight=False,
    )
    return OK


def cmd_validate(config: Config, args: argparse.Namespace) -> int:
    # paths, handlers and secrets, not only the YAML's shape
    jobs = [build_job(config, name) for name in config.connectors]
    from . import handler_shapes, notify

    for name in [None, *config.connectors]:
        notify.webhooks_for(config, name)  # unset ${env:} in a webhook, with file:line
    _list_functions_dir(config)
    if not handler_shapes.report(config, jobs):  # each local handler loaded, not called
        return FAILED
    console.print(f"[green]{config.path}: {len(config.connectors)} connector(s), all valid[/green]")
    return OK


def _list_functions_dir(config: Config) -> None:
    """`validate`'s report of the functions directory (design §13): each function found,
    its file, and the connectors that call it (marked when in the background)."""
    from .functions_dir import discover

    directory = config.functions_directory()
    found = discover(directory)
    callers: dict[str, list[str]] = {}
    for name, connector in config.connectors.items():
        function = connector.function
        if function.netlify is not None:
            mode = " (background)" if function.runs_in_background else ""
            callers.setdefault(function.netlify, []).append(name + mode)
    if not found and not callers:
        return
    out.print(f"functions in {directory}: {len(found)}", highlight=False)
    table = Table("function", "file", "connectors", box=None)
    for function, path in found.items():
        file = str(path.relative_to(directory))
        table.add_row(escape(function), escape(file), escape(", ".join(callers.get(function, []))))
    out.print(table)


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from .scheduler import Server

    return Server(config).serve()


def cmd_worker(config: Config, args: argparse.Namespace) -> int:
    from .celery_app import run_worker
    from .scheduler import route_library_logs

    if args.concurrency is not None and args.concurrency < 1:
        console.print("[red]--concurrency must be 1 or more[/red]", highlight=False)
        return USAGE
    route_library_logs()
    return run_worker(config, args.concurrency or config.max_concurrent_syncs)


def cmd_secrets_init(args: argparse.Namespace) -> int:
    from .secrets import init_key

    path, created = init_key()
    if created:
        console.print(
            f"created key file {path} (mode 0600); back it up: without it no "
            "enc:v1: token can be read",
            highlight=False,
        )
    elif path is None:
        console.print("the key is in CONNECTOR_RUNTIME_KEY; nothing created")
    else:
        console.print(f"a key file already exists at {path}; nothing created", highlight=False)
    return OK


def cmd_secrets_encrypt(args: argparse.Namespace) -> int:
    import getpass

    from .secrets import encrypt

    if sys.stdin.isatty():
        value = getpass.getpass(f"value of {args.key} for {args.name} (not echoed): ")
    else:
        value = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    if not value:
        console.print("[red]no value given on stdin[/red]")
        return USAGE
    out.file.write(encrypt(value, args.name, args.key) + "\n")
    return OK
