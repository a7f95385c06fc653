"""History mode's pure parts (design §14): the hash of a version's values, reading stored
values back the way the planner types a page, and what the planner decides for a history
table. The warehouses themselves are in the contract suite and test_history_property.py.
"""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, date, datetime
from decimal import Decimal

import pyarrow as pa
import pytest

from connector_runtime.batches import column_array
from connector_runtime.config import load_config
from connector_runtime.errors import ConfigConflict
from connector_runtime.history import HASH, canonical_text, row_hashes, stored_array
from connector_runtime.jobs import build_job
from connector_runtime.naming import NameMap
from connector_runtime.page import PagePlanner, TableInfo, TableSettings
from connector_runtime.protocol import parse_response
from connector_runtime.types import LONG, STRING, LogicalType

# -- the canonical text of a value --------------------------------------------------------

CANONICAL = [
    # JSON values as a function sends them, their logical type, the text hashed
    pytest.param([5, -3], "LONG", ["5", "-3"], id="long"),
    pytest.param([5, 5.0, 2.5, 1e20], "DOUBLE", ["5", "5", "2.5", "1e+20"], id="double"),
    pytest.param(["5.00", "0.10", "500"], "DECIMAL(18,2)", ["5", "0.1", "500"], id="decimal"),
    pytest.param([True, False], "BOOLEAN", ["true", "false"], id="boolean"),
    pytest.param(["2024-01-02"], "NAIVE_DATE", ["2024-01-02T00:00:00.000000"], id="date"),
    pytest.param(
        ["2024-01-02T03:04:05.5"], "NAIVE_DATETIME", ["2024-01-02T03:04:05.500000"], id="datetime"
    ),
    pytest.param(
        ["2024-01-02T05:04:05+02:00", "2024-01-02T03:04:05"],
        "UTC_DATETIME",
        ["2024-01-02T03:04:05.000000"] * 2,
        id="utc, offsets converted, naive read as UTC",
    ),
    pytest.param(
        [{"b": 1, "a": [1, None]}, 2**70, "x"],
        "JSON",
        ['{"a":[1,null],"b":1}', "1180591620717411303424", '"x"'],
        id="json, keys sorted, big integers exact",
    ),
    pytest.param(["a b", ""], "STRING", ["a b", ""], id="string"),
]


@pytest.mark.parametrize(("values", "logical", "texts"), CANONICAL)
def test_canonical_text(values, logical, texts):
    typed = column_array([*values, None], LogicalType.parse(logical))
    assert canonical_text(typed, LogicalType.parse(logical)).to_pylist() == [*texts, None]


def test_one_number_whatever_the_type_it_was_stored_under():
    """5 as LONG, DOUBLE or DECIMAL(18,2) is one value: a widening changes no hash."""
    texts = {
        kind: canonical_text(column_array([5], LogicalType.parse(kind)), LogicalType.parse(kind))
        for kind in ("LONG", "DOUBLE", "DECIMAL(18,2)", "DECIMAL(38,0)")
    }
    assert {t.to_pylist()[0] for t in texts.values()} == {"5"}


# -- the hash of a row --------------------------------------------------------------------


def hashes(rows: list[dict], types: dict[str, LogicalType]) -> list[int]:
    columns = {
        c: column_array([r.get(c) for r in rows], types[c])
        for c in types
        if any(c in r for r in rows)
    }
    return row_hashes(pa.table(columns), types).to_pylist()


def test_a_hash_ignores_column_order_and_null_or_absent_columns():
    types = {"id": LONG, "a": STRING, "b": STRING}
    [one, same_reordered, with_null] = hashes(
        [{"id": 1, "a": "x"}, {"a": "x", "id": 1}, {"id": 1, "a": "x", "b": None}], types
    )
    assert one == same_reordered == with_null
    assert hashes([{"id": 1, "a": "x"}], {"id": LONG, "a": STRING}) == [one]  # no column b


def test_a_hash_tells_values_apart_however_they_split():
    types = {"id": LONG, "a": STRING, "b": STRING}
    rows = [
        {"id": 1, "a": "x"},
        {"id": 1, "a": "y"},
        {"id": 1, "b": "x"},  # the same value in another column
        {"id": 1, "a": "ab", "b": "c"},
        {"id": 1, "a": "a", "b": "bc"},
        {"id": 1, "a": "1:b"},  # looks like the next piece's prefix
        {"id": 1, "a": ""},  # empty is a value; null is not
        {"id": 1},
    ]
    found = hashes(rows, types)
    assert len(set(found)) == len(rows)
    assert all(-(2**63) <= h < 2**63 for h in found)


# -- values read back from a warehouse ----------------------------------------------------

READ_BACK = [
    # as the page sent it, as a driver returns it, the logical type
    pytest.param(True, 1, "BOOLEAN", id="boolean as an integer (SQLite, MySQL)"),
    pytest.param("12.50", Decimal("12.50"), "DECIMAL(18,2)", id="decimal"),
    pytest.param("12.50", "12.50", "DECIMAL(18,2)", id="decimal as text (SQLite)"),
    pytest.param(0.25, 0.25, "DOUBLE", id="double"),
    pytest.param("2024-01-02", date(2024, 1, 2), "NAIVE_DATE", id="date"),
    pytest.param(
        "2024-01-02T03:04:05.5",
        datetime(2024, 1, 2, 3, 4, 5, 500000),
        "NAIVE_DATETIME",
        id="datetime",
    ),
    pytest.param(
        "2024-01-02T05:04:05+02:00",
        datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        "UTC_DATETIME",
        id="utc, zoned (PostgreSQL, DuckDB)",
    ),
    pytest.param(
        "2024-01-02T05:04:05+02:00",
        datetime(2024, 1, 2, 3, 4, 5),
        "UTC_DATETIME",
        id="utc, naive in UTC (MySQL)",
    ),
    pytest.param(
        "2024-01-02T05:04:05+02:00",
        "2024-01-02T03:04:05.000000Z",
        "UTC_DATETIME",
        id="utc as text (SQLite)",
    ),
    pytest.param(
        {"b": 1, "a": [1, None]},
        '{"a": [1, null], "b": 1}',
        "JSON",
        id="json as jsonb writes it",
    ),
    pytest.param("x", '"x"', "JSON", id="a json string"),
    pytest.param(2**70, 2**70, "DECIMAL(38,0)", id="big integer"),
]


@pytest.mark.parametrize(("sent", "stored", "logical"), READ_BACK)
def test_stored_values_hash_as_the_page_did(sent, stored, logical):
    kind = LogicalType.parse(logical)
    from_page = canonical_text(column_array([sent], kind), kind).to_pylist()
    assert canonical_text(stored_array([stored], kind), kind).to_pylist() == from_page


# -- the planner ---------------------------------------------------------------------------


def planner(catalog=None, history=("t",)) -> PagePlanner:
    settings = TableSettings(history=frozenset(history))
    return PagePlanner("demo", "demo", NameMap("fivetran"), dict(catalog or {}), settings)


def plan(planner: PagePlanner, answer: dict):
    response = parse_response(json.dumps({"state": {}, **answer}).encode())
    return planner.plan(response, sync_id="s", number=1, synced_at=datetime.now(UTC))


KEYED = {"schema": {"t": {"primary_key": ["id"]}}}


def test_a_history_table_gets_each_rows_hash_and_no_deleted_column():
    page = plan(
        planner(),
        {"insert": {"t": [{"id": 1, "v": "a"}, {"id": 1, "v": "b"}]}, "delete": {"t": [{"id": 2}]}}
        | KEYED,
    )
    [write] = page.tables
    assert write.table.history and not write.table.deleted_column
    assert write.upserts.column_names == ["__row", "id", "v", HASH]
    assert write.upserts.num_rows == 1  # the last of a key wins, as always
    assert (
        write.upserts[HASH].to_pylist()
        == row_hashes(write.upserts, write.table.columns).to_pylist()
    )


def test_turning_history_on_keeps_the_table_and_drops_its_deleted_flag():
    before = TableInfo("t", "t", ("id",), {"id": LONG}, deleted_column=True)
    [write] = plan(planner({"t": before}), {"insert": {"t": [{"id": 1}]}} | KEYED).tables
    assert write.history_enabled
    assert (write.table.history, write.table.deleted_column) == (True, False)
    assert write.previous == before


def test_history_cannot_be_turned_off():
    history = TableInfo("t", "t", ("id",), {"id": LONG}, history=True)
    with pytest.raises(ConfigConflict, match="history mode was turned off.*re-sync"):
        plan(planner({"t": history}, history=()), {"insert": {"u": [{"x": 1}]}})
    plan(planner({"t": history}, history=("t",)), {"insert": {"u": [{"x": 1}]}})  # still on: fine


def test_history_needs_a_primary_key():
    with pytest.raises(ConfigConflict) as refused:
        plan(planner(), {"insert": {"t": [{"x": 1}]}})
    assert refused.value.kind == "config_error"
    assert "history mode keeps the versions of rows by their primary key" in str(refused.value)


def test_the_catalog_keeps_history():
    table = TableInfo("t", "t", ("id",), {"id": LONG}, history=True)
    stored = table.stored()
    assert stored["history"] is True
    assert TableInfo.from_stored("t", "t", **stored) == table
    older = {k: v for k, v in stored.items() if k != "history"}  # a catalog from before
    assert not TableInfo.from_stored("t", "t", **older).history


def test_history_in_the_config_reaches_the_planner_by_warehouse_name(tmp_path):
    (tmp_path / "handler.py").write_text("def handler(request):\n    return {'state': {}}\n")
    (tmp_path / "connectors.yaml").write_text(
        textwrap.dedent(
            """\
            connectors:
              demo:
                function: {local: handler.py}
                tables:
                  CustomerPlans: {history: true}
                  orders: {history: false}
            """
        )
    )
    job = build_job(load_config(tmp_path / "connectors.yaml"), "demo")
    assert job.settings.history == frozenset({"customer_plans"})
