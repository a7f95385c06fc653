"""Answers a local Python worker sends as columns read exactly as the same answers sent
as rows: the same rows, the same typed page, the same events for a function
destination, the same merge with a page in cloud storage; and a real worker does send
them so."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bulk_typing import ZONED, json_values, scalars
from test_local_invoker import restore_imports as restore_imports  # an autouse fixture

from connector_runtime.columns import (
    COLUMNAR_MIN_ROWS,
    ColumnarAnswer,
    ColumnRows,
    encode_columnar,
)
from connector_runtime.delivery import PageContext, page_events
from connector_runtime.invokers.local import LocalPythonInvoker
from connector_runtime.jsonio import encode_json
from connector_runtime.naming import NameMap
from connector_runtime.page import PagePlanner, TableSettings, prepare
from connector_runtime.protocol import Response, decode_answer, validate_response
from connector_runtime.storage import merge_page
from connector_runtime.sync import SyncJob, run_sync
from connector_runtime.typed_columns import typed_column

SYNCED_AT = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
N = COLUMNAR_MIN_ROWS + 6


def rows_of(values: list, *, extra: str | None = None) -> list[dict]:
    """One row per value: an id, the value, and a constant column `extra` if given."""
    rows = [{"id": i, "v": v} for i, v in enumerate(values)]
    if extra is not None:
        for row in rows:
            row[extra] = "x"
    return rows


def answer_of(rows: list[dict], **more) -> dict:
    return {
        "state": {"cursor": 1},
        "insert": {"items": rows},
        "schema": {"items": {"primary_key": ["id"]}},
        "hasMore": False,
        **more,
    }


def framed(answer: dict, *, typed: bool = False) -> ColumnarAnswer | None:
    """`answer` as a worker frames it (columns it typed too, if `typed`), read back from
    the frame's bytes."""
    columnar = encode_columnar(answer, typed_column if typed else None)
    if columnar is None:
        return None
    return ColumnarAnswer.from_payload(columnar.payload(), typed=bool(columnar.typed))


def both_ways(answer: dict, *, typed: bool = False) -> tuple[Response, Response]:
    """The answer read as rows, and as the columns a worker sends (which it must be)."""
    columnar = framed(answer, typed=typed)
    assert columnar is not None, "expected the answer to go as columns"
    as_rows = validate_response(decode_answer(encode_json(answer)))
    as_columns = validate_response(decode_answer(columnar))
    return as_rows, as_columns


def canonical(value) -> str:
    """JSON text with keys sorted; NaN and ±Infinity spelled out, so that they compare."""
    return json.dumps(value, sort_keys=True, allow_nan=True)


def plan(response: Response):
    prepare(response)
    planner = PagePlanner("demo", "demo", NameMap("fivetran"), {})
    return planner.plan(response, sync_id="s", number=1, synced_at=SYNCED_AT)


def same_tables(a: pa.Table, b: pa.Table) -> bool:
    if a.schema != b.schema or a.num_rows != b.num_rows:
        return False
    for x, y in zip(a.to_pylist(), b.to_pylist(), strict=True):
        for key in x:
            u, v = x[key], y[key]
            nan = isinstance(u, float) and isinstance(v, float) and math.isnan(u)
            if not (nan and math.isnan(v)) and u != v:
                return False
    return True


values = st.lists(st.none() | scalars, min_size=N, max_size=N + 20) | st.lists(
    json_values, min_size=N, max_size=N + 20
)


@settings(max_examples=150, deadline=None)
@given(values, st.booleans())
def test_columns_read_as_the_rows_they_came_from_and_type_the_same(column, typed):
    as_rows, as_columns = both_ways(answer_of(rows_of(column)), typed=typed)

    assert type(as_columns.insert["items"]) is ColumnRows
    assert canonical(list(as_columns.insert["items"])) == canonical(as_rows.insert["items"])
    assert as_columns.row_count == as_rows.row_count == len(column)
    by_rows, by_columns = plan(as_rows), plan(as_columns)
    assert by_columns.tables[0].table == by_rows.tables[0].table  # the same column types
    assert same_tables(by_columns.tables[0].upserts, by_rows.tables[0].upserts)


@pytest.mark.parametrize("typed", [False, True])
def test_text_that_looks_like_dates_and_big_numbers_keep_their_meaning(typed):
    column = [ZONED[i % len(ZONED)] for i in range(N)]
    numbers = [2**70, -(2**63), 1.5, float("nan"), None] * (N // 5 + 1)
    answer = answer_of([{"id": i, "at": column[i], "n": numbers[i]} for i in range(N)])

    as_rows, as_columns = both_ways(answer, typed=typed)

    by_rows, by_columns = plan(as_rows), plan(as_columns)
    assert by_columns.tables[0].table.columns == by_rows.tables[0].table.columns
    assert same_tables(by_columns.tables[0].upserts, by_rows.tables[0].upserts)


def test_only_large_tables_whose_rows_have_the_same_columns_go_as_columns():
    uniform = rows_of(list(range(N)))
    ragged = rows_of(list(range(N)))
    del ragged[5]["v"]  # a missing column must stay missing, not become null
    small = rows_of(list(range(COLUMNAR_MIN_ROWS - 1)))
    not_text_keys = [{1: "a"} for _ in range(N)]

    assert encode_columnar(answer_of(ragged)) is None
    assert encode_columnar(answer_of(small)) is None
    assert encode_columnar(answer_of(not_text_keys)) is None
    assert encode_columnar(answer_of([*uniform[:-1], "not a row"])) is None
    assert encode_columnar({"errorMessage": "down", "insert": {"items": uniform}}) is None
    assert encode_columnar({"insert": {"items": uniform}}) is None  # no state: not a page
    assert encode_columnar([uniform]) is None

    mixed = answer_of(uniform)
    mixed["insert"]["few"] = small
    answer = decode_answer(framed(mixed))
    assert type(answer["insert"]["items"]) is ColumnRows
    assert answer["insert"]["few"] == small  # as rows, as sent


def test_a_value_json_cannot_hold_leaves_the_answer_to_the_rows_path():
    rows = rows_of([object()] + list(range(N)))
    try:
        encode_columnar(answer_of(rows))
    except TypeError:
        pass  # the worker then encodes the rows, which says why (Runtime.MarshalError)
    else:
        raise AssertionError("an object JSON cannot hold was encoded")


@pytest.mark.parametrize("typed", [False, True])
def test_rows_by_index_and_slice_are_the_rows_sent(typed):
    sent = rows_of(list(range(N)), extra="tag")
    _, as_columns = both_ways(answer_of(sent), typed=typed)
    rows = as_columns.insert["items"]

    assert rows[0] == sent[0] and rows[-1] == sent[-1] and rows[3:6] == sent[3:6]
    assert rows == sent and len(rows) == N


@pytest.mark.parametrize("typed", [False, True])
def test_a_function_destination_gets_the_same_events(typed):
    sent = rows_of([{"deep": [i, None], "at": ZONED[0]} for i in range(N)], extra="email")
    as_rows, as_columns = both_ways(answer_of(sent), typed=typed)
    context = PageContext("crm", "crm", "agent", "sync-1", 1, SYNCED_AT, {"cursor": 0})

    def events(response: Response) -> list:
        found = page_events(response, context, NameMap("fivetran"), TableSettings(), {})
        return [(e.table, e.key, e.payload) for e in found]

    assert events(as_columns) == events(as_rows)


@pytest.mark.parametrize("typed", [False, True])
def test_a_page_in_cloud_storage_adds_its_rows_after_the_columns(typed):
    sent = rows_of(list(range(N)))
    answer = decode_answer(framed(answer_of(sent), typed=typed))
    stored = {"insert": {"items": [{"id": 10_000, "v": 1}]}}

    merged = merge_page(answer, stored, "s3://bucket/page.json")

    assert merged["insert"]["items"] == [*sent, {"id": 10_000, "v": 1}]


@pytest.mark.parametrize("isolation", ["process", "inline"])
def test_a_real_worker_sends_a_large_page_as_columns_and_the_sync_stores_it(tmp_path, isolation):
    handler = tmp_path / "handler.py"
    handler.write_text(
        "def handler(request):\n"
        "    rows = [{'id': i, 'name': f'n{i}', 'tags': [i, {'k': None}], 'seen': '2024-01-01T00:00:00Z'}\n"
        f"            for i in range({N})]\n"
        "    return {'state': {'done': True}, 'insert': {'items': rows},\n"
        "            'schema': {'items': {'primary_key': ['id']}}}\n"
    )
    invoker = LocalPythonInvoker(handler, timeout=30, isolation=isolation)
    try:
        assert isinstance(invoker.invoke({"state": {}}), ColumnarAnswer)
    finally:
        invoker.close()

    url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    job = SyncJob(
        "demo",
        "demo",
        url,
        lambda: LocalPythonInvoker(handler, timeout=30, isolation=isolation),
        prefetch=False,
    )
    assert run_sync(job).record.status == "succeeded"

    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT id, name, CAST(tags AS VARCHAR), epoch(seen) FROM demo.items ORDER BY id"
        ).fetchall()
    assert rows == [(i, f"n{i}", f'[{i},{{"k":null}}]', 1704067200.0) for i in range(N)]


def test_a_large_page_json_cannot_hold_is_a_marshal_error_from_a_real_worker(tmp_path):
    handler = tmp_path / "handler.py"
    handler.write_text(
        f"def handler(request):\n"
        f"    rows = [{{'id': i, 'v': object() if i == 3 else i}} for i in range({N})]\n"
        f"    return {{'state': {{}}, 'insert': {{'items': rows}}}}\n"
    )
    invoker = LocalPythonInvoker(handler, timeout=30)
    try:
        answer = json.loads(invoker.invoke({"state": {}}))
    finally:
        invoker.close()
    assert answer["errorType"] == "Runtime.MarshalError"
