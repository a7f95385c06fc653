"""The operator's reading and steering commands: status, alerts, syncs, show, state,
pause and resume.

Each gets a `backend`: the API of a running `connector serve` (`client.ApiClient`) or,
when none runs, `control.Control` over the warehouse itself; both answer with the same
documents. Reports go to stdout (`out`), as a table or, with `--json`, as JSON; notes
for a person go to stderr (`err`).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import masking
from .control import (
    SCHEMA_CHANGES_SHOWN,
    delivery_text,
    frame_text,
    parse_time,
    schema_change_text,
    sync_seconds,
)
from .jsonio import decode_json, encode_json

OK, FAILED, USAGE = 0, 1, 2
SYNC_ERROR_CHARS = 300  # of a sync's error in the `syncs` table: its alert has the rest
ERROR_TYPE_CHARS = 200
STATUS_COLOURS = {"succeeded": "green", "failed": "red", "rescheduled": "yellow", "running": "cyan"}


def emit_json(document: Any) -> None:
    """A document alone on stdout, for scripts."""
    # the stdlib's encoder: integers beyond 64 bits (a cursor, say) stay exact
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def cmd_status(backend, args: argparse.Namespace, out: Console, err: Console) -> int:
    connectors = backend.connectors()
    if args.json:
        emit_json(connectors)
        return OK
    table = Table("connector", "status", "schedule", "last sync", "rows", "next run", "alerts")
    table.box = None
    for c in connectors:
        last = c["last_sync"]
        table.add_row(
            escape(c["name"]),
            _connector_status(c),
            c["schedule"] or "manual",
            f"{_coloured(last['status'])} {when(last['started_at'])}" if last else "never",
            f"{last['rows_upserted']:,}" if last else "",
            _next_run_text(c),
            f"[red]{c['open_alerts']}[/red]" if c["open_alerts"] else "0",
        )
    out.print(table)
    if connectors and not connectors[0]["scheduled"]:
        err.print("connector serve is not running: nothing is scheduled", highlight=False)
    return OK


def _connector_status(c: dict[str, Any]) -> str:
    running = c["running"]
    if running is not None:
        rows = running["rows"]
        return f"[cyan]running[/cyan] page {running['page']}, {rows:,} rows"
    text = _coloured(c["status"]) if c["status"] != "idle" else "idle"
    return f"{text} [yellow](paused)[/yellow]" if c["paused"] else text


def _next_run_text(c: dict[str, Any]) -> str:
    if c["schedule"] is None:
        return ""
    if c["paused"]:
        return "paused"
    if not c["scheduled"]:
        return "(serve not running)"
    return when(c["next_run"]) if c["next_run"] else "soon"


def cmd_alerts(backend, args: argparse.Namespace, out: Console, err: Console) -> int:
    alerts = backend.alerts(args.name, include_resolved=args.all)
    if args.json:
        emit_json(alerts)
        return OK
    for alert in alerts:
        state = f"resolved {when(alert['resolved_at'])}" if alert["resolved_at"] else "open"
        error_type = masking.excerpt(alert["error_type"], ERROR_TYPE_CHARS, one_line=True)
        out.print(
            f"[bold]{escape(alert['connector'])}[/bold] {when(alert['created_at'])} "
            f"[red]{alert['severity']}[/red] {alert['kind']} ({escape(error_type)}), "
            f"{state}, sync {alert['sync_id']}, alert {alert['alert_id']}",
            highlight=False,
        )
        out.print(f"  {escape(masking.mask(alert['message']))}", highlight=False)
        for frame in alert["stack_trace"] or []:
            out.print(f"    {escape(masking.mask(frame_text(frame)))}", highlight=False)
    if not alerts:
        err.print("no open alerts" if not args.all else "no alerts")
    return OK


def cmd_syncs(backend, args: argparse.Namespace, out: Console, err: Console) -> int:
    syncs = backend.syncs(args.name, limit=args.limit)
    output = None
    if args.logs and syncs:
        output = backend.sync(syncs[0]["sync_id"], logs=True).get("function_output")
    if args.json:
        emit_json({"syncs": syncs, "function_output": output} if args.logs else syncs)
        return OK
    delivering = any(sync.get("delivery") for sync in syncs)  # records sent to a function
    columns = ["started", "trigger", "status", "seconds", "pages", "upserted", "deleted"]
    table = Table(*columns, *(["delivered"] if delivering else []), "error")
    table.box = None
    for sync in syncs:
        table.add_row(
            when(sync["started_at"]),
            sync["trigger"],
            _coloured(sync["status"]),
            _seconds(sync),
            str(sync["pages"]),
            f"{sync['rows_upserted']:,}",
            f"{sync['rows_deleted']:,}",
            *([delivery_text(sync.get("delivery"))] if delivering else []),
            escape(masking.excerpt(sync["error"] or "", SYNC_ERROR_CHARS, one_line=True)),
        )
    out.print(table)
    if args.logs:
        show_function_output(out, output, f"sync {syncs[0]['sync_id']}" if syncs else "")
    return OK


def show_function_output(console: Console, output: str | None, what: str) -> None:
    """The function's printed lines under a heading; says so when there were none."""
    if not output:
        console.print(f"no function output kept for {what}".strip(), highlight=False)
        return
    console.print(f"[bold]function output ({escape(what)}, last lines):[/bold]", highlight=False)
    console.print(escape(output), highlight=False, markup=True)


def cmd_show(backend, args: argparse.Namespace, out: Console, err: Console) -> int:
    c = backend.connector(args.name)
    if args.json:
        emit_json(c)
        return OK
    out.print(f"[bold]{escape(c['name'])}[/bold]: {_connector_status(c)}", highlight=False)
    out.print(f"  warehouse  {escape(c['warehouse'])}", highlight=False)
    out.print(f"  schema     {escape(c['schema'])}", highlight=False)
    out.print(f"  schedule   {c['schedule'] or 'manual'}", highlight=False)
    out.print(f"  state      {escape(encode_json(c['state']).decode())}", highlight=False)
    if not c["tables"]:
        out.print("  no tables yet: run `connector run " + c["name"] + "`", highlight=False)
        return OK
    for t in c["tables"]:
        key = ", ".join(t["primary_key"]) or "none (rows are appended)"
        rows = "?" if t["rows"] is None else f"{t['rows']:,}"
        out.print(
            f"\n[bold]{escape(t['reference'])}[/bold]: {rows} rows, primary key {escape(key)}",
            highlight=False,
        )
        for column in t["columns"]:
            marker = " (key)" if column["name"] in t["primary_key"] else ""
            out.print(f"  {escape(column['name'])}  {column['type']}{marker}", highlight=False)
    _show_schema_changes(out, c.get("schema_changes") or [])
    first = c["tables"][0]["reference"]
    out.print(f"\ntry: SELECT * FROM {escape(first)} LIMIT 10;", highlight=False)
    return OK


def _show_schema_changes(out: Console, changes: list[dict[str, Any]]) -> None:
    """The latest schema changes, newest first; where to find the older ones."""
    if not changes:
        return
    out.print("\n[bold]schema changes[/bold], newest first:", highlight=False)
    for change in changes:
        text = escape(schema_change_text(change))
        out.print(f"  {when(change['changed_at'])}  {text}", highlight=False)
    if len(changes) >= SCHEMA_CHANGES_SHOWN:
        out.print("  older ones: connector_runtime.schema_changes", highlight=False)


def cmd_state_show(backend, args: argparse.Namespace, out: Console, err: Console) -> int:
    emit_json(backend.state(args.name))
    return OK


def cmd_state_set(backend, args: argparse.Namespace, out: Console, err: Console) -> int:
    try:
        state = decode_json(args.json_state)
    except ValueError as exc:
        err.print(f"[red]not JSON:[/red] {escape(str(exc))}", highlight=False)
        return USAGE
    if not isinstance(state, dict):
        err.print("[red]the state must be a JSON object[/red]")
        return USAGE
    return _replace_state(backend, args.name, state, err)


def cmd_state_reset(backend, args: argparse.Namespace, out: Console, err: Console) -> int:
    return _replace_state(backend, args.name, {}, err)


def _replace_state(backend, name: str, state: dict, err: Console) -> int:
    from .errors import SyncInProgress

    try:
        backend.set_state(name, state)
    except SyncInProgress as exc:
        err.print(f"[yellow]{escape(str(exc))}; the state is unchanged[/yellow]", highlight=False)
        return FAILED
    err.print(f"state of {name} set to {escape(encode_json(state).decode())}", highlight=False)
    return OK


def cmd_pause(backend, args: argparse.Namespace, out: Console, err: Console) -> int:
    backend.set_paused(args.name, True)
    err.print(f"{args.name}: paused; schedules skip it until `connector resume {args.name}`")
    return OK


def cmd_resume(backend, args: argparse.Namespace, out: Console, err: Console) -> int:
    backend.set_paused(args.name, False)
    err.print(f"{args.name}: resumed; its schedule applies again")
    return OK


# -- formatting -----------------------------------------------------------------------


def when(moment: str | datetime | None) -> str:
    """`2026-12-01 10:00:00 UTC` from a datetime or an ISO 8601 text."""
    if moment is None:
        return ""
    if isinstance(moment, str):
        moment = parse_time(moment)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(sync: dict[str, Any]) -> str:
    seconds = sync_seconds(sync)
    return "" if seconds is None else f"{seconds:.1f}"


def _coloured(status: str) -> str:
    colour = STATUS_COLOURS.get(status, "white")
    return f"[{colour}]{status}[/{colour}]"
