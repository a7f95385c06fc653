"""Syncs on Celery workers, end to end: real RabbitMQ (Redis once), real `connector worker`
and `connector serve` processes, a real PostgreSQL warehouse.

The function appends one row per page to `calls` (a table without a primary key, so a
page written twice would show as two rows) with its sync id, page number and the pid of
the process that ran it (inline: the worker itself).

The broker comes from CONNECTOR_TEST_RABBITMQ (default amqp://guest:guest@127.0.0.1:5672//)
and CONNECTOR_TEST_REDIS (default redis://127.0.0.1:6379/0); one that cannot be reached
skips these tests with how to start it, and fails them under CI=true. Each test has a
queue of its own, deleted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CLI, cli_env
from test_notify_e2e import receiver as receiver  # fixture
from test_serve_ops import assert_never_overlapping, wait_until
from warehouses import postgres_url as postgres_url  # fixture

pytestmark = pytest.mark.slow  # real workers on a real broker: about two minutes

RABBITMQ = os.environ.get("CONNECTOR_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//")
REDIS = os.environ.get("CONNECTOR_TEST_REDIS", "redis://127.0.0.1:6379/0")
SECRET = "celery-test-secret-value-2f9c"

HANDLER = """\
import os
import time


def handler(request):
    settings = request["secrets"]
    page = request["state"].get("page", 0) + 1
    time.sleep(settings["sleep"])
    if settings["fail"]:
        raise RuntimeError("the API refused the token")
    rows = [
        {"sync_id": request["sync_id"], "page": page, "n": (page - 1) * settings["rows"] + i,
         "pid": os.getpid()}
        for i in range(settings["rows"])
    ]
    more = page < settings["pages"]
    return {"state": {"page": page if more else 0}, "insert": {"calls": rows}, "hasMore": more}
"""


def connector(
    *, pages: int = 1, rows: int = 1, sleep: float = 0.0, fail: bool = False, schedule=None
) -> dict:
    settings = {"pages": pages, "rows": rows, "sleep": sleep, "fail": fail, "token": SECRET}
    made = {"function": {"local": "handler.py", "isolation": "inline"}, "secrets": settings}
    return made | ({"schedule": schedule} if schedule else {})


def broker_or_skip(url: str, title: str, start: str) -> None:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        message = f"{title} at {url} is not reachable ({exc}); start it: {start}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: a broker the suite needs must be running)")
        pytest.skip(message)


class Process:
    """A `connector` command in the background, its stderr in a file."""

    def __init__(self, args: list[str], cwd: Path, log: Path) -> None:
        self.log = log
        self._stderr = log.open("w")
        self.popen = subprocess.Popen(
            [*CLI, *args], cwd=cwd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=self._stderr
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def events(self, event: str | None = None) -> list[dict]:
        """Its JSON log lines (Celery's own warnings are plain text: skipped)."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if event is None or entry.get("event") == event:
                    found.append(entry)
        return found

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` (None: none, it was sent) and wait for the exit code."""
        if sig is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        finally:
            self._stderr.close()


class Cluster:
    """Config folders (one per "machine") on one warehouse and one queue."""

    def __init__(self, root: Path, warehouse: str, broker: str) -> None:
        self.root, self.warehouse, self.broker = root, warehouse, broker
        self.queue = f"cr-test-{uuid.uuid4().hex[:10]}"
        self.processes: list[Process] = []

    def write(self, connectors: dict[str, dict], folder: str = "a") -> Path:
        where = self.root / folder
        where.mkdir(exist_ok=True)
        (where / "handler.py").write_text(HANDLER)
        config = {
            "warehouse": self.warehouse,
            "server": {"listen": "127.0.0.1:0"},
            "executor": {"celery": {"broker": self.broker, "queue": self.queue}},
            "connectors": connectors,
        }
        (where / "connectors.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        return where

    def start(self, *args: str, folder: str = "a") -> Process:
        where = self.root / folder
        log = where / f"{args[0]}-{len(self.processes)}.log"
        process = Process(["-c", str(where / "connectors.yaml"), *args], where, log)
        self.processes.append(process)
        return process

    def sql(self, query: str, **params: Any) -> list[tuple]:
        """Rows of `query`; none while its table is not made yet."""
        import sqlalchemy as sa

        from destinations.sqlalchemy import create_engine

        engine = create_engine(self.warehouse)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(sa.text(query), params)]
        except sa.exc.ProgrammingError as exc:
            if "does not exist" not in str(exc):
                raise
            return []
        finally:
            engine.dispose()

    def syncs(self) -> list[dict]:
        rows = self.sql(
            "SELECT connector, sync_id, trigger, status, started_at, finished_at, pages, error"
            " FROM connector_runtime.syncs ORDER BY started_at"
        )
        keys = (
            "connector",
            "sync_id",
            "trigger",
            "status",
            "started",
            "finished",
            "pages",
            "error",
        )
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def calls(self, *names: str) -> list[tuple]:
        """(sync_id, page, n, pid) of every row the function sent, for each connector named
        (its tables are in the schema of its name)."""
        union = " UNION ALL ".join(
            f'SELECT sync_id, page, n, pid FROM "{n}"."calls"' for n in names
        )
        return self.sql(union)

    def api(self, path: str, *, method: str = "GET", folder: str = "a"):
        found = json.loads((self.root / folder / ".connector-runtime" / "server.json").read_text())
        request = urllib.request.Request(
            f"{found['url']}{path}",
            method=method,
            headers={"Authorization": f"Bearer {found['token']}", "Origin": found["url"]},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body and path != "/metrics" else body.decode()

    def queued(self) -> int:
        from kombu import Connection

        with Connection(self.broker) as conn:
            return conn.default_channel.queue_declare(self.queue, passive=True).message_count

    def close(self) -> None:
        for process in self.processes:
            if process.popen.poll() is None:
                process.popen.kill()
                process.popen.wait(10)
        from kombu import Connection

        with Connection(self.broker) as conn:
            channel = conn.default_channel
            for delete in (
                lambda: channel.queue_delete(self.queue),
                lambda: channel.exchange_delete(self.queue),
                lambda: channel.exchange_delete(f"{self.queue}.events"),
            ):
                with contextlib.suppress(Exception):  # never made (Redis has no exchanges)
                    delete()


@pytest.fixture
def cluster(tmp_path, postgres_url):
    broker_or_skip(
        RABBITMQ, "RabbitMQ", "apt-get install rabbitmq-server && rabbitmq-server -detached"
    )
    made = Cluster(tmp_path, postgres_url, RABBITMQ)
    try:
        yield made
    finally:
        made.close()


def stopped(*processes: Process) -> list[int]:
    """SIGTERM to all at once, then their exit codes."""
    for process in processes:
        process.popen.send_signal(signal.SIGTERM)
    return [process.stop(None) for process in processes]


def metric_sum(text: str, prefix: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


# -- the tests ------------------------------------------------------------------------


@pytest.mark.slow
def test_twenty_connectors_every_second_on_three_workers_for_thirty_seconds(cluster):
    names = [f"c{i:02d}" for i in range(20)]
    cluster.write({n: connector(pages=2, sleep=0.05, schedule="1s") for n in names})
    workers = [cluster.start("worker", "--concurrency", "2") for _ in range(3)]
    serve = cluster.start("serve")
    wait_until(lambda: serve.events("leading"), timeout=30, what="serve leads")
    time.sleep(30)  # the run itself: every connector due every second
    for name in names:  # ticks now find them paused; what was sent still runs
        cluster.api(f"/api/connectors/{name}/pause", method="POST")
    paused = time.monotonic()
    wait_until(
        lambda: (
            not any(c["status"] == "running" for c in cluster.api("/api/connectors")["connectors"])
            and not any(s["status"] == "running" for s in cluster.syncs())
            and cluster.queued() == 0
        ),
        timeout=90,
        what="every sent sync finished",
    )
    metrics = cluster.api("/metrics")
    print(f"drained in {time.monotonic() - paused:.1f}s")
    assert stopped(serve, *workers) == [0] * 4

    syncs = cluster.syncs()
    print(f"{len(syncs)} syncs, {len(serve.events('tick'))} ticks")
    assert_never_overlapping(syncs)
    failed = [(s["connector"], s["error"]) for s in syncs if s["status"] != "succeeded"]
    assert not failed
    by_connector = {n: sum(s["connector"] == n for s in syncs) for n in names}
    assert min(by_connector.values()) >= 3, by_connector
    # every page of every sync written exactly once, by the sync the warehouse recorded
    pages: dict[str, list[int]] = {}
    for sync_id, page, _, _ in cluster.calls(*names):
        pages.setdefault(sync_id, []).append(page)
    assert {s["sync_id"]: sorted(pages.get(s["sync_id"], [])) for s in syncs} == {
        s["sync_id"]: [1, 2] for s in syncs
    }
    assert set(pages) == {s["sync_id"] for s in syncs}
    # every tick sent is a sync, or was dropped with a log line saying so
    ticks = {e["sync_id"] for e in serve.events("tick")}
    dropped = {e["sync_id"] for e in serve.events("sync_skipped")}
    dropped |= {e["sync_id"] for w in workers for e in w.events("sync_skipped")}
    assert {s["sync_id"] for s in syncs} <= ticks
    assert ticks == {s["sync_id"] for s in syncs} | dropped
    # the work was shared, and serve heard every sync's end from the workers
    assert len({pid for *_, pid in cluster.calls(*names)}) == 3
    assert metric_sum(metrics, "connector_syncs_total{") == len(syncs)
    assert metric_sum(metrics, "connector_rows_total{") == 2 * len(syncs)


@pytest.mark.slow
def test_a_worker_killed_mid_sync_leaves_its_sync_to_another_with_every_row_once(cluster):
    cluster.write({"slow": connector(pages=6, rows=5, sleep=0.4)})
    workers = {}
    for _ in range(2):
        worker = cluster.start("worker", "--concurrency", "1")
        workers[worker.pid] = worker
    serve = cluster.start("serve")
    wait_until(lambda: serve.events("serving"), timeout=30, what="serve answers")
    first = cluster.api("/api/connectors/slow/run", method="POST")["sync_id"]
    with pytest.raises(urllib.error.HTTPError) as again:  # a second trigger is not queued
        cluster.api("/api/connectors/slow/run", method="POST")
    assert again.value.code == 409
    wait_until(
        lambda: (
            cluster.sql("SELECT pages FROM connector_runtime.syncs WHERE sync_id = :s", s=first)
            in ([(2,)], [(3,)], [(4,)])
        ),
        timeout=60,
        what="two pages committed",
    )
    (pid,) = {pid for *_, pid in cluster.calls("slow")}
    workers.pop(pid).stop(signal.SIGKILL)
    (survivor,) = workers.values()
    wait_until(
        lambda: any(s["status"] == "succeeded" for s in cluster.syncs()),
        timeout=90,
        what="the sync finished on the other worker",
    )

    lost, resumed = cluster.syncs()
    assert (lost["sync_id"], lost["status"]) == (first, "failed")
    assert "died" in lost["error"]
    assert (resumed["status"], resumed["trigger"]) == ("succeeded", "manual")
    assert lost["pages"] + resumed["pages"] == 6  # resumed after the last committed page
    calls = cluster.calls("slow")
    assert sorted(n for _, _, n, _ in calls) == list(range(30))  # every row exactly once
    assert {p for *_, p in calls} == {pid, survivor.pid}  # each worker ran a part
    assert [e["run_as"] for e in survivor.events("sync_restarted")] == [resumed["sync_id"]]
    # serve heard it end, from the worker that finished it
    assert cluster.api(f"/api/syncs/{resumed['sync_id']}")["status"] == "succeeded"
    assert cluster.api("/api/connectors/slow")["status"] == "idle"
    assert stopped(serve, survivor) == [0, 0]


@pytest.mark.slow
def test_the_standby_leads_after_a_frozen_and_after_a_killed_leader_and_no_tick_doubles(cluster):
    connectors = {f"t{i}": connector(schedule="1s") for i in range(3)}
    for folder in ("a", "b"):  # two machines, each with its copy of the config
        cluster.write(connectors, folder)
    worker = cluster.start("worker", "--concurrency", "3")
    first = cluster.start("serve", folder="a")
    wait_until(lambda: len(first.events("tick")) >= 3, timeout=30, what="the leader ticks")
    second = cluster.start("serve", folder="b")
    wait_until(lambda: second.events("serving"), timeout=30, what="the standby answers")
    sent = len(first.events("tick"))
    wait_until(lambda: len(first.events("tick")) >= sent + 3, timeout=30, what="ticks go on")
    assert not second.events("leading") and not second.events("tick")

    # the leader stops talking (a frozen process, or a machine gone without a word)
    first.popen.send_signal(signal.SIGSTOP)
    assert took_over(second, since=time.time()) < 15
    sent = len(first.events("tick"))
    first.popen.send_signal(signal.SIGCONT)  # it wakes up believing it leads
    wait_until(lambda: first.events("leadership_lost"), timeout=20, what="the old leader yields")
    wait_until(lambda: len(second.events("tick")) >= 6, timeout=30, what="the new leader ticks")
    assert len(first.events("tick")) == sent  # it sent nothing after waking

    # the leader's process dies
    second.stop(signal.SIGKILL)
    assert took_over(first, since=time.time(), nth=2) < 15
    sent = len(first.events("tick"))
    wait_until(lambda: len(first.events("tick")) >= sent + 6, timeout=30, what="ticks go on")
    assert stopped(first, worker) == [0, 0]

    ticks = first.events("tick") + second.events("tick")
    assert len({(e["connector"], e["tick"]) for e in ticks}) == len(ticks)  # no tick twice
    assert len({e["sync_id"] for e in ticks}) == len(ticks)
    # the syncs that ran are ticks sent, each once
    ran = [s["sync_id"] for s in cluster.syncs()]
    assert len(ran) == len(set(ran)) and set(ran) <= {e["sync_id"] for e in ticks}


def took_over(standby: Process, *, since: float, nth: int = 1) -> float:
    """Seconds from `since` until `standby` logged that it leads (its `nth` time)."""
    wait_until(lambda: len(standby.events("leading")) >= nth, timeout=25, what="a new leader")
    led = datetime.fromisoformat(standby.events("leading")[nth - 1]["timestamp"]).timestamp()
    print(f"led {led - since:.1f}s after the leader stopped")
    return led - since


def test_a_task_for_a_connector_syncing_elsewhere_is_dropped_and_carries_no_secret(cluster):
    from connector_runtime.celery_app import make_app, send_sync
    from connector_runtime.config import load_config

    folder = cluster.write({"demo": connector(pages=3, sleep=0.5)})
    config = load_config(folder / "connectors.yaml")
    app = make_app(config)
    send_sync(app, config, "demo", "manual", "00000000-0000-0000-0000-000000000001")
    from kombu import Connection

    with Connection(cluster.broker) as conn:  # the message as the broker holds it
        message = conn.SimpleQueue(cluster.queue).get(timeout=10)
        body = message.body
        message.requeue()
    assert SECRET not in str(body)
    assert json.loads(body)[0] == ["demo", "manual", "00000000-0000-0000-0000-000000000001"]

    worker = cluster.start("worker", "--concurrency", "2")
    wait_until(lambda: cluster.syncs(), timeout=60, what="the first sync started")
    send_sync(app, config, "demo", "manual", "00000000-0000-0000-0000-000000000002")
    wait_until(lambda: worker.events("sync_skipped"), timeout=60, what="the second dropped")
    wait_until(
        lambda: cluster.syncs()[0]["status"] != "running" and cluster.queued() == 0,
        timeout=60,
        what="the first finished",
    )
    (only,) = cluster.syncs()
    assert (only["sync_id"], only["status"]) == (
        "00000000-0000-0000-0000-000000000001",
        "succeeded",
    )
    (skipped,) = worker.events("sync_skipped")
    assert skipped["sync_id"] == "00000000-0000-0000-0000-000000000002"
    assert "already in progress" in skipped["reason"]
    # the same task again, once its sync ended (a redelivery): dropped too
    send_sync(app, config, "demo", "manual", "00000000-0000-0000-0000-000000000001")
    wait_until(lambda: worker.events("sync_already_ran"), timeout=60, what="the rerun dropped")
    assert len(cluster.syncs()) == 1
    assert SECRET not in worker.log.read_text()
    assert worker.stop() == 0


def test_serve_frees_a_connector_whose_sent_sync_it_never_heard_end(cluster, monkeypatch):
    from datetime import UTC

    from connector_runtime import control, scheduler
    from connector_runtime.config import load_config
    from connector_runtime.destination import SyncRecord, open_destination
    from connector_runtime.errors import SyncInProgress
    from connector_runtime.events import EventBus

    fresh = EventBus()  # this Server's listeners leave with the test
    monkeypatch.setattr(scheduler, "bus", fresh)
    monkeypatch.setattr(control, "bus", fresh)
    config = load_config(cluster.write({"demo": connector()}) / "connectors.yaml")
    server = scheduler.Server(config)  # not serving: only its start(), against the broker
    long_ago = time.monotonic() - scheduler.LOST_AFTER_SECONDS - 1
    try:
        queued = server.start("demo", "manual")  # no worker takes it
        with pytest.raises(SyncInProgress):
            server.start("demo", "manual")  # a second trigger is refused, not queued
        server._running["demo"] = (queued, long_ago)
        with pytest.raises(SyncInProgress):
            server.start("demo", "manual")  # still queued (no row): still busy, however old
        # a sync a worker began and died in: its row says running, nobody holds its lock
        with open_destination(cluster.warehouse) as warehouse:
            warehouse.begin_sync(SyncRecord(queued, "demo", "manual", datetime.now(UTC)))
            server._running["demo"] = (queued, long_ago)
            with warehouse.lock("demo"), pytest.raises(SyncInProgress):  # unless it runs still
                server.start("demo", "manual")
            server._running["demo"] = (queued, long_ago)
            again = server.start("demo", "manual")
        assert again != queued
        assert cluster.queued() == 2
    finally:
        server.control.close()


def test_sigterm_to_a_worker_ends_its_sync_after_the_current_page(cluster):
    from connector_runtime.celery_app import make_app, send_sync
    from connector_runtime.config import load_config

    folder = cluster.write({"long": connector(pages=40, sleep=0.25)})
    config = load_config(folder / "connectors.yaml")
    worker = cluster.start("worker", "--concurrency", "1")
    send_sync(make_app(config), config, "long", "schedule", str(uuid.uuid4()))
    wait_until(lambda: any(s["pages"] >= 2 for s in cluster.syncs()), timeout=60, what="two pages")
    assert worker.stop(signal.SIGTERM, timeout=20) == 0
    (sync,) = cluster.syncs()
    assert sync["status"] == "rescheduled" and 2 <= sync["pages"] < 40
    assert sorted(page for _, page, _, _ in cluster.calls("long")) == list(
        range(1, sync["pages"] + 1)
    )
    assert cluster.queued() == 0  # its task is done, not handed back


def test_on_redis_a_workers_sync_and_alert_reach_serve_and_its_webhook_once(
    tmp_path, postgres_url, receiver
):
    broker_or_skip(REDIS, "Redis", "apt-get install redis-server && redis-server --daemonize yes")
    cluster = Cluster(tmp_path, postgres_url, REDIS)
    try:
        hook = receiver()
        broken = connector(fail=True) | {"notify": [{"webhook": hook.url}]}
        cluster.write({"demo": connector(pages=2), "broken": broken})
        worker = cluster.start("worker", "--concurrency", "2")
        serve = cluster.start("serve")
        wait_until(lambda: serve.events("serving"), timeout=30, what="serve answers")
        fine = cluster.api("/api/connectors/demo/run", method="POST")["sync_id"]
        failing = cluster.api("/api/connectors/broken/run", method="POST")["sync_id"]
        wait_until(
            lambda: (
                [cluster.api(f"/api/syncs/{s}")["status"] for s in (fine, failing)]
                == ["succeeded", "failed"]
            ),
            timeout=60,
            what="serve heard both syncs end on the worker",
        )
        assert sorted(page for _, page, _, _ in cluster.calls("demo")) == [1, 2]
        (alert,) = cluster.api("/api/alerts")["alerts"]
        assert (alert["sync_id"], alert["kind"]) == (failing, "function_error")
        assert 'connector_alerts_open{connector="broken"} 1.0' in cluster.api("/metrics")
        (opened,) = hook.wait_for(1)
        assert (opened["event"], opened["alert"]["alert_id"]) == ("alert.opened", alert["alert_id"])
        assert opened["dashboard_url"] is None  # from the worker: it knows no dashboard
        # serve posts what it does itself; had it posted the worker's alert too, that POST
        # would have come first (one queue per process)
        cluster.api(f"/api/alerts/{alert['alert_id']}/resolve", method="POST")
        bodies = hook.wait_for(2)
        assert [body["event"] for body in bodies] == ["alert.opened", "alert.resolved"]
        assert bodies[1]["dashboard_url"].startswith("http://127.0.0.1:")  # from serve
        assert stopped(serve, worker) == [0, 0]
    finally:
        cluster.close()
