"""History mode against a pure-Python model of design §14, over random syncs.

Each example is a few syncs of one connector (fresh for the example), each sync a few
pages of upserts and deletes over four keys, some syncs ending with `softDelete` and
some run as a re-sync. The model below is §14 in plain Python; after every sync the
warehouse's history table, row by row (values, start, end, active, last written), and
the sync's deleted count must equal the model's. Run on DuckDB and PostgreSQL.

Values come from small sets so that identical re-sends, changes back to an old value
and deletes of missing keys all happen often; `seats` is sometimes 2.5, which widens the
column from LONG to DOUBLE mid-way (2 and 2.0 are then the same value, as in the model).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from warehouses import Warehouse, instant
from warehouses import postgres_url as postgres_url  # fixture

from connector_runtime.history import END_OF_TIME, closing_time
from connector_runtime.page import TableSettings
from connector_runtime.retry import RetryPolicy
from connector_runtime.sync import SyncJob, run_sync
from connector_runtime.testing import ScriptedInvoker

pytestmark = pytest.mark.slow  # property runs on DuckDB and PostgreSQL

KEYS = (1, 2, 3, 4)
HISTORY = TableSettings(history=frozenset({"t"}))
FAST_RETRY = RetryPolicy(attempts=2, base=0.01, cap=0.05)


# -- the model ----------------------------------------------------------------------------


@dataclass
class Version:
    key: int
    values: dict
    start: datetime
    end: datetime = END_OF_TIME
    active: bool = True
    synced: datetime | None = None


def same(a: dict, b: dict) -> bool:
    """Identical values: absent and null are one; 2 and 2.0 are one number."""
    return {k: v for k, v in a.items() if v is not None} == {
        k: v for k, v in b.items() if v is not None
    }


class Model:
    """Design §14, one version at a time."""

    def __init__(self) -> None:
        self.versions: list[Version] = []

    def active(self, key: int) -> Version | None:
        return next((v for v in self.versions if v.key == key and v.active), None)

    def close(self, version: Version, started: datetime) -> None:
        version.end, version.active, version.synced = closing_time(started), False, started

    def upsert(self, key: int, values: dict, started: datetime) -> None:
        current = self.active(key)
        if current is not None and same(current.values, values):
            current.synced = started  # confirmed: no new version
        elif current is not None and current.start == started:
            current.values = values  # the same sync: later values replace its version
        else:
            if current is not None:
                self.close(current, started)
            self.versions.append(Version(key, values, started, synced=started))

    def delete(self, key: int, started: datetime) -> int:
        current = self.active(key)
        if current is None:
            return 0
        if current.start == started:  # opened and deleted by one sync: never seen
            self.versions.remove(current)
        else:
            self.close(current, started)
        return 1

    def page(self, upserts: list[tuple[int, dict]], deletes: list[int], started) -> int:
        for key, values in dict(upserts).items():  # duplicate keys in a page: the last wins
            self.upsert(key, values, started)
        return sum(self.delete(key, started) for key in dict.fromkeys(deletes))

    def close_unsent(self, started: datetime) -> int:
        """softDelete, re-sync: what this sync did not write or confirm is closed."""
        unsent = [v for v in self.versions if v.active and v.synced < started]
        for version in unsent:
            self.close(version, started)
        return len(unsent)

    def rows(self) -> list[tuple]:
        return sorted(
            (
                (v.key, v.values.get("plan"), v.values.get("seats"), *self.times(v), v.active)
                for v in self.versions
            ),
            key=by_key,
        )

    @staticmethod
    def times(version: Version) -> tuple[str, str, str]:
        return tuple(instant(t) for t in (version.start, version.end, version.synced))


def by_key(row: tuple) -> tuple:
    """Versions in key order, then by start."""
    return row[0], row[3]


# -- random syncs -------------------------------------------------------------------------

values = st.fixed_dictionaries(
    {},
    optional={
        "plan": st.sampled_from(["free", "pro", None]),
        "seats": st.sampled_from([1, 2, 2.5, None]),
    },
)
pages = st.tuples(
    st.lists(st.tuples(st.sampled_from(KEYS), values), max_size=4),
    st.lists(st.sampled_from(KEYS), max_size=2),
)
syncs = st.lists(
    st.tuples(
        st.lists(pages, min_size=1, max_size=3), st.sampled_from(["", "softDelete", "resync"])
    ),
    min_size=1,
    max_size=5,
)


def answer(upserts, deletes, more: bool, soft_delete: bool) -> bytes:
    page = {"state": {}, "schema": {"t": {"primary_key": ["id"]}}, "hasMore": more}
    if upserts:
        page["insert"] = {"t": [{"id": key, **row} for key, row in upserts]}
    if deletes:
        page["delete"] = {"t": [{"id": key} for key in deletes]}
    if soft_delete and not more:
        page["softDelete"] = ["t"]
    return json.dumps(page).encode()


def stored(url: str, schema: str) -> list[tuple]:
    """The history table as the model's rows; a column no value has typed yet is null."""
    wh = Warehouse(url)
    if wh.backend == "sqlite":
        query = f"SELECT name FROM pragma_table_info('{schema}__t')"
    else:  # MySQL names the table <schema>__t in the URL's database
        where = f"table_schema = '{schema}' AND table_name = 't'"
        if wh.backend == "mariadb":
            where = f"table_schema = DATABASE() AND table_name = '{schema}__t'"
        query = f"SELECT column_name FROM information_schema.columns WHERE {where}"
    present = {name for (name,) in wh.query(query)}
    if not present:  # no table yet: nothing was ever upserted
        return []
    columns = [c if c in present else "NULL" for c in ("plan", "seats")]
    times = "_fivetran_start, _fivetran_end, _fivetran_synced"
    rows = wh.query(
        f"SELECT id, {', '.join(columns)}, {times}, _fivetran_active FROM {wh.ref(schema, 't')}"
    )
    return sorted(((*r[:3], *(instant(t) for t in r[3:6]), bool(r[6])) for r in rows), key=by_key)


_connectors = itertools.count(1)


def check_against_model(url: str, plan: list) -> None:
    connector = f"p{next(_connectors)}"
    model = Model()
    for number, (sync_pages, ending) in enumerate(plan, start=1):
        answers = [
            answer(upserts, deletes, i < len(sync_pages) - 1, ending == "softDelete")
            for i, (upserts, deletes) in enumerate(sync_pages)
        ]
        invoker = ScriptedInvoker(answers)
        job = SyncJob(
            connector, connector, url, lambda i=invoker: i, settings=HISTORY, retry=FAST_RETRY
        )
        trigger = "resync" if ending == "resync" else "manual"
        outcome = run_sync(job, trigger=trigger)
        assert outcome.record.status == "succeeded", outcome.alert
        started = outcome.record.started_at
        deleted = sum(model.page(upserts, deletes, started) for upserts, deletes in sync_pages)
        if ending:
            deleted += model.close_unsent(started)
        note(f"sync {number} ({ending or 'plain'}): {sync_pages}")
        assert stored(url, connector) == model.rows(), f"after sync {number}"
        assert outcome.record.rows_deleted == deleted, f"deleted count of sync {number}"


PROPERTY = settings(
    max_examples=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.slow
@PROPERTY
@given(plan=syncs)
def test_history_matches_the_model_on_duckdb(tmp_path, plan):
    check_against_model(f"duckdb:///{tmp_path}/warehouse.duckdb", plan)


@pytest.mark.slow
@PROPERTY
@given(plan=syncs)
def test_history_matches_the_model_on_postgresql(postgres_url, plan):
    check_against_model(postgres_url, plan)
