"""`connector serve`: scheduled syncs of every connector with a `schedule` (APScheduler 3).

One sync per connector at a time (`max_instances=1`; a trigger that finds the previous
sync still running is coalesced), at most `max_concurrent_syncs` across connectors
(the executor's pool), and jitter so connectors sharing a schedule do not fire together.

The first SIGTERM/SIGINT stops scheduling and asks running syncs to stop after their
current page, which commits; those syncs end `rescheduled` and the process exits 0. A
second signal exits at once: every page is atomic, so nothing is left half-written,
and a sync row left `running` is marked `failed` by the connector's next sync.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
from datetime import UTC, datetime, timedelta

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler

from .config import Config, CronSchedule
from .errors import ConfigError, ConnectorRuntimeError, SyncInProgress
from .jobs import build_job
from .schedules import trigger_for
from .sync import run_sync

EXIT_AT_ONCE = 130  # the second signal: what shells report for an interrupted command


class Server:
    """Runs scheduled syncs until `stop()`; `serve()` blocks until then."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stopping = threading.Event()
        self.log = structlog.get_logger()
        self.jobs: dict[str, Job] = {}
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(config.max_concurrent_syncs)},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
            timezone=UTC,
        )

    def schedule_all(self) -> list[str]:
        """Add a job per scheduled connector; interval schedules also run once at start."""
        names = [n for n, c in self.config.connectors.items() if c.schedule is not None]
        for name in names:
            build_job(self.config, name)  # config errors before anything runs
            schedule = self.config.connectors[name].schedule
            first = None if isinstance(schedule, CronSchedule) else _soon(len(names))
            self.jobs[name] = self.scheduler.add_job(
                self.sync,
                trigger_for(schedule),
                args=[name],
                id=name,
                name=f"sync {name}",
                next_run_time=first,
            )
        return names

    def sync(self, name: str) -> None:
        """One scheduled sync; its failures are alerts already, never a crashed thread."""
        if self.stopping.is_set():
            return
        try:
            outcome = run_sync(build_job(self.config, name), trigger="schedule", stop=self.stopping)
        except SyncInProgress as exc:
            self.log.warning("sync_skipped", connector=name, reason=str(exc))
            return
        except ConnectorRuntimeError as exc:
            self.log.error("sync_not_started", connector=name, error=str(exc))
            return
        # not `scheduler.get_job`: it waits for the lock `shutdown(wait=True)` holds while
        # it waits for this very thread, a deadlock when a sync ends during shutdown
        self.log.info(
            "scheduled_sync_done",
            connector=name,
            status=outcome.record.status,
            next_run=str(self.jobs[name].next_run_time),
        )

    def serve(self) -> int:
        names = self.schedule_all()
        _log_apscheduler_through_structlog()
        if not names:
            raise ConfigError(
                f"{self.config.path}: no connector has a `schedule`; nothing to serve"
            )
        self._install_signal_handlers()
        self.scheduler.start()
        self.log.warning(
            "serving", connectors=names, max_concurrent_syncs=self.config.max_concurrent_syncs
        )
        while not self.stopping.wait(0.5):  # a timed wait lets signal handlers run
            pass
        self.scheduler.shutdown(wait=True)  # running syncs finish their current page
        self.log.warning("stopped")
        return 0

    def stop(self) -> None:
        self.stopping.set()

    def _install_signal_handlers(self) -> None:
        def on_signal(signum: int, _frame: object) -> None:
            if self.stopping.is_set():
                os._exit(EXIT_AT_ONCE)
            self.log.warning(
                "stopping",
                signal=signal.Signals(signum).name,
                hint="running syncs finish their current page; signal again to exit now",
            )
            self.stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)


class _StructlogHandler(logging.Handler):
    """Passes APScheduler's `logging` records to structlog, so they come out as our lines."""

    def emit(self, record: logging.LogRecord) -> None:
        exception = (
            logging.Formatter().formatException(record.exc_info) if record.exc_info else None
        )
        structlog.get_logger().log(
            record.levelno, "scheduler_message", message=record.getMessage(), exception=exception
        )


def _log_apscheduler_through_structlog() -> None:
    """Without this, APScheduler's warnings (a run skipped while the last one still runs)
    would be bare text among the JSON lines that `serve` writes off a terminal."""
    logger = logging.getLogger("apscheduler")
    logger.setLevel(logging.WARNING)  # its INFO lines repeat our sync_started/sync_finished
    logger.propagate = False
    if not any(isinstance(h, _StructlogHandler) for h in logger.handlers):
        logger.addHandler(_StructlogHandler())


def _soon(count: int) -> datetime:
    """Start-up syncs spread over a few seconds rather than all at the same instant."""
    return datetime.now(UTC) + timedelta(seconds=random.uniform(0, min(5.0, count)))
