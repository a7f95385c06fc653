"""The sync loop into real DuckDB files, with a scripted function (no subprocess)."""

from datetime import UTC, datetime
from decimal import Decimal

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector_runtime.sync import SyncJob, run_sync
from connector_runtime.testing import ScriptedInvoker


def sync(tmp_path, pages, **job):
    invoker = ScriptedInvoker(pages)
    url = f"duckdb:///{tmp_path}/warehouse.duckdb"
    outcome = run_sync(SyncJob("demo", "demo", url, lambda: invoker, **job))
    return outcome, invoker


def query(tmp_path, sql):
    con = duckdb.connect(f"{tmp_path}/warehouse.duckdb", read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(sql).fetchall()
    finally:
        con.close()


def column_type(tmp_path, table, column):
    return query(
        tmp_path,
        f"SELECT data_type FROM information_schema.columns WHERE table_name = '{table}'"
        f" AND column_name = '{column}'",
    )[0][0]


def page(rows, state, more=True, **extra):
    return {
        "state": state,
        "insert": {"t": rows},
        "schema": {"t": {"primary_key": ["id"]}},
        "hasMore": more,
        **extra,
    }


def test_int_then_float_then_string_ends_as_varchar_with_every_value(tmp_path):
    outcome, _ = sync(
        tmp_path,
        [
            page([{"id": 1, "v": 1}], {"p": 1}),
            page([{"id": 2, "v": 2.5}], {"p": 2}),
            page([{"id": 3, "v": "three"}], {"p": 3}, more=False),
        ],
    )
    assert outcome.record.status == "succeeded"
    assert column_type(tmp_path, "t", "v") == "VARCHAR"
    assert query(tmp_path, "SELECT id, v FROM demo.t ORDER BY id") == [
        (1, "1.0"),
        (2, "2.5"),
        (3, "three"),
    ]


def test_offsets_land_as_the_same_instants(tmp_path):
    sync(
        tmp_path,
        [
            page(
                [
                    {"id": 1, "at": "2024-03-01T12:00:00+02:00"},
                    {"id": 2, "at": "2024-03-01T10:00:00Z"},
                    {"id": 3, "at": "2024-03-01T05:00:00-05:00"},
                ],
                {},
                more=False,
            )
        ],
    )
    assert column_type(tmp_path, "t", "at") == "TIMESTAMP WITH TIME ZONE"
    instants = {r[0] for r in query(tmp_path, 'SELECT epoch_us("at") FROM demo.t')}
    assert instants == {int(datetime(2024, 3, 1, 10, tzinfo=UTC).timestamp() * 1e6)}


def test_declared_decimal_keeps_cents_exactly(tmp_path):
    declared = {"t": {"primary_key": ["id"], "columns": {"amount": "DECIMAL(18,2)"}}}
    sync(
        tmp_path,
        [
            {
                "state": {},
                "schema": declared,
                "insert": {
                    "t": [
                        {"id": 1, "amount": 0.1},
                        {"id": 2, "amount": "1234567890123456.78"},
                        {"id": 3, "amount": 19},
                    ]
                },
            }
        ],
    )
    assert column_type(tmp_path, "t", "amount") == "DECIMAL(18,2)"
    assert query(tmp_path, "SELECT amount FROM demo.t ORDER BY id") == [
        (Decimal("0.10"),),
        (Decimal("1234567890123456.78"),),
        (Decimal("19.00"),),
    ]


def test_widening_across_syncs_keeps_old_values_as_iso_text(tmp_path):
    sync(tmp_path, [page([{"id": 1, "v": "2024-01-02T03:04:05Z", "b": True}], {}, more=False)])
    sync(tmp_path, [page([{"id": 2, "v": "not a time", "b": "maybe"}], {}, more=False)])
    assert query(tmp_path, "SELECT v, b FROM demo.t ORDER BY id") == [
        ("2024-01-02T03:04:05.000000Z", "true"),
        ("not a time", "maybe"),
    ]


def test_rejected_page_writes_nothing_and_keeps_state(tmp_path):
    declared = {"t": {"primary_key": ["id"], "columns": {"n": "LONG"}}}
    outcome, _ = sync(
        tmp_path,
        [
            page([{"id": 1, "n": 1}], {"p": 1}, schema=declared),
            page([{"id": 2, "n": 2}, {"id": 3, "n": "abc"}], {"p": 2}, more=False, schema=declared),
        ],
    )
    assert outcome.record.status == "failed"
    assert outcome.alert.kind == "invalid_response"
    assert "table 't', column 'n', row 1" in outcome.alert.message
    assert query(tmp_path, "SELECT id FROM demo.t") == [(1,)]
    assert query(tmp_path, "SELECT CAST(state AS VARCHAR) FROM connector_runtime.state") == [
        ('{"p":1}',)
    ]


def test_softdelete_chain_covers_a_rescheduled_sync(tmp_path):
    """Rows sent by an earlier, unfinished sync of the same cycle are not soft-deleted."""
    sync(tmp_path, [page([{"id": i} for i in range(1, 5)], {"p": 0}, more=False)])
    outcome, _ = sync(tmp_path, [page([{"id": 1}], {"p": 1})], max_sync_duration=0.0)
    assert outcome.record.status == "rescheduled"
    outcome, invoker = sync(tmp_path, [page([{"id": 2}], {"p": 2}, more=False, softDelete=["t"])])
    assert invoker.requests[0]["state"] == {"p": 1}
    assert query(tmp_path, "SELECT id, _fivetran_deleted FROM demo.t ORDER BY id") == [
        (1, False),
        (2, False),
        (3, True),
        (4, True),
    ]


def test_duplicate_keys_in_a_page_last_one_wins_even_across_json_types(tmp_path):
    sync(
        tmp_path,
        [page([{"id": "1", "v": "a"}, {"id": 1, "v": "b"}, {"id": "2", "v": "c"}], {}, more=False)],
    )
    assert query(tmp_path, "SELECT id, v FROM demo.t ORDER BY id") == [("1", "b"), ("2", "c")]


scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.text(max_size=10),
    st.dates().map(str),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(scalars, min_size=1, max_size=6))
def test_every_value_round_trips_into_its_inferred_column(tmp_path_factory, values):
    tmp_path = tmp_path_factory.mktemp("roundtrip")
    rows = [{"id": i, "v": v} for i, v in enumerate(values)]
    outcome, _ = sync(tmp_path, [page(rows, {}, more=False)])
    assert outcome.record.status == "succeeded", outcome.alert
    stored = [r[0] for r in query(tmp_path, "SELECT CAST(v AS VARCHAR) FROM demo.t ORDER BY id")]
    assert len(stored) == len(values) and all(s is not None for s in stored)
    kind = column_type(tmp_path, "t", "v")
    if kind in ("BIGINT", "DOUBLE") or kind.startswith("DECIMAL"):
        assert [float(s) for s in stored] == pytest.approx([float(v) for v in values])
    if kind == "VARCHAR" and all(isinstance(v, str) for v in values):
        assert stored == values


@pytest.mark.parametrize("naming", ["fivetran", "source"])
def test_hostile_names_are_harmless(tmp_path, naming):
    table = 'evil"; DROP TABLE connector_runtime.state; --\n'
    column = 'col"\n;select 1'
    invoker_pages = [
        {
            "state": {"ok": 1},
            "insert": {table: [{"id": 1, column: "x", "select": 2}]},
            "schema": {table: {"primary_key": ["id"]}},
        }
    ]
    outcome, _ = sync(tmp_path, invoker_pages, naming=naming)
    assert outcome.record.status == "succeeded", outcome.alert
    tables = query(
        tmp_path, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'demo'"
    )
    expected = table if naming == "source" else "evil_drop_table_connector_runtime_state_"
    assert tables == [(expected,)]
    assert query(tmp_path, "SELECT CAST(state AS VARCHAR) FROM connector_runtime.state") == [
        ('{"ok":1}',)
    ]


def test_a_long_sync_checkpoints_as_it_goes_so_its_rows_are_not_all_held_in_memory(
    tmp_path, monkeypatch
):
    """DuckDB holds rows it has not checkpointed in memory, several times their size in
    its log: the log never grows past a couple of megabytes and a page, where DuckDB's
    own default lets it reach 16 MB before the first checkpoint."""
    from destinations.duckdb import DuckDBDestination

    log = tmp_path / "warehouse.duckdb.wal"
    sizes = []
    real_apply = DuckDBDestination.apply_page

    def apply_page(self, write):
        result = real_apply(self, write)
        sizes.append(log.stat().st_size if log.exists() else 0)
        return result

    monkeypatch.setattr(DuckDBDestination, "apply_page", apply_page)
    text = "x" * 500
    pages = [
        page([{"id": n * 2000 + i, "text": f"{text}{n}.{i}"} for i in range(2000)], {"n": n}, n < 9)
        for n in range(10)
    ]  # about 1 MB of log a page

    outcome, _ = sync(tmp_path, pages)

    assert outcome.ok and len(sizes) == 10
    assert max(sizes) < 4 * 2**20, sizes  # checkpointed every 2 MB or so
    assert query(tmp_path, "SELECT count(*), count(DISTINCT text) FROM demo.t") == [(20000, 20000)]
