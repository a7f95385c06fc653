"""Streamed answers (design §13) on every warehouse: a page that arrives in parts is one
page in one transaction, whatever breaks on the way.

The function here is `ScriptedInvoker`: a list is a streamed answer, one item per part.
The transports that stream (NDJSON over HTTP, local generators) have their own tests.
"""

from __future__ import annotations

import pytest
from test_destination_contract import FAST_RETRY, sync
from warehouses import Warehouse
from warehouses import destination_url as destination_url  # fixtures

from connector_runtime.destination import open_destination
from connector_runtime.errors import TransientInvokeError

KEYED = {"t": {"primary_key": ["id"]}}


def rows_of(url: str, columns: str, table: str = "t", order: str = "id") -> list[tuple]:
    return Warehouse(url).rows(table, columns, order_by=order)


def saved_state(url: str) -> dict:
    with open_destination(url) as destination:
        return destination.load("demo").state


def pages_counted(url: str) -> int:
    with open_destination(url) as destination:
        return destination.recent_syncs("demo")[0].pages


def has_table(url: str, table: str) -> bool:
    try:
        Warehouse(url).count(table)
    except Exception:  # each backend words "no such table" its own way
        return False
    return True


def test_the_parts_of_a_streamed_page_are_one_page(destination_url):
    stream = [
        {"schema": KEYED, "insert": {"t": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}},
        {"insert": {"t": [{"id": 2, "name": "b2"}, {"id": 3, "name": "c"}]}},  # 2 again: later wins
        {"delete": {"t": [{"id": 1}]}},
        {"state": {"cursor": 3}, "hasMore": False, "insert": {"t": [{"id": 4, "name": "d"}]}},
    ]
    outcome, invoker = sync(destination_url, [stream])
    assert outcome.ok, outcome.alert
    assert (outcome.record.pages, outcome.record.rows_upserted, outcome.record.rows_deleted) == (
        1,
        5,
        1,
    )
    assert outcome.tables == {"t": {"upserted": 5, "deleted": 1, "missing": 0}}
    assert rows_of(destination_url, "id, name, _fivetran_deleted") == [
        (1, "a", True),
        (2, "b2", False),
        (3, "c", False),
        (4, "d", False),
    ]
    assert [c.change for c in outcome.schema_changes] == ["table_created"]
    assert saved_state(destination_url) == {"cursor": 3}
    assert pages_counted(destination_url) == 1
    assert invoker.streams[0].ended


def test_parts_without_a_key_append_each_row_once(destination_url):
    stream = [
        {"insert": {"log": [{"n": 1}, {"n": 2}]}},
        {"insert": {"log": [{"n": 3}]}},
        {"state": {}, "insert": {"log": [{"n": 4}]}},
    ]
    outcome, _ = sync(destination_url, [stream])
    assert outcome.ok, outcome.alert
    logged = rows_of(destination_url, "n, _fivetran_batch, _fivetran_index", "log", "n")
    assert [n for n, _, _ in logged] == [1, 2, 3, 4]
    assert len({(batch, index) for _, batch, index in logged}) == 4  # told apart, part by part


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param({"errorMessage": "upstream said no", "errorType": "Api"}, id="error-part"),
        pytest.param(None, id="ends-without-state"),
        pytest.param({"insert": {"t": "not rows"}}, id="invalid-part"),
    ],
)
def test_a_stream_that_breaks_writes_nothing_and_the_next_sync_starts_clean(
    destination_url, broken
):
    parts = [
        {"schema": KEYED, "insert": {"t": [{"id": 1, "name": "a"}]}},
        {"insert": {"t": [{"id": 2, "name": "b", "extra": True}]}},
    ]
    outcome, _ = sync(destination_url, [parts + ([broken] if broken else [])])
    assert not outcome.ok
    alert = outcome.alert
    if broken is None:
        assert alert.kind == "invalid_response"
        assert "ended without its last part, the one that carries state" in alert.message
    elif "errorMessage" in broken:
        assert (alert.kind, alert.error_type, alert.message) == (
            "function_error",
            "Api",
            "upstream said no",
        )
    else:
        assert alert.kind == "invalid_response"
        assert alert.message.startswith(
            "streamed answer from the scripted function, part 3: insert: table 't'"
        )
    assert saved_state(destination_url) == {}
    assert not has_table(destination_url, "t")  # created by part 1, rolled back with it
    assert pages_counted(destination_url) == 0
    # the catalog went back too: the table is created afresh, with the new page's columns
    outcome, _ = sync(destination_url, [{"state": {"c": 1}, "insert": {"t": [{"id": 9}]}}])
    assert outcome.ok, outcome.alert
    assert rows_of(destination_url, "id") == [(9,)]


def test_a_stream_broken_off_is_asked_for_again_and_applied_once(destination_url):
    first = [
        {"insert": {"log": [{"n": 1}]}},
        TransientInvokeError("the connection broke mid-stream"),
    ]
    again = [{"insert": {"log": [{"n": 1}]}}, {"state": {"c": 1}, "insert": {"log": [{"n": 2}]}}]
    outcome, invoker = sync(destination_url, [first, again])
    assert outcome.ok, outcome.alert
    assert rows_of(destination_url, "n", "log", "n") == [(1,), (2,)]
    assert [r["state"] for r in invoker.requests] == [{}, {}]  # the same page, asked again
    assert outcome.record.pages == 1


def test_a_stream_that_keeps_breaking_fails_after_the_retries(destination_url):
    broken = [{"insert": {"log": [{"n": 1}]}}, TransientInvokeError("reset by peer")]
    outcome, invoker = sync(destination_url, [list(broken) for _ in range(FAST_RETRY.attempts)])
    assert outcome.alert.kind == "invoke_failed"
    assert "reset by peer" in outcome.alert.message
    assert len(invoker.requests) == FAST_RETRY.attempts
    assert not has_table(destination_url, "log")


def test_a_part_after_the_last_is_refused(destination_url):
    stream = [{"state": {"c": 1}, "insert": {"log": [{"n": 1}]}}, {"insert": {"log": [{"n": 2}]}}]
    outcome, _ = sync(destination_url, [stream])
    assert outcome.alert.kind == "invalid_response"
    assert "part 2: came after the part that carried state" in outcome.alert.message
    assert saved_state(destination_url) == {}


def test_has_more_without_state_is_refused_in_the_function_s_words(destination_url):
    outcome, _ = sync(destination_url, [[{"insert": {"log": [{"n": 1}]}, "hasMore": True}]])
    assert outcome.alert.message == (
        "streamed answer from the scripted function, part 1: hasMore without state: the last "
        "part of a streamed answer carries both, and the parts before it neither"
    )


def test_streamed_pages_alternate_with_whole_ones(destination_url):
    pages = [
        {"state": {"c": 1}, "insert": {"t": [{"id": 1, "name": "a"}]}, "schema": KEYED},
        "hasMore",
        [{"insert": {"t": [{"id": 2, "name": "b"}]}}, {"state": {"c": 2}, "hasMore": True}],
        {"state": {"c": 3}, "insert": {"t": [{"id": 3, "name": "c"}]}},
    ]
    pages = [p for p in pages if p != "hasMore"]
    pages[0]["hasMore"] = True
    outcome, invoker = sync(destination_url, pages)
    assert outcome.ok, outcome.alert
    assert outcome.record.pages == 3
    assert [r["state"] for r in invoker.requests] == [{}, {"c": 1}, {"c": 2}]
    assert rows_of(destination_url, "id") == [(1,), (2,), (3,)]


def test_a_column_widened_in_a_later_part(destination_url):
    stream = [
        {"schema": KEYED, "insert": {"t": [{"id": 1, "amount": 5}]}},
        {"insert": {"t": [{"id": 2, "amount": 2.5, "note": "new"}]}},
        {"state": {"c": 1}},
    ]
    outcome, _ = sync(destination_url, [stream])
    assert outcome.ok, outcome.alert
    assert rows_of(destination_url, "id, amount, note") == [(1, 5.0, None), (2, 2.5, "new")]
    changes = [(c.change, c.column) for c in outcome.schema_changes]
    if destination_url.startswith("mysql"):
        # MySQL commits DDL by itself: the stream is read ahead and its tables created in
        # their final shape before a row is written
        assert changes == [("table_created", None)]
    else:
        assert changes == [("table_created", None), ("column_added", "note")] + [
            ("column_widened", "amount")
        ]


def test_on_mysql_a_stream_read_ahead_that_breaks_changes_no_table(destination_url):
    stream = [{"schema": KEYED, "insert": {"t": [{"id": 1}]}}, {"insert": {"t": "oops"}}]
    outcome, _ = sync(destination_url, [stream])
    assert outcome.alert.kind == "invalid_response"
    assert not has_table(destination_url, "t")  # every backend: nothing of it, DDL included
    with open_destination(destination_url) as destination:
        assert destination.load("demo").catalog == {}
