"""`connector serve`: the scheduler, the sync pool and the HTTP API in one process.

- Scheduled connectors fire on APScheduler 3 triggers (with jitter); a tick only asks
  for a sync. Syncs run in one pool of `max_concurrent_syncs` threads, shared with the
  API's "run now". A connector runs at most once at a time: a trigger that finds it
  running (or paused, for schedules) is dropped with a log line, never queued.
- The API (`server.app`) listens on `server.listen`; `.connector-runtime/server.json`
  tells the other commands where, and with which token.
- The first SIGTERM/SIGINT stops scheduling and asks running syncs to stop after their
  current page, which commits; those syncs end `rescheduled` and the process exits 0. A
  second signal exits at once: every page is atomic, so nothing is left half-written,
  and a sync row left `running` is marked `failed` by the connector's next sync.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import structlog
import uvicorn
from apscheduler.schedulers.background import BackgroundScheduler

from . import callbacks, masking, notify
from .config import Config, CronSchedule, expand_env
from .control import Control
from .errors import ConfigError, ConnectorRuntimeError, SyncInProgress
from .events import EventBus, bus
from .jobs import build_job
from .schedules import trigger_for
from .server import discovery
from .server.app import create_app
from .server.auth import new_token
from .server.live import LiveSyncs, Metrics
from .sync import run_sync

EXIT_AT_ONCE = 130  # the second signal: what shells report for an interrupted command
HTTP_GRACE_SECONDS = 2.0  # open event streams are cut after this at shutdown
LOST_AFTER_SECONDS = 30.0  # a sent sync unheard of this long is checked in the warehouse


class Server:
    """Schedules and serves until `stop()`; `serve()` blocks until then."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stopping = threading.Event()
        self.log = structlog.get_logger()
        self.pool = ThreadPoolExecutor(config.max_concurrent_syncs, thread_name_prefix="sync")
        self.scheduler = BackgroundScheduler(
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
            timezone=UTC,
        )
        self._running: dict[str, tuple[str, float]] = {}  # connector -> (sync id, when asked)
        self._running_lock = threading.Lock()
        bus.subscribe(self._on_finished)  # before LiveSyncs: free before anyone reads "finished"
        self.live = LiveSyncs(bus)
        self.metrics = Metrics(bus, self.live)
        self.control = Control(config, live=self.live, next_fire=self.next_fire)
        self.token = os.environ.get("CONNECTOR_RUNTIME_TOKEN") or new_token()
        self.http: uvicorn.Server | None = None
        self.url = ""
        # executor: celery (design §15): syncs run on workers; one serve process leads
        self.app = self.ticker = self.feed = None
        if config.executor != "local":
            from .celery_app import EventFeed, make_app
            from .leader import Ticker

            self.app = make_app(config)
            self.ticker = Ticker(config, self.on_schedule, self.stopping)
            self.feed = EventFeed(self.app, bus.publish, self._dropped_by_worker)

    # -- syncs ------------------------------------------------------------------------

    def schedule_all(self) -> list[str]:
        """A job per scheduled connector; interval schedules also fire soon after start."""
        names = [n for n, c in self.config.connectors.items() if c.schedule is not None]
        for name in self.config.connectors:
            build_job(self.config, name)  # config errors before anything runs
        if self.ticker is not None:
            return names  # the leading process's ticker sends their ticks (leader.py)
        for name in names:
            schedule = self.config.connectors[name].schedule
            # interval schedules also sync soon after start; cron ones wait for their time.
            # (APScheduler 3 reads an explicit `next_run_time=None` as "paused": leave it out.)
            first = (
                {} if isinstance(schedule, CronSchedule) else {"next_run_time": _soon(len(names))}
            )
            self.scheduler.add_job(
                self.on_schedule,
                trigger_for(schedule),
                args=[name],
                id=name,
                name=f"sync {name}",
                **first,
            )
        return names

    def next_fire(self, name: str) -> datetime | None:
        if self.ticker is not None:
            return self.ticker.next_fire(name)
        job = self.scheduler.get_job(name) if self.scheduler.running else None
        return None if job is None else job.next_run_time

    def on_schedule(self, name: str, sync_id: str | None = None) -> None:
        """A schedule tick: start a sync unless the connector is already running or paused
        (the warehouse is asked only when it is not running)."""
        if self._busy(name):
            reason = f"a sync of {name!r} is already in progress"
            self.log.warning("sync_skipped", connector=name, sync_id=sync_id, reason=reason)
            return
        try:
            with self.control.warehouse(name) as destination:
                paused = name in destination.paused()
        except Exception as exc:  # the warehouse may be down: the next tick tries again
            self.log.error("sync_not_started", connector=name, sync_id=sync_id, error=str(exc))
            return
        if paused:
            self.log.info("sync_skipped", connector=name, sync_id=sync_id, reason="paused")
            return
        try:
            self.start(name, "schedule", sync_id)
        except SyncInProgress as exc:
            self.log.warning("sync_skipped", connector=name, sync_id=sync_id, reason=str(exc))
        except ConnectorRuntimeError as exc:  # the broker did not take it
            self.log.error("sync_not_started", connector=name, sync_id=sync_id, error=str(exc))

    def start(self, name: str, trigger: str, sync_id: str | None = None) -> str:
        """Start a sync now (in the pool, or on a Celery worker); its id. SyncInProgress if
        it runs already."""
        if self.stopping.is_set():
            raise SyncInProgress("connector serve is stopping; no new syncs start")
        self._busy(name)
        sync_id = sync_id or str(uuid.uuid4())
        with self._running_lock:
            if name in self._running:
                raise SyncInProgress(f"a sync of {name!r} is already in progress")
            self._running[name] = (sync_id, time.monotonic())
        self.live.queued(name, sync_id, trigger)
        if self.app is None:
            self.pool.submit(self._sync, name, trigger, sync_id)
            return sync_id
        from .celery_app import send_sync

        try:
            send_sync(self.app, self.config, name, trigger, sync_id)
        except ConnectorRuntimeError as exc:
            self._dropped_by_worker({"connector": name, "sync_id": sync_id, "error": str(exc)})
            raise
        return sync_id

    def _busy(self, name: str) -> bool:
        """Whether a sync of the connector runs, or is queued, for all this process knows."""
        if self.app is not None:
            self._forget_lost(name)
        with self._running_lock:
            return name in self._running

    def _dropped_by_worker(self, dropped: dict) -> None:
        """A sync sent to the workers that did not start (its connector was syncing
        elsewhere, say): its connector is free again."""
        name, sync_id = dropped["connector"], dropped["sync_id"]
        self.live.not_started(name, sync_id, dropped["error"])
        with self._running_lock:
            if self._running.get(name, (None,))[0] == sync_id:
                del self._running[name]

    def _forget_lost(self, name: str) -> None:
        """A sync sent to the workers long ago that serve never heard end (its worker's
        events lost, or the worker died and its task has not come back yet): the warehouse
        says whether it ended or holds its lock no longer; then its connector is free."""
        with self._running_lock:
            sync_id, asked = self._running.get(name, (None, time.monotonic()))
        if sync_id is None or time.monotonic() - asked < LOST_AFTER_SECONDS:
            return
        try:
            with self.control.warehouse(name) as destination:
                record = destination.get_sync(sync_id)
                if record is None:
                    raise SyncInProgress("still queued")
                if record.status == "running":
                    with destination.lock(name):
                        pass  # free: nobody runs it any more
        except (SyncInProgress, ConnectorRuntimeError):
            with self._running_lock:  # queued or running still: ask again in a while
                if self._running.get(name, (None,))[0] == sync_id:
                    self._running[name] = (sync_id, time.monotonic())
            return
        self.log.warning("sync_lost", connector=name, sync_id=sync_id, status=record.status)
        self._dropped_by_worker({"connector": name, "sync_id": sync_id, "error": "lost"})

    def _sync(self, name: str, trigger: str, sync_id: str) -> None:
        """One sync in a pool thread; its failures are alerts already, never a dead thread."""
        try:
            if self.stopping.is_set():  # queued behind others when the stop came
                self.live.not_started(name, sync_id, "connector serve stopped first")
                return
            job = build_job(self.config, name)
            outcome = run_sync(job, trigger=trigger, stop=self.stopping, sync_id=sync_id)
        except SyncInProgress as exc:
            self.live.not_started(name, sync_id, str(exc))
            self.log.warning("sync_skipped", connector=name, reason=str(exc))
        except ConnectorRuntimeError as exc:
            self.live.not_started(name, sync_id, masking.mask(str(exc)))
            self.log.error("sync_not_started", connector=name, error=str(exc))
        except Exception as exc:  # a bug of ours must not kill the pool thread silently
            self.live.not_started(name, sync_id, masking.mask(f"internal error: {exc!r}"))
            self.log.error("sync_crashed", connector=name, error=repr(exc))
        else:
            self.log.info("sync_done", connector=name, status=outcome.record.status)
        finally:
            with self._running_lock:
                self._running.pop(name, None)

    def _on_finished(self, event: str, data: dict) -> None:
        """A finished sync frees its connector at once (its lock is released already), so
        a client that sees it finished can start the next one without a 409."""
        if event == "sync.finished":
            with self._running_lock:
                self._running.pop(data["sync"]["connector"], None)

    def healthy(self) -> bool:
        if self.ticker is not None:
            return self.ticker.alive() and not self.stopping.is_set()
        return self.scheduler.running and not self.stopping.is_set()

    # -- the process ------------------------------------------------------------------

    def serve(self) -> int:
        names = self.schedule_all()
        route_library_logs()
        other = discovery.find(self.config.path)
        if other is not None:
            raise ConfigError(
                f"{self.config.path}: connector serve is already running for this config "
                f"(pid {other.pid}, {other.url})"
            )
        listener = self._bind()
        # background functions POST their pages here
        callbacks.board.served_at = public_url(self.config, self.url)
        notifier = self._notifier()
        self._install_signal_handlers()
        self.scheduler.start()
        if self.ticker is not None:
            self.feed.start()
            self.ticker.start()
        http_thread = self._start_http(listener)
        self._seed_metrics()
        discovery.write(self.config.path, discovery.ServerInfo(os.getpid(), self.url, self.token))
        self.log.warning(
            "serving",
            url=self.url,
            login=f"{self.url}/login?token={self.token}",
            scheduled=names,
            **(
                {"max_concurrent_syncs": self.config.max_concurrent_syncs}
                if self.app is None
                else {"executor": "celery", "queue": self.app.conf.task_default_queue}
            ),
        )
        try:
            while not self.stopping.wait(0.5):  # a timed wait lets signal handlers run
                pass
        finally:
            discovery.remove(self.config.path)
            callbacks.board.served_at = None
            self.scheduler.shutdown(wait=False)
            if self.ticker is not None:
                self.ticker.join(5)  # it releases the lease: a standby leads at once
                self.feed.stop()
            self.pool.shutdown(wait=True, cancel_futures=True)  # running syncs finish their page
            if self.http is not None:
                self.http.should_exit = True
            http_thread.join(HTTP_GRACE_SECONDS + 3)
            if notifier is not None:
                notifier.close()
            self.control.close()
        self.log.warning("stopped")
        return 0

    def stop(self) -> None:
        self.stopping.set()

    def _notifier(self) -> notify.Notifier | None:
        """Alert notifications. Under Celery, workers send those of their syncs' alerts,
        so each goes out once however many serve processes hear it; this process sends
        those of what it does itself (an alert resolved through the API)."""
        if self.feed is None:
            return notify.start(self.config, dashboard_url=self.url)
        if not (self.config.notify or any(c.notify for c in self.config.connectors.values())):
            return None
        own = EventBus()
        relayed = self.feed.thread

        def pass_own(event: str, data: dict) -> None:
            if threading.current_thread() is not relayed:
                own.publish(event, data)

        bus.subscribe(pass_own)
        return notify.Notifier(self.config, self.url).attach(own)

    def _bind(self) -> socket.socket:
        """The listening socket, bound before anything starts: a port in use fails cleanly."""
        host, _, port = self.config.server.listen.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
        # and without it a keep-alive client waits ~40 ms (Nagle + delayed ACK) per answer
        listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((host, int(port)))
        except OSError as exc:
            listener.close()
            raise ConfigError(
                f"{self.config.where('server', 'listen')}: cannot listen on "
                f"{self.config.server.listen}: {exc.strerror or exc}"
            ) from None
        listener.listen(128)
        bound_port = listener.getsockname()[1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
        shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
        self.url = f"http://{shown}:{bound_port}"
        if not _loopback(host):
            self.log.warning(
                "listening_beyond_loopback",
                listen=self.config.server.listen,
                hint="put TLS in front (a reverse proxy): the token travels in every request",
            )
        return listener

    def _start_http(self, listener: socket.socket) -> threading.Thread:
        app = create_app(self.control, self, bus, self.metrics.registry, self.token)
        config = uvicorn.Config(
            app,
            log_config=None,  # its records go through structlog (`route_library_logs`)
            access_log=False,
            timeout_graceful_shutdown=HTTP_GRACE_SECONDS,
            lifespan="off",
        )
        self.http = uvicorn.Server(config)  # off the main thread, it leaves signals to us
        thread = threading.Thread(
            target=self.http.run, kwargs={"sockets": [listener]}, name="http", daemon=True
        )
        thread.start()
        return thread

    def _seed_metrics(self) -> None:
        try:
            connectors = self.control.connectors()
        except ConnectorRuntimeError as exc:
            self.log.error("metrics_not_seeded", error=str(exc))
            return
        last_success = {}
        for name in self.config.connectors:
            for sync in self.control.syncs(name, limit=50):
                if sync["status"] == "succeeded":
                    last_success[name] = datetime.fromisoformat(sync["finished_at"])
                    break
        self.metrics.seed(connectors, last_success)

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


def public_url(config: Config, listen_url: str) -> str:
    """Where functions reach this server: `server.public_url`, else `listen_url`."""
    if config.server.public_url is None:
        return listen_url
    return expand_env(config.server.public_url, config.where("server", "public_url"))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _StructlogHandler(logging.Handler):
    """Passes `logging` records (APScheduler's, uvicorn's, Celery's) to structlog, as our
    lines."""

    def emit(self, record: logging.LogRecord) -> None:
        exception = (
            logging.Formatter().formatException(record.exc_info) if record.exc_info else None
        )
        structlog.get_logger().log(
            record.levelno, "scheduler_message", message=record.getMessage(), exception=exception
        )


def route_library_logs() -> None:
    """Without this, APScheduler's, uvicorn's and Celery's warnings would be bare text
    among the JSON lines that `serve` and `worker` write off a terminal."""
    for name in ("apscheduler", "uvicorn", "celery", "kombu", "amqp"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)  # APScheduler's INFO repeats our sync_started
        logger.propagate = False
        if not any(isinstance(h, _StructlogHandler) for h in logger.handlers):
            logger.addHandler(_StructlogHandler())


def _soon(count: int) -> datetime:
    """Start-up syncs spread over a few seconds rather than all at the same instant."""
    return datetime.now(UTC) + timedelta(seconds=random.uniform(0, min(5.0, count)))
