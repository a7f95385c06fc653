"""The fast paths of typing a page and writing it to DuckDB agree with the general ones.

`infer_array` types a column and builds its array in one pass; the planner uses that
array only when the column keeps the inferred type. DuckDB gets JSON columns as Arrow's
JSON type (stored without parsing again) and skips the keyed delete for a page whose
integer keys are all above the table's largest. Each is checked against what the plain
path writes, on real DuckDB files.
"""

import json
import math
import re

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sync_duckdb import page, query, sync  # the same scripted syncs into DuckDB

from connector_runtime import types as T
from connector_runtime.batches import _JSON, column_array, infer_array, json_array, json_in_bulk
from connector_runtime.types import infer_column

ZONED = [
    "2024-01-01T10:00:00Z",
    "2024-01-01 10:00:00+05:30",
    "2024-01-01T10:00:00-0800",
    "2024-01-01T10:00+05",
    "2024-01-01T10:00:00.123456Z",
    "2024-01-01T10:00:00.1234567Z",  # a 7th digit: Arrow refuses it, the general path cuts it
    "2024-01-01t10:00:00z",  # lower case: Arrow refuses it
    "2024-02-30T10:00:00Z",  # no such day
    "2024-01-01T10:00:00",  # naive among zoned: the column is still UTC_DATETIME
    "2024-01-01",
    "customer 7",
]
scalars = (
    st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=6)
    | st.sampled_from(ZONED)
)
json_values = st.recursive(
    st.none() | scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


def one_kind(values: st.SearchStrategy) -> st.SearchStrategy:
    """Columns of one kind of value with some nulls, long enough for Arrow's text path."""
    return st.lists(st.none() | values, min_size=0, max_size=80)


columns = (
    one_kind(st.booleans())
    | one_kind(st.integers(min_value=-(2**64), max_value=2**64))
    | one_kind(st.floats())
    | one_kind(st.sampled_from(ZONED))
    | one_kind(st.text(max_size=5))
    | one_kind(st.lists(scalars, max_size=2) | st.dictionaries(st.text(max_size=2), scalars))
    | st.lists(json_values, max_size=80)
)


def same_values(a: pa.Array, b: pa.Array) -> bool:
    """Equal arrays, NaN equal to NaN (Arrow's `equals` says NaN differs from itself)."""
    if a.type != b.type or len(a) != len(b):
        return False
    for x, y in zip(a.to_pylist(), b.to_pylist(), strict=True):
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        if x != y:
            return False
    return True


@settings(max_examples=300, deadline=None)
@given(columns)
def test_infer_array_types_as_infer_column_and_converts_as_column_array(values):
    inferred = infer_array(values)
    assert inferred.logical == infer_column(values)
    if inferred.array is not None:
        assert same_values(inferred.array, column_array(values, inferred.logical))


def test_the_usual_columns_come_with_their_arrays():
    """The bench's row shape: every column typed and converted in the one pass."""
    rows = 100
    page = {
        "id": list(range(rows)),
        "name": [f"customer {i}" for i in range(rows)],
        "amount": [i * 0.25 for i in range(rows)],
        "active": [i % 2 == 0 for i in range(rows)],
        "updated_at": [f"2026-01-{i % 28 + 1:02d}T10:00:00Z" for i in range(rows)],
        "tags": [["a", str(i)] for i in range(rows)],
        "attrs": [{"tier": i % 3} for i in range(rows)],
    }
    for values in page.values():
        assert infer_array(values).array is not None


@pytest.mark.parametrize(
    ("extra", "logical", "in_one_pass"),
    [
        pytest.param("2024-01-01T10:00:00+05:30", T.UTC_DATETIME, True, id="offsets"),
        pytest.param("2024-01-01T10:00:00.1234567Z", T.UTC_DATETIME, False, id="7th-digit"),
        pytest.param("2024-01-01T10:00:00", T.UTC_DATETIME, False, id="naive-among-zoned"),
        pytest.param("2024-01-01T10:00:00z", T.STRING, False, id="lower-case-z-is-text"),
    ],
)
def test_zoned_text_is_parsed_in_the_one_pass_or_by_the_general_path(extra, logical, in_one_pass):
    values = [f"2024-01-{d % 28 + 1:02d}T10:00:00Z" for d in range(99)] + [extra, None]
    inferred = infer_array(values)
    assert inferred.logical == logical == infer_column(values)
    assert (inferred.array is not None) == in_one_pass
    if in_one_pass:
        assert inferred.array.equals(column_array(values, T.UTC_DATETIME))


# -- DuckDB: JSON columns as Arrow's JSON type, and the skipped delete ------------------


def synced(tmp_path, pages):
    outcome, _ = sync(tmp_path, pages)
    assert outcome.record.status == "succeeded", outcome.record.error


@settings(max_examples=300, deadline=None)
@given(st.lists(st.none() | st.text(max_size=12) | st.sampled_from(ZONED), max_size=20))
def test_the_cheap_look_for_dates_misses_none(values):
    dated = any(v is not None and re.match(r"\d{4}-\d{2}-\d{2}", v, re.ASCII) for v in values)
    for kind in (pa.string(), pa.large_string()):
        assert T.might_be_temporal(pa.array(values, kind)) == bool(dated)
    assert not T.has_dash_fifth(pa.array(["é123", "customer 7", None]))  # a byte, not a letter
    assert T.has_dash_fifth(pa.array(["é12-"]))  # "é" is two bytes: its fifth byte is "-"


# the mark the bulk path cuts at, in strings that nested values can hold
marked_text = st.text(max_size=4) | st.sampled_from(["\x00", ',"\x00",', "\\u0000"])
json_with_marks = st.recursive(
    st.none() | scalars | marked_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(marked_text, inner, max_size=3),
    max_leaves=8,
)


def one_by_one(values: list) -> list:
    return [None if v is None else _JSON.to_json(v).decode() for v in values]


@settings(max_examples=300, deadline=None)
@given(st.lists(json_with_marks, max_size=40))
def test_a_json_column_written_in_bulk_is_each_value_s_own_text(values):
    assert json_array(values).to_pylist() == one_by_one(values)


def test_a_json_column_falls_back_to_value_by_value_where_bulk_cannot_write_it():
    held_mark = [["a", "\x00", "b"], {"k": 1}]  # the mark between two items of a value
    big = [{"n": 2**70}, [1]]  # beyond what orjson writes
    assert json_in_bulk(held_mark) is None and json_in_bulk(big) is None
    assert json_in_bulk([{"k": ["\x00"]}, None]) is not None  # the mark alone is no cut

    for values in (held_mark, big, [], [None, None]):
        assert json_array(values).to_pylist() == one_by_one(values)


def test_json_values_are_stored_as_json_exactly(tmp_path):
    values = [
        {"a": [1, 2.5, None], "é": "ü\u2028", "nested": {"deep": [[[]]]}},
        [2**70, -(2**65), 1e300],
        {"nan": float("nan"), "inf": float("-inf")},
        [],
        {},
    ]
    synced(tmp_path, [page([{"id": i, "doc": v} for i, v in enumerate(values)], {"p": 1}, False)])
    stored = query(tmp_path, "SELECT CAST(doc AS VARCHAR), json_valid(doc) FROM demo.t ORDER BY id")
    assert [valid for _, valid in stored] == [True] * len(values)
    assert stored[0][0] == '{"a":[1,2.5,null],"é":"ü\u2028","nested":{"deep":[[[]]]}}'
    assert json.loads(stored[1][0]) == [2**70, -(2**65), 1e300]  # integers exact
    assert stored[2][0] == '{"nan":null,"inf":null}'
    assert [text for text, _ in stored[3:]] == ["[]", "{}"]
    assert query(
        tmp_path,
        "SELECT data_type FROM information_schema.columns"
        " WHERE table_name = 't' AND column_name = 'doc'",
    ) == [("JSON",)]


def test_ascending_keys_skip_the_delete_and_other_keys_still_replace(tmp_path):
    """Pages of new, larger keys are appended without a keyed delete; a page with any
    key not above the largest (older keys, a key below, equal to the largest) replaces
    those rows: one row per key, the last values."""
    row = lambda i, v: {"id": i, "v": v}  # noqa: E731
    pages = [
        page([row(i, "a") for i in range(1, 6)], {"p": 1}),  # creates the table
        page([row(i, "b") for i in range(6, 11)], {"p": 2}),  # all above 5: no delete
        page([row(10, "c"), row(20, "c")], {"p": 3}),  # 10 is the largest: replaced
        page([row(3, "d"), row(30, "d")], {"p": 4}),  # 3 is old: replaced
        page([row(25, "e"), row(25, "f")], {"p": 5}),  # below 30, new; twice: last wins
        page([row(-5, "g"), row(31, "g")], {"p": 6}, more=False),  # a new smaller key
    ]
    synced(tmp_path, pages)
    expected = {i: "a" for i in range(1, 6)} | {i: "b" for i in range(6, 11)}
    expected |= {10: "c", 20: "c", 3: "d", 30: "d", 25: "f", -5: "g", 31: "g"}
    assert query(tmp_path, "SELECT id, v FROM demo.t ORDER BY id") == sorted(expected.items())


def test_a_second_sync_of_the_same_keys_replaces_them(tmp_path):
    """A new sync (a fresh connection) of keys the table holds: replaced, not doubled."""
    first = [page([{"id": i, "v": 1} for i in range(100)], {"p": 1}, more=False)]
    synced(tmp_path, first)
    again = [page([{"id": i, "v": 2} for i in range(50, 150)], {"p": 2}, more=False)]
    synced(tmp_path, again)
    stored = query(tmp_path, "SELECT id, v FROM demo.t ORDER BY id")
    assert stored == [(i, 1 if i < 50 else 2) for i in range(150)]
