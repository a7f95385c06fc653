"""Names a warehouse would refuse (source names the warehouse would refuse or confuse), end to end.

Through the real CLI: case variants of one column, the runtime's own column names in any
case, tables differing only in case, names nothing can hold (empty, NUL). The collision
cases run on every backend (`warehouses.destination_url`: PostgreSQL and MariaDB are
skipped without a server, and fail under CI=true); the rest on DuckDB. Last, hypothesis
properties of `naming.py` alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from warehouses import Warehouse
from warehouses import destination_url as destination_url  # fixtures

from connector_runtime.destination import open_destination
from connector_runtime.naming import HISTORY_COLUMNS, RESERVED_COLUMNS, NameMap, UnusableName, fold

pytestmark = pytest.mark.slow  # hostile names on all four warehouses: about a minute

REPLAY = """
import json, pathlib

def handler(request):
    pages = json.loads((pathlib.Path(__file__).parent / "pages.json").read_text())
    return pages[request["state"].get("page", 0)]
"""


def page(number, insert, *, more=False, keyed=("id",), **extra):
    """A response whose state points at page `number` of the script; every table in
    `insert` gets the key `keyed` (none if empty)."""
    schema = {t: {"primary_key": list(keyed)} for t in insert} if keyed else {}
    return {"state": {"page": number}, "insert": insert, "schema": schema, "hasMore": more, **extra}


class Demo:
    """Connector `demo` replaying `pages.json` into the warehouse at `url`."""

    def __init__(self, root: Path, url: str, run_connector, **options) -> None:
        self.root, self.url, self.run_connector = root, url, run_connector
        self.wh = Warehouse(url)
        (root / "handler.py").write_text(REPLAY)
        connector = {"function": {"local": "handler.py"}, **options}
        document = {"warehouse": url, "connectors": {"demo": connector}}
        (root / "connectors.yaml").write_text(yaml.safe_dump(document))

    def sync(self, *pages) -> object:
        """Write `pages` for the handler, `connector run demo`, and say what it said."""
        (self.root / "pages.json").write_text(json.dumps(list(pages)))
        return self.run_connector("run", "demo", config=self.root / "connectors.yaml")

    def columns(self, table: str) -> list[str]:
        """The table's columns as the warehouse has them, in order."""
        physical = f"demo__{table}"
        if self.wh.backend == "sqlite":
            return [
                r[0] for r in self.wh.query(f"SELECT name FROM pragma_table_info('{physical}')")
            ]
        where, params = (
            ("table_schema = DATABASE() AND table_name = :t", {"t": physical})
            if self.wh.backend == "mariadb"
            else ("table_schema = 'demo' AND table_name = :t", {"t": table})
        )
        rows = self.wh.query(
            f"SELECT column_name FROM information_schema.columns WHERE {where}"
            " ORDER BY ordinal_position",
            params,
        )
        return [r[0] for r in rows]

    def tables(self) -> list[str]:
        names = self.wh.query("SELECT name FROM " + self.wh.runtime("tables"))
        return sorted(n for (n,) in names)

    def names(self) -> dict[tuple[str, str], str]:
        """`connector_runtime.names` of `demo`: (source table, source column) → name."""
        rows = self.wh.query(
            "SELECT source_table, source_column, name FROM "
            + self.wh.runtime("names")
            + " WHERE connector = 'demo'"
        )
        return {(t, c): n for t, c, n in rows}

    def state(self) -> dict:
        (state,) = self.wh.query("SELECT state FROM " + self.wh.runtime("state"))[0]
        return json.loads(state) if isinstance(state, str | bytes) else state

    def alerts(self) -> list[tuple[str, str]]:
        rows = self.wh.query(
            "SELECT kind, message FROM " + self.wh.runtime("alerts") + " ORDER BY created_at"
        )
        return [tuple(r) for r in rows]


@pytest.fixture
def duck(tmp_path, connector):
    """`duck(**options)`: connector `demo` on a DuckDB file."""
    return lambda **options: Demo(
        tmp_path, f"duckdb:///{tmp_path}/warehouse.duckdb", connector, **options
    )


def ok(result) -> None:
    assert result.returncode == 0, result.stderr


# -- collisions on every warehouse -------------------------------------------------------


def test_case_variants_and_system_names_get_stable_suffixes_on_every_warehouse(
    destination_url, tmp_path, connector
):
    demo = Demo(tmp_path, destination_url, connector, naming="source")
    row = {"id": 1, "Name": "a", "name": "b", "_FIVETRAN_SYNCED": "s", "_fivetran_deleted": "d"}
    ok(demo.sync(page(0, {"t": [row], "Orders": [{"id": 1}], "orders": [{"id": 2}]})))

    system = ["_fivetran_synced"]
    suffixed = ["id", "Name", "name_2", "_FIVETRAN_SYNCED_2", "_fivetran_deleted_2"]
    assert demo.columns("t") == suffixed + system
    assert demo.tables() == ["Orders", "orders_2", "t"]
    assert demo.wh.rows("Orders", "id") == [(1,)] and demo.wh.rows("orders_2", "id") == [(2,)]
    assert demo.names() == {
        ("t", ""): "t",
        ("t", "id"): "id",
        ("t", "Name"): "Name",
        ("t", "name"): "name_2",
        ("t", "_FIVETRAN_SYNCED"): "_FIVETRAN_SYNCED_2",
        ("t", "_fivetran_deleted"): "_fivetran_deleted_2",
        ("Orders", ""): "Orders",
        ("Orders", "id"): "id",
        ("orders", ""): "orders_2",
        ("orders", "id"): "id",
    }
    stored = demo.names()

    # the same names again, then `name` alone, then `orders` alone: the same places
    ok(demo.sync(page(0, {"t": [{**row, "id": 2, "Name": "c", "name": "d"}]})))
    ok(demo.sync(page(0, {"t": [{"id": 3, "name": "e"}], "orders": [{"id": 3}]})))
    assert demo.names() == stored
    assert demo.wh.rows("orders_2", "id") == [(2,), (3,)]
    # the runtime's own columns still do their work beside the suffixed ones
    ok(demo.sync(page(0, {}, delete={"t": [{"id": 1}]})))
    assert demo.wh.rows("t", "id, _fivetran_deleted, _fivetran_deleted_2") == [
        (1, True, "d"),
        (2, False, "d"),
        (3, False, None),
    ]
    synced = demo.wh.q("_fivetran_synced")
    assert demo.wh.query(
        f"SELECT count(*) FROM {demo.wh.ref('demo', 't')} WHERE {synced} IS NULL"
    ) == [(0,)]


def test_a_case_variant_first_seen_in_a_later_sync(destination_url, tmp_path, connector):
    demo = Demo(tmp_path, destination_url, connector, naming="source")
    ok(demo.sync(page(0, {"t": [{"id": 1, "Name": "a", "name": "b"}]})))
    ok(demo.sync(page(0, {"t": [{"id": 2, "NAME": "c"}]})))
    ok(demo.sync(page(0, {"t": [{"id": 3, "name": "d", "Name": "e", "NAME": "f"}]})))
    assert demo.names() == {
        ("t", ""): "t",
        ("t", "id"): "id",
        ("t", "Name"): "Name",
        ("t", "name"): "name_2",
        ("t", "NAME"): "NAME_3",
    }
    assert demo.columns("t") == ["id", "Name", "name_2", "_fivetran_synced", "NAME_3"]
    assert demo.wh.rows("t", "id, Name, name_2, NAME_3") == [
        (1, "a", "b", None),
        (2, None, None, "c"),
        (3, "e", "d", "f"),
    ]


def test_a_column_with_nul_is_refused_on_every_warehouse(destination_url, tmp_path, connector):
    """PostgreSQL cannot even store such a name in `connector_runtime.names`: refused
    everywhere, before anything of the page is written."""
    demo = Demo(tmp_path, destination_url, connector, naming="source")
    good = page(1, {"t": [{"id": 1, "v": "kept"}]}, more=True)
    bad = page(2, {"t": [{"id": 2, "v": "lost"}, {"id": 3, "a\x00b": 1}]})
    result = demo.sync(good, bad)
    assert result.returncode != 0
    assert demo.alerts() == [
        (
            "invalid_response",
            "insert: table 't', row 1, column 'a\\x00b': "
            "a column name must not contain NUL (\\x00)",
        )
    ]
    assert demo.state() == {"page": 1}
    assert demo.wh.rows("t", "id, v") == [(1, "kept")]
    assert demo.columns("t") == ["id", "v", "_fivetran_synced"]
    assert set(demo.names()) == {("t", ""), ("t", "id"), ("t", "v")}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("Ä" * 70, id="long"),
        pytest.param("Name ", id="trailing-space"),
        pytest.param("🎉 party", id="beyond-the-bmp"),
    ],
)
def test_names_only_some_warehouses_refuse(destination_url, tmp_path, connector, name):
    demo = Demo(tmp_path, destination_url, connector, naming="source")
    for _ in range(2):  # the second sync finds what the first made
        ok(demo.sync(page(0, {name: [{"id": 1, name: "x"}]})))
    assert demo.tables() == [name]
    assert demo.names()[(name, name)] == name
    with open_destination(destination_url) as destination:  # cut to fit, where it must be
        reference = destination.table_reference("demo", name)
    (row,) = demo.wh.query(f"SELECT * FROM {reference}")
    assert row[:2] == (1, "x")


# -- DuckDB: each reproduction of the issue -----------------------------------------------


def test_name_and_Name_in_one_row(duck):
    demo = duck(naming="source")
    ok(demo.sync(page(0, {"t": [{"Name": "a", "name": "b"}]}, keyed=())))
    assert demo.columns("t")[:2] == ["Name", "name_2"]
    assert demo.wh.rows("t", "Name, name_2", order_by="Name") == [("a", "b")]
    ok(demo.sync(page(0, {"t": [{"name": "c"}]}, keyed=())))
    assert demo.wh.rows("t", "Name, name_2", order_by="name_2") == [("a", "b"), (None, "c")]
    assert demo.names()[("t", "name")] == "name_2"


@pytest.mark.parametrize("naming", ["source", "fivetran"])
def test_the_runtime_columns_in_any_case_get_suffixes(duck, naming):
    sent = ["_FIVETRAN_SYNCED", "_fivetran_deleted", "_Fivetran_Batch", "_fivetran_index"]
    sent += [c.upper() for c in HISTORY_COLUMNS]
    demo = duck(naming=naming)
    row = {name: i for i, name in enumerate(sent)}
    ok(demo.sync(page(0, {"t": [row]}, keyed=())))
    expected = [c + "_2" if naming == "source" else c.lower() + "_2" for c in sent]
    assert demo.columns("t") == [
        *expected,
        "_fivetran_synced",
        "_fivetran_batch",
        "_fivetran_index",
    ]
    assert demo.wh.rows("t", ", ".join(expected), order_by=expected[0]) == [tuple(range(len(sent)))]
    (batch, index) = demo.wh.query("SELECT _fivetran_batch, _fivetran_index FROM demo.t")[0]
    assert batch.endswith(":1") and index == 0
    ok(demo.sync(page(0, {"t": [row]}, keyed=())))  # again: the same columns
    assert demo.columns("t")[: len(sent)] == expected and demo.wh.count("t") == 2
    assert {demo.names()[("t", s)] for s in sent} == set(expected)


def test_the_planners_own_column_names_are_kept_apart(duck):
    """`__row` (a row's position in its page) and `__row_max` are the planner's: a source
    column so named gets a suffix instead of being overwritten, as a key too."""
    demo = duck(naming="source")
    ok(demo.sync(page(0, {"t": [{"__row": 5}, {"__row": 6}]}, keyed=())))
    assert demo.columns("t")[0] == "__row_2"
    assert demo.wh.rows("t", "__row_2", order_by="__row_2") == [(5,), (6,)]
    rows = [{"__row_max": 7, "v": "first"}, {"__row_max": 7, "v": "last"}]
    ok(demo.sync(page(0, {"k": rows}, keyed=("__row_max",))))
    assert demo.wh.rows("k", "__row_max_2, v", order_by="v") == [(7, "last")]


def test_tables_differing_only_in_case(duck):
    demo = duck(naming="source")
    ok(demo.sync(page(0, {"Orders": [{"id": 1}], "orders": [{"id": 2}], "ORDERS": [{"id": 3}]})))
    assert demo.tables() == ["ORDERS_3", "Orders", "orders_2"]
    ok(demo.sync(page(0, {"orders": [{"id": 4}]})))
    assert demo.wh.rows("orders_2", "id") == [(2,), (4,)]
    assert demo.names()[("orders", "")] == "orders_2"


def test_long_names_land_whole(duck):
    name = "Ä" * 200  # 400 bytes: beyond PostgreSQL's 63 and MySQL's 64, none of DuckDB's
    demo = duck(naming="source")
    ok(demo.sync(page(0, {name: [{"id": 1, name: "x", name.lower(): "y"}]})))
    assert demo.tables() == [name]
    assert demo.columns(name)[:3] == ["id", name, name.lower() + "_2"]


INVALID = [
    pytest.param(
        {"insert": {"": [{"id": 1}]}},
        "insert: table '': a table name must not be empty",
        id="empty-table",
    ),
    pytest.param(
        {"insert": {"t": [{"id": 1}, {"id": 2, "": 3}]}},
        "insert: table 't', row 1, column '': a column name must not be empty",
        id="empty-column",
    ),
    pytest.param(
        {"insert": {"t": [{"id": 1, "a\x00": 3}]}},
        "insert: table 't', row 0, column 'a\\x00': a column name must not contain NUL (\\x00)",
        id="nul-column",
    ),
    pytest.param(
        {"insert": {"t\x00": [{"id": 1}]}},
        "insert: table 't\\x00': a table name must not contain NUL (\\x00)",
        id="nul-table",
    ),
    pytest.param(
        {"insert": {}, "delete": {"t": [{"": 1}]}},
        "delete: table 't', row 0, column '': a column name must not be empty",
        id="empty-column-of-delete",
    ),
    pytest.param(
        {"insert": {"t": [{"id": 1}]}, "schema": {"t": {"primary_key": [""]}}},
        "schema: table 't', primary_key, column '': a column name must not be empty",
        id="empty-key-column",
    ),
    pytest.param(
        {
            "insert": {"t": [{"id": 1}]},
            "schema": {"t": {"primary_key": ["id"], "columns": {"\x00": "LONG"}}},
        },
        "schema: table 't', columns, column '\\x00': a column name must not contain NUL (\\x00)",
        id="nul-declared-column",
    ),
    pytest.param(
        {"insert": {"t": [{"id": 1}]}, "softDelete": [""]},
        "softDelete: table '': a table name must not be empty",
        id="empty-soft-delete-table",
    ),
]


@pytest.mark.parametrize(("response", "message"), INVALID)
def test_a_name_nothing_can_hold_is_an_invalid_response(duck, response, message):
    demo = duck(naming="source")
    first = page(1, {"t": [{"id": 0, "v": "kept"}]}, more=True)
    second = {"state": {"page": 2}, "schema": {"t": {"primary_key": ["id"]}}, **response}
    result = demo.sync(first, second)
    assert result.returncode != 0
    assert demo.alerts() == [("invalid_response", message)]
    assert demo.state() == {"page": 1}
    assert demo.tables() == ["t"]
    assert demo.wh.rows("t", "id, v") == [(0, "kept")]
    assert set(demo.names()) == {("t", ""), ("t", "id"), ("t", "v")}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"": 1}, "column '': a column name must not be empty"),
        ({"a\x00b": 1}, "column 'a\\x00b': a column name must not contain NUL (\\x00)"),
    ],
)
def test_fivetran_naming_refuses_them_too(duck, row, message):
    demo = duck()
    result = demo.sync(page(0, {"t": [{"id": 1, **row}]}))
    assert result.returncode != 0
    assert demo.alerts() == [("invalid_response", f"insert: table 't', row 0, {message}")]
    assert demo.wh.query(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'demo'"
    ) == [(0,)]


def test_fivetran_naming_still_names_an_empty_table(duck):
    demo = duck()
    ok(demo.sync(page(0, {"": [{"id": 1}]})))
    assert demo.tables() == ["_"]


# -- naming.py alone ----------------------------------------------------------------------

_CASED = [*RESERVED_COLUMNS, *(c.upper() for c in RESERVED_COLUMNS)]
_SOURCE_NAMES = st.one_of(
    st.text(max_size=8),
    st.text(alphabet="aAbB_\x00İıiIKkσςΣß", max_size=4),
    st.sampled_from([*_CASED, "", "\x00", "Name", "name", "NAME", "name_2", "Name_2"]),
)


def _variants(names: list[str]) -> list[str]:
    """Each name and, after it, its case variants: collisions in every arrival order."""
    return [v for n in names for v in dict.fromkeys([n, n.upper(), n.lower(), n.swapcase()])]


def _expected_refusal(source: str, naming: str, *, table: bool) -> bool:
    if table and naming == "fivetran" and source == "":
        return False
    return source == "" or "\x00" in source


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_SOURCE_NAMES, max_size=12).map(_variants),
    st.sampled_from(["source", "fivetran"]),
    st.randoms(use_true_random=False),
)
def test_mapped_names_are_distinct_unreserved_and_stable(sources, naming, random):
    names = NameMap(naming)
    given_columns, given_tables = {}, {}
    for source in sources:
        for table, lookup, given_ in (
            (False, lambda s: names.column("t", s), given_columns),
            (True, names.table, given_tables),
        ):
            try:
                given_[source] = lookup(source)
            except UnusableName:
                assert _expected_refusal(source, naming, table=table)
            else:
                assert not _expected_refusal(source, naming, table=table)

    for given_ in (given_columns, given_tables):
        mapped = list(given_.values())
        # distinct to every warehouse: casefolded, lowercased, ASCII-lowercased
        assert len({fold(n) for n in mapped}) == len(mapped)
        assert len({n.lower() for n in mapped}) == len(mapped)
        assert len({n.encode().lower() for n in mapped}) == len(mapped)
        assert all(n and "\x00" not in n for n in mapped)
    reserved = {c.lower() for c in RESERVED_COLUMNS}
    assert not {n.lower() for n in given_columns.values()} & reserved
    if naming == "source":  # kept as sent unless taken
        assert all(n == s or n.startswith(s + "_") for s, n in given_columns.items())

    # replayed from what was stored, in any order: the same answers, nothing new
    stored = list(names.added)
    random.shuffle(stored)
    replayed = NameMap.load(naming, stored)
    shuffled = list(given_columns)
    random.shuffle(shuffled)
    assert {s: replayed.column("t", s) for s in shuffled} == given_columns
    assert {s: replayed.table(s) for s in given_tables} == given_tables
    assert replayed.added == []
    # and a name first seen after the replay still collides with the stored ones
    fresh = replayed.column("t", "Name")
    assert fresh == given_columns.get("Name", fresh)
    assert fold(fresh) not in {fold(n) for s, n in given_columns.items() if s != "Name"}
