"""Types and names end to end through `connector run` (DESIGN.md §4-§5)."""

import json
from datetime import UTC, datetime
from decimal import Decimal

REPLAY = """
import json, pathlib
PAGES = json.loads((pathlib.Path(__file__).parent / "pages.json").read_text())
def handler(request):
    return PAGES[request["state"].get("page", 0)]
"""


def replaying(project, pages, **options):
    demo = project(REPLAY, **options)
    (demo.root / "pages.json").write_text(json.dumps(pages))
    return demo


def page(number, rows, *, more=True, schema=None):
    return {
        "state": {"page": number},
        "insert": {"t": rows},
        "schema": schema or {"t": {"primary_key": ["id"]}},
        "hasMore": more,
    }


def column_types(demo):
    return dict(
        demo.query(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'demo' AND table_name = 't'"
        )
    )


def test_int_float_string_over_three_pages_ends_varchar_with_every_value(project):
    demo = replaying(
        project,
        [
            page(1, [{"id": 1, "v": 7}]),
            page(2, [{"id": 2, "v": 2.5}]),
            page(3, [{"id": 3, "v": "n/a"}], more=False),
        ],
    )
    assert demo.run().returncode == 0
    assert column_types(demo)["v"] == "VARCHAR"
    assert demo.query("SELECT id, v FROM demo.t ORDER BY id") == [
        (1, "7.0"),
        (2, "2.5"),
        (3, "n/a"),
    ]


def test_offsets_land_in_timestamptz_as_the_same_instants(project):
    rows = [
        {"id": 1, "at": "2024-06-01T14:30:00+02:00"},
        {"id": 2, "at": "2024-06-01T12:30:00Z"},
        {"id": 3, "at": "2024-06-01T07:30:00-05:00"},
    ]
    demo = replaying(project, [page(1, rows, more=False)])
    assert demo.run().returncode == 0
    assert column_types(demo)["at"] == "TIMESTAMP WITH TIME ZONE"
    instants = demo.query('SELECT DISTINCT epoch_us("at") FROM demo.t')
    assert instants == [(int(datetime(2024, 6, 1, 12, 30, tzinfo=UTC).timestamp() * 1_000_000),)]


def test_declared_decimal_keeps_cents_exactly(project):
    schema = {"t": {"primary_key": ["id"], "columns": {"amount": "DECIMAL(18,2)"}}}
    rows = [
        {"id": 1, "amount": 0.1},
        {"id": 2, "amount": 0.2},
        {"id": 3, "amount": "9999999999999999.99"},
    ]
    demo = replaying(project, [page(1, rows, more=False, schema=schema)])
    assert demo.run().returncode == 0
    assert column_types(demo)["amount"] == "DECIMAL(18,2)"
    assert demo.query("SELECT sum(amount) FROM demo.t WHERE id < 3") == [(Decimal("0.30"),)]
    assert demo.query("SELECT amount FROM demo.t WHERE id = 3") == [
        (Decimal("9999999999999999.99"),)
    ]


def test_collisions_get_stable_suffixes_across_syncs(project):
    demo = replaying(project, [page(0, [{"id": 1, "Email": "a", "email": "b"}], more=False)])
    assert demo.run().returncode == 0
    (demo.root / "pages.json").write_text(
        json.dumps([page(0, [{"id": 2, "email": "c", "EMAIL": "d", "Email": "e"}], more=False)])
    )
    assert demo.run().returncode == 0
    assert demo.query("SELECT id, email, email_2, email_3 FROM demo.t ORDER BY id") == [
        (1, "a", "b", None),
        (2, "e", "c", "d"),
    ]


def test_source_naming_keeps_names_as_sent(project):
    demo = replaying(project, [page(1, [{"id": 1, "userName": "x"}], more=False)], naming="source")
    assert demo.run().returncode == 0
    assert "userName" in column_types(demo)


def test_table_options_hash_block_and_skip(project):
    import hashlib

    pages = [
        {
            "state": {"page": 1},
            "hasMore": False,
            "insert": {
                "customers": [{"id": 1, "email": "a@example.com", "notes": "private", "n": 5}],
                "audit": [{"event": "login"}],
            },
            "schema": {"customers": {"primary_key": ["id"]}},
        }
    ]
    demo = replaying(
        project,
        pages,
        tables={
            "customers": {"columns": {"email": "hash", "notes": "block"}},
            "audit": {"sync": False},
        },
    )
    assert demo.run().returncode == 0
    assert demo.tables() == ["customers"]
    columns = demo.query(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_name = 'customers' ORDER BY ordinal_position"
    )
    assert ("notes",) not in columns
    digest = hashlib.sha256(b"a@example.com").hexdigest()
    assert demo.query("SELECT id, email, n FROM demo.customers") == [(1, digest, 5)]
