"""End to end through the CLI, as a user types it: real handler files, real worker
processes, real DuckDB files (DESIGN.md §2, §3, §6, §9).

Most tests use the *scripted* handler: it replays `pages.json`, choosing the page by
the `page` number in the state the runtime sends back, and logs every request it gets
to `calls.jsonl`. A page whose state says `{"page": 0}` makes the next sync start the
script again, so a test can rewrite `pages.json` between runs.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import textwrap
import time
from pathlib import Path

import pytest

SCRIPTED = '''\
"""Replays pages.json; the page is chosen by the state the runtime sends back."""
import json
import os
import pathlib
import time

HERE = pathlib.Path(__file__).parent
#PREAMBLE


def handler(request):
    n = request["state"].get("page", 0)
    with open(HERE / "calls.jsonl", "a") as calls:
        calls.write(json.dumps({"state": request["state"], "sync_id": request["sync_id"]}) + "\\n")
    pages = json.loads((HERE / "pages.json").read_text())
    #CODE
    return pages[n]
'''

KEYED = {"good": {"primary_key": ["id"]}}
DROP = object()  # leave a field out of a response


def scripted(code: str = "", preamble: str = "") -> str:
    """The scripted handler; `code` runs before the page is returned (`n` is its index)."""
    return SCRIPTED.replace("#PREAMBLE", textwrap.dedent(preamble)).replace(
        "#CODE", textwrap.indent(textwrap.dedent(code), "    ").strip()
    )


def page(next_page: int, *, more: bool = True, **response) -> dict:
    """A response whose state points at page `next_page` of the script."""
    return {"state": {"page": next_page}, **response, "hasMore": more}


def scripted_project(project, pages: list, *, code: str = "", preamble: str = "", **options):
    made = project(scripted(code, preamble), **options)
    write_pages(made, pages)
    return made


def write_pages(made, pages: list) -> None:
    (made.root / "pages.json").write_text(json.dumps(pages))


def calls(made) -> list[dict]:
    """Every request the scripted handler received, in order."""
    log = made.root / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def deleted_flags(made, table: str) -> dict:
    rows = made.query(f'SELECT id, _fivetran_deleted FROM demo."{table}" ORDER BY id')
    return dict(rows)


# -- pages and state --------------------------------------------------------------------

CURSOR_HANDLER = """
def handler(request):
    state = request["state"]
    cursor = state.get("cursor", 0)
    # the state must come back exactly as the previous page returned it
    assert state == ({} if cursor == 0 else {"cursor": cursor, "note": f"after {cursor}"}), state
    end = cursor + 3
    rows = [{"id": i, "receivedCursor": cursor, "syncId": request["sync_id"]} for i in range(cursor, end)]
    return {
        "state": {"cursor": end, "note": f"after {end}"},
        "insert": {"items": rows},
        "schema": {"items": {"primary_key": ["id"]}},
        "hasMore": end % 9 != 0,
    }
"""


def test_state_is_carried_between_pages_and_between_runs(project):
    demo = project(CURSOR_HANDLER)

    first = demo.run()
    assert first.returncode == 0, first.stderr
    assert first.stdout == ""  # progress and summary are for humans: stderr
    shown = demo.connector("state", "show", "demo")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"cursor": 9, "note": "after 9"}

    second = demo.run()
    assert second.returncode == 0, second.stderr
    shown = demo.connector("state", "show", "demo")
    assert json.loads(shown.stdout) == {"cursor": 18, "note": "after 18"}

    syncs = demo.syncs()
    assert [(s["status"], s["pages"], s["rows_upserted"]) for s in syncs] == [
        ("succeeded", 3, 9)
    ] * 2
    rows = demo.query("SELECT id, received_cursor, sync_id FROM demo.items ORDER BY id")
    assert [(i, cursor) for i, cursor, _ in rows] == [(i, i - i % 3) for i in range(18)]
    assert [s for _, _, s in rows] == [syncs[0]["sync_id"]] * 9 + [syncs[1]["sync_id"]] * 9


def test_upsert_replaces_the_whole_row(project):
    demo = scripted_project(
        project,
        [
            page(
                1,
                insert={
                    "people": [
                        {"id": 1, "name": "Ada", "email": "ada@example.com"},
                        {"id": 2, "name": "Bob", "email": "bob@example.com"},
                    ]
                },
                schema={"people": {"primary_key": ["id"]}},
            ),
            page(2, more=False, insert={"people": [{"id": 1, "name": "Ada L."}]}),
        ],
    )
    result = demo.run()
    assert result.returncode == 0, result.stderr
    assert demo.query("SELECT id, name, email FROM demo.people ORDER BY id") == [
        (1, "Ada L.", None),
        (2, "Bob", "bob@example.com"),
    ]
    assert demo.query("SELECT count(*) FROM demo.people WHERE _fivetran_synced IS NULL") == [(0,)]


def test_delete_marks_rows_and_a_reinsert_undeletes(project):
    items = [{"id": i, "name": f"item {i}"} for i in (1, 2, 3)]
    demo = scripted_project(
        project,
        [
            page(1, insert={"items": items}, schema={"items": {"primary_key": ["id"]}}),
            page(0, more=False, delete={"items": [{"id": 2}, {"id": 99}]}),
        ],
    )
    result = demo.run()
    assert result.returncode == 0, result.stderr
    assert deleted_flags(demo, "items") == {1: False, 2: True, 3: False}  # 99 is not added
    assert [(s["rows_upserted"], s["rows_deleted"]) for s in demo.syncs()] == [(3, 1)]
    # the summary counts the unknown key: table, upserted, deleted, delete keys not found
    assert re.search(r"items\s+3\s+1\s+1\b", result.stderr), result.stderr

    write_pages(demo, [page(0, more=False, insert={"items": [{"id": 2, "name": "back"}]})])
    result = demo.run()
    assert result.returncode == 0, result.stderr
    assert deleted_flags(demo, "items") == {1: False, 2: False, 3: False}
    assert demo.query("SELECT name FROM demo.items WHERE id = 2") == [("back",)]


def test_append_without_primary_key_numbers_batches_and_rows(project):
    demo = scripted_project(
        project,
        [
            page(1, insert={"events": [{"kind": "a"}, {"kind": "b"}, {"kind": "c"}]}),
            page(2, more=False, insert={"events": [{"kind": "d"}, {"kind": "e"}]}),
        ],
    )
    result = demo.run()
    assert result.returncode == 0, result.stderr
    (sync,) = demo.syncs()
    batch = sync["sync_id"]
    assert demo.query(
        "SELECT kind, _fivetran_batch, _fivetran_index FROM demo.events ORDER BY kind"
    ) == [
        ("a", f"{batch}:1", 0),
        ("b", f"{batch}:1", 1),
        ("c", f"{batch}:1", 2),
        ("d", f"{batch}:2", 0),
        ("e", f"{batch}:2", 1),
    ]


def test_duplicate_keys_within_a_page_last_one_wins(project):
    rows = [
        {"id": 1, "v": "first", "extra": "only in the first copy"},
        {"id": 2, "v": "only"},
        {"id": 1, "v": "last"},
    ]
    demo = scripted_project(
        project,
        [
            page(1, more=False, insert={"items": rows}, schema={"items": {"primary_key": ["id"]}}),
        ],
    )
    result = demo.run()
    assert result.returncode == 0, result.stderr
    assert demo.query("SELECT id, v, extra FROM demo.items ORDER BY id") == [
        (1, "last", None),
        (2, "only", None),
    ]


def test_delete_before_any_insert_is_ignored_and_counted(project):
    demo = scripted_project(
        project,
        [
            page(
                1,
                more=False,
                delete={"items": [{"id": 5}]},
                schema={"items": {"primary_key": ["id"]}},
            ),
        ],
    )
    result = demo.run()
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr
    assert [s["status"] for s in demo.syncs()] == ["succeeded"]
    assert demo.state() == {"page": 1}


# -- failures: the bad page is the 2nd page of a sync whose 1st page is good ---------

GOOD_PAGE = page(1, insert={"good": [{"id": 1, "name": "page one"}]}, schema=KEYED)
NEVER_REACHED = page(3, more=False, insert={"good": [{"id": 3, "name": "page three"}]})


def spoiled(**parts) -> dict:
    """Page 2: a row for `good` and a new table `other`, plus `parts` that break the
    contract (objects are merged in, DROP removes a field)."""
    response = {
        "state": {"page": 2},
        "insert": {"good": [{"id": 2, "name": "page two"}], "other": [{"x": 1}]},
        "schema": dict(KEYED),
        "hasMore": True,
    }
    for field, value in parts.items():
        if value is DROP:
            del response[field]
        elif isinstance(value, dict) and isinstance(response.get(field), dict):
            response[field] = {**response[field], **value}
        else:
            response[field] = value
    return response


def assert_failed_on_page_two(demo, result, kind: str, error_type: str | None, fragments=()):
    """Exit 1 and a message; one alert; a failed sync; page 1 kept, page 2 absent."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    alerts = demo.alerts()
    assert len(alerts) == 1, alerts
    alert = alerts[0]
    assert (alert["kind"], alert["severity"], alert["resolved"]) == (kind, "error", False)
    if error_type is not None:
        assert alert["error_type"] == error_type
    for fragment in fragments:
        assert fragment in alert["message"], alert["message"]
    assert result.said(kind) and result.said(alert["message"]), result.stderr

    (sync,) = demo.syncs()
    assert (sync["status"], sync["pages"], sync["finished"]) == ("failed", 1, True)
    assert sync["error"].startswith(kind) and alert["sync_id"] == sync["sync_id"]

    assert demo.query("SELECT id, name FROM demo.good ORDER BY id") == [(1, "page one")]
    assert demo.tables() == ["good"]  # nothing of page 2: no `other`, no `bad`
    assert demo.state() == {"page": 1}
    # page 3 may have been asked for ahead (with page 2's state) but never applied
    asked = [c["state"] for c in calls(demo)]
    assert asked in ([{}, {"page": 1}], [{}, {"page": 1}, {"page": 2}]), asked
    return alert


def test_error_response_is_a_function_error(project):
    trace = ["at fetchOrders (api.js:10:5)", "at handler (index.js:3:9)"]
    error = {
        "errorMessage": "orders API answered 503",
        "errorType": "UpstreamUnavailable",
        "stackTrace": trace,
    }
    demo = scripted_project(project, [GOOD_PAGE, error, NEVER_REACHED])
    alert = assert_failed_on_page_two(
        demo, demo.run(), "function_error", "UpstreamUnavailable", ["orders API answered 503"]
    )
    assert alert["stack_trace"] == trace


def test_raised_exception_is_a_function_error_with_its_stack_trace(project):
    demo = scripted_project(
        project,
        [GOOD_PAGE, GOOD_PAGE, NEVER_REACHED],
        preamble="class RateLimitExceeded(Exception):\n    pass\n",
        code='if n == 1:\n    raise RateLimitExceeded("quota of 100 calls used up")\n',
    )
    alert = assert_failed_on_page_two(
        demo, demo.run(), "function_error", "RateLimitExceeded", ["quota of 100 calls used up"]
    )
    frames = alert["stack_trace"]
    assert isinstance(frames, list) and frames, frames
    file, line, function, code = frames[-1]
    assert (Path(file).name, function) == ("handler.py", "handler")
    assert isinstance(line, int) and "RateLimitExceeded" in code


@pytest.mark.parametrize(
    ("code", "function", "error_type", "fragment"),
    [
        pytest.param(
            "if n == 1:\n    os._exit(3)\n",
            {},
            "Runtime.ExitError",
            "exit status 3",
            id="crash-os-exit",
        ),
        pytest.param(
            "if n == 1:\n    time.sleep(60)\n",
            {"timeout": "1s"},
            "Sandbox.Timedout",
            "timed out",
            id="hang-past-timeout",
        ),
    ],
)
def test_worker_crash_or_hang_is_a_function_error(project, code, function, error_type, fragment):
    demo = scripted_project(
        project, [GOOD_PAGE, GOOD_PAGE, NEVER_REACHED], code=code, function=function
    )
    started = time.monotonic()
    result = demo.run()
    assert time.monotonic() - started < 20
    assert_failed_on_page_two(demo, result, "function_error", error_type, [fragment])


def test_unserialisable_answer_is_a_marshal_error(project):
    # What AWS Lambda's Python runtime answers for it; the local worker does the same.
    demo = scripted_project(
        project,
        [GOOD_PAGE, GOOD_PAGE, NEVER_REACHED],
        code='if n == 1:\n    return {"state": {"page": 2}, "insert": {"t": [{"x": object()}]}}\n',
    )
    assert_failed_on_page_two(
        demo, demo.run(), "function_error", "Runtime.MarshalError", ["Unable to marshal response"]
    )


INVALID = [
    pytest.param([{"state": {"page": 2}}], ["array", "not an object"], id="answer-is-a-list"),
    pytest.param("all good", ["string", "not an object"], id="answer-is-a-string"),
    pytest.param(spoiled(state=DROP), ["state is missing"], id="missing-state"),
    pytest.param(
        spoiled(state=["page", 2]),
        ['state must be an object, got the array ["page",2]'],
        id="state-not-an-object",
    ),
    pytest.param(
        spoiled(insert={"bad": [{"id": 1}, "row two"]}),
        ["insert", "'bad'", "row 1"],
        id="insert-row-not-an-object",
    ),
    pytest.param(
        spoiled(
            insert={"bad": [{"id": 1}, {"name": "keyless"}]},
            schema={"bad": {"primary_key": ["id"]}},
        ),
        ["insert", "'bad'", "row 1", "'id'", "missing"],
        id="row-without-key",
    ),
    pytest.param(
        spoiled(insert={"bad": [{"id": 1}, {"id": None}]}, schema={"bad": {"primary_key": ["id"]}}),
        ["insert", "'bad'", "row 1", "'id'", "null"],
        id="null-key",
    ),
    pytest.param(
        spoiled(delete={"good": [{"name": "page one"}]}),
        ["delete", "'good'", "row 0", "'id'", "missing"],
        id="delete-row-without-key",
    ),
    pytest.param(
        spoiled(delete={"bad": [{"id": 1}]}),
        ["delete", "'bad'", "primary key"],
        id="delete-without-primary-key",
    ),
    pytest.param(
        spoiled(hasMore="yes"),
        ["hasMore must be true or false", 'got the string "yes"'],
        id="hasMore-not-boolean",
    ),
    pytest.param(
        spoiled(schema={"good": {"primary_key": ["id", "name"]}}),
        ["'good'", "primary key", "connector resync demo"],
        id="primary-key-changed",
    ),
    pytest.param(
        spoiled(
            insert={"bad": [{"id": 1, "amount": 5}, {"id": 2, "amount": "abc"}]},
            schema={"bad": {"primary_key": ["id"], "columns": {"amount": "LONG"}}},
        ),
        ["'bad'", "'amount'", "row 1", "'abc'", "LONG"],
        id="declared-type-mismatch",
    ),
]


@pytest.mark.parametrize(("bad_page", "fragments"), INVALID)
def test_invalid_response_rejects_the_whole_page(project, bad_page, fragments):
    demo = scripted_project(project, [GOOD_PAGE, bad_page, NEVER_REACHED])
    assert_failed_on_page_two(demo, demo.run(), "invalid_response", None, fragments)


def test_function_messages_are_printed_verbatim(project):
    message = "GET [/v1/orders] answered 503 [bold]"
    demo = scripted_project(project, [GOOD_PAGE, {"errorMessage": message}, NEVER_REACHED])
    result = demo.run()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    # the summary line, not only the JSON log line, shows the message as the function sent it
    assert result.said(f"function_error (FunctionError): {message}"), result.stderr


def test_successful_sync_resolves_open_alerts(project):
    demo = scripted_project(
        project,
        [GOOD_PAGE, page(0, more=False, insert={"good": [{"id": 2, "name": "two"}]})],
        code='if n == 1 and (HERE / "broken").exists():\n    raise RuntimeError("still broken")\n',
    )
    (demo.root / "broken").touch()
    assert demo.run().returncode == 1
    assert demo.run().returncode == 1  # resumes at page 2 and fails again
    alerts = demo.alerts()
    assert [(a["kind"], a["resolved"]) for a in alerts] == [("function_error", False)] * 2

    (demo.root / "broken").unlink()
    result = demo.run()
    assert result.returncode == 0, result.stderr
    assert [s["status"] for s in demo.syncs()] == ["failed", "failed", "succeeded"]
    assert [(a["resolved"], a["resolved_after"]) for a in demo.alerts()] == [(True, True)] * 2
    # every failed sync and the good one started where the last committed page left off
    assert [c["state"] for c in calls(demo)] == [{}, {"page": 1}, {"page": 1}, {"page": 1}]
    assert demo.query("SELECT id FROM demo.good ORDER BY id") == [(1,), (2,)]


# -- guards ------------------------------------------------------------------------------


def test_stall_guard_stops_a_sync_that_never_sends_rows(project):
    demo = scripted_project(
        project, [], code='return {"state": {"page": n + 1}, "hasMore": True}\n'
    )
    result = demo.run(timeout=60)
    assert result.returncode == 1, result.stderr
    (alert,) = demo.alerts()
    assert alert["kind"] == "stalled"
    assert result.said("stalled")
    assert [s["status"] for s in demo.syncs()] == ["failed"]
    # "more than 10 consecutive responses": the 11th stops it
    assert len(calls(demo)) == 11


def test_max_sync_duration_reschedules_and_the_next_run_continues(project):
    pages = [page(n + 1, more=n < 5, insert={"ticks": [{"page": n}]}) for n in range(6)]
    demo = scripted_project(project, pages, code="time.sleep(0.4)\n", max_sync_duration="1s")

    first = demo.run()
    assert first.returncode == 0, first.stderr
    assert [s["status"] for s in demo.syncs()] == ["rescheduled"]
    saved = demo.state()["page"]
    assert 1 <= saved < 6
    assert demo.query("SELECT count(*) FROM demo.ticks") == [(saved,)]

    for _ in range(6):
        result = demo.run()
        assert result.returncode == 0, result.stderr
        if demo.syncs()[-1]["status"] == "succeeded":
            break
    statuses = [s["status"] for s in demo.syncs()]
    assert statuses[-1] == "succeeded" and set(statuses[:-1]) == {"rescheduled"}
    # each page exactly once: every run began where the previous one stopped
    assert demo.query("SELECT page FROM demo.ticks ORDER BY page") == [(n,) for n in range(6)]
    first_calls = {}
    for call in calls(demo):
        first_calls.setdefault(call["sync_id"], call["state"])
    assert list(first_calls.values())[1] == {"page": saved}


def test_soft_delete_marks_unsent_rows_only_after_a_successful_sync(project):
    items = [{"id": i} for i in range(1, 6)]
    demo = scripted_project(
        project,
        [
            page(
                0,
                more=False,
                insert={"items": items, "other": [{"id": 1}, {"id": 2}]},
                schema={"items": {"primary_key": ["id"]}, "other": {"primary_key": ["id"]}},
                softDelete=["items"],
            )
        ],
        code='if n == 1 and (HERE / "broken").exists():\n    raise RuntimeError("boom")\n',
    )
    assert demo.run().returncode == 0
    assert deleted_flags(demo, "items") == dict.fromkeys(range(1, 6), False)

    # a sync that re-sends 1 and 2, then fails: nothing is marked deleted
    write_pages(
        demo,
        [
            page(1, insert={"items": [{"id": 1}, {"id": 2}]}, softDelete=["items"]),
            page(0, more=False, insert={"items": [{"id": 3}]}, softDelete=["items"]),
        ],
    )
    (demo.root / "broken").touch()
    assert demo.run().returncode == 1
    assert deleted_flags(demo, "items") == dict.fromkeys(range(1, 6), False)

    # the next sync resumes the same pass over the source and completes it: 1 and 2 were
    # re-sent by the failed sync, 3 by this one; 4 and 5 are gone at the source
    (demo.root / "broken").unlink()
    result = demo.run()
    assert result.returncode == 0, result.stderr
    assert deleted_flags(demo, "items") == {1: False, 2: False, 3: False, 4: True, 5: True}
    assert demo.syncs()[-1]["rows_deleted"] == 2
    other = demo.query(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'demo'"
        " AND table_name = 'other' AND column_name = '_fivetran_deleted'"
    )
    if other != [(0,)]:  # a table not listed in softDelete keeps its rows
        assert deleted_flags(demo, "other") == {1: False, 2: False}
    assert demo.query("SELECT count(*) FROM demo.other") == [(2,)]


# -- one sync at a time ------------------------------------------------------------------


def wait_for(path: Path, seconds: float = 30.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear within {seconds}s")


def test_second_run_is_refused_while_one_runs_and_a_killed_sync_is_marked_failed(project):
    demo = scripted_project(
        project,
        [page(1, more=False, insert={"good": [{"id": 1}]}, schema=KEYED)],
        code="""
            if (HERE / "slow").exists():
                (HERE / "started").write_text(str(os.getpid()))
                time.sleep(60)
        """,
    )
    (demo.root / "slow").touch()
    running = demo.start("run", "demo")
    worker_pid = None
    try:
        worker_pid = int(wait_for(demo.root / "started"))
        second = demo.run(timeout=30)
        assert second.returncode == 1
        assert second.said("already in progress"), second.stderr
        assert len(calls(demo)) == 1  # the second run never called the function
    finally:
        running.kill()  # SIGKILL: no chance to clean up
        running.communicate()
        if worker_pid is not None:  # the worker runs in its own session
            os.kill(worker_pid, signal.SIGKILL)
    assert running.returncode == -signal.SIGKILL

    (demo.root / "slow").unlink()
    result = demo.run()
    assert result.returncode == 0, result.stderr
    dead, good = demo.syncs()
    assert dead["sync_id"] == calls(demo)[0]["sync_id"]
    assert (dead["status"], dead["finished"]) == ("failed", True)
    assert good["status"] == "succeeded"
    assert demo.query("SELECT id FROM demo.good") == [(1,)]


def alive(pid: int) -> bool:
    """Running (a zombie left for a container's init to reap counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_worker_does_not_outlive_a_killed_runtime(project):
    demo = scripted_project(
        project,
        [page(1, more=False)],
        function={"timeout": "2s"},
        code='(HERE / "started").write_text(str(os.getpid()))\ntime.sleep(60)\n',
    )
    running = demo.start("run", "demo")
    worker_pid = int(wait_for(demo.root / "started"))
    try:
        running.kill()
        running.communicate()
        deadline = time.monotonic() + 5  # the function's 2 s timeout, and some grace
        while alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker_pid), "the worker still runs the function"
    finally:
        if alive(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)


def test_unopenable_warehouse_is_a_clean_failure(project):
    demo = scripted_project(project, [page(1, more=False)])
    demo.warehouse_path.write_text("this is not a DuckDB database\n")
    for args in (["run", "demo"], ["state", "show", "demo"]):
        result = demo.connector(*args)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr, result.stderr
        assert result.said(str(demo.warehouse_path)), result.stderr
    assert calls(demo) == []


# -- configuration -----------------------------------------------------------------------

BROKEN_CONFIGS = [
    pytest.param(
        "warehouse: duckdb:///warehouse.duckdb\nconnectors:\n  demo:\n    function:\n"
        "      local: handler.py\n      timeout: 15 minutes\n",
        6,
        "connectors.demo.function.timeout",
        id="bad-duration",
    ),
    pytest.param(
        "connectors:\n  demo:\n    function:\n      local: handler.py\n    schedulee: 15m\n",
        5,
        "schedulee",
        id="unknown-key",
    ),
    pytest.param(
        "connectors:\n  demo:\n    function:\n      local: handler.py\n  other: [\n",
        6,
        "YAML",
        id="yaml-syntax",
    ),
    pytest.param(
        "connectors:\n  demo:\n    function:\n      local: handler.py\n"
        "  second:\n    function:\n      local: missing.py\n",
        7,
        "connectors.second.function.local",
        id="missing-handler-file",
    ),
]


def test_validate_accepts_a_good_config(project):
    demo = scripted_project(project, [page(1, more=False)])
    result = demo.connector("validate")
    assert result.returncode == 0, result.stderr
    assert result.said("1 connector(s)")
    assert not demo.warehouse_path.exists()  # validating syncs nothing


@pytest.mark.parametrize(("text", "line", "field"), BROKEN_CONFIGS)
def test_broken_config_exits_2_naming_file_and_line(project, text, line, field):
    demo = scripted_project(project, [page(1, more=False)])
    demo.config.write_text(text)
    for args in (["validate"], ["run"]):
        result = demo.connector(*args)
        assert result.returncode == 2, result.stderr
        assert result.said(f"{demo.config}:{line}:") and result.said(field), result.stderr
    assert calls(demo) == [] and not demo.warehouse_path.exists()  # nothing ran


def test_config_error_is_one_unbroken_line(project):
    demo = scripted_project(project, [page(1, more=False)])
    demo.config.write_text(BROKEN_CONFIGS[0].values[0])
    result = demo.connector("validate")
    assert result.returncode == 2
    assert any(
        f"{demo.config}:6: connectors.demo.function.timeout:" in line
        for line in result.stderr.splitlines()
    ), result.stderr


def test_unknown_connector_name_exits_2(project):
    demo = scripted_project(project, [page(1, more=False)])
    for args in (["run", "nope"], ["state", "show", "nope"], ["run", "demo", "nope"]):
        result = demo.connector(*args)
        assert result.returncode == 2, result.stderr
        assert result.said("'nope'"), result.stderr
    assert calls(demo) == []  # `run demo nope` checks every name before any sync


# -- the examples ------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def copy_example(name: str, tmp_path: Path) -> Path:
    """The example's own files, without a warehouse left over from a manual run."""
    target = tmp_path / name
    shutil.copytree(
        EXAMPLES / name,
        target,
        ignore=shutil.ignore_patterns("warehouse.duckdb*", "__pycache__", "*.lock"),
    )
    return target


def test_example_transactions(tmp_path, connector, warehouse):
    folder = copy_example("transactions", tmp_path)
    for _ in range(2):  # the second sync finds nothing new and changes nothing
        result = connector("run", cwd=folder)
        assert result.returncode == 0, result.stderr
    with warehouse(folder / "warehouse.duckdb") as con:
        assert con.execute(
            "SELECT count(*), count(DISTINCT id), min(id), max(id),"
            " count(*) FILTER (WHERE status = 'refunded') FROM transactions.transactions"
        ).fetchone() == (2000, 2000, 1, 2000, 70)
        assert con.execute(
            "SELECT id FROM transactions.transactions WHERE status = 'refunded' ORDER BY id"
        ).fetchall() == [(i,) for i in range(25, 1751, 25)]
        types = dict(
            con.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = 'transactions' AND table_name = 'transactions'"
            ).fetchall()
        )
        assert (types["amount_cents"], types["created_at"], types["tags"]) == (
            "BIGINT",
            "TIMESTAMP WITH TIME ZONE",
            "JSON",
        )
        assert con.execute(
            "SELECT status, pages FROM connector_runtime.syncs ORDER BY started_at"
        ).fetchall() == [("succeeded", 8), ("succeeded", 1)]
    shown = connector("state", "show", "transactions", cwd=folder)
    assert json.loads(shown.stdout) == {"after_id": 2000}


def test_example_fivetran_lambda(tmp_path, connector, warehouse):
    folder = copy_example("fivetran_lambda", tmp_path)
    result = connector("run", cwd=folder)
    assert result.returncode == 0, result.stderr
    with warehouse(folder / "warehouse.duckdb") as con:
        rows = con.execute(
            "SELECT order_id, strftime(date, '%H:%M:%S'), amount, discount, _fivetran_deleted"
            " FROM lambda_demo.transactions ORDER BY date"
        ).fetchall()
        assert rows == [
            (1001, "05:12:05", "$1200", "$12", True),
            (1001, "06:12:04", "$1200", "$12", False),
        ]
        assert con.execute(
            "SELECT status, rows_upserted, rows_deleted FROM connector_runtime.syncs"
        ).fetchall() == [("succeeded", 2, 1)]
    shown = connector("state", "show", "fivetran_lambda", cwd=folder)
    assert json.loads(shown.stdout) == {"transactionsCursor": "2018-01-01T00:00:00Z"}


# -- crash safety ------------------------------------------------------------------------

CRASH_PAGES, CRASH_ROWS, CRASH_EVENTS = 60, 500, 50
CRASH_HANDLER = f"""
import pathlib
import time

CALLED = pathlib.Path(__file__).parent / "called"

def handler(request):
    n = request["state"].get("page", 0)
    with open(CALLED, "a") as called:  # the test times its kill from the first call
        called.write(f"{{n}}\\n")
    time.sleep(0.02)
    items = [{{"id": n * {CRASH_ROWS} + i, "page": n, "name": f"item {{n}}-{{i}}"}}
             for i in range({CRASH_ROWS})]
    events = [{{"page": n, "seq": i, "what": "tick"}} for i in range({CRASH_EVENTS})]
    return {{
        "state": {{"page": n + 1, "cursor": f"after-{{n + 1}}"}},
        "insert": {{"items": items, "events": events}},
        "schema": {{"items": {{"primary_key": ["id"]}}}},
        "hasMore": n + 1 < {CRASH_PAGES},
    }}
"""


def committed_pages(demo, context: str = "") -> int:
    """Pages committed so far, after checking that rows and state agree exactly."""
    if not demo.warehouse_path.exists():
        return 0
    try:
        runtime_tables = demo.query(
            "SELECT count(*) FROM information_schema.tables"
            " WHERE table_schema = 'connector_runtime' AND table_name = 'state'"
        )
    except Exception as exc:  # say what the kill left behind
        raise AssertionError(
            f"the warehouse no longer opens after a kill ({context}): {exc}"
        ) from exc
    if runtime_tables == [(0,)]:  # killed before the runtime's tables were created
        return 0
    state = demo.state()
    done = state.get("page", 0)
    assert state == ({} if done == 0 else {"page": done, "cursor": f"after-{done}"})
    if "items" in demo.tables():
        assert demo.query("SELECT count(*), count(DISTINCT id) FROM demo.items") == [
            (done * CRASH_ROWS, done * CRASH_ROWS)
        ]
        assert demo.query("SELECT count(*) FROM demo.events") == [(done * CRASH_EVENTS,)]
    else:
        assert done == 0
    return done


@pytest.mark.slow
def test_kill_9_mid_sync_loses_and_doubles_nothing(project):
    demo = project(CRASH_HANDLER)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    moments, progress = [], []
    # Each kill lands after the run's k-th call to the function (k in 2..6) and a random
    # 0-40 ms more: while a call, a page's planning or its commit is under way. Counted in
    # calls, not seconds, it lands mid-sync on a fast machine and on a loaded one alike:
    # 5 runs ask for at most 30 of the 60 pages.
    for _ in range(5):
        moments.append((rng.randint(2, 6), rng.uniform(0, 0.04)))
        calls, delay = moments[-1]
        called = demo.root / "called"
        before = len(called.read_text().splitlines()) if called.exists() else 0
        running = demo.start("run", "demo")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and running.poll() is None:
            if called.exists() and len(called.read_text().splitlines()) >= before + calls:
                break
            time.sleep(0.005)
        time.sleep(delay)
        running.send_signal(signal.SIGKILL)
        running.communicate()
        progress.append(committed_pages(demo, f"seed {seed}, kill at {moments[-1]}"))
    shown = [(calls, round(delay, 3)) for calls, delay in moments]
    context = f"seed {seed}, kills after (calls, seconds) {shown}, pages {progress}"
    print(context)
    assert progress == sorted(progress), context
    assert progress[-1] < CRASH_PAGES, context  # every kill landed mid-sync

    result = demo.run()
    assert result.returncode == 0, result.stderr + context
    assert committed_pages(demo) == CRASH_PAGES, context
    assert demo.state() == {"page": CRASH_PAGES, "cursor": f"after-{CRASH_PAGES}"}
    assert demo.query("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM demo.items") == [
        (CRASH_PAGES * CRASH_ROWS, CRASH_PAGES * CRASH_ROWS, 0, CRASH_PAGES * CRASH_ROWS - 1)
    ]
    assert demo.query("SELECT count(*), count(DISTINCT (page, seq)) FROM demo.events") == [
        (CRASH_PAGES * CRASH_EVENTS, CRASH_PAGES * CRASH_EVENTS)
    ]
    statuses = [s["status"] for s in demo.syncs()]
    assert statuses[-1] == "succeeded", context
    assert set(statuses[:-1]) <= {"failed"}, context  # every killed sync, once seen dead


def test_example_fan_out(tmp_path, connector, warehouse):
    """Contacts go to a JavaScript destination function that appends them to a file."""
    folder = copy_example("fan_out", tmp_path)
    result = connector("run", cwd=folder)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (folder / "contacts.ndjson").read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == list(range(1, 121))
    assert sorted(line["id"] for line in lines if line["op"] == "delete") == list(range(7, 121, 7))
    assert all(len(line["email"]) == 64 for line in lines if line["op"] == "upsert")  # hashed
    assert len({line["event_id"] for line in lines}) == 120
    with warehouse(folder / "warehouse.duckdb") as con:
        assert con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'crm'"
        ).fetchone() == (0,)
        assert con.execute(
            "SELECT delivered, retried, failed FROM connector_runtime.deliveries"
        ).fetchall() == [(120, 0, 0)]
    # nothing changed since: the next sync delivers nothing again
    assert connector("run", cwd=folder).returncode == 0
    assert len((folder / "contacts.ndjson").read_text().splitlines()) == 120
