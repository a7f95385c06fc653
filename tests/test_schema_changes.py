"""The schema change log where an operator reads it: `connector run`'s summary (in this
process and through `connector serve`), `connector show` (text and `--json`), the API and
the dashboard's connector page. What each warehouse stores is the destination contract
suite's (`test_destination_contract.py`); here a real DuckDB file behind the real CLI.

The function changes its tables' shape on its first syncs (the state counts them):
1. creates `orders` (id, amount: integers);
2. adds `orders.note`, widens `orders.amount` to a float, creates `customers`;
3. adds `orders.paid`, a boolean;
4. and after: the same shape, nothing to log.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from conftest import Project
from test_dashboard import Served, watched_page
from test_dashboard import browser as browser  # fixture

from connector_runtime.control import schema_change_text
from connector_runtime.destination import schema_changes_of
from connector_runtime.page import PageWrite, TableWrite
from connector_runtime.types import DOUBLE, LONG, STRING

HANDLER = """
def handler(request):
    n = request["state"].get("n", 0) + 1
    orders = {
        1: {"id": 1, "amount": 5},
        2: {"id": 2, "amount": 2.5, "note": "late"},
        3: {"id": 3, "amount": 1.5, "paid": True},
    }.get(n, {"id": n, "amount": 0.5, "note": "again", "paid": False})
    insert = {"orders": [orders]}
    if n == 2:
        insert["customers"] = [{"id": 7, "name": "Ada"}]
    return {
        "state": {"n": n},
        "insert": insert,
        "schema": {table: {"primary_key": ["id"]} for table in insert},
    }
"""
FIRST = ["orders created"]
SECOND = [
    "orders.note added as VARCHAR",
    "orders.amount widened BIGINT → DOUBLE",
    "customers created",
]
THIRD = ["orders.paid added as BOOLEAN"]


def change(kind: str, column: str | None = None, types=(None, None), sql=(None, None)) -> dict:
    return {
        "table": "orders",
        "column": column,
        "change": kind,
        "from_type": types[0],
        "to_type": types[1],
        "from_sql_type": sql[0],
        "to_sql_type": sql[1],
    }


@pytest.mark.parametrize(
    ("document", "text"),
    [
        pytest.param(change("table_created"), "orders created", id="created"),
        pytest.param(change("history_enabled"), "orders keeps history from now on", id="history"),
        pytest.param(
            change("column_added", "note", (None, "STRING"), (None, "VARCHAR")),
            "orders.note added as VARCHAR",
            id="added",
        ),
        pytest.param(
            change("column_widened", "amount", ("LONG", "DOUBLE"), ("BIGINT", "DOUBLE")),
            "orders.amount widened BIGINT → DOUBLE",
            id="widened",
        ),
        pytest.param(
            change("column_widened", "amount", ("LONG", "DOUBLE"), ("bigint", "double precision")),
            "orders.amount widened BIGINT → DOUBLE PRECISION",
            id="postgres-words-in-capitals",
        ),
        pytest.param(
            change("column_widened", "n", ("DECIMAL(38,0)", "STRING"), ("TEXT", "TEXT")),
            "orders.n widened DECIMAL(38,0) → STRING",
            id="sqlite-same-storage-says-the-logical-types",
        ),
        pytest.param(
            change("column_added", "n", (None, "LONG")),
            "orders.n added as LONG",
            id="no-warehouse-words",
        ),
    ],
)
def test_schema_change_text(document, text):
    assert schema_change_text(document) == text


def test_a_page_turning_history_on_logs_it_before_its_columns():
    """`history_enabled`: the table existed without history and now has it (design §14)."""
    before = SimpleNamespace(name="orders", columns={"id": LONG, "v": LONG}, history=False)
    after = SimpleNamespace(
        name="orders", columns={"id": LONG, "v": DOUBLE, "w": STRING}, history=True
    )
    same = SimpleNamespace(name="kept", columns={"id": LONG}, history=True)
    at = datetime(2026, 12, 1, 10, tzinfo=UTC)
    page = PageWrite(
        "demo",
        "demo",
        "s1",
        1,
        at,
        {},
        [TableWrite(after, before), TableWrite(same, same)],
        [],
    )
    changes = schema_changes_of(page, at)
    assert [(c.table, c.column, c.change, c.from_type, c.to_type) for c in changes] == [
        ("orders", None, "history_enabled", None, None),
        ("orders", "w", "column_added", None, "STRING"),
        ("orders", "v", "column_widened", "LONG", "DOUBLE"),
    ]
    assert [c.changed_at for c in changes] == [at + timedelta(microseconds=i) for i in range(3)]


def run_lines(result) -> list[str]:
    """The summary's lines on stderr, stripped."""
    return [line.strip() for line in result.stderr.splitlines() if line.strip()]


def test_run_prints_each_change_and_show_lists_them_newest_first(project):
    made = project(HANDLER)
    first = made.run()
    assert first.returncode == 0, first.stderr
    assert [line for line in run_lines(first) if line in FIRST + SECOND + THIRD] == FIRST

    second = made.connector("run", "demo", "--json")
    assert second.returncode == 0, second.stderr
    assert [line for line in run_lines(second) if line in FIRST + SECOND + THIRD] == SECOND
    document = json.loads(second.stdout)
    assert [(c["table"], c["column"], c["change"]) for c in document["schema_changes"]] == [
        ("orders", "note", "column_added"),
        ("orders", "amount", "column_widened"),
        ("customers", None, "table_created"),
    ]

    for _ in range(2):
        later = made.run()
        assert later.returncode == 0, later.stderr
    last_lines = " ".join(run_lines(later))
    assert "created" not in last_lines and "added" not in last_lines, later.stderr

    shown = made.connector("show", "demo")
    assert shown.returncode == 0, shown.stderr
    listed = [line.strip() for line in shown.stdout.splitlines()]
    start = listed.index("schema changes, newest first:")
    texts = [line.split(" UTC  ", 1)[1] for line in listed[start + 1 : start + 6]]
    assert texts == THIRD + list(reversed(SECOND)) + FIRST, shown.stdout

    as_json = made.connector("show", "demo", "--json")
    assert as_json.returncode == 0, as_json.stderr
    changes = json.loads(as_json.stdout)["schema_changes"]
    syncs = [s["sync_id"] for s in made.syncs()]
    assert [(c["sync_id"], schema_change_text(c)) for c in changes] == [
        (syncs[2], THIRD[0]),
        *((syncs[1], text) for text in reversed(SECOND)),
        (syncs[0], FIRST[0]),
    ]
    widened = changes[2]
    assert (widened["from_type"], widened["to_type"]) == ("LONG", "DOUBLE")
    assert (widened["from_sql_type"], widened["to_sql_type"]) == ("BIGINT", "DOUBLE")
    assert widened["changed_at"].endswith("Z")
    stored = made.query(
        'SELECT "table", "column", change, from_type, to_type'
        " FROM connector_runtime.schema_changes WHERE connector = 'demo' ORDER BY changed_at"
    )
    assert stored[1:3] == [
        ("orders", "note", "column_added", None, "STRING"),
        ("orders", "amount", "column_widened", "LONG", "DOUBLE"),
    ]


MANY_TABLES = """
def handler(request):
    tables = {f"t{i:02d}": [{"id": 1}] for i in range(23)}
    return {"state": {}, "insert": tables, "schema": {t: {"primary_key": ["id"]} for t in tables}}
"""


def test_a_sync_with_many_changes_prints_twenty_and_says_where_the_rest_are(project):
    made = project(MANY_TABLES)
    done = made.run()
    assert done.returncode == 0, done.stderr
    created = [line for line in run_lines(done) if line.endswith(" created")]
    assert created == [f"t{i:02d} created" for i in range(20)], done.stderr
    assert done.said("… and 3 more schema changes, all in connector_runtime.schema_changes")
    shown = made.connector("show", "demo")
    assert shown.printed("older ones: connector_runtime.schema_changes"), shown.stdout


@pytest.fixture(scope="module")
def serving(tmp_path_factory) -> Iterator[tuple[Project, Served, list[str]]]:
    """`connector serve` over a warehouse where two syncs (run before it started) changed
    the tables; the third runs through it, from `connector run`."""
    made = Project(tmp_path_factory.mktemp("schema_changes"), "demo")
    made.write_handler(textwrap.dedent(HANDLER))
    made.write_config()
    for _ in range(2):
        assert made.run().returncode == 0
    served = Served.start(made.root, str(made.config))
    try:
        through_serve = made.run()  # `connector run` follows the sync that serve runs
        assert through_serve.returncode == 0, through_serve.stderr
        assert through_serve.said("connector serve (pid"), through_serve.stderr
        yield made, served, run_lines(through_serve)
    finally:
        served.stop()


def test_the_api_gives_a_connector_its_changes_and_each_sync_its_own(serving):
    made, served, summary = serving
    assert [line for line in summary if line in FIRST + SECOND + THIRD] == THIRD
    newest_first = THIRD + list(reversed(SECOND)) + FIRST

    connector = served.api("GET", "/api/connectors/demo")
    assert [schema_change_text(c) for c in connector["schema_changes"]] == newest_first
    page = served.api("GET", "/api/connectors/demo/schema_changes?limit=2")["schema_changes"]
    assert [schema_change_text(c) for c in page] == newest_first[:2]
    older = served.api(
        "GET", f"/api/connectors/demo/schema_changes?before={page[-1]['changed_at']}"
    )["schema_changes"]
    assert [schema_change_text(c) for c in older] == newest_first[2:]

    history = served.api("GET", "/api/connectors/demo/syncs")["syncs"]
    third, second, first = (s["sync_id"] for s in history)
    # a sync from before serve started is read from the warehouse; the latest one is what
    # serve kept of it: both list their changes in the order applied
    for sync_id, expected in ((first, FIRST), (second, SECOND), (third, THIRD)):
        document = served.api("GET", f"/api/syncs/{sync_id}")
        assert [schema_change_text(c) for c in document["schema_changes"]] == expected


def test_the_dashboard_lists_the_changes_on_the_connector_page(browser, serving):
    from playwright.sync_api import expect  # installed: the browser fixture skips otherwise

    _, served, _ = serving
    with watched_page(browser, served, "/connectors/demo") as page:
        rows = page.locator("table.schema-changes tbody tr")
        expect(rows).to_have_count(5)
        expect(rows.first.locator('[data-label="Change"]')).to_have_text(THIRD[0])
        expect(rows.nth(2).locator('[data-label="Change"]')).to_have_text(SECOND[1])
        expect(rows.first.locator("time")).to_have_attribute("title", re.compile(r" UTC$"))
