"""Paging ahead (design §2): page N+1 is asked for while page N is written, and the state
never runs ahead of the committed data, whatever fails. In-process syncs on real DuckDB
files; the order of calls and commits is observed, not timed."""

from __future__ import annotations

import threading

import duckdb
import pytest

from connector_runtime.errors import DestinationError
from connector_runtime.retry import RetryPolicy
from connector_runtime.sync import SyncJob, run_sync
from connector_runtime.testing import ScriptedInvoker
from destinations.duckdb import DuckDBDestination

NO_RETRY = RetryPolicy(attempts=1, base=0.0, cap=0.0)
WAIT = 60.0  # only a bug waits this long


def page(n: int, *, more: bool = True) -> dict:
    return {
        "state": {"page": n},
        "insert": {"items": [{"id": n * 10 + i} for i in range(3)]},
        "schema": {"items": {"primary_key": ["id"]}},
        "hasMore": more,
    }


class Log(list):
    """What happened, in order: "call:<state page>" and "commit:<page number>"; and
    `fail_page`, a page number whose commit fails."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.fail_page: int | None = None


@pytest.fixture
def events(monkeypatch):
    log = Log()
    lock = log.lock
    real_apply = DuckDBDestination.apply_page

    def apply_page(self, write):
        if write.number == log.fail_page:
            raise DestinationError(f"page {write.number} refused (test)")
        result = real_apply(self, write)
        with lock:
            log.append(f"commit:{write.number}")
        return result

    monkeypatch.setattr(DuckDBDestination, "apply_page", apply_page)
    return log


def recording(events, pages):
    def answer(n):
        def call(request):
            with events.lock:
                events.append(f"call:{request['state'].get('page', 0)}")
            return pages[n]

        return call

    return ScriptedInvoker([answer(n) for n in range(len(pages))])


def job(tmp_path, invoker, **options) -> SyncJob:
    url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    return SyncJob("demo", "demo", url, lambda: invoker, retry=NO_RETRY, **options)


def saved_state(tmp_path) -> str | None:
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        row = con.execute("SELECT CAST(state AS VARCHAR) FROM connector_runtime.state").fetchone()
    return row and row[0]


def page_1_waits_for_a_call(monkeypatch, invoker, state: dict, *, then_fail: bool = False):
    """Page 1's commit waits until the function is asked with `state`, which must happen
    during that write (paging ahead); with `then_fail`, the commit then fails."""
    asked = threading.Event()
    original = invoker.invoke

    def invoke(request):
        if request["state"] == state:
            asked.set()
        return original(request)

    invoker.invoke = invoke
    real_apply = DuckDBDestination.apply_page

    def apply_page(self, write):
        if write.number == 1:
            assert asked.wait(WAIT), f"no call with state {state} during page 1's write"
            if then_fail:
                raise DestinationError("page 1 refused (test)")
        return real_apply(self, write)

    monkeypatch.setattr(DuckDBDestination, "apply_page", apply_page)


def test_the_next_page_is_asked_for_while_this_one_is_written(tmp_path, events, monkeypatch):
    invoker = recording(events, [page(1), page(2), page(3, more=False)])
    page_1_waits_for_a_call(monkeypatch, invoker, {"page": 1})

    outcome = run_sync(job(tmp_path, invoker))

    assert outcome.record.status == "succeeded" and outcome.record.pages == 3
    assert [r["state"] for r in invoker.requests] == [{}, {"page": 1}, {"page": 2}]
    assert saved_state(tmp_path) == '{"page":3}'


def test_the_page_after_next_is_asked_for_once_the_next_ones_state_is_read(
    tmp_path, events, monkeypatch
):
    """The function builds page 3 while page 2 is typed and page 1 written."""
    invoker = recording(events, [page(1), page(2), page(3), page(4, more=False)])
    page_1_waits_for_a_call(monkeypatch, invoker, {"page": 2})

    outcome = run_sync(job(tmp_path, invoker))

    assert outcome.record.status == "succeeded" and outcome.record.pages == 4
    assert [r["state"] for r in invoker.requests] == [{}, {"page": 1}, {"page": 2}, {"page": 3}]
    assert saved_state(tmp_path) == '{"page":4}'


def test_a_failed_commit_drops_the_call_for_the_page_after_next(tmp_path, events, monkeypatch):
    """Page 3 is asked for while page 1 is written; page 1 fails: neither page 2's answer
    nor page 3's is applied, and nothing more is asked for."""
    invoker = recording(events, [page(1), page(2), page(3), page(4), page(5, more=False)])
    page_1_waits_for_a_call(monkeypatch, invoker, {"page": 2}, then_fail=True)

    outcome = run_sync(job(tmp_path, invoker))

    assert outcome.record.status == "failed" and outcome.record.pages == 0
    assert [r["state"] for r in invoker.requests] == [{}, {"page": 1}, {"page": 2}]
    assert saved_state(tmp_path) == "{}"  # the state it started from


def test_without_prefetch_each_call_waits_for_the_previous_commit(tmp_path, events):
    pages = [page(1), page(2), page(3, more=False)]

    outcome = run_sync(job(tmp_path, recording(events, pages), prefetch=False))

    assert outcome.record.status == "succeeded"
    assert events == ["call:0", "commit:1", "call:1", "commit:2", "call:2", "commit:3"]


def test_a_failed_commit_drops_the_answer_asked_for_ahead(tmp_path, events):
    events.fail_page = 2
    pages = [page(1), page(2), page(3), page(4, more=False)]
    invoker = recording(events, pages)

    outcome = run_sync(job(tmp_path, invoker))

    assert outcome.record.status == "failed" and outcome.record.pages == 1
    assert outcome.alert.kind == "destination_error"
    assert saved_state(tmp_path) == '{"page":1}'  # not page 3's, though it was asked for
    assert "commit:3" not in events
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        assert con.execute("SELECT id FROM demo.items ORDER BY id").fetchall() == [
            (10,),
            (11,),
            (12,),
        ]

    # the next sync asks again from the committed state
    events.fail_page = None
    again = recording(events, [page(2), page(3), page(4, more=False)])
    assert run_sync(job(tmp_path, again)).record.status == "succeeded"
    assert again.requests[0]["state"] == {"page": 1}
    assert saved_state(tmp_path) == '{"page":4}'


def test_a_failed_call_ahead_surfaces_after_the_page_before_it_commits(tmp_path, events):
    pages = [page(1), page(2), {"errorMessage": "API down", "errorType": "Upstream"}]

    outcome = run_sync(job(tmp_path, recording(events, pages)))

    assert outcome.record.status == "failed" and outcome.record.pages == 2
    assert (outcome.alert.kind, outcome.alert.message) == ("function_error", "API down")
    assert saved_state(tmp_path) == '{"page":2}'


def test_a_sync_told_to_stop_asks_for_nothing_more(tmp_path, events):
    stop = threading.Event()
    stop.set()
    pages = [page(1), page(2), page(3, more=False)]
    invoker = recording(events, pages)

    outcome = run_sync(job(tmp_path, invoker), stop=stop)

    assert outcome.record.status == "rescheduled"
    assert [r["state"] for r in invoker.requests] == [{}]  # nothing asked ahead
