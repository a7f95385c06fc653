"""`executor: celery` without workers: the config's rules, the Celery settings, when ticks
fall, and the leader lease on real PostgreSQL and MariaDB servers."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta

import pytest
from warehouses import _fresh_database
from warehouses import postgres_url as postgres_url  # fixture

from connector_runtime.celery_app import HEARTBEAT_SECONDS, settings
from connector_runtime.config import load_config
from connector_runtime.errors import ConfigError
from connector_runtime.leader import Lease, Ticks, tick_sync_id

BROKER = "amqp://guest:s3cret-broker-pw@127.0.0.1:5672//"


def write(tmp_path, text: str):
    (tmp_path / "handler.py").write_text("def handler(request):\n    return {'state': {}}\n")
    path = tmp_path / "connectors.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def config_error(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return str(caught.value)


@pytest.mark.parametrize(
    ("warehouse", "destination", "says"),
    [
        pytest.param("duckdb:///w.duckdb", None, "a DuckDB file (warehouse)", id="duckdb"),
        pytest.param(None, None, "a DuckDB file (warehouse)", id="default-duckdb"),
        pytest.param(
            "postgresql://p@h/db",
            "sqlite:///x.db",
            "a SQLite file (connectors.demo.destination)",
            id="sqlite-destination",
        ),
    ],
)
def test_a_warehouse_one_machine_holds_is_refused_under_celery(
    tmp_path, warehouse, destination, says
):
    lines = [f"warehouse: {warehouse}"] if warehouse else []
    lines += ["connectors:", "  demo:", "    function: {local: handler.py}"]
    lines += [f"    destination: {destination}"] if destination else []
    lines += [f'executor: {{celery: {{broker: "{BROKER}"}}}}']
    message = config_error(tmp_path, "\n".join(lines) + "\n")
    line = len(lines)
    assert f"connectors.yaml:{line}: executor: celery runs syncs on several machines" in message
    assert says in message
    assert "use a PostgreSQL or MySQL/MariaDB warehouse" in message


@pytest.mark.parametrize(
    ("executor", "says"),
    [
        pytest.param("remote", "executor: Input should be 'local'", id="unknown-word"),
        pytest.param("{celery: {}}", "executor.celery.broker: required", id="no-broker"),
        pytest.param(
            '{celery: {broker: "http://127.0.0.1"}}',
            "executor.celery.broker: the broker is not an amqp:// (RabbitMQ) or redis:// URL",
            id="http-broker",
        ),
        pytest.param(
            f'{{celery: {{broker: "{BROKER}", queue: "a b"}}}}',
            "executor.celery.queue",
            id="bad-queue",
        ),
    ],
)
def test_a_wrong_executor_is_a_config_error_naming_the_field(tmp_path, executor, says):
    message = config_error(
        tmp_path,
        f"""\
        warehouse: postgresql://p@h/db
        connectors:
          demo: {{function: {{local: handler.py}}}}
        executor: {executor}
        """,
    )
    assert "connectors.yaml:4: " + says in message


def test_local_is_the_default_and_celery_takes_postgres_or_mysql(tmp_path):
    assert (
        load_config(write(tmp_path, "connectors:\n  d: {function: {local: handler.py}}\n")).executor
        == "local"
    )
    for warehouse in ("postgresql://p@h/db", "mysql://root@h/db", "${env:WAREHOUSE_URL}"):
        config = load_config(
            write(
                tmp_path,
                f"""\
                warehouse: {warehouse}
                connectors:
                  demo: {{function: {{local: handler.py}}}}
                executor: {{celery: {{broker: "redis://127.0.0.1:6379/0"}}}}
                """,
            )
        )
        assert config.executor.celery.queue == "connector-runtime"


def test_celery_settings_for_syncs_that_must_not_be_lost_or_doubled(tmp_path):
    config = load_config(
        write(
            tmp_path,
            f"""\
            warehouse: postgresql://p@h/db
            connectors:
              short: {{function: {{local: handler.py}}, max_sync_duration: 10m}}
              long: {{function: {{local: handler.py}}, max_sync_duration: 2h}}
            executor: {{celery: {{broker: "{BROKER}", queue: team-a}}}}
            """,
        )
    )
    conf = settings(config, BROKER)
    # acknowledged after the sync, handed back if the worker is lost
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1  # nothing held back behind a long sync
    assert conf["broker_heartbeat"] == HEARTBEAT_SECONDS == 10
    # Redis: a sync still running (up to the longest max_sync_duration) is never resent
    assert conf["broker_transport_options"]["visibility_timeout"] == 2 * 3600 + 600
    assert conf["broker_transport_options"]["confirm_publish"] is True
    assert conf["task_default_queue"] == "team-a"
    assert conf["event_exchange"] == "team-a.events"  # deployments on one broker stay apart
    assert conf["accept_content"] == ["json"]  # no pickle
    assert conf["worker_cancel_long_running_tasks_on_connection_loss"] is False


# -- ticks ----------------------------------------------------------------------------


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_interval_ticks_fall_on_one_grid_for_every_process():
    ticks = Ticks({"orders": 60.0, "users": 60.0, "fast": 1.0})
    now = at("2026-12-01T10:00:30")
    offset = ticks.offset("orders")
    assert 0 <= offset < 6.0  # a tenth of the interval
    assert 0 <= ticks.offset("fast") < 0.1
    assert ticks.offset("orders") != ticks.offset("users")  # connectors spread apart
    due = ticks.due("orders", None, now)
    assert due == at("2026-12-01T10:00:00") + timedelta(seconds=offset)
    assert Ticks({"orders": 60.0}).due("orders", None, now) == due  # another process agrees
    assert ticks.due("orders", due, now) is None  # sent already
    assert ticks.after("orders", now) == due + timedelta(minutes=1)
    # after an outage of ten minutes, one catch-up tick (the latest), not ten
    later = now + timedelta(minutes=10)
    assert ticks.due("orders", due, later) == due + timedelta(minutes=10)
    assert tick_sync_id("orders", due) == tick_sync_id("orders", due)
    assert tick_sync_id("orders", due) != tick_sync_id("users", due)


def test_cron_ticks_wait_for_their_time_and_catch_up_once():
    ticks = Ticks({"nightly": type("Cron", (), {"cron": "0 2 * * *"})()})
    now = at("2026-12-01T10:00:00")
    assert ticks.due("nightly", None, now) is None  # never ticked: waits for 02:00
    assert ticks.after("nightly", now) == at("2026-12-02T02:00:00")
    assert ticks.due("nightly", at("2026-12-01T02:00:00"), now) is None
    # three nights missed: the last one is due, once
    assert ticks.due("nightly", at("2026-11-28T02:00:00"), now) == at("2026-12-01T02:00:00")


# -- the lease, on real servers ---------------------------------------------------------


@pytest.fixture(params=["postgresql", "mariadb"])
def lease_url(request):
    url, drop = _fresh_database(request.param)
    try:
        yield url
    finally:
        drop()


def test_one_lease_holder_at_a_time_and_ticks_claimed_once(lease_url):
    first, second = Lease(lease_url), Lease(lease_url)
    try:
        assert first.acquire()
        assert not second.acquire()  # a standby
        due = at("2026-12-01T10:00:00")
        assert first.claim("orders", due, "id-1")
        assert not first.claim("orders", due, "id-1")  # a tick is claimed once
        assert not first.claim("orders", due - timedelta(seconds=1), "id-0")  # never backwards
        assert first.claim("orders", due + timedelta(seconds=1), "id-2")
        assert first.last_ticks() == {"orders": due + timedelta(seconds=1)}
        first.release()  # what the leader's death does to its session
        assert second.acquire()
        assert second.last_ticks() == {"orders": due + timedelta(seconds=1)}
        assert not second.claim("orders", due + timedelta(seconds=1), "id-2")
        assert not first.acquire()
    finally:
        first.close()
        second.close()


def test_connector_worker_without_a_celery_executor_says_what_to_add(tmp_path, connector):
    config = write(tmp_path, "connectors:\n  demo: {function: {local: handler.py}}\n")
    result = connector("worker", config=config)
    assert result.returncode == 2
    assert "executor: Celery workers need `executor: {celery: {broker: URL}}`" in result.stderr
    assert "Traceback" not in result.stderr
    assert connector("worker", "--concurrency", "0", config=config).returncode == 2
