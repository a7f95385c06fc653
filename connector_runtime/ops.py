"""The operator's commands: status, alerts, syncs, state set/reset (DESIGN.md §9).

Tables for people go to stderr through rich; `state show` and the like print their
answer alone on stdout.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .config import Config, CronSchedule
from .destination import Destination, SyncRecord, open_destination
from .errors import SyncInProgress

FAILED, OK = 1, 0


def _destination(config: Config, name: str) -> Destination:
    return open_destination(config.destination_url(name))  # ConfigError for an unknown name


def cmd_status(config: Config, args: argparse.Namespace, console: Console) -> int:
    table = Table(
        "connector", "schedule", "last sync", "when", "rows", "next run", "open alerts", box=None
    )
    for name, connector in config.connectors.items():
        with _destination(config, name) as destination:
            last = next(iter(destination.recent_syncs(name, 1)), None)
            alerts = len(destination.list_alerts(name))
        table.add_row(
            name,
            _schedule_text(connector.schedule),
            last.status if last else "never",
            _when(last.started_at) if last else "",
            f"{last.rows_upserted:,}" if last else "",
            _next_run(connector.schedule, last),
            f"[red]{alerts}[/red]" if alerts else "0",
        )
    console.print(table)
    return OK


def cmd_alerts(config: Config, args: argparse.Namespace, console: Console) -> int:
    names = [args.name] if args.name else list(config.connectors)
    shown = 0
    for name in names:
        with _destination(config, name) as destination:
            for alert in destination.list_alerts(name, include_resolved=args.all):
                shown += 1
                state = f"resolved {_when(alert.resolved_at)}" if alert.resolved_at else "open"
                console.print(
                    f"[bold]{escape(alert.connector)}[/bold] {_when(alert.created_at)} "
                    f"[red]{alert.severity}[/red] {alert.kind} ({escape(str(alert.error_type))}), "
                    f"{state}, sync {alert.sync_id}",
                    highlight=False,
                )
                console.print(f"  {escape(alert.message)}", highlight=False)
                for frame in alert.stack_trace or []:
                    console.print(f"    {escape(_frame_text(frame))}", highlight=False)
    if not shown:
        console.print("no open alerts" if not args.all else "no alerts")
    return OK


def cmd_syncs(config: Config, args: argparse.Namespace, console: Console) -> int:
    with _destination(config, args.name) as destination:
        syncs = destination.recent_syncs(args.name, args.limit)
    table = Table(
        "started", "trigger", "status", "seconds", "pages", "upserted", "deleted", "error", box=None
    )
    for sync in syncs:
        table.add_row(
            _when(sync.started_at),
            sync.trigger,
            _status(sync),
            _seconds(sync),
            str(sync.pages),
            f"{sync.rows_upserted:,}",
            f"{sync.rows_deleted:,}",
            escape(sync.error or ""),
        )
    console.print(table)
    return OK


def cmd_state_set(config: Config, args: argparse.Namespace, console: Console) -> int:
    try:
        state = orjson.loads(args.json)
    except orjson.JSONDecodeError as exc:
        console.print(f"[red]not JSON:[/red] {escape(str(exc))}", highlight=False)
        return 2
    if not isinstance(state, dict):
        console.print("[red]the state must be a JSON object[/red]")
        return 2
    return _replace_state(config, args.name, state, console)


def cmd_state_reset(config: Config, args: argparse.Namespace, console: Console) -> int:
    return _replace_state(config, args.name, {}, console)


def _replace_state(config: Config, name: str, state: dict, console: Console) -> int:
    try:
        with (
            _destination(config, name) as destination,
            destination.lock(name),
        ):  # refused while a sync runs
            destination.save_state(name, state)
    except SyncInProgress as exc:
        console.print(f"[yellow]{escape(str(exc))}; the state is unchanged[/yellow]")
        return FAILED
    console.print(f"state of {name} set to {escape(orjson.dumps(state).decode())}", highlight=False)
    return OK


def cmd_state_show(config: Config, args: argparse.Namespace, console: Console) -> int:
    with _destination(config, args.name) as destination:
        state = destination.load(args.name).state
    sys.stdout.write(orjson.dumps(state, option=orjson.OPT_INDENT_2).decode() + "\n")
    return OK


def _schedule_text(schedule) -> str:
    if schedule is None:
        return "manual"
    if isinstance(schedule, CronSchedule):
        return f"cron {schedule.cron}"
    return f"every {_duration(schedule)}"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _next_run(schedule, last: SyncRecord | None) -> str:
    """When `serve` would next sync (before jitter), counted from the last sync's start."""
    if schedule is None:
        return ""
    now = datetime.now(UTC)
    if isinstance(schedule, CronSchedule):
        from apscheduler.triggers.cron import CronTrigger

        return _when(
            CronTrigger.from_crontab(schedule.cron, timezone=UTC).get_next_fire_time(None, now)
        )
    if last is None:
        return "when serve starts"
    return _when(max(last.started_at + timedelta(seconds=schedule), now))


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(sync: SyncRecord) -> str:
    if sync.finished_at is None:
        return ""
    return f"{(sync.finished_at - sync.started_at).total_seconds():.1f}"


def _status(sync: SyncRecord) -> str:
    colour = {"succeeded": "green", "failed": "red", "rescheduled": "yellow"}.get(
        sync.status, "cyan"
    )
    return f"[{colour}]{sync.status}[/{colour}]"


def _frame_text(frame) -> str:
    if isinstance(frame, list) and len(frame) == 4:
        file, line, function, code = frame
        return f'File "{file}", line {line}, in {function}: {code}'
    return str(frame)
