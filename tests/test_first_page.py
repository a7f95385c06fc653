"""A sync's first page asked for while the warehouse opens (paging ahead, design §2): with
the state this process last committed, or {} for a warehouse not made yet and a re-sync,
and dropped unread when the warehouse holds another state. In-process syncs on real
DuckDB files; the order of calls and of the warehouse's steps is observed, not timed."""

from __future__ import annotations

import threading

import duckdb
import pytest
from test_prefetch import NO_RETRY, WAIT, page  # the same scripted pages

from connector_runtime.errors import SyncInProgress
from connector_runtime.invokers.local import LocalPythonInvoker
from connector_runtime.sync import SyncJob, run_sync
from connector_runtime.testing import ScriptedInvoker
from destinations.duckdb import DuckDBDestination


def job(tmp_path, invoker, **options) -> SyncJob:
    url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    return SyncJob("demo", "demo", url, lambda: invoker, retry=NO_RETRY, **options)


def stored(tmp_path) -> tuple[str, list[int]]:
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        (state,) = con.execute(
            "SELECT CAST(state AS VARCHAR) FROM connector_runtime.state"
        ).fetchall()
        ids = con.execute("SELECT id FROM demo.items ORDER BY id").fetchall()
        return state[0], [i for (i,) in ids]


def opening_waits_for_a_call(
    monkeypatch, invoker, state: dict, destination: type = DuckDBDestination
) -> list[str]:
    """The warehouse's `begin_sync` (which reads the saved state) does not return until
    the function has been asked with `state`: only a call made before the state is read
    lets it. Returns the log of calls and `begun`, in order."""
    asked, log = threading.Event(), []
    original = invoker.invoke

    def invoke(request):
        log.append(f"call:{request['state']}")
        if request["state"] == state:
            asked.set()
        return original(request)

    invoker.invoke = invoke
    real_begin = destination.begin_sync

    def begin_sync(self, record, **options):
        assert asked.wait(WAIT), f"no call with state {state} while the warehouse opened"
        snapshot = real_begin(self, record, **options)
        log.append("begun")
        return snapshot

    monkeypatch.setattr(destination, "begin_sync", begin_sync)
    return log


def test_a_new_warehouse_s_first_page_is_asked_for_while_it_opens(tmp_path, monkeypatch):
    invoker = ScriptedInvoker([page(1), page(2, more=False)])
    opening_waits_for_a_call(monkeypatch, invoker, {})

    outcome = run_sync(job(tmp_path, invoker))

    assert outcome.record.status == "succeeded" and outcome.record.pages == 2
    assert [r["state"] for r in invoker.requests] == [{}, {"page": 1}]  # each asked once
    assert stored(tmp_path) == ('{"page":2}', [10, 11, 12, 20, 21, 22])


def test_a_new_sqlite_file_s_first_page_is_asked_for_while_it_opens(tmp_path, monkeypatch):
    from destinations.sqlalchemy import SQLAlchemyDestination

    url = f"sqlite:///{tmp_path / 'w.sqlite'}"
    assert SQLAlchemyDestination.holds_nothing(url)
    invoker = ScriptedInvoker([page(1), page(2, more=False)])
    opening_waits_for_a_call(monkeypatch, invoker, {}, SQLAlchemyDestination)

    outcome = run_sync(SyncJob("demo", "demo", url, lambda: invoker, retry=NO_RETRY))

    assert outcome.record.status == "succeeded" and outcome.record.pages == 2
    assert [r["state"] for r in invoker.requests] == [{}, {"page": 1}]
    assert not SQLAlchemyDestination.holds_nothing(url)  # made by the sync
    assert not SQLAlchemyDestination.holds_nothing("postgresql://postgres@127.0.0.1/test")
    assert not SQLAlchemyDestination.holds_nothing(f"sqlite:///file:{tmp_path}/x.db?uri=true")


def test_the_next_sync_asks_with_the_state_this_process_committed(tmp_path, monkeypatch):
    assert run_sync(job(tmp_path, ScriptedInvoker([page(1), page(2, more=False)]))).ok
    invoker = ScriptedInvoker([page(3, more=False)])
    log = opening_waits_for_a_call(monkeypatch, invoker, {"page": 2})

    outcome = run_sync(job(tmp_path, invoker))

    assert outcome.ok and log == ["call:{'page': 2}", "begun"]
    assert [r["state"] for r in invoker.requests] == [{"page": 2}]
    assert stored(tmp_path) == ('{"page":3}', [10, 11, 12, 20, 21, 22, 30, 31, 32])


def test_a_state_saved_elsewhere_meanwhile_drops_the_early_answer(tmp_path):
    """Another process moved the state on: the answer asked with the old one is never
    written, and the function is asked again with the saved state."""
    assert run_sync(job(tmp_path, ScriptedInvoker([page(1, more=False)]))).ok
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        con.execute("""UPDATE connector_runtime.state SET state = '{"page": 7}'""")
    stale = {**page(2, more=False), "insert": {"items": [{"id": 999}]}}
    invoker = ScriptedInvoker([stale, page(8, more=False)])

    outcome = run_sync(job(tmp_path, invoker))

    assert outcome.ok and outcome.record.pages == 1
    assert [r["state"] for r in invoker.requests] == [{"page": 1}, {"page": 7}]
    assert stored(tmp_path) == ('{"page":8}', [10, 11, 12, 80, 81, 82])  # no 999


def test_a_re_sync_asks_from_the_empty_state_at_once(tmp_path, monkeypatch):
    assert run_sync(job(tmp_path, ScriptedInvoker([page(1, more=False)]))).ok
    invoker = ScriptedInvoker([page(5, more=False)])
    log = opening_waits_for_a_call(monkeypatch, invoker, {})

    outcome = run_sync(job(tmp_path, invoker), trigger="resync")

    assert outcome.ok and log == ["call:{}", "begun"]
    assert stored(tmp_path)[0] == '{"page":5}'


def test_without_prefetch_the_first_call_waits_for_the_saved_state(tmp_path, monkeypatch):
    log = []
    real_begin = DuckDBDestination.begin_sync

    def begin_sync(self, record, **options):
        log.append("begun")
        return real_begin(self, record, **options)

    monkeypatch.setattr(DuckDBDestination, "begin_sync", begin_sync)

    def answer(request):
        log.append("call")
        return page(1, more=False)

    invoker = ScriptedInvoker([answer, answer])
    for _ in range(2):  # a new warehouse, then one whose state this process committed
        assert run_sync(job(tmp_path, invoker, prefetch=False)).ok

    assert log == ["begun", "call", "begun", "call"]


def test_a_sync_already_running_drops_the_early_answer_unwritten(tmp_path):
    assert run_sync(job(tmp_path, ScriptedInvoker([page(1, more=False)]))).ok
    invoker = ScriptedInvoker([page(2, more=False)])

    url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    with DuckDBDestination(url) as held, held.lock("demo"), pytest.raises(SyncInProgress):
        run_sync(job(tmp_path, invoker))

    assert [r["state"] for r in invoker.requests] == [{"page": 1}]  # asked, then dropped
    assert stored(tmp_path) == ('{"page":1}', [10, 11, 12])


HANDLER = """
import os
import time

def handler(request):
    with open(os.environ["CALLS"], "a") as calls:
        calls.write(repr(request["state"]) + "\\n")
    if request["state"] == {"page": 2}:
        time.sleep(0.5)  # the early call, still running when the saved state is known
    n = request["state"].get("page", 0) + 1
    return {"state": {"page": n}, "insert": {"items": [{"id": n}]},
            "schema": {"items": {"primary_key": ["id"]}}, "hasMore": n % 2 == 1}
"""


def test_a_real_worker_answers_the_dropped_call_before_it_is_asked_again(tmp_path, monkeypatch):
    """The function's worker answers one call at a time: the early call is waited for
    before the call with the saved state, on the same kept worker."""
    (tmp_path / "handler.py").write_text(HANDLER)
    monkeypatch.setenv("CALLS", str(tmp_path / "calls.txt"))

    def worker_job() -> SyncJob:
        make = lambda: LocalPythonInvoker(tmp_path / "handler.py", timeout=10)  # noqa: E731
        return SyncJob("demo", "demo", f"duckdb:///{tmp_path / 'w.duckdb'}", make)

    assert run_sync(worker_job()).ok  # pages 1 and 2
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        con.execute("""UPDATE connector_runtime.state SET state = '{"page": 6}'""")

    outcome = run_sync(worker_job())

    assert outcome.ok and outcome.record.pages == 2  # pages 7 and 8
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert calls == ["{}", "{'page': 1}", "{'page': 2}", "{'page': 6}", "{'page': 7}"]
    assert stored(tmp_path) == ('{"page":8}', [1, 2, 7, 8])
