"""Function destinations, the sending side: events built from a page, and `Deliverer`
sending them to a real local function in warm worker processes (design §12)."""

from __future__ import annotations

import json
import textwrap
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from connector_runtime.delivery import (
    Deliverer,
    DeliverySettings,
    DeliveryStats,
    PageContext,
    page_events,
)
from connector_runtime.errors import DeliveryFailed
from connector_runtime.invokers.local import LocalPythonInvoker
from connector_runtime.naming import NameMap
from connector_runtime.page import TableSettings
from connector_runtime.protocol import parse_response
from connector_runtime.retry import RetryPolicy

FAST_RETRY = RetryPolicy(attempts=3, base=0.001, cap=0.01)
SYNCED_AT = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def context(state=None, page=3) -> PageContext:
    return PageContext(
        connector="crm",
        schema="crm",
        agent="connector-runtime/test/crm/crm",
        sync_id="sync-1",
        page=page,
        synced_at=SYNCED_AT,
        requested_state=state if state is not None else {"cursor": "2026-11-30"},
    )


def events_of(answer: dict, *, state=None, settings=None, keys=None):
    response = parse_response(orjson.dumps(answer))
    return page_events(
        response,
        context(state),
        NameMap("fivetran"),
        settings or TableSettings(),
        keys if keys is not None else {"customers": ["id"]},
    )


PAGE = {
    "state": {"cursor": "2026-12-01"},
    "insert": {"customers": [{"id": 7, "email": "a@x.io", "planName": "pro"}, {"id": 8}]},
    "delete": {"customers": [{"id": 9, "email": "gone@x.io"}]},
    "schema": {"customers": {"primary_key": ["id"]}},
}


def test_each_record_is_one_event_with_its_context():
    upsert, second, delete = events_of(PAGE)

    assert upsert.payload["data"] == {"id": 7, "email": "a@x.io", "planName": "pro"}
    assert upsert.payload["context"] == {
        "connector": "crm",
        "schema": "crm",
        "table": "customers",
        "operation": "upsert",
        "primary_key": {"id": 7},
        "sync_id": "sync-1",
        "page": 3,
        "synced_at": "2026-12-01T10:00:00Z",
        "event_id": upsert.payload["context"]["event_id"],
        "agent": "connector-runtime/test/crm/crm",
    }
    assert uuid.UUID(upsert.payload["context"]["event_id"])
    # a delete carries its key columns only
    assert delete.payload["data"] == {"id": 9}
    assert delete.payload["context"]["operation"] == "delete"
    assert second.payload["context"]["primary_key"] == {"id": 8}


def test_event_ids_are_stable_for_the_same_record_from_the_same_state():
    first = [e.payload["context"]["event_id"] for e in events_of(PAGE)]
    again = [e.payload["context"]["event_id"] for e in events_of(PAGE)]
    # the same state with its keys in another order is the same state
    reordered = [
        e.payload["context"]["event_id"]
        for e in events_of(PAGE, state={"cursor": "2026-11-30"} | {})
    ]
    later = [e.payload["context"]["event_id"] for e in events_of(PAGE, state={"cursor": "x"})]

    assert first == again == reordered
    assert len(set(first)) == 3
    assert not set(first) & set(later)


def test_the_same_key_twice_in_a_page_gets_two_ids_in_order():
    page = {"state": {}, "insert": {"customers": [{"id": 1, "v": "a"}, {"id": 1, "v": "b"}]}}
    first, second = events_of(page)
    assert first.payload["context"]["event_id"] != second.payload["context"]["event_id"]
    assert [first.payload["data"]["v"], second.payload["data"]["v"]] == ["a", "b"]


def test_records_of_a_table_without_a_key_are_told_apart_by_position():
    page = {"state": {}, "insert": {"log": [{"m": "same"}, {"m": "same"}]}}
    first, second = events_of(page, keys={})
    assert first.key is None and first.payload["context"]["primary_key"] is None
    assert first.payload["context"]["event_id"] != second.payload["context"]["event_id"]


def test_blocked_columns_are_left_out_and_hashed_ones_hashed():
    settings = TableSettings(
        blocked={"customers": frozenset({"plan_name"})},
        hashed={"customers": frozenset({"email"})},
    )
    upsert, _, delete = events_of(PAGE, settings=settings)
    assert set(upsert.payload["data"]) == {"id", "email"}
    assert (
        upsert.payload["data"]["email"] != "a@x.io" and len(upsert.payload["data"]["email"]) == 64
    )
    assert delete.payload["data"] == {"id": 9}


def test_a_skipped_table_sends_nothing():
    assert events_of(PAGE, settings=TableSettings(skip=frozenset({"customers"}))) == []


# -- sending to a real local function ---------------------------------------------------

RECEIVER = """
import json, os, pathlib, time

HERE = pathlib.Path(__file__).parent


def handler(event):
    events = event["events"] if "events" in event else [event]
    plan = json.loads((HERE / "plan.json").read_text())
    for one in events:
        seen = HERE / "seen" / one["context"]["event_id"]
        first_time = not seen.exists()
        seen.touch()
        key = str(one["context"]["primary_key"]["id"])
        answer = plan.get(key)
        if answer == "throw-once" and first_time:
            raise RuntimeError("flaky downstream")
        if answer == "500-once" and first_time:
            return {"statusCode": 500, "message": "try later"}
        if isinstance(answer, int):
            return {"statusCode": answer, "message": f"refused {key}"}
        time.sleep(0.002)
        with open(HERE / "received.jsonl", "a") as out:
            out.write(json.dumps({"pid": os.getpid(), **one}) + "\\n")
    return {"statusCode": 200, "message": "ok"}
"""


@pytest.fixture
def receiver(tmp_path: Path):
    (tmp_path / "seen").mkdir()
    (tmp_path / "receiver.py").write_text(textwrap.dedent(RECEIVER))
    (tmp_path / "plan.json").write_text("{}")

    def deliver(events, *, plan=None, batch_size=1, concurrency=3):
        (tmp_path / "plan.json").write_text(json.dumps(plan or {}))
        settings = DeliverySettings(
            invoker=lambda: LocalPythonInvoker(tmp_path / "receiver.py", function_name="dest"),
            batch_size=batch_size,
            concurrency=concurrency,
            retry=FAST_RETRY,
        )
        stats = DeliveryStats()
        import structlog

        with Deliverer(settings, stats, structlog.get_logger()) as deliverer:
            deliverer.deliver(events)
        return stats

    def received():
        path = tmp_path / "received.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    deliver.received = received
    return deliver


def many(keys: int, versions: int) -> list:
    rows = [{"id": k, "version": v} for v in range(versions) for k in range(keys)]
    return events_of({"state": {}, "insert": {"customers": rows}})


def test_every_event_arrives_once_and_each_key_in_order_over_several_workers(receiver):
    events = many(keys=12, versions=4)

    stats = receiver(events, concurrency=3)

    got = receiver.received()
    assert sorted(e["context"]["event_id"] for e in got) == sorted(
        e.payload["context"]["event_id"] for e in events
    )
    for key in range(12):
        versions = [e["data"]["version"] for e in got if e["data"]["id"] == key]
        assert versions == [0, 1, 2, 3]
    assert len({e["pid"] for e in got}) == 3  # one warm worker per concurrent slot
    assert (stats.delivered, stats.retried, stats.failed) == (48, 0, 0)
    assert stats.percentile(0.5) is not None and stats.percentile(0.95) >= stats.percentile(0.5)


def test_batches_carry_events_in_order(receiver):
    events = many(keys=2, versions=5)
    stats = receiver(events, batch_size=4, concurrency=1)
    got = receiver.received()
    assert [e["data"]["version"] for e in got if e["data"]["id"] == 1] == [0, 1, 2, 3, 4]
    assert stats.delivered == 10 and len(stats.latencies_ms) == 3  # 10 events in 3 calls


def test_a_throw_or_a_500_is_retried_and_then_delivered(receiver):
    events = many(keys=3, versions=1)
    stats = receiver(events, plan={"0": "throw-once", "1": "500-once"})
    assert sorted(e["data"]["id"] for e in receiver.received()) == [0, 1, 2]
    assert (stats.delivered, stats.retried, stats.failed) == (3, 2, 0)


def test_a_refusal_fails_naming_the_table_key_status_and_message(receiver):
    events = many(keys=3, versions=1)
    with pytest.raises(DeliveryFailed) as caught:
        receiver(events, plan={"1": 400})
    assert caught.value.kind == "delivery_failed"
    assert caught.value.message == (
        "delivering table 'customers', key {\"id\":1} failed: the function answered 400: refused 1"
    )


def test_a_function_that_keeps_failing_fails_after_the_retries(receiver):
    events = many(keys=1, versions=1)
    with pytest.raises(DeliveryFailed) as caught:
        receiver(events, plan={"0": 503})
    assert caught.value.message == (
        "delivering table 'customers', key {\"id\":0} failed: the function answered 503 "
        "after 3 attempts: refused 0"
    )
