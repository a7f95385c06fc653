"""Columns a local Python worker types itself (`typed_columns`) are exactly what the
runtime makes of the same rows sent as JSON: the same column types, the same Arrow
arrays, the same rows when something asks for them; and what the worker cannot type
that way goes as JSON."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bulk_typing import ZONED, scalars
from test_columnar_answers import N, answer_of, both_ways, canonical, framed, plan, same_tables
from test_local_invoker import restore_imports as restore_imports  # an autouse fixture

from connector_runtime.columns import TypingAhead
from connector_runtime.errors import InvalidResponse
from connector_runtime.invokers import local
from connector_runtime.invokers._worker import (
    COLUMNS,
    TYPED,
    FunctionHost,
    FunctionSpec,
)
from connector_runtime.invokers.local import LocalPythonInvoker
from connector_runtime.jsonio import encode_json
from connector_runtime.naming import NameMap
from connector_runtime.page import PagePlanner, TableInfo, TableSettings
from connector_runtime.protocol import decode_answer, validate_response
from connector_runtime.sync import SyncJob, run_sync
from connector_runtime.typed_columns import TypedValues, typed_column
from connector_runtime.types import JSON, LONG, STRING

SYNCED_AT = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


def one_kind(values: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(st.none() | values, min_size=N, max_size=N + 10)


nested = st.recursive(
    st.none() | scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
).filter(lambda value: isinstance(value, dict | list))

one_kind_columns = (
    one_kind(st.booleans())
    | one_kind(st.integers(min_value=-(2**65), max_value=2**65))
    | one_kind(st.floats())
    | one_kind(st.sampled_from(ZONED))
    | one_kind(st.text(max_size=5))
    | one_kind(nested)
)


def typed_columns_of(response) -> dict[str, TypedValues]:
    columns = response.insert["items"].columns
    return {name: values for name, values in columns.items() if isinstance(values, TypedValues)}


@settings(max_examples=200, deadline=None)
@given(one_kind_columns)
def test_a_column_typed_in_the_worker_is_what_the_runtime_makes_of_its_json(column):
    as_rows, as_typed = both_ways(
        answer_of([{"id": i, "v": v} for i, v in enumerate(column)]), typed=True
    )

    assert canonical(list(as_typed.insert["items"])) == canonical(as_rows.insert["items"])
    by_rows, by_typed = plan(as_rows), plan(as_typed)
    assert by_typed.tables[0].table == by_rows.tables[0].table
    assert same_tables(by_typed.tables[0].upserts, by_rows.tables[0].upserts)


def test_the_usual_columns_are_typed_in_the_worker():
    rows = [
        {
            "id": i,
            "name": f"n{i}",
            "score": i / 3,
            "ok": i % 2 == 0,
            "at": "2024-01-01T10:00:00Z" if i else None,
            "tags": [i, {"k": None}],
            "nothing": None,
        }
        for i in range(N)
    ]
    _, as_typed = both_ways(answer_of(rows), typed=True)

    typed = typed_columns_of(as_typed)
    assert set(typed) == set(rows[0])
    kinds = {name: str(values.inferred.logical) for name, values in typed.items()}
    assert kinds == {
        "id": "LONG",
        "name": "STRING",
        "score": "DOUBLE",
        "ok": "BOOLEAN",
        "at": "UTC_DATETIME",
        "tags": "JSON",
        "nothing": "None",
    }
    assert typed["at"][1] == "2024-01-01T10:00:00Z"  # the text sent, not a datetime
    assert typed["tags"][3] == [3, {"k": None}]


@pytest.mark.parametrize(
    "value",
    [
        datetime(2024, 1, 1, tzinfo=UTC),
        date(2024, 1, 1),
        Decimal("1.25"),
        2**70,
        Level.HIGH,
        "2024-01-01",  # a date without a time: the runtime's general path types it
        "2024-01-01T10:00:00",  # naive: the same
        {"deep": float("nan")},
        {"when": datetime(2024, 1, 1, tzinfo=UTC)},
        {"amount": Decimal("1.25")},
        {"big": 2**70},
        {1: "a key that is not text"},
    ],
    ids=repr,
)
def test_what_the_worker_cannot_type_as_the_runtime_would_goes_as_json(value):
    column = [value] * N
    assert typed_column(column) is None
    rows = [{"id": i, "v": value} for i in range(N)]

    as_rows, as_typed = both_ways(answer_of(rows), typed=True)

    assert "v" not in typed_columns_of(as_typed)
    by_rows, by_typed = plan(as_rows), plan(as_typed)
    assert by_typed.tables[0].table == by_rows.tables[0].table
    assert same_tables(by_typed.tables[0].upserts, by_rows.tables[0].upserts)


@pytest.mark.parametrize(
    "value",
    [[(1, "a")], {"id": uuid.UUID(int=7)}, [Colour.RED], [Level.HIGH], {"nan": None}],
    ids=repr,
)
def test_json_the_worker_does_type_reads_as_the_runtime_reads_it(value):
    rows = [{"id": i, "v": value} for i in range(N)]

    as_rows, as_typed = both_ways(answer_of(rows), typed=True)

    assert typed_columns_of(as_typed)["v"].inferred.logical == JSON
    assert list(as_typed.insert["items"]) == as_rows.insert["items"]
    by_rows, by_typed = plan(as_rows), plan(as_typed)
    assert same_tables(by_typed.tables[0].upserts, by_rows.tables[0].upserts)


def test_text_arrow_refuses_goes_as_json_and_is_refused_as_the_rows_would_be():
    rows = [{"id": i, "v": "\ud800" if i == 5 else "text"} for i in range(N)]  # a lone surrogate

    columnar = framed(answer_of(rows), typed=True)

    assert columnar.typed  # the id column; not "v", which Arrow cannot hold
    with pytest.raises(InvalidResponse, match="Unicode") as as_columns:
        decode_answer(columnar)
    with pytest.raises(InvalidResponse, match="Unicode") as as_rows:
        decode_answer(encode_json(answer_of(rows)))
    assert str(as_columns.value) == str(as_rows.value)


def test_a_null_key_in_a_typed_column_names_its_row():
    rows = [{"id": None if i == 9 else i, "v": i} for i in range(N)]
    _, as_typed = both_ways(answer_of(rows), typed=True)
    assert "id" in typed_columns_of(as_typed)

    with pytest.raises(InvalidResponse, match=r"row 9: primary-key column 'id' is null"):
        plan(as_typed)


def test_a_typed_column_widened_by_the_table_takes_the_values_sent():
    rows = [{"id": i, "v": i * 10, "at": ZONED[0]} for i in range(N)]
    as_rows, as_typed = both_ways(answer_of(rows), typed=True)
    assert typed_columns_of(as_typed)["v"].inferred.logical == LONG
    table = TableInfo("items", "items", ("id",), {"id": LONG, "v": STRING, "at": STRING})

    def planned(response):
        planner = PagePlanner("demo", "demo", NameMap("fivetran"), {"items": table})
        return planner.plan(response, sync_id="s", number=2, synced_at=SYNCED_AT)

    by_rows, by_typed = planned(as_rows), planned(as_typed)
    assert by_typed.tables[0].upserts["v"].to_pylist()[:3] == ["0", "10", "20"]
    assert by_typed.tables[0].upserts["at"].to_pylist()[0] == ZONED[0]
    assert same_tables(by_typed.tables[0].upserts, by_rows.tables[0].upserts)


def test_a_hashed_typed_column_hashes_the_values_sent():
    rows = [{"id": i, "email": f"u{i}@example.com", "n": i / 4} for i in range(N)]
    as_rows, as_typed = both_ways(answer_of(rows), typed=True)
    settings = TableSettings(hashed={"items": frozenset({"email", "n"})})

    def planned(response):
        planner = PagePlanner("demo", "demo", NameMap("fivetran"), {}, settings)
        return planner.plan(response, sync_id="s", number=1, synced_at=SYNCED_AT)

    assert same_tables(planned(as_typed).tables[0].upserts, planned(as_rows).tables[0].upserts)


def test_typed_values_behave_as_the_list_of_their_values():
    values = TypedValues("LONG", typed_column([1, None, 3] * 30)[1])
    assert len(values) == 90 and values[1] is None and values[-1] == 3
    assert None in values and 3 in values and 4 not in values
    assert values == [1, None, 3] * 30
    assert TypedValues("", typed_column([None] * 70)[1]).inferred.logical is None


@pytest.mark.parametrize("background", [False, True], ids=["inline", "in-a-worker"])
def test_typing_starts_after_a_long_sync_s_answers_and_never_before(background):
    typing = TypingAhead(background=background)
    for _ in range(TypingAhead.LONG_SYNC_ANSWERS - 1):
        typing.large_answer()
        typing.load_if_due()
    assert typing.typer is None and typing.loading is None  # a short sync never loads Arrow
    typing.large_answer()
    typing.load_if_due()
    if background:  # a worker loads it in a thread, once, answering meanwhile
        loading = typing.loading
        assert loading is not None and loading.name == "load-arrow"
        loading.join(60)
        typing.large_answer()
        typing.load_if_due()
        assert typing.loading is loading
    assert typing.typer is typed_column


def test_a_worker_with_a_memory_limit_never_types(tmp_path):
    (tmp_path / "handler.py").write_text(HANDLER)
    spec = FunctionSpec(str(tmp_path / "handler.py"), None, "demo", 30, memory_mb=512)
    host = FunctionHost(spec)  # the memory is the function's: no Arrow loaded into it

    for _ in range(TypingAhead.LONG_SYNC_ANSWERS * 2):
        kind, _ = host.call({"state": {}})
        host.typing.load_if_due()
        assert kind == COLUMNS
    assert host.typing.typer is None


PAGES = TypingAhead.LONG_SYNC_ANSWERS + 4
HANDLER = f"""
import threading

def handler(request):
    page = request["state"].get("page", 0)
    for thread in threading.enumerate():  # a worker loads Arrow beside its calls: once
        if thread.name == "load-arrow":  # it is loading, the next answer waits for it
            thread.join(60)
    rows = [
        {{"id": page * 1000 + i, "name": f"n{{i}}", "score": i / 8, "ok": i % 3 == 0,
          "seen": "2024-01-01T00:00:0{{}}Z".format(i % 10), "tags": [page, {{"i": i}}]}}
        for i in range({N})
    ]
    return {{"state": {{"page": page + 1}}, "insert": {{"items": rows}},
            "schema": {{"items": {{"primary_key": ["id"]}}}}, "hasMore": page + 1 < {PAGES}}}
"""


@pytest.mark.parametrize("isolation", ["process", "inline"])
def test_a_long_sync_from_a_real_worker_stores_typed_pages_exactly(
    tmp_path, monkeypatch, isolation
):
    (tmp_path / "handler.py").write_text(HANDLER)
    kinds = []
    read = local.answer_of

    def answer_of(kind, payload, spec):
        kinds.append(kind)
        return read(kind, payload, spec)

    monkeypatch.setattr(local, "answer_of", answer_of)
    job = SyncJob(
        "demo",
        "demo",
        f"duckdb:///{tmp_path / 'w.duckdb'}",
        lambda: LocalPythonInvoker(tmp_path / "handler.py", timeout=30, isolation=isolation),
    )

    assert run_sync(job).record.status == "succeeded"

    assert kinds.count(TYPED) == PAGES - TypingAhead.LONG_SYNC_ANSWERS
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        stored = con.execute(
            "SELECT id, name, score, ok, epoch(seen), CAST(tags AS VARCHAR) FROM demo.items"
            " ORDER BY id"
        ).fetchall()
    expected = [
        (p * 1000 + i, f"n{i}", i / 8, i % 3 == 0, 1704067200.0 + i % 10, f'[{p},{{"i":{i}}}]')
        for p in range(PAGES)
        for i in range(N)
    ]
    assert stored == expected


def test_typed_frames_read_back_whole_in_any_order_of_tables():
    first = [{"id": i, "v": i} for i in range(N)]
    second = [{"k": f"k{i}", "when": ZONED[0], "x": [i]} for i in range(N)]
    answer = answer_of(first)
    answer["insert"]["other"] = second

    read = validate_response(decode_answer(framed(answer, typed=True)))

    assert list(read.insert["items"]) == first
    assert list(read.insert["other"]) == second
    assert read.row_count == 2 * N
