"""`connector [-c PATH] COMMAND` (DESIGN.md §9).

Human output (progress, summaries, errors) goes to stderr through rich; anything meant
for a script is printed alone on stdout. Exit codes: 0 success, 1 a sync or check
failed, 2 a usage or config error.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable

import structlog
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__, masking
from .config import Config, load_config
from .errors import (
    ConfigError,
    DestinationError,
    SyncFailure,
    SyncInProgress,
    TransientDestinationError,
)
from .jobs import build_job
from .sync import PageProgress, SyncOutcome, run_sync

OK, FAILED, USAGE = 0, 1, 2
# no hard wraps: `file:line:` stays parseable; piped output gets room for whole tables
console = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(verbose=args.verbose or getattr(args, "serving", False))
    try:
        if getattr(args, "without_config", False):
            return args.command(args)
        config = load_config(args.config)
        return args.command(config, args)
    except ConfigError as exc:
        console.print(f"[red]config error:[/red] {escape(masking.mask(str(exc)))}", highlight=False)
        return USAGE
    except DestinationError as exc:
        console.print(
            f"[red]warehouse error:[/red] {escape(masking.mask(str(exc)))}", highlight=False
        )
        return FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="connector", description=__doc__.split("\n")[0])
    parser.add_argument(
        "-c", "--config", help="config file (default $CONNECTOR_CONFIG, else ./connectors.yaml)"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log every step, function output too"
    )
    parser.add_argument("--version", action="version", version=f"connector-runtime {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="sync the named connectors (all if none)")
    run.add_argument("names", nargs="*", metavar="NAME")
    run.set_defaults(command=cmd_run)

    validate = commands.add_parser("validate", help="check the config and say what is wrong, where")
    validate.set_defaults(command=cmd_validate)

    serve = commands.add_parser("serve", help="run every scheduled connector until SIGTERM/SIGINT")
    serve.set_defaults(command=cmd_serve, serving=True)

    check = commands.add_parser(
        "test", help="call the function once with setup_test: true; report if the answer is valid"
    )
    check.add_argument("name", metavar="NAME")
    check.set_defaults(command=cmd_test)

    resync = commands.add_parser(
        "resync", help="sync from state {}, then mark deleted what the function did not re-send"
    )
    resync.add_argument("name", metavar="NAME")
    resync.set_defaults(command=cmd_resync)

    status = commands.add_parser(
        "status", help="one line per connector: last sync, next run, alerts"
    )
    status.set_defaults(command=_ops("cmd_status"))
    alerts = commands.add_parser("alerts", help="open alerts (all with --all), with stack traces")
    alerts.add_argument("name", nargs="?", metavar="NAME")
    alerts.add_argument("--all", action="store_true", help="resolved alerts too")
    alerts.set_defaults(command=_ops("cmd_alerts"))
    syncs = commands.add_parser("syncs", help="recent syncs of a connector")
    syncs.add_argument("name", metavar="NAME")
    syncs.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    syncs.set_defaults(command=_ops("cmd_syncs"))

    state = commands.add_parser("state", help="show, set or reset a connector's saved state")
    state_commands = state.add_subparsers(required=True, metavar="ACTION")
    show = state_commands.add_parser("show", help="print the saved state as JSON on stdout")
    show.add_argument("name", metavar="NAME")
    show.set_defaults(command=_ops("cmd_state_show"))
    set_ = state_commands.add_parser(
        "set", help="replace the saved state; refused while a sync runs"
    )
    set_.add_argument("name", metavar="NAME")
    set_.add_argument("json", metavar="JSON")
    set_.set_defaults(command=_ops("cmd_state_set"))
    reset = state_commands.add_parser(
        "reset", help="clear the saved state; refused while a sync runs"
    )
    reset.add_argument("name", metavar="NAME")
    reset.set_defaults(command=_ops("cmd_state_reset"))
    secrets = commands.add_parser("secrets", help="the key and encrypted secret values")
    secrets_commands = secrets.add_subparsers(required=True, metavar="ACTION")
    init = secrets_commands.add_parser("init", help="create a key file if there is no key yet")
    init.set_defaults(command=cmd_secrets_init, without_config=True)
    encrypt = secrets_commands.add_parser(
        "encrypt", help="read a value from stdin, print its enc:v1: token for connectors.yaml"
    )
    encrypt.add_argument("name", metavar="NAME", help="the connector the secret belongs to")
    encrypt.add_argument(
        "key", metavar="KEY", help="the secret's key under `secrets:` (or header name)"
    )
    encrypt.set_defaults(command=cmd_secrets_encrypt, without_config=True)
    return parser


def configure_logging(*, verbose: bool = False) -> None:
    """structlog to stderr: readable on a terminal, JSON lines otherwise; secrets masked."""
    renderer = (
        structlog.dev.ConsoleRenderer()
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            masking.structlog_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.INFO if verbose else logging.WARNING
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


# -- commands -------------------------------------------------------------------------


def cmd_validate(config: Config, args: argparse.Namespace) -> int:
    for name in config.connectors:
        build_job(config, name)  # paths, handlers and secrets, not only the YAML's shape
    console.print(f"[green]{config.path}: {len(config.connectors)} connector(s), all valid[/green]")
    return OK


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from .scheduler import Server

    return Server(config).serve()


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    names = args.names or list(config.connectors)
    jobs = [build_job(config, name) for name in names]  # every config error before any sync
    failed = False
    for job in jobs:
        failed |= not _run_one(job, "manual")
    return FAILED if failed else OK


def cmd_test(config: Config, args: argparse.Namespace) -> int:
    """One call, judged exactly as a sync would judge it, with nothing written anywhere."""
    from .sync import check_function

    job = build_job(config, args.name)
    try:
        summary = check_function(job)
    except SyncFailure as failure:
        console.print(
            f"[red]{job.connector}: {failure.kind}[/red] ({escape(failure.error_type)}): "
            f"{escape(masking.mask(failure.message))}",
            highlight=False,
        )
        return FAILED
    console.print(
        f"[green]{job.connector}: the function answered with a valid response[/green] "
        f"({escape(summary)})",
        highlight=False,
    )
    return OK


def cmd_resync(config: Config, args: argparse.Namespace) -> int:
    return OK if _run_one(build_job(config, args.name), "resync") else FAILED


def _run_one(job, trigger: str) -> bool:
    started = time.monotonic()
    try:
        with _progress(job.connector) as on_page:
            outcome = run_sync(job, trigger=trigger, on_page=on_page)
    except SyncInProgress as exc:
        console.print(f"[yellow]{job.connector}:[/yellow] {escape(str(exc))}", highlight=False)
        return False
    except (DestinationError, TransientDestinationError) as exc:  # before or after any page
        console.print(
            f"[red]{job.connector}:[/red] {escape(masking.mask(str(exc)))}", highlight=False
        )
        return False
    _summary(outcome, time.monotonic() - started)
    return outcome.ok


class _progress:
    """A live line per connector: pages and rows so far."""

    def __init__(self, connector: str) -> None:
        self.connector = connector
        self.rows = 0
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )

    def __enter__(self) -> Callable[[PageProgress], None]:
        self.bar.start()
        self.task = self.bar.add_task(f"{self.connector}: starting")
        return self.on_page

    def on_page(self, page: PageProgress) -> None:
        self.rows += page.rows
        self.bar.update(
            self.task, description=f"{self.connector}: page {page.number}, {self.rows:,} rows"
        )
        if not console.is_terminal:
            console.print(
                f"{self.connector}: page {page.number} committed, {self.rows:,} rows so far",
                highlight=False,
            )

    def __exit__(self, *exc_info: object) -> None:
        self.bar.stop()


def _summary(outcome: SyncOutcome, seconds: float) -> None:
    record = outcome.record
    colour = {"succeeded": "green", "rescheduled": "yellow"}.get(record.status, "red")
    console.print(
        f"[{colour}]{record.connector}: {record.status}[/{colour}] in {seconds:.1f}s, "
        f"{record.pages} page(s), {record.rows_upserted:,} rows upserted, "
        f"{record.rows_deleted:,} deleted",
        highlight=False,
    )
    if outcome.tables:
        table = Table("table", "upserted", "deleted", "delete keys not found", box=None)
        for name, counts in sorted(outcome.tables.items()):
            table.add_row(
                escape(name),
                f"{counts['upserted']:,}",
                f"{counts['deleted']:,}",
                f"{counts['missing']:,}",
            )
        console.print(table)
    if outcome.alert is not None:
        alert = outcome.alert
        console.print(
            f"[red]{alert.kind}[/red] ({escape(str(alert.error_type))}): {escape(alert.message)}",
            highlight=False,
        )
        if record.status == "failed":
            console.print(
                "the state stays at the last committed page; the next sync resumes there",
                highlight=False,
            )


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
    sys.stdout.write(encrypt(value, args.name, args.key) + "\n")
    return OK


def _ops(name: str):
    """An operator command from `ops`, imported when it runs."""

    def command(config: Config, args: argparse.Namespace) -> int:
        from . import ops

        return getattr(ops, name)(config, args, console)

    return command


if __name__ == "__main__":
    sys.exit(main())
