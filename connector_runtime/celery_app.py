"""Syncs on Celery workers (design §15): the app a config makes, the sync task, `connector
worker`, and the way back from workers' syncs to `connector serve`.

- A task carries the connector's name, the trigger and the sync's id, nothing else: the
  worker builds the sync from its own copy of the config and its own secrets key.
- Reliability (`settings`): tasks are acknowledged late, after the sync ends, and
  rejected back to the queue when the worker is lost, so a sync whose worker dies is
  sent to another and resumes from its last committed page (each page commits with its
  state). RabbitMQ hands back a dead worker's messages as soon as its connection drops:
  at once for a killed process, within two AMQP heartbeats (`HEARTBEAT_SECONDS`) for a
  vanished machine. Redis hands them back after the visibility timeout, set above the
  longest `max_sync_duration` so that a sync still running is never sent twice.
- Each worker takes one task at a time per free thread (prefetch 1): a queued sync waits
  in the broker, where any idle worker can take it.
- The warehouse lock still allows one sync per connector: a task whose connector is
  syncing elsewhere is dropped with a log line, never held back to run after it. A task
  whose sync already ended (a redelivery after it finished) is dropped too; one whose
  sync was left `running` by a dead worker is run again as a new sync, from the saved
  state.
- What a worker's syncs do (`sync.*`, `alert.*`) goes to `connector serve` as Celery
  events on the queue's own event exchange (`EventRelay` → `EventFeed`), where the API,
  the dashboard and the metrics hear them as they hear local syncs. Workers send their
  alerts' notifications themselves (linking `server.public_url`, if set), so each goes out
  once however many serve processes run.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from . import masking, notify
from .config import Config, expand_env
from .control import display_url
from .destination import open_destination
from .errors import ConfigError, ConnectorRuntimeError, DestinationError, SyncInProgress
from .events import bus
from .jobs import build_job
from .sync import SyncOutcome, run_sync

TASK = "connector_runtime.sync"
EVENT = "connector-event"  # the Celery event type that carries one of our bus events
NOT_STARTED = "sync.not_started"  # a task dropped by a worker: serve frees its connector
HEARTBEAT_SECONDS = 10
VISIBILITY_MARGIN_SECONDS = 600
PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0, "interval_step": 1, "interval_max": 2}


def broker_url(config: Config) -> str:
    """The broker's URL with ${env:VAR} expanded; its password registered as a secret."""
    url = expand_env(config.executor.celery.broker, config.where("executor", "celery", "broker"))
    masking.register(_password(url))
    return url


def _password(url: str) -> str:
    credentials = url.partition("://")[2].rpartition("@")[0]
    return credentials.partition(":")[2] if credentials else ""


def settings(config: Config, broker: str) -> dict[str, Any]:
    """The Celery settings a config gets (the module docstring says why each)."""
    celery = config.executor.celery
    longest = max((c.max_sync_duration for c in config.connectors.values()), default=6 * 3600.0)
    return {
        "broker_url": broker,
        "broker_heartbeat": HEARTBEAT_SECONDS,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": int(longest + VISIBILITY_MARGIN_SECONDS),  # Redis
            "confirm_publish": True,  # RabbitMQ: a sent task is in the broker, not in flight
        },
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        # a lost broker connection leaves running syncs running; their redelivered tasks
        # find the connector locked and are dropped
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_default_queue": celery.queue,
        "task_publish_retry_policy": PUBLISH_RETRY,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "event_exchange": f"{celery.queue}.events",
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_disable_rate_limits": True,
        "enable_utc": True,
    }


def make_app(config: Config):
    """The Celery app of `config`'s executor, with the sync task."""
    if config.executor == "local":
        raise ConfigError(
            f"{config.path}: executor: Celery workers need `executor: {{celery: {{broker: "
            "URL}}` in the config (now: local, syncs run inside connector serve)"
        )
    try:
        from celery import Celery
    except ImportError:
        raise ConfigError(
            f"{config.where('executor')}: the celery executor needs Celery: "
            "pip install 'connector-runtime[celery]'"
        ) from None
    app = Celery("connector_runtime", set_as_current=False)
    app.conf.update(settings(config, broker_url(config)))
    app.task(name=TASK, bind=True, acks_late=True, reject_on_worker_lost=True)(_sync_task)
    return app


def send_sync(app, config: Config, name: str, trigger: str, sync_id: str) -> None:
    """Queue one sync for the workers; ConnectorRuntimeError if the broker cannot take it."""
    try:
        app.send_task(
            TASK, args=[name, trigger, sync_id], task_id=sync_id, queue=app.conf.task_default_queue
        )
    except Exception as exc:  # kombu's OperationalError, after its retries
        broker = display_url(app.conf.broker_url)
        raise ConnectorRuntimeError(
            f"the sync of {name!r} could not be queued: the broker {broker} did not take it "
            f"({masking.mask(str(exc))})"
        ) from None


def _sync_task(task, name: str, trigger: str, sync_id: str) -> None:
    task.app.connector_runner.run(name, trigger, sync_id)


# -- the worker side ------------------------------------------------------------------


class SyncRunner:
    """Runs the syncs a worker's tasks ask for, several at once on its thread pool."""

    def __init__(self, config: Config, relay: EventRelay) -> None:
        self.config = config
        self.relay = relay
        self.stop = threading.Event()  # set at the worker's shutdown: syncs end after a page
        self.log = structlog.get_logger()

    def on_shutdown(self, **_: Any) -> None:
        self.stop.set()

    def run(self, name: str, trigger: str, sync_id: str) -> None:
        log = self.log.bind(connector=name, sync_id=sync_id, trigger=trigger)
        try:
            job = build_job(self.config, name)
            outcome = self._sync(job, trigger, sync_id, log)
        except SyncInProgress as exc:
            log.warning("sync_skipped", reason=str(exc))
            self.relay.not_started(name, sync_id, str(exc))
        except ConnectorRuntimeError as exc:
            log.error("sync_not_started", error=masking.mask(str(exc)))
            self.relay.not_started(name, sync_id, masking.mask(str(exc)))
        except Exception as exc:  # a bug of ours: the task still ends, and serve hears of it
            log.error("sync_crashed", error=masking.mask(repr(exc)))
            self.relay.not_started(name, sync_id, masking.mask(f"internal error: {exc!r}"))
        else:
            if outcome is not None:
                log.info("sync_done", status=outcome.record.status, run_as=outcome.record.sync_id)

    def _sync(self, job, trigger: str, sync_id: str, log) -> SyncOutcome | None:
        """The sync of a task. A task delivered again finds its sync's row already there
        (the warehouse refuses a second row of that id, and nothing else of the sync
        starts): then its sync ran already (None), or was left `running` by a dead worker
        and runs again under a new id."""
        try:
            return run_sync(job, trigger=trigger, stop=self.stop, sync_id=sync_id)
        except DestinationError:
            run_as = self._run_as(job, sync_id, log)
            if run_as == sync_id:
                raise  # no such row: the warehouse refused for another reason
        if run_as is None:
            return None
        if trigger == "resync":
            trigger = "manual"  # the re-sync goes on from its saved state, not from {}
        return run_sync(job, trigger=trigger, stop=self.stop, sync_id=run_as)

    def _run_as(self, job, sync_id: str, log) -> str | None:
        """The id to sync a delivered-again task under: a new one if a worker died running
        it (the dead sync's row is marked failed as the new one starts); None if it ran;
        its own if it never started."""
        with open_destination(job.destination_url) as destination:
            record = destination.get_sync(sync_id)
        if record is None:
            return sync_id
        if record.status == "running":
            run_as = str(uuid.uuid4())
            log.warning(
                "sync_restarted",
                run_as=run_as,
                reason="its worker did not finish it; the sync resumes from its last committed "
                "page (unless it still runs elsewhere, then this one is dropped)",
            )
            return run_as
        log.warning("sync_already_ran", status=record.status, reason="a redelivered task")
        return None


class EventRelay:
    """Sends this process's sync and alert events to `connector serve` (a bus listener)."""

    def __init__(self, app) -> None:
        self.app = app
        self.hostname = f"connector-runtime-{os.getpid()}@{socket.gethostname()}"
        self._dispatcher = None
        self._lock = threading.Lock()

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event.startswith(("sync.", "alert.")):
            self.send(event, data)

    def not_started(self, name: str, sync_id: str, error: str) -> None:
        self.send(NOT_STARTED, {"connector": name, "sync_id": sync_id, "error": error})

    def send(self, event: str, data: dict[str, Any]) -> None:
        with self._lock:
            if self._dispatcher is None:
                self._dispatcher = self.app.events.Dispatcher(
                    self.app.connection_for_write(),
                    hostname=self.hostname,
                    enabled=True,
                    buffer_while_offline=False,
                )
            self._dispatcher.send(
                EVENT, event=event, data=data, retry=True, retry_policy=PUBLISH_RETRY
            )

    def close(self) -> None:
        with self._lock:
            if self._dispatcher is not None:
                self._dispatcher.close()
                self._dispatcher.connection.release()
                self._dispatcher = None


def run_worker(config: Config, concurrency: int) -> int:
    """`connector worker`: run syncs from the queue until SIGTERM/SIGINT, then let running
    syncs finish their current page (they end `rescheduled`) and exit."""
    from celery import signals

    from .scheduler import public_url

    app = make_app(config)
    for name in config.connectors:
        build_job(config, name)  # config errors before any task is taken
    relay = EventRelay(app)
    runner = SyncRunner(config, relay)
    app.connector_runner = runner
    signals.worker_shutting_down.connect(runner.on_shutdown, weak=False)
    unsubscribe = bus.subscribe(relay)
    # the dashboard's address in notifications: serve's public_url, if the config has one
    notifier = notify.start(config, dashboard_url=public_url(config, None))
    queue = config.executor.celery.queue
    worker = app.Worker(
        hostname=relay.hostname,
        pool="threads",
        concurrency=concurrency,
        queues=[queue],
        loglevel="WARNING",
        quiet=True,
        without_mingle=True,
        without_gossip=True,
    )
    structlog.get_logger().warning(
        "worker_ready",
        broker=display_url(app.conf.broker_url),
        queue=queue,
        concurrency=concurrency,
        pid=os.getpid(),
    )
    try:
        worker.start()
    finally:
        unsubscribe()
        relay.close()
        if notifier is not None:
            notifier.close()
    return worker.exitcode or 0


# -- the serve side -------------------------------------------------------------------


class EventFeed:
    """Hears workers' events in `connector serve` and passes them on: `publish(event, data)`
    for sync and alert events, `not_started(data)` for a task a worker dropped."""

    def __init__(
        self,
        app,
        publish: Callable[[str, dict[str, Any]], None],
        not_started: Callable[[dict[str, Any]], None],
    ) -> None:
        self.app, self.publish, self.not_started = app, publish, not_started
        self.stopping = threading.Event()
        self.receiver = None
        self.log = structlog.get_logger()
        self.thread = threading.Thread(target=self._run, name="celery-events", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(5)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                with self.app.connection_for_read() as connection:
                    self.receiver = self.app.events.Receiver(
                        connection, handlers={EVENT: self._on_event}
                    )
                    if self.stopping.is_set():
                        return
                    self.receiver.run(wakeup=False)  # reconnects by itself until stopped
            except Exception as exc:  # the broker is down: try again shortly
                self.log.warning("worker_events_unavailable", error=masking.mask(str(exc)))
                self.stopping.wait(2.0)

    def _on_event(self, message: dict[str, Any]) -> None:
        event, data = message.get("event"), message.get("data")
        if not isinstance(event, str) or not isinstance(data, dict):
            return
        if event == NOT_STARTED:
            self.not_started(data)
        elif event.startswith(("sync.", "alert.")):
            self.publish(event, data)
