"""`connector COMMAND [options]`: the command line.

A command's report (tables, lists, JSON) goes to stdout; progress, warnings and errors go
to stderr. Exit codes: 0 success, 1 a sync or check failed, 2 a usage or config error,
130/143 interrupted by SIGINT/SIGTERM. An expected failure (a warehouse that cannot be
reached, a lock held, bad input) is one line saying what failed and what to do, never a
traceback. When `connector serve` runs for the same config, commands go through its API.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

import structlog
from rich.markup import escape

from . import __version__, masking
from .config import Config, load_config
from .errors import (
    ConfigError,
    ConnectorRuntimeError,
    DestinationError,
    SyncInProgress,
    TransientDestinationError,
)
from .terminal import FAILED, INTERRUPTED, OK, USAGE, console, out

EXAMPLES = {
    "run": "connector run orders            # one sync, with progress and a summary\n"
    "  connector run                   # every connector in turn",
    "validate": "connector validate              # exit 2 and file:line:field for each problem",
    "test": "connector test orders           # one call with setup_test: true; writes nothing",
    "serve": "connector serve                 # prints a login URL for the browser\n"
    '  curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8765/api/connectors',
    "worker": "connector worker --concurrency 8   # with executor: {celery: {broker: ...}}",
    "status": "connector status\n  connector status --json | jq '.[] | {name, status}'",
    "alerts": "connector alerts orders --all",
    "syncs": "connector syncs orders --limit 5 --logs",
    "show": "connector show orders           # tables, columns, keys, row counts",
    "state": "connector state show orders\n  connector state set orders '{\"after\": 0}'",
    "resync": "connector resync orders",
    "pause": "connector pause orders",
    "resume": "connector resume orders",
    "secrets": 'connector secrets init\n  printf %s "$TOKEN" | connector secrets encrypt orders apiToken',
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out.on_broken_pipe = _reader_left  # rich would exit 1 on its own
    configure_logging(verbose=args.verbose or args.command_name in ("serve", "worker"))
    try:
        return _dispatch(args)
    except ConfigError as exc:
        _fail("config error", exc)
        return USAGE
    except SyncInProgress as exc:
        console.print(f"[yellow]{escape(masking.mask(str(exc)))}[/yellow]", highlight=False)
        return FAILED
    except (DestinationError, TransientDestinationError) as exc:
        _fail("warehouse error", exc)
        return FAILED
    except (ConnectorRuntimeError, LookupError) as exc:
        _fail("error", exc)
        return FAILED
    except KeyboardInterrupt:
        console.print("interrupted", highlight=False)
        return INTERRUPTED
    except BrokenPipeError:  # `connector status | head`: the reader left
        # what stdout still buffers goes nowhere, or Python's flush at exit fails again:
        # "Exception ignored ... BrokenPipeError" on stderr and exit 120
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    except Exception as exc:  # a bug of ours: one line, the traceback only on request
        if args.verbose:
            traceback.print_exc()
        _fail("internal error", repr(exc), hint="run again with -v for the traceback")
        return FAILED


def _reader_left() -> None:
    """rich's Console met a closed stdout: end the command as `main` ends any other."""
    raise BrokenPipeError


def _fail(label: str, error: object, hint: str = "") -> None:
    message = masking.excerpt(error, 2000, one_line=True)  # one line, whatever the error said
    tail = f" ({hint})" if hint else ""
    console.print(f"[red]{label}:[/red] {escape(message)}{tail}", highlight=False)


def _dispatch(args: argparse.Namespace) -> int:
    if args.without_config:
        return args.handler(args)
    config = load_config(args.config)
    if args.reading:
        from . import ops
        from .events import bus

        unsubscribe = bus.subscribe(_say_waiting)  # `run` says it too, per sync
        try:
            return getattr(ops, args.handler)(_backend(config), args, out, console)
        finally:
            unsubscribe()
    return args.handler(config, args)


def _say_waiting(event: str, data: dict) -> None:
    """At once, not after the wait: another process holds the warehouse file."""
    if event == "warehouse.waiting":
        console.print(f"[yellow]{escape(data['message'])}[/yellow]", highlight=False)


def _backend(config: Config):
    """The running server's API if there is one for this config, else the warehouse."""
    from .client import connect
    from .control import Control

    return connect(config) or Control(config)


# -- the parser -----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    # Global options, accepted before and after the command. The subcommands' copies
    # default to SUPPRESS, so they never override a value given before the command.
    parser = argparse.ArgumentParser(
        prog="connector",
        description="Run function connectors: call a function for pages of rows and sync "
        "them into a warehouse.",
        epilog="What a function receives and answers, with an example for each kind of "
        "function: docs/protocol.md in the connector-runtime repository; moving a Fivetran "
        "function: docs/moving-from-fivetran.md.",
        parents=[_global_options(config=None, verbose=False)],
    )
    parser.set_defaults(json=False, reading=False, without_config=False, command_name=None)
    parser.add_argument("--version", action="version", version=f"connector-runtime {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, help: str, handler, **options) -> argparse.ArgumentParser:
        return _add(commands, name, help, EXAMPLES[name], handler=handler, **options)

    def reading(name: str, help: str, handler: str, **options) -> argparse.ArgumentParser:
        sub = command(name, help, handler, reading=True, **options)
        sub.add_argument("--json", action="store_true", help="print JSON on stdout")
        return sub

    from . import runs

    run = command("run", "sync the named connectors (all if none)", runs.cmd_run)
    run.add_argument("names", nargs="*", metavar="NAME")
    run.add_argument("--json", action="store_true", help="print each sync's outcome as JSON")
    resync = command(
        "resync", "sync from state {}, then mark deleted what was not re-sent", runs.cmd_resync
    )
    resync.add_argument("name", metavar="NAME")
    check = command(
        "test", "call the function once with setup_test: true and judge the answer", runs.cmd_test
    )
    check.add_argument("name", metavar="NAME")
    command("validate", "check the config and say what is wrong, where", runs.cmd_validate)
    command("serve", "run schedules and the HTTP API until SIGTERM/SIGINT", runs.cmd_serve)
    worker = command(
        "worker", "run syncs sent by connector serve through Celery, until SIGTERM", runs.cmd_worker
    )
    worker.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="syncs at once in this worker (default: max_concurrent_syncs)",
    )

    reading("status", "one line per connector: status, last sync, next run, alerts", "cmd_status")
    alerts = reading("alerts", "open alerts (all with --all), with stack traces", "cmd_alerts")
    alerts.add_argument("name", nargs="?", metavar="NAME")
    alerts.add_argument("--all", action="store_true", help="resolved alerts too")
    syncs = reading("syncs", "recent syncs of a connector", "cmd_syncs")
    syncs.add_argument("name", metavar="NAME")
    syncs.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    syncs.add_argument(
        "--logs", action="store_true", help="also the function output of the newest sync"
    )
    show = reading(
        "show", "where a connector's data lands: tables, columns, keys, rows", "cmd_show"
    )
    show.add_argument("name", metavar="NAME")
    command("pause", "stop scheduling a connector (kept until resume)", "cmd_pause", reading=True)
    command("resume", "schedule a paused connector again", "cmd_resume", reading=True)
    for name in ("pause", "resume"):
        commands.choices[name].add_argument("name", metavar="NAME")
    _state_commands(command)
    _secrets_commands(command)
    return parser


def _add(commands, name: str, help: str, example: str, **defaults) -> argparse.ArgumentParser:
    """A (sub)command with a description, an example, and the global options."""
    sub = commands.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_global_options(config=argparse.SUPPRESS, verbose=argparse.SUPPRESS)],
    )
    sub.set_defaults(command_name=name, **defaults)
    return sub


def _global_options(**defaults) -> argparse.ArgumentParser:
    """`-c` and `-v`, as the top-level parser (real defaults) or a command (SUPPRESS) has them."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "-c",
        "--config",
        default=defaults["config"],
        help="config file (default $CONNECTOR_CONFIG, else ./connectors.yaml)",
    )
    options.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=defaults["verbose"],
        help="log every step; function output as it is printed",
    )
    return options


def _state_commands(command) -> None:
    state = command("state", "show, set or reset a connector's saved state", None)
    actions = state.add_subparsers(required=True, metavar="ACTION")
    for name, help, handler in (
        ("show", "print the saved state as JSON on stdout", "cmd_state_show"),
        ("set", "replace the saved state; refused while a sync runs", "cmd_state_set"),
        ("reset", "clear the saved state; refused while a sync runs", "cmd_state_reset"),
    ):
        action = _add(actions, name, help, EXAMPLES["state"], handler=handler, reading=True)
        action.add_argument("name", metavar="NAME")
        if name == "set":
            action.add_argument("json_state", metavar="JSON")


def _secrets_commands(command) -> None:
    from . import runs

    secrets = command("secrets", "the key and encrypted secret values", None)
    actions = secrets.add_subparsers(required=True, metavar="ACTION")
    _add(
        actions,
        "init",
        "create a key file if there is no key yet",
        "connector secrets init",
        handler=runs.cmd_secrets_init,
        without_config=True,
    )
    encrypt = _add(
        actions,
        "encrypt",
        "read a value from stdin, print its enc:v1: token for connectors.yaml",
        EXAMPLES["secrets"],
        handler=runs.cmd_secrets_encrypt,
        without_config=True,
    )
    encrypt.add_argument("name", metavar="NAME", help="the connector the secret belongs to")
    encrypt.add_argument(
        "key",
        metavar="KEY",
        help="the secret's key under `secrets:`, dotted for a string inside an object or "
        "list (auth.password, hosts.0), or a header name; only text can be encrypted",
    )


def configure_logging(*, verbose: bool = False) -> None:
    """structlog to stderr: readable on a terminal, JSON lines otherwise; secrets masked."""
    renderer = (
        structlog.dev.ConsoleRenderer()
        if sys.stderr.isatty()
        # text as it is: escaped, a non-ASCII message would take six times its length
        else structlog.processors.JSONRenderer(ensure_ascii=False)
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


if __name__ == "__main__":
    sys.exit(main())
