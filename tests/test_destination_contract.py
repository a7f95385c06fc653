"""The destination contract (DESIGN §3, §4, §6), one suite run against every backend.

Each test drives the real sync loop with a scripted function into a fresh warehouse
(`warehouses.destination_url`: DuckDB, SQLite, PostgreSQL, MariaDB) and reads back what
was stored with `warehouses.Warehouse`, the same way for every backend.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from warehouses import SERVERS, Warehouse, _fresh_database, backend_of, canon, instant
from warehouses import destination_url as destination_url  # fixtures
from warehouses import mariadb_url as mariadb_url
from warehouses import postgres_url as postgres_url

import connector_runtime.sync as sync_module
from connector_runtime.destination import open_destination
from connector_runtime.errors import ConfigError, SyncInProgress, TransientDestinationError
from connector_runtime.history import END_OF_TIME, closing_time
from connector_runtime.page import TableSettings
from connector_runtime.retry import RetryPolicy
from connector_runtime.sync import SyncJob, run_sync
from connector_runtime.testing import ScriptedInvoker

FAST_RETRY = RetryPolicy(attempts=3, base=0.01, cap=0.05)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def sync(url: str, pages: list, **job):
    # as bytes: the function's JSON may hold integers beyond 64 bits, which orjson refuses
    invoker = ScriptedInvoker([json.dumps(p).encode() if isinstance(p, dict) else p for p in pages])
    outcome = run_sync(SyncJob("demo", "demo", url, lambda: invoker, retry=FAST_RETRY, **job))
    return outcome, invoker


def page(rows, state=None, more=False, key=("id",), table="t", **extra):
    return {
        "state": state if state is not None else {},
        "insert": {table: rows},
        "schema": {table: {"primary_key": list(key)}},
        "hasMore": more,
        **extra,
    }


def as_json(value):
    return json.loads(value) if isinstance(value, str) else value


def catalog_type(url: str, table: str, column: str) -> str:
    with open_destination(url) as destination:
        return str(destination.load("demo").catalog[table].columns[column])


# -- types and tables ---------------------------------------------------------------------

# DESIGN §4, as each database reports the column's type
STORED_TYPES = {
    "BOOLEAN": ("boolean", "integer", "boolean", "tinyint(1)"),
    "LONG": ("bigint", "integer", "bigint", "bigint(20)"),
    "DECIMAL(38,0)": ("decimal(38,0)", "text", "numeric", "decimal(38,0)"),
    "DOUBLE": ("double", "real", "double precision", "double"),
    "NAIVE_DATE": ("date", "text", "date", "date"),
    "NAIVE_DATETIME": ("timestamp", "text", "timestamp without time zone", "datetime(6)"),
    "UTC_DATETIME": ("timestamp with time zone", "text", "timestamp with time zone", "datetime(6)"),
    "STRING": ("varchar", "text", "text", "longtext"),
    "JSON": ("json", "text", "jsonb", "longtext"),
}
BACKEND_INDEX = {"duckdb": 0, "sqlite": 1, "postgresql": 2, "mariadb": 3}


def stored_type(url: str, logical: str) -> str:
    return STORED_TYPES[logical][BACKEND_INDEX[backend_of(url)]]


def test_first_page_creates_the_table_with_the_types_of_design_4(destination_url):
    row = {
        "id": 1,
        "flag": True,
        "n": 7,
        "big": 2**70,
        "x": 2.5,
        "day": "2024-01-02",
        "at": "2024-01-02T03:04:05.123456",
        "instant": "2024-01-02T05:04:05+02:00",
        "s": "00123",
        "doc": {"a": [1, None]},
    }
    outcome, _ = sync(destination_url, [page([row])])
    assert outcome.record.status == "succeeded", outcome.alert
    wh = Warehouse(destination_url)
    expected = {
        "flag": "BOOLEAN",
        "n": "LONG",
        "big": "DECIMAL(38,0)",
        "x": "DOUBLE",
        "day": "NAIVE_DATE",
        "at": "NAIVE_DATETIME",
        "instant": "UTC_DATETIME",
        "s": "STRING",
        "doc": "JSON",
    }
    for column, logical in expected.items():
        assert wh.column_type("t", column) == stored_type(destination_url, logical), column
    [stored] = wh.rows("t", "flag, n, big, x, day, at, instant, s, doc")
    assert stored[:6] == (True, 7, str(2**70), 2.5, "2024-01-02", "2024-01-02T03:04:05.123456")
    assert instant(stored[6]) == "2024-01-02T03:04:05.000000"
    assert stored[7] == "00123"
    assert as_json(stored[8]) == {"a": [1, None]}


def test_a_new_column_is_added_and_older_rows_hold_null(destination_url):
    sync(destination_url, [page([{"id": 1, "a": "x"}], more=True), page([{"id": 2, "b": 5}])])
    assert Warehouse(destination_url).rows("t", "id, a, b") == [(1, "x", None), (2, None, 5)]


WIDENINGS = [
    # first value, second value, type after, the first value as stored after
    pytest.param(5, 2**70, "DECIMAL(38,0)", "5", id="long->decimal"),
    pytest.param(5, 2.5, "DOUBLE", 5.0, id="long->double"),
    pytest.param(2**70, 2.5, "DOUBLE", float(2**70), id="decimal->double"),
    pytest.param(
        "2024-01-02",
        "2024-01-03T04:05:06",
        "NAIVE_DATETIME",
        "2024-01-02T00:00:00.000000",
        id="date->datetime",
    ),
    pytest.param(
        "2024-01-02T03:04:05",
        "2024-01-03T00:00:00Z",
        "UTC_DATETIME",
        "2024-01-02T03:04:05.000000",
        id="datetime->utc",
    ),
    pytest.param(
        "2024-01-02",
        "2024-01-03T00:00:00Z",
        "UTC_DATETIME",
        "2024-01-02T00:00:00.000000",
        id="date->utc",
    ),
    pytest.param(5, {"a": 1}, "JSON", 5, id="long->json"),
    pytest.param(True, [1], "JSON", True, id="boolean->json"),
    pytest.param(2.5, {"a": 1}, "JSON", 2.5, id="double->json"),
    pytest.param(True, "x", "STRING", "true", id="boolean->string"),
    pytest.param(False, "x", "STRING", "false", id="false->string"),
    pytest.param(5, "x", "STRING", "5", id="long->string"),
    pytest.param(2.5, "x", "STRING", "2.5", id="double->string"),
    pytest.param(1.0, "x", "STRING", "1.0", id="integral-double->string"),
    pytest.param(2**70, "x", "STRING", str(2**70), id="decimal->string"),
    pytest.param("2024-01-02", "x", "STRING", "2024-01-02", id="date->string"),
    pytest.param(
        "2024-01-02T03:04:05.5", "x", "STRING", "2024-01-02T03:04:05.500000", id="datetime->string"
    ),
    pytest.param(
        "2024-01-02T03:04:05Z", "x", "STRING", "2024-01-02T03:04:05.000000Z", id="utc->string"
    ),
    pytest.param({"a": 1}, "x", "STRING", {"a": 1}, id="json->string"),
]


@pytest.mark.parametrize(("first", "second", "after", "kept"), WIDENINGS)
def test_widening_keeps_the_old_values_cast_per_design_4(
    destination_url, first, second, after, kept
):
    outcome, _ = sync(
        destination_url, [page([{"id": 1, "v": first}], more=True), page([{"id": 2, "v": second}])]
    )
    assert outcome.record.status == "succeeded", outcome.alert
    assert catalog_type(destination_url, "t", "v") == after
    wh = Warehouse(destination_url)
    assert wh.column_type("t", "v") == stored_type(destination_url, after)
    old, new = (v for (v,) in wh.rows("t", "v"))
    if after == "UTC_DATETIME":
        assert (instant(old), instant(new)) == (kept, "2024-01-03T00:00:00.000000")
    elif after == "JSON":
        assert (as_json(old), as_json(new)) == (kept, second)
    elif isinstance(kept, dict):
        assert (as_json(old), new) == (kept, second)  # JSON's text, however it is spaced
    elif after == "DOUBLE":
        assert (old, new) == (pytest.approx(kept), second)
    else:
        assert old == kept


def test_a_declared_decimal_rescales_the_integers_already_stored(destination_url):
    declared = {"t": {"primary_key": ["id"], "columns": {"v": "DECIMAL(18,2)"}}}
    sync(
        destination_url,
        [page([{"id": 1, "v": 5}], more=True), page([{"id": 2, "v": "1.25"}], schema=declared)],
    )
    assert Warehouse(destination_url).rows("t", "v") == [("5.00",), ("1.25",)]


# -- upserts, appends, deletes ------------------------------------------------------------


def test_upsert_by_compound_key_replaces_the_whole_row(destination_url):
    key = ("account", "code")
    sync(
        destination_url,
        [
            page(
                [
                    {"account": 1, "code": "a", "v": 1, "note": "first"},
                    {"account": 1, "code": "A", "v": 2, "note": "case differs"},
                    {"account": 2, "code": "a", "v": 3, "note": "other account"},
                ],
                key=key,
                more=True,
            ),
            page([{"account": 1, "code": "a", "v": 10}], key=key),
        ],
    )
    assert Warehouse(destination_url).rows("t", "account, code, v, note", "account, v") == [
        (1, "A", 2, "case differs"),  # keys compare exactly, case and all
        (1, "a", 10, None),  # absent from the newer row: NULL
        (2, "a", 3, "other account"),
    ]


def test_duplicate_keys_in_a_page_last_one_wins(destination_url):
    rows = [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"id": 1, "v": "c"}]
    outcome, _ = sync(destination_url, [page(rows)])
    assert Warehouse(destination_url).rows("t", "id, v") == [(1, "c"), (2, "b")]
    assert outcome.tables["t"]["upserted"] == 2


def test_append_without_a_key_records_batch_and_index(destination_url):
    events = {"state": {}, "insert": {"events": [{"e": "x"}, {"e": "y"}]}, "hasMore": True}
    outcome, _ = sync(destination_url, [events, {**events, "hasMore": False}])
    sync_id = outcome.record.sync_id
    assert Warehouse(destination_url).rows(
        "events", "e, _fivetran_batch, _fivetran_index", "_fivetran_batch, _fivetran_index"
    ) == [
        ("x", f"{sync_id}:1", 0),
        ("y", f"{sync_id}:1", 1),
        ("x", f"{sync_id}:2", 0),
        ("y", f"{sync_id}:2", 1),
    ]


def test_delete_marks_rows_counts_missing_keys_and_a_reinsert_undeletes(destination_url):
    outcome, _ = sync(
        destination_url,
        [
            page([{"id": 1, "v": "a"}, {"id": 2, "v": "b"}], more=True),
            {"state": {}, "delete": {"t": [{"id": 1}, {"id": 9}, {"id": 1}]}, "hasMore": True},
        ],
    )
    assert outcome.tables["t"] == {"upserted": 2, "deleted": 1, "missing": 1}
    wh = Warehouse(destination_url)
    assert wh.rows("t", "id, _fivetran_deleted") == [(1, True), (2, False)]
    sync(destination_url, [page([{"id": 1, "v": "again"}])])
    assert wh.rows("t", "id, v, _fivetran_deleted") == [(1, "again", False), (2, "b", False)]


def test_soft_delete_tables_at_the_end_of_the_sync(destination_url):
    sync(destination_url, [page([{"id": i} for i in range(1, 5)])])
    outcome, _ = sync(destination_url, [page([{"id": 2}], softDelete=["t"])])
    assert outcome.tables["t"]["deleted"] == 3
    assert Warehouse(destination_url).rows("t", "id, _fivetran_deleted") == [
        (1, True),
        (2, False),
        (3, True),
        (4, True),
    ]


def test_hostile_names_stay_quoted(destination_url):
    table, column = 'evil"`; DROP TABLE x; --', 'col`"%s:x\n;select 1'
    pages = [
        {
            "state": {"ok": 1},
            "insert": {table: [{"id": 1, column: "x"}]},
            "schema": {table: {"primary_key": ["id"]}},
        }
    ]
    outcome, _ = sync(destination_url, pages, naming="source")
    assert outcome.record.status == "succeeded", outcome.alert
    wh = Warehouse(destination_url)
    assert wh.query(f"SELECT {wh.q(column)} FROM {wh.ref('demo', table)}") == [("x",)]


# -- the runtime's tables -----------------------------------------------------------------


def runtime_rows(wh: Warehouse, table: str, columns: str, order_by: str) -> list[tuple]:
    sql = f"SELECT {columns} FROM {wh.runtime(table)} WHERE connector = 'demo' ORDER BY {order_by}"
    return [tuple(canon(v) for v in row) for row in wh.query(sql)]


def test_state_syncs_alerts_and_names_are_kept(destination_url):
    wh = Warehouse(destination_url)
    failing = [
        page([{"userID": 1}], state={"p": 1}, more=True, key=["userID"]),
        {"errorMessage": "upstream broke", "errorType": "Boom"},
    ]
    failed, _ = sync(destination_url, failing)
    assert failed.record.status == "failed"
    [(state,)] = runtime_rows(wh, "state", "state", "connector")
    assert as_json(state) == {"p": 1}  # saved with the committed page, not the failed one
    [alert] = runtime_rows(
        wh, "alerts", "sync_id, kind, error_type, message, resolved_at", "created_at"
    )
    assert alert == (failed.record.sync_id, "function_error", "Boom", "upstream broke", None)

    succeeded, invoker = sync(
        destination_url, [page([{"userID": 2}], state={"p": 2}, key=["userID"])]
    )
    assert invoker.requests[0]["state"] == {"p": 1}
    syncs = runtime_rows(wh, "syncs", "sync_id, status, pages, rows_upserted", "started_at")
    assert syncs == [
        (failed.record.sync_id, "failed", 1, 1),
        (succeeded.record.sync_id, "succeeded", 1, 1),
    ]
    [(resolved,)] = runtime_rows(wh, "alerts", "resolved_at", "created_at")
    assert resolved is not None
    names = runtime_rows(wh, "names", "source_table, source_column, name", "source_column")
    assert names == [("t", "", "t"), ("t", "userID", "user_id")]
    assert wh.rows("t", "user_id", "user_id") == [(1,), (2,)]


def test_a_running_sync_left_by_a_dead_process_is_marked_failed(destination_url):
    from datetime import UTC, datetime

    from connector_runtime.destination import SyncRecord

    with open_destination(destination_url) as destination:
        destination.begin_sync(SyncRecord("dead", "demo", "manual", datetime.now(UTC)))
    sync(destination_url, [page([{"id": 1}])])
    rows = runtime_rows(Warehouse(destination_url), "syncs", "sync_id, status", "started_at")
    assert rows[0] == ("dead", "failed")


# -- failures before commit ---------------------------------------------------------------


class FailsOnce:
    """Wraps a destination: the first page is written, then breaks before its commit."""

    def __init__(self, inner, error):
        self.inner, self.error, self.failed = inner, error, False

    def apply_page(self, page):
        if self.failed:
            return self.inner.apply_page(page)
        self.failed = True
        unsaveable = replace(page, state={"cursor": object()})  # its state cannot be stored
        try:
            self.inner.apply_page(unsaveable)
        except Exception as exc:
            raise self.error from exc
        raise AssertionError("a state that cannot be serialised was stored")

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.inner.close()


def breaking_page():
    """A page with DDL (a new table, a widened column) and rows, on a table with rows."""
    return {
        "state": {"p": 2},
        "insert": {"t": [{"id": 1, "v": "now text", "w": True}], "log": [{"e": 1}, {"e": 2}]},
        "schema": {"t": {"primary_key": ["id"]}},
    }


def sync_breaking_once(url: str, monkeypatch, retried: bool):
    """`breaking_page()` synced into a destination that fails before its first commit:
    with a transient error (`retried`, so the sync applies the page again) or not."""
    error = TransientDestinationError("lost") if retried else RuntimeError("broken")
    real_open = sync_module.open_destination
    monkeypatch.setattr(sync_module, "open_destination", lambda u: FailsOnce(real_open(u), error))
    outcome, _ = sync(url, [breaking_page()])
    monkeypatch.undo()
    return outcome


@pytest.mark.parametrize("retried", [True, False], ids=["retried-in-sync", "next-sync"])
def test_a_page_that_fails_before_commit_is_replayed_without_doubling(
    destination_url, monkeypatch, retried
):
    sync(destination_url, [page([{"id": 1, "v": 1}, {"id": 2, "v": 2}], state={"p": 1})])
    outcome = sync_breaking_once(destination_url, monkeypatch, retried)
    wh = Warehouse(destination_url)
    if not retried:
        assert outcome.record.status == "failed"
        assert outcome.alert.kind == "destination_error"
        # no row and no state of the page; on MySQL its DDL, which commits by itself, stays
        mysql = backend_of(destination_url) == "mariadb"
        assert wh.rows("t", "id, v") == ([(1, "1"), (2, "2")] if mysql else [(1, 1), (2, 2)])
        [(state,)] = runtime_rows(wh, "state", "state", "connector")
        assert as_json(state) == {"p": 1}
        outcome, invoker = sync(destination_url, [breaking_page()])
        assert invoker.requests[0]["state"] == {"p": 1}
    assert outcome.record.status == "succeeded", outcome.alert
    assert wh.rows("t", "id, v, w") == [(1, "now text", True), (2, "2", None)]
    assert wh.rows("log", "e", "e") == [(1,), (2,)]
    assert catalog_type(destination_url, "t", "v") == "STRING"
    [(state,)] = runtime_rows(wh, "state", "state", "connector")
    assert as_json(state) == {"p": 2}


def test_a_lost_connection_is_retried_on_a_new_one(postgres_url):
    wh = Warehouse(postgres_url)
    database = postgres_url.rsplit("/", 1)[1]

    def kill_sessions_then_answer(_request):
        wh_admin = Warehouse(SERVERS["postgresql"].admin_url)
        wh_admin.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = :db AND application_name = 'connector-runtime'",
            {"db": database},
        )
        return page([{"id": 2}], state={"p": 2})

    outcome, _ = sync(postgres_url, [page([{"id": 1}], more=True), kill_sessions_then_answer])
    assert outcome.record.status == "succeeded", outcome.alert
    assert wh.rows("t", "id") == [(1,), (2,)]


# -- locks --------------------------------------------------------------------------------

HOLD_LOCK = """
import sys
from connector_runtime.destination import open_destination
with open_destination(sys.argv[1]) as destination, destination.lock("demo"):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_sync_is_refused_while_another_process_holds_the_lock(destination_url):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, destination_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with (
            pytest.raises(SyncInProgress),
            open_destination(destination_url) as other,
            other.lock("demo"),
        ):
            pass
        with open_destination(destination_url) as other, other.lock("another"):
            pass  # other connectors are not blocked
    finally:
        holder.kill()  # the lock dies with its process
        holder.wait()
    outcome, _ = sync(destination_url, [page([{"id": 1}])])
    assert outcome.record.status == "succeeded"


def test_postgres_lock_is_a_session_advisory_lock(postgres_url):
    wh = Warehouse(postgres_url)
    with open_destination(postgres_url) as first, first.lock("demo"):
        held = wh.query(  # this test's database only: other runs may hold their own locks
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        assert held == [(1,)]
        with (
            pytest.raises(SyncInProgress),
            open_destination(postgres_url) as second,
            second.lock("demo"),
        ):
            pass
    released = wh.query(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    assert released == [(0,)]


# -- URLs ---------------------------------------------------------------------------------


def test_unknown_schemes_and_missing_drivers_are_config_errors():
    with pytest.raises(ConfigError, match="unsupported scheme"):
        open_destination("nosuchdb://host/x")
    with pytest.raises(ConfigError, match=r"psycopg2.*pip install 'connector-runtime\[postgres\]'"):
        open_destination("postgresql+psycopg2://postgres@127.0.0.1/test")


# -- end to end through the CLI -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_transactions_example_syncs_into_a_server_through_the_cli(tmp_path, backend):
    url, drop = _fresh_database(backend)
    try:
        for name in ("handler.py", "connectors.yaml"):
            shutil.copy(EXAMPLES / "transactions" / name, tmp_path / name)
        config = yaml.safe_load((tmp_path / "connectors.yaml").read_text())
        config["connectors"]["transactions"]["destination"] = url
        (tmp_path / "connectors.yaml").write_text(yaml.safe_dump(config))
        cli = [
            sys.executable,
            "-m",
            "connector_runtime.cli",
            "-c",
            str(tmp_path / "connectors.yaml"),
        ]
        for _ in range(2):  # the second run finds nothing new and changes nothing
            done = subprocess.run([*cli, "run"], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
        wh = Warehouse(url)
        assert wh.count("transactions", schema="transactions") == 2000
        refunded = wh.query(
            f"SELECT count(*) FROM {wh.ref('transactions', 'transactions')} WHERE status = 'refunded'"
        )
        assert refunded == [(70,)]
        shown = subprocess.run(
            [*cli, "state", "show", "transactions"], capture_output=True, text=True, timeout=60
        )
        assert json.loads(shown.stdout) == {"after_id": 2000}
    finally:
        drop()


def test_the_generic_sql_path_works_on_a_dialect_without_a_flavor(tmp_path, monkeypatch):
    """Any SQLAlchemy dialect gets portable SQL: staging, delete-and-insert, shadow columns."""
    import destinations.sqlalchemy as backend
    from destinations.sql import Flavor

    monkeypatch.setattr(backend, "flavor_for", Flavor)
    url = f"sqlite:///{tmp_path}/generic.sqlite"
    outcome, _ = sync(
        url,
        [
            page([{"id": 1, "v": 1, "b": True}, {"id": 2, "v": 2, "b": False}], more=True),
            page([{"id": 2, "v": "two"}, {"id": 3, "v": 3.5}], more=True),
            {"state": {}, "delete": {"t": [{"id": 1}, {"id": 9}]}, "insert": {"e": [{"x": 1}]}},
        ],
    )
    assert outcome.record.status == "succeeded", outcome.alert
    assert outcome.tables["t"] == {"upserted": 4, "deleted": 1, "missing": 1}
    wh = Warehouse(url)
    assert wh.rows("t", "id, v, b, _fivetran_deleted") == [
        (1, "1", 1, 1),
        (2, "two", None, 0),
        (3, "3.5", None, 0),
    ]
    assert wh.rows("e", "x, _fivetran_index", "x") == [(1, 0)]


def test_operator_reads_and_state_replacement(destination_url):
    """What `status`, `alerts`, `syncs` and `state set/reset` read and write, per backend."""
    failed, _ = sync(destination_url, [{"errorMessage": "upstream broke", "errorType": "Boom"}])
    succeeded, _ = sync(destination_url, [page([{"id": 1}], state={"p": 1})])
    with open_destination(destination_url) as destination:
        syncs = destination.recent_syncs("demo", 5)
        assert [s.sync_id for s in syncs] == [succeeded.record.sync_id, failed.record.sync_id]
        assert syncs[0].status == "succeeded" and syncs[0].started_at.tzinfo is not None
        assert destination.list_alerts("demo") == []  # resolved by the success
        [alert] = destination.list_alerts("demo", include_resolved=True)
        assert (alert.kind, alert.error_type, alert.message) == (
            "function_error",
            "Boom",
            "upstream broke",
        )
        assert alert.resolved_at is not None and alert.created_at.tzinfo is not None
        with destination.lock("demo"):
            destination.save_state("demo", {"cursor": 5})
        assert destination.load("demo").state == {"cursor": 5}
    # asked once the state is read: ahead of it, this process would ask with {"p": 1}
    # (the state it committed) and drop that answer (`test_first_page`)
    _, invoker = sync(destination_url, [page([{"id": 2}], state={"cursor": 6})], prefetch=False)
    assert [r["state"] for r in invoker.requests] == [{"cursor": 5}]


def test_control_plane_reads_and_steering(destination_url):
    """What the API and dashboard read and change, per backend: one sync by id, history
    pages, alert resolving, pause flags, row counts, table names, kept function output."""
    from datetime import UTC, datetime

    failed, _ = sync(destination_url, [{"errorMessage": "broke", "errorType": "Boom"}])
    first, _ = sync(destination_url, [page([{"id": 1}, {"id": 2}], more=True), page([{"id": 3}])])
    with open_destination(destination_url) as destination:
        found = destination.get_sync(first.record.sync_id)
        assert (found.status, found.pages, found.rows_upserted) == ("succeeded", 2, 3)
        assert destination.get_sync("no-such-sync") is None
        older = destination.recent_syncs("demo", 5, before=first.record.started_at)
        assert [s.sync_id for s in older] == [failed.record.sync_id]

        [alert] = destination.list_alerts("demo", include_resolved=True, limit=1)
        assert destination.resolve_alert(alert.alert_id, datetime.now(UTC)) is None  # resolved
        failed_again, _ = sync(destination_url, [{"errorMessage": "again"}])
        [open_alert] = destination.list_alerts("demo")
        resolved = destination.resolve_alert(open_alert.alert_id, datetime.now(UTC))
        assert resolved.alert_id == open_alert.alert_id and resolved.resolved_at is not None
        assert destination.list_alerts("demo") == []

        destination.set_paused("demo", True)
        destination.set_paused("other", True)
        destination.set_paused("other", False)
        destination.save_function_output(first.record.sync_id, "line 1\nline 2")
        catalog = destination.load("demo").catalog
        assert destination.row_counts("demo", list(catalog.values())) == {"t": 3}
        reference = destination.table_reference("demo", "t")
    with open_destination(destination_url) as destination:  # what was set persists
        assert destination.paused() == {"demo"}
        assert destination.function_output(first.record.sync_id) == "line 1\nline 2"
        assert destination.function_output(failed_again.record.sync_id) is None
    assert "t" in reference and "demo" in reference
    assert Warehouse(destination_url).query(f"SELECT count(*) FROM {reference}") == [(3,)]


def test_a_killed_sync_keeps_the_pages_and_rows_it_committed(destination_url):
    """Each page counts itself in the sync's row in its own transaction, so a sync whose
    process died still shows what it committed."""
    from datetime import UTC, datetime

    from connector_runtime.destination import SyncRecord
    from connector_runtime.naming import NameMap
    from connector_runtime.page import PagePlanner
    from connector_runtime.protocol import parse_response

    record = SyncRecord("killed", "demo", "manual", datetime.now(UTC))
    with open_destination(destination_url) as destination:
        snapshot = destination.begin_sync(record)
        planner = PagePlanner("demo", "demo", NameMap.load("fivetran", snapshot.names), {})
        for number, rows in enumerate(([{"id": 1}, {"id": 2}], [{"id": 3}]), start=1):
            response = parse_response(json.dumps(page(rows, state={"p": number})).encode())
            planned = planner.plan(
                response, sync_id="killed", number=number, synced_at=record.started_at
            )
            destination.apply_page(planned)
            planner.commit(planned)
        # no end_sync: the process died here
    with open_destination(destination_url) as destination:
        found = destination.get_sync("killed")
        assert (found.status, found.pages, found.rows_upserted) == ("running", 2, 3)
    sync(destination_url, [page([{"id": 4}])])
    with open_destination(destination_url) as destination:
        found = destination.get_sync("killed")
        assert (found.status, found.pages, found.rows_upserted) == ("failed", 2, 3)


# -- delivery counts of function destinations -------------------------------------------


def test_delivery_counts_are_kept_one_row_per_sync_and_read_by_sync_ids(destination_url):
    """A sync saves its counts after each page and at its end: the latest replace the
    earlier ones; a page of syncs reads its counts at once, syncs without any left out."""
    first = {"delivered": 10, "retried": 0, "failed": 0, "p50_ms": None, "p95_ms": None}
    last = {"delivered": 3_000_000_000, "retried": 3, "failed": 1, "p50_ms": 12.25, "p95_ms": 41.5}
    other = {"delivered": 7, "retried": 1, "failed": 0, "p50_ms": 0.125, "p95_ms": 2.0}
    with open_destination(destination_url) as destination:
        assert destination.deliveries(["s1"]) == {}
        destination.save_deliveries("s1", "demo", first)
        destination.save_deliveries("s2", "other", other)
        destination.save_deliveries("s1", "demo", last)
        assert destination.deliveries([]) == {}
    with open_destination(destination_url) as destination:
        assert destination.deliveries(["s1", "s2", "never"]) == {"s1": last, "s2": other}
        assert destination.deliveries(["s2"]) == {"s2": other}
    kept = runtime_rows(Warehouse(destination_url), "deliveries", "sync_id, delivered", "sync_id")
    assert kept == [("s1", 3_000_000_000)]  # connector demo's only row, saved twice


def older_warehouse(
    url: str, tmp_path: Path, table: str = "deliveries", *, statement: str | None = None
) -> str:
    """`url` as a version without runtime table `table` (delivery counts, say) left it, or
    as `statement` undoes what came later. A DuckDB file is copied too, so that this
    process opens it as a file it has not prepared."""
    wh = Warehouse(url)
    drop = statement or f"DROP TABLE {wh.runtime(table)}"
    if wh.backend == "duckdb":
        import duckdb

        path = url.split(":///", 1)[1]
        con = duckdb.connect(path)
        con.execute(drop)
        con.close()
        shutil.copy(path, tmp_path / "older.duckdb")
        return f"duckdb:///{tmp_path}/older.duckdb"
    import sqlalchemy as sa

    from destinations.sqlalchemy import create_engine

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(drop))
    engine.dispose()
    return url


def test_a_warehouse_made_before_delivery_counts_gains_their_table(destination_url, tmp_path):
    done, _ = sync(destination_url, [page([{"id": 1}])])
    url = older_warehouse(destination_url, tmp_path)
    stats = {"delivered": 1, "retried": 0, "failed": 0, "p50_ms": 3.5, "p95_ms": 3.5}
    with open_destination(url) as destination:
        destination.save_deliveries(done.record.sync_id, "demo", stats)
        assert destination.deliveries([done.record.sync_id]) == {done.record.sync_id: stats}
        assert destination.get_sync(done.record.sync_id).status == "succeeded"


# -- hostile values: big integers, NaN, deep nesting (issue 11) ---------------------------


def nested(levels: int, leaf=1):
    for _ in range(levels):
        leaf = [leaf]
    return leaf


def test_a_state_holding_an_integer_beyond_64_bits_round_trips_exactly(destination_url):
    """orjson refuses integers beyond 64 bits; MySQL's JSON would make them doubles and
    MariaDB's refuses nesting past 32 levels: the state still comes back as it was sent."""
    big = 2**70
    state = {"cursor": big, "negative": -(2**80), "path": nested(60, big + 1)}
    first, _ = sync(destination_url, [page([{"id": 1, "n": big}], state=state)])
    assert first.record.status == "succeeded", first.alert
    assert Warehouse(destination_url).rows("t", "id, n") == [(1, str(big))]  # DECIMAL(38,0)
    with open_destination(destination_url) as destination:
        loaded = destination.load("demo").state
    assert loaded == state and type(loaded["cursor"]) is int
    _, invoker = sync(destination_url, [page([{"id": 2}], state={"cursor": big + 2})])
    assert invoker.requests[0]["state"] == state
    with open_destination(destination_url) as destination:
        assert destination.load("demo").state == {"cursor": big + 2}


def test_nan_and_infinity_in_a_double_column(destination_url):
    """DuckDB and PostgreSQL keep the IEEE values; SQLite keeps ±Infinity and stores NaN
    as NULL, as it does with any NaN; MySQL/MariaDB's DOUBLE has neither: NULL (see
    `destinations/sql/mysql.py`)."""
    raw = (
        b'{"state": {}, "schema": {"t": {"primary_key": ["id"]}}, "insert": {"t": ['
        b'{"id": 1, "x": NaN}, {"id": 2, "x": Infinity}, {"id": 3, "x": -Infinity},'
        b' {"id": 4, "x": 1.5}]}}'
    )
    outcome, _ = sync(destination_url, [raw])
    assert outcome.record.status == "succeeded", outcome.alert
    assert catalog_type(destination_url, "t", "x") == "DOUBLE"
    stored = [x for _, x in Warehouse(destination_url).rows("t", "id, x")]
    inf = float("inf")
    expected = {
        "duckdb": ["nan", inf, -inf, 1.5],
        "postgresql": ["nan", inf, -inf, 1.5],
        "sqlite": [None, inf, -inf, 1.5],
        "mariadb": [None, None, None, 1.5],
    }[backend_of(destination_url)]
    assert ["nan" if x != x else x for x in stored] == expected


# -- the schema change log (design §6) ----------------------------------------------------

# the warehouse's name of each type, as `SchemaChange.from_sql_type`/`to_sql_type` give it
SQL_NAMES = {
    "duckdb": {"LONG": "BIGINT", "DOUBLE": "DOUBLE", "STRING": "VARCHAR"},
    "sqlite": {"LONG": "INTEGER", "DOUBLE": "REAL", "STRING": "TEXT"},
    "postgresql": {"LONG": "bigint", "DOUBLE": "double precision", "STRING": "text"},
    "mariadb": {"LONG": "BIGINT", "DOUBLE": "DOUBLE", "STRING": "LONGTEXT"},
}


def logged_changes(url: str) -> list[tuple]:
    """`connector_runtime.schema_changes` of `demo` as stored, in the order applied."""
    wh = Warehouse(url)
    columns = ", ".join(
        wh.q(c) for c in ("sync_id", "table", "column", "change", "from_type", "to_type")
    )
    return runtime_rows(wh, "schema_changes", columns, "changed_at")


def test_schema_changes_log_new_tables_added_and_widened_columns_in_order(destination_url):
    pages = [
        page([{"id": 1, "v": 5}], more=True),
        {
            "state": {},
            "insert": {"t": [{"id": 2, "v": 2.5, "w": "x"}], "u": [{"id": 1}]},
            "schema": {"t": {"primary_key": ["id"]}, "u": {"primary_key": ["id"]}},
            "hasMore": True,
        },
        page([{"id": 3, "v": "text", "w": "y"}]),
    ]
    first, _ = sync(destination_url, pages)
    assert first.record.status == "succeeded", first.alert
    again, _ = sync(destination_url, [page([{"id": 4, "v": "more", "w": "z"}])])
    assert again.schema_changes == []  # nothing changed shape: nothing logged
    sync_id = first.record.sync_id
    expected = [
        (sync_id, "t", None, "table_created", None, None),
        (sync_id, "t", "w", "column_added", None, "STRING"),
        (sync_id, "t", "v", "column_widened", "LONG", "DOUBLE"),
        (sync_id, "u", None, "table_created", None, None),
        (sync_id, "t", "v", "column_widened", "DOUBLE", "STRING"),
    ]
    assert logged_changes(destination_url) == expected

    names = SQL_NAMES[backend_of(destination_url)]
    applied = [
        (c.sync_id, c.table, c.column, c.change, c.from_type, c.to_type, c.to_sql_type)
        for c in first.schema_changes
    ]
    assert applied == [(*row, names.get(row[-1])) for row in expected]
    with open_destination(destination_url) as destination:
        newest_first = destination.schema_changes("demo")
        assert newest_first == list(reversed(first.schema_changes))  # times exact, to the µs
        assert [c.changed_at for c in newest_first] == sorted(
            (c.changed_at for c in newest_first), reverse=True
        )
        assert newest_first[0].changed_at.tzinfo is not None
        widened = newest_first[2]
        assert (widened.from_sql_type, widened.to_sql_type) == (names["LONG"], names["DOUBLE"])
        assert destination.schema_changes("demo", limit=2) == newest_first[:2]
        before = destination.schema_changes("demo", before=newest_first[1].changed_at)
        assert before == newest_first[2:]
        assert destination.schema_changes("demo", sync_id=again.record.sync_id) == []
        assert destination.schema_changes("other") == []


@pytest.mark.parametrize("retried", [True, False], ids=["retried-in-sync", "next-sync"])
def test_a_failed_page_logs_no_schema_change_and_a_replay_logs_each_once(
    destination_url, monkeypatch, retried
):
    created, _ = sync(destination_url, [page([{"id": 1, "v": 1}], state={"p": 1})])
    broken = sync_breaking_once(destination_url, monkeypatch, retried)
    page_changes = [
        ("t", "w", "column_added", None, "BOOLEAN"),
        ("t", "v", "column_widened", "LONG", "STRING"),
        ("log", None, "table_created", None, None),
    ]
    mysql = backend_of(destination_url) == "mariadb"
    first_log = [(created.record.sync_id, "t", None, "table_created", None, None)]
    changed_by = broken.record.sync_id
    if not retried:
        assert broken.record.status == "failed" and broken.schema_changes == []
        # rolled back with the page; on MySQL its DDL committed by itself, and so did its log
        logged = [(changed_by, *c) for c in page_changes] if mysql else []
        assert logged_changes(destination_url) == first_log + logged
        broken, _ = sync(destination_url, [breaking_page()])
        changed_by = changed_by if mysql else broken.record.sync_id
    assert broken.record.status == "succeeded", broken.alert
    logged = [(changed_by, *c) for c in page_changes]
    assert logged_changes(destination_url) == first_log + logged  # each change once


def test_a_warehouse_made_before_the_schema_change_log_gains_its_table(destination_url, tmp_path):
    sync(destination_url, [page([{"id": 1}])])
    url = older_warehouse(destination_url, tmp_path, "schema_changes")
    added, _ = sync(url, [page([{"id": 2, "note": "new"}])])
    assert added.record.status == "succeeded", added.alert
    assert logged_changes(url) == [
        (added.record.sync_id, "t", "note", "column_added", None, "STRING")
    ]


# -- history mode (design §14) ------------------------------------------------------------

HISTORY = TableSettings(history=frozenset({"t"}))


def history_sync(url: str, *pages, settings=HISTORY, trigger="manual"):
    invoker = ScriptedInvoker(list(pages))
    job = SyncJob("demo", "demo", url, lambda: invoker, retry=FAST_RETRY, settings=settings)
    outcome = run_sync(job, trigger=trigger)
    assert outcome.record.status == "succeeded", outcome.alert
    return outcome


def deletes(*ids, more=False):
    return {"state": {}, "delete": {"t": [{"id": i} for i in ids]}, "schema": KEY, "hasMore": more}


KEY = {"t": {"primary_key": ["id"]}}


def versions(url: str, syncs: list, columns: str = "plan") -> list[tuple]:
    """Every version of `demo.t` by id and start: (id, *columns, start, end, active); times
    as labels: `s2` the start of the second of `syncs`, `s2-1ms` a millisecond before it,
    `open` the end of time of an active version."""
    labels = {instant(END_OF_TIME): "open"}
    for number, outcome in enumerate(syncs, start=1):
        started = outcome.record.started_at
        labels[instant(started)] = f"s{number}"
        labels[instant(closing_time(started))] = f"s{number}-1ms"
    rows = Warehouse(url).rows(
        "t",
        f"id, {columns}, _fivetran_start, _fivetran_end, _fivetran_active",
        "id, _fivetran_start",
    )
    return [
        (*row[:-3], labels.get(instant(row[-3])), labels.get(instant(row[-2])), bool(row[-1]))
        for row in rows
    ]


def test_history_opens_a_version_per_change_and_none_for_identical_values(destination_url):
    s1 = history_sync(destination_url, page([{"id": 1, "plan": "free"}, {"id": 2, "plan": "free"}]))
    s2 = history_sync(
        destination_url,
        page([{"id": 1, "plan": "free"}, {"id": 2, "plan": "pro"}], more=True),
        page([{"id": 2, "plan": "team"}], more=True),  # the same sync: replaces its version
        deletes(9),
    )
    assert s2.tables["t"] == {"upserted": 3, "deleted": 0, "missing": 1}
    s3 = history_sync(destination_url, deletes(1, more=True), page([{"id": 2, "plan": "team"}]))
    assert s3.tables["t"] == {"upserted": 1, "deleted": 1, "missing": 0}
    s4 = history_sync(destination_url, page([{"id": 1, "plan": "free"}]))  # back: a new version
    s5 = history_sync(  # opened and deleted in one sync: never there between syncs
        destination_url, page([{"id": 2, "plan": "enterprise"}], more=True), deletes(2)
    )
    assert s5.tables["t"]["deleted"] == 1
    syncs = [s1, s2, s3, s4, s5]
    assert versions(destination_url, syncs) == [
        (1, "free", "s1", "s3-1ms", False),
        (1, "free", "s4", "open", True),
        (2, "free", "s1", "s2-1ms", False),
        (2, "team", "s2", "s5-1ms", False),
    ]
    confirmed = Warehouse(destination_url).rows("t", "id, _fivetran_synced", "id, _fivetran_start")
    assert [instant(at) for _, at in confirmed] == [
        instant(s.record.started_at)
        for s in (s3, s4, s2, s5)  # last written, or confirmed
    ]
    with open_destination(destination_url) as destination:
        assert destination.load("demo").catalog["t"].history


def test_history_soft_delete_and_resync_close_the_versions_not_sent_again(destination_url):
    s1 = history_sync(destination_url, page([{"id": i, "plan": "a"} for i in (1, 2, 3)]))
    s2 = history_sync(destination_url, page([{"id": 2, "plan": "a"}], softDelete=["t"]))
    assert s2.tables["t"]["deleted"] == 2
    s3 = history_sync(destination_url, page([{"id": 3, "plan": "a"}]), trigger="resync")
    assert versions(destination_url, [s1, s2, s3]) == [
        (1, "a", "s1", "s2-1ms", False),
        (2, "a", "s1", "s3-1ms", False),
        (3, "a", "s1", "s2-1ms", False),
        (3, "a", "s3", "open", True),
    ]


EVERY_TYPE = {  # one value of each logical type, as the function sends it
    "plan": "pro",
    "seats": 5,
    "price": "12.50",
    "ratio": 0.25,
    "big": 2**70,
    "flag": False,
    "day": "2024-01-02",
    "at": "2024-01-02T03:04:05.5",
    "paid": "2024-01-02T05:04:05+02:00",
    "doc": {"b": [1, None], "a": "x"},
}
DECLARED = {"t": {"primary_key": ["id"], "columns": {"price": "DECIMAL(18,2)"}}}


def test_history_turned_on_makes_the_rows_first_versions(destination_url):
    s1 = history_sync(
        destination_url,
        page([{"id": 1, **EVERY_TYPE}, {"id": 2, "plan": "b"}, {"id": 3, "plan": "c"}])
        | {"schema": DECLARED},
        settings=TableSettings(),
    )
    s2 = history_sync(destination_url, deletes(3), settings=TableSettings())
    s3 = history_sync(  # every value of id 1 read back and hashed: the same, no new version
        destination_url,
        page([{"id": 1, **EVERY_TYPE}, {"id": 2, "plan": "b2"}, {"id": 4, "plan": "d"}])
        | {"schema": DECLARED},
    )
    assert versions(destination_url, [s1, s2, s3]) == [
        (1, "pro", "s1", "open", True),
        (2, "b", "s1", "s3-1ms", False),
        (2, "b2", "s3", "open", True),
        (3, "c", "s2", "s2", False),  # deleted before: closed where it starts
        (4, "d", "s3", "open", True),
    ]
    wh = Warehouse(destination_url)
    assert "_fivetran_deleted" not in [c.lower() for c in stored_columns(wh)]
    s4 = history_sync(destination_url, page([{"id": 1, **EVERY_TYPE}]) | {"schema": DECLARED})
    assert wh.count("t") == 5  # identical again
    assert s4.tables["t"]["upserted"] == 1


def stored_columns(wh: Warehouse) -> list[str]:
    if wh.backend == "sqlite":
        return [r[0] for r in wh.query("SELECT name FROM pragma_table_info('demo__t')")]
    where = "table_schema = DATABASE() AND table_name = 'demo__t'"
    if wh.backend != "mariadb":
        where = "table_schema = 'demo' AND table_name = 't'"
    return [
        canon(r[0])
        for r in wh.query(f"SELECT column_name FROM information_schema.columns WHERE {where}")
    ]


def test_history_widening_applies_to_every_version(destination_url):
    s1 = history_sync(destination_url, page([{"id": 1, "plan": True, "day": "2024-01-02"}]))
    s2 = history_sync(destination_url, page([{"id": 1, "plan": False, "day": "2024-01-02"}]))
    s3 = history_sync(destination_url, page([{"id": 2, "plan": "x", "day": "soon"}]))
    assert catalog_type(destination_url, "t", "plan") == "STRING"
    # the active version as it reads now: the same values, no new version
    s4 = history_sync(destination_url, page([{"id": 1, "plan": "false", "day": "2024-01-02"}]))
    assert versions(destination_url, [s1, s2, s3, s4], "plan, day") == [
        (1, "true", "2024-01-02", "s1", "s2-1ms", False),
        (1, "false", "2024-01-02", "s2", "open", True),
        (2, "x", "soon", "s3", "open", True),
    ]


def test_history_cannot_be_turned_off(destination_url):
    history_sync(destination_url, page([{"id": 1, "plan": "a"}]))
    outcome, _ = sync(destination_url, [page([{"id": 1, "plan": "b"}])])
    assert outcome.record.status == "failed"
    assert outcome.alert.kind == "config_error"
    assert "table 't': history mode was turned off" in outcome.alert.message
    assert "re-sync" in outcome.alert.message
    assert Warehouse(destination_url).rows("t", "id, plan") == [(1, "a")]


def test_history_turned_on_by_a_page_that_fails_is_replayed_without_doubling(
    destination_url, monkeypatch
):
    s1 = history_sync(destination_url, page([{"id": 1, "plan": "a"}, {"id": 2, "plan": "b"}]))
    real_open = sync_module.open_destination
    broken = RuntimeError("broken")
    monkeypatch.setattr(sync_module, "open_destination", lambda u: FailsOnce(real_open(u), broken))
    on = page([{"id": 1, "plan": "a2", "n": 1.5}, {"id": 3, "plan": "c"}])
    failed, _ = sync(destination_url, [on], settings=HISTORY)
    monkeypatch.undo()
    assert failed.record.status == "failed"
    s2 = history_sync(destination_url, on)
    assert versions(destination_url, [s1, s2]) == [
        (1, "a", "s1", "s2-1ms", False),
        (1, "a2", "s2", "open", True),
        (2, "b", "s1", "open", True),
        (3, "c", "s2", "open", True),
    ]


def test_a_catalog_made_before_history_mode_gains_its_column(destination_url, tmp_path):
    s1, _ = sync(destination_url, [page([{"id": 1, "plan": "a"}])])
    wh = Warehouse(destination_url)
    url = older_warehouse(
        destination_url,
        tmp_path,
        statement=f"ALTER TABLE {wh.runtime('tables')} DROP COLUMN history",
    )
    s2 = history_sync(url, page([{"id": 1, "plan": "b"}]))
    with open_destination(url) as destination:
        assert destination.load("demo").catalog["t"].history
    assert versions(url, [s1, s2]) == [
        (1, "a", "s1", "s2-1ms", False),
        (1, "b", "s2", "open", True),
    ]


# -- bulk paths: COPY straight in, multi-row upserts (issue 16) --------------------------


def test_keys_sent_again_in_the_sync_that_created_the_table_are_upserted(destination_url):
    """PostgreSQL COPYs a new table's rows straight in while no key comes back; a key sent
    again, on the same page or a later one, is still one row holding its last values."""
    outcome, _ = sync(
        destination_url,
        [
            page(
                [{"id": 1, "v": "a", "w": 1}, {"id": 2, "v": "b"}, {"id": 1, "v": "a2"}], more=True
            ),
            page(
                [{"id": 3, "v": "c"}, {"id": 4, "v": "d", "w": 4}],
                more=True,
                delete={"t": [{"id": 2}]},
            ),
            page([{"id": 4, "v": "d2"}, {"id": 5, "v": "e", "w": 5}], more=True),
            page([{"id": 6, "v": "f"}], more=True),
            page([{"id": 7, "v": "g"}], delete={"t": [{"id": 6}]}),
        ],
    )
    assert outcome.record.status == "succeeded", outcome.alert
    assert outcome.record.rows_upserted == 8  # a key twice on one page counts once
    assert Warehouse(destination_url).rows("t", "id, v, w, _fivetran_deleted") == [
        (1, "a2", None, False),  # the page's last row, whole: `w` absent from it is NULL
        (2, "b", None, True),
        (3, "c", None, False),  # written with its page's delete: false, not NULL
        (4, "d2", None, False),
        (5, "e", 5, False),
        (6, "f", None, True),
        (7, "g", None, False),
    ]
    wh = Warehouse(destination_url)
    [(started,)] = runtime_rows(wh, "syncs", "started_at", "started_at")
    synced = {instant(s) for (s,) in wh.rows("t", "_fivetran_synced")}
    assert synced == {instant(started)}


def test_postgres_copies_into_a_table_of_this_sync_until_a_key_comes_back(
    postgres_url, monkeypatch
):
    """The fast path is taken, and left for good once a key repeats (no COPY that fails
    on every later page)."""
    from destinations.sql.postgres import Postgres

    taken = []
    real = Postgres.insert_new

    def insert_new(self, conn, dt, rows, synced_at):
        taken.append(real(self, conn, dt, rows, synced_at))
        return taken[-1]

    monkeypatch.setattr(Postgres, "insert_new", insert_new)
    pages = [page([{"id": 1}, {"id": 2}], more=True), page([{"id": 3}], more=True)]
    pages += [page([{"id": 3, "v": "again"}], more=True), page([{"id": 4}])]
    outcome, _ = sync(postgres_url, pages)
    assert outcome.record.status == "succeeded", outcome.alert
    assert taken == [True, True, False]  # page 4 upserts without trying
    assert Warehouse(postgres_url).rows("t", "id, v") == [
        (1, None),
        (2, None),
        (3, "again"),
        (4, None),
    ]
    taken.clear()
    sync(postgres_url, [page([{"id": 5}])])  # a table from an earlier sync: staged upsert
    assert taken == []
    assert Warehouse(postgres_url).count("t") == 5


def test_postgres_leaves_room_for_upserts_in_keyed_tables_only(postgres_url):
    """Keyed tables are created with fillfactor 85 (updates stay on their page); tables
    without a key are only appended to and fill their pages."""
    keyed = page([{"id": 1}], more=True)
    keyless = page([{"v": "a"}], key=(), table="log")
    outcome, _ = sync(postgres_url, [keyed, keyless])
    assert outcome.record.status == "succeeded", outcome.alert
    found = Warehouse(postgres_url).query(
        "SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = 'demo' AND c.relkind = 'r'"
    )
    options = dict(found)
    assert options == {"t": ["fillfactor=85"], "log": None}


# values each write path must carry exactly: as sent, then as every backend reads them back
EXACT = [
    {
        "id": 1,
        "n": 2**63 - 1,
        "big": 2**70,
        "x": 0.1,
        "at": "2024-01-02T03:04:05.123456+05:30",
        "naive": "2024-02-29T23:59:59.999999",
        "day": "1999-12-31",
        "flag": True,
        "s": "",
        "doc": {"emoji": "😀", "cjk": "漢字", "quotes": "'\"\\", "list": [1, None, {"a": []}]},
    },
    {
        "id": 2,
        "n": -(2**63),
        "big": -(2**70),
        "x": 5e-324,
        "at": "1969-12-31T23:59:59.999999Z",
        "naive": "1970-01-01T00:00:00",
        "day": "2000-01-01",
        "flag": False,
        "s": "it's \"quoted\" \\ back\\slash %s %% :name '); DROP TABLE t; --",
        "doc": [],
    },
    {
        "id": 3,
        "n": None,
        "big": None,
        "x": 1.7976931348623157e308,
        "at": "1999-12-31T23:59:59.5-01:00",
        "naive": None,
        "day": None,
        "flag": None,
        "s": "line\none\r\ttab \x1a é 😀",
        "doc": None,
    },
    {"id": 4, "x": -1 / 3, "s": None, "doc": {"unicode": "\u00e9\u2028", "n": -0.5}},
]
READ_BACK = [
    (
        1,
        2**63 - 1,
        str(2**70),
        0.1,
        "2024-01-01T21:34:05.123456",
        "2024-02-29T23:59:59.999999",
        "1999-12-31",
        True,
        "",
        EXACT[0]["doc"],
    ),
    (
        2,
        -(2**63),
        str(-(2**70)),
        5e-324,
        "1969-12-31T23:59:59.999999",
        "1970-01-01T00:00:00.000000",
        "2000-01-01",
        False,
        EXACT[1]["s"],
        [],
    ),
    (
        3,
        None,
        None,
        1.7976931348623157e308,
        "2000-01-01T00:59:59.500000",
        None,
        None,
        None,
        EXACT[2]["s"],
        None,
    ),
    (4, None, None, -1 / 3, None, None, None, None, None, EXACT[3]["doc"]),
]


def read_exact(wh: Warehouse, table: str) -> list[tuple]:
    stored = wh.rows(table, "id, n, big, x, at, naive, day, flag, s, doc")
    return [(*row[:4], row[4] and instant(row[4]), *row[5:9], as_json(row[9])) for row in stored]


def test_values_arrive_exactly_through_every_write_path(destination_url):
    """A table created by the sync (PostgreSQL: COPY straight in), a table upserted into
    later (a staging table, or MySQL's multi-row upsert) and a table without a key
    (appended) store the same values: 64-bit and larger integers, the shortest doubles,
    instants before 1970 and 2000 with offsets and microseconds, JSON with unicode,
    empty text apart from NULL, quotes and backslashes."""
    sync_and_check_exact(destination_url)


def sync_and_check_exact(url: str) -> None:
    keys = [{"id": row["id"]} for row in EXACT]
    first = {"state": {}, "insert": {"new": EXACT, "later": keys, "log": EXACT}}
    first["schema"] = {"new": {"primary_key": ["id"]}, "later": {"primary_key": ["id"]}}
    second = {"state": {}, "insert": {"later": EXACT}, "schema": first["schema"]}
    for pages in ([first], [second]):
        outcome, _ = sync(url, pages)
        assert outcome.record.status == "succeeded", outcome.alert
    wh = Warehouse(url)
    assert read_exact(wh, "new") == READ_BACK
    assert read_exact(wh, "later") == READ_BACK
    log = wh.rows("log", "_fivetran_index, id", "_fivetran_index")
    assert log == [(i, row["id"]) for i, row in enumerate(EXACT)]
    assert sorted(read_exact(wh, "log")) == READ_BACK


def test_rows_too_long_for_mysql_packets_go_alone_through_the_driver(mariadb_url, monkeypatch):
    """Text goes to MySQL/MariaDB as hex, twice its length: a row whose statement would
    not fit in the server's max_allowed_packet (tiny here) is sent alone through the
    driver's own escaping, and arrives exactly all the same."""
    from destinations.sql.mysql import MySQL

    alone = []
    real = MySQL.driver_row

    def driver_row(self, row, types, constants):
        alone.append(row.num_rows)
        return real(self, row, types, constants)

    monkeypatch.setattr(MySQL, "packet_bytes", lambda self, conn: 1024 + 400)
    monkeypatch.setattr(MySQL, "driver_row", driver_row)
    sync_and_check_exact(mariadb_url)
    assert alone and set(alone) == {1}


def test_nan_and_infinity_in_a_double_column_upserted_into(destination_url):
    """As on a table's first page (above), through the path that updates existing rows."""
    raw = b'{"state": {}, "schema": {"t": {"primary_key": ["id"]}}, "insert": {"t": [%s]}}'
    first = raw % b'{"id": 1, "x": 0.5}, {"id": 2, "x": 0.5}, {"id": 3, "x": 0.5}'
    again = raw % b'{"id": 1, "x": NaN}, {"id": 2, "x": Infinity}, {"id": 3, "x": -Infinity}'
    for pages in ([first], [again]):
        outcome, _ = sync(destination_url, pages)
        assert outcome.record.status == "succeeded", outcome.alert
    stored = [x for _, x in Warehouse(destination_url).rows("t", "id, x")]
    inf = float("inf")
    expected = {
        "duckdb": ["nan", inf, -inf],
        "postgresql": ["nan", inf, -inf],
        "sqlite": [None, inf, -inf],
        "mariadb": [None, None, None],
    }[backend_of(destination_url)]
    assert ["nan" if x != x else x for x in stored] == expected


def test_a_page_split_into_many_batches_and_statements_keeps_every_row(
    destination_url, monkeypatch
):
    """PostgreSQL encodes COPY data in batches of rows and MySQL sends rows in statements
    of bounded size: tiny ones here, rows with nulls and one longer than a statement."""
    from destinations.sql import mysql_values, pgcopy

    monkeypatch.setattr(pgcopy, "BATCH_ROWS", 3)
    monkeypatch.setattr(mysql_values, "STATEMENT_BYTES", 120)
    rows = [
        {"id": i, "v": None if i % 4 else f"v{i}", "n": i if i % 3 else None} for i in range(20)
    ]
    rows[7]["v"] = "long " * 100
    events = [{"e": i, "v": row["v"]} for i, row in enumerate(rows)]
    pages = [page(rows, more=True), page(rows[5:], more=True)]
    pages.append({"state": {}, "insert": {"events": events}, "delete": {"t": [{"id": 0}]}})
    outcome, _ = sync(destination_url, pages)
    assert outcome.record.status == "succeeded", outcome.alert
    wh = Warehouse(destination_url)
    expected = [(r["id"], r["v"], r["n"], r["id"] == 0) for r in rows]
    assert wh.rows("t", "id, v, n, _fivetran_deleted") == expected
    assert wh.rows("events", "e, v", "e") == [(e["e"], e["v"]) for e in events]


def test_a_delete_by_compound_key_marks_only_rows_with_every_key_column_equal(destination_url):
    key = ("account", "code")
    rows = [{"account": a, "code": c} for a in (1, 2) for c in ("x", "y")]
    deletes = [
        {"account": 1, "code": "y"},
        {"account": 2, "code": "x"},
        {"account": 3, "code": "x"},
    ]
    outcome, _ = sync(
        destination_url,
        [page(rows, key=key, more=True), {"state": {}, "delete": {"t": deletes}}],
    )
    assert outcome.tables["t"] == {"upserted": 4, "deleted": 2, "missing": 1}
    assert Warehouse(destination_url).rows(
        "t", "account, code, _fivetran_deleted", "account, code"
    ) == [
        (1, "x", False),
        (1, "y", True),
        (2, "x", True),
        (2, "y", False),
    ]
