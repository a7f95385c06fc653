"""Functions written the way Fivetran's AWS Lambda samples are written run here unchanged,
through the CLI, real worker processes and a real DuckDB file.

The functions below are our own, in the shapes those samples use: `lambda_handler(request,
context)`, string cursors, `hasMore` sent as a string, `softDelete`, errors answered with
`traceback.format_exc()` as the stack trace. Numeric and object secrets are in
`test_secret_values.py`, cloud storage (S3 mode) in `test_cloud_storage.py`.
"""

from __future__ import annotations

import json

STRING_HAS_MORE = """
import json
import pathlib

HERE = pathlib.Path(__file__).parent
PAGES = {
    None: (["a", "b"], "2024-01-02T00:00:00Z", "True"),
    "2024-01-02T00:00:00Z": (["c"], "2024-01-03T00:00:00Z", "false"),
}


def lambda_handler(request, context):
    cursor = request["state"].get("since")
    wanted = json.loads((HERE / "wanted.json").read_text())
    ids, next_cursor, more = PAGES.get(cursor, PAGES[None])  # each sync reads everything
    return {
        "state": {"since": next_cursor},
        "insert": {"customers": [{"id": i, "name": i.upper()} for i in ids if i in wanted]},
        "schema": {"customers": {"primary_key": ["id"]}},
        "softDelete": ["customers"],
        "hasMore": more,
    }
"""


def test_hasMore_as_a_string_pages_on_and_softDelete_marks_what_was_not_resent(project):
    demo = project(STRING_HAS_MORE, function={"handler": "lambda_handler"})
    (demo.root / "wanted.json").write_text('["a", "b", "c"]')

    first = demo.run()

    assert first.returncode == 0, first.stderr
    assert [(s["status"], s["pages"]) for s in demo.syncs()] == [("succeeded", 2)]
    assert demo.state() == {"since": "2024-01-03T00:00:00Z"}
    rows = demo.query("SELECT id, name, _fivetran_deleted FROM demo.customers ORDER BY id")
    assert rows == [("a", "A", False), ("b", "B", False), ("c", "C", False)]

    # the next sync sends everything again but "b": softDelete marks it deleted
    (demo.root / "wanted.json").write_text('["a", "c"]')
    second = demo.run()
    assert second.returncode == 0, second.stderr
    rows = demo.query("SELECT id, _fivetran_deleted FROM demo.customers ORDER BY id")
    assert rows == [("a", False), ("b", True), ("c", False)]


FORMAT_EXC = """
import traceback


def fetch(secrets):
    return {"pagination": {}}["data"]  # the API answered without "data"


def lambda_handler(request, context):
    try:
        rows = fetch(request["secrets"])
    except Exception as error:
        return {
            "errorMessage": str(error),
            "errorType": type(error).__name__,
            "stackTrace": traceback.format_exc(),
        }
    return {"state": {}, "insert": {"quotes": rows}}
"""


def test_a_stack_trace_sent_as_one_string_is_kept_line_by_line(project):
    demo = project(FORMAT_EXC, function={"handler": "lambda_handler"})

    result = demo.run()

    assert result.returncode == 1
    ((alert,),) = [demo.alerts()]
    assert (alert["kind"], alert["error_type"], alert["message"]) == (
        "function_error",
        "KeyError",
        "'data'",
    )
    trace = alert["stack_trace"]
    assert trace[0] == "Traceback (most recent call last):"
    assert trace[-1] == "KeyError: 'data'"
    assert any(
        line.strip() == 'return {"pagination": {}}["data"]  # the API answered without "data"'
        for line in trace
    )
    assert all("\n" not in line for line in trace)


TYPO = """
def lambda_handler(request, context):
    page = request["state"].get("page", 0)
    return {
        "state": {"page": page + 1},
        "insert": {"events": [{"id": page}]},
        "schema": {"events": {"primary_key": ["id"]}},
        "hasmore": page < 3,
    }
"""


def test_a_misspelt_hasMore_fails_the_sync_instead_of_ending_it_early(project):
    demo = project(TYPO, function={"handler": "lambda_handler"})

    result = demo.run()

    assert result.returncode == 1
    ((alert,),) = [demo.alerts()]
    assert alert["kind"] == "invalid_response"
    assert alert["message"].startswith('unknown key "hasmore": did you mean "hasMore"?')
    assert demo.state() == {}  # the page was rejected whole: nothing advanced
    assert "events" not in demo.tables()

    checked = demo.connector("test", "demo")
    assert checked.returncode == 1
    assert checked.said('unknown key "hasmore": did you mean "hasMore"?')


def test_a_state_of_the_wrong_type_is_named_with_its_value(project):
    demo = project(
        'def lambda_handler(request, context):\n    return {"state": "2024-01-01"}\n',
        function={"handler": "lambda_handler"},
    )

    result = demo.run()

    assert result.returncode == 1
    ((alert,),) = [demo.alerts()]
    assert (alert["kind"], alert["message"]) == (
        "invalid_response",
        'state must be an object, got the string "2024-01-01"',
    )
    assert result.said('state must be an object, got the string "2024-01-01"')


EXTRA_KEYS = """
def lambda_handler(request, context):
    page = request["state"].get("page", 0)
    return {
        "state": {"page": page + 1},
        "insert": {"events": [{"id": page}]},
        "nextPageToken": f"token-{page}",
        "hasMore": page < 2,
    }
"""


def test_other_unknown_keys_are_ignored_with_one_warning_per_sync(project):
    demo = project(EXTRA_KEYS, function={"handler": "lambda_handler"})

    result = demo.run()

    assert result.returncode == 0, result.stderr
    assert [(s["status"], s["pages"]) for s in demo.syncs()] == [("succeeded", 3)]
    assert result.stderr.count("unknown_answer_keys_ignored") == 1
    assert result.said("nextPageToken")

    checked = demo.connector("test", "demo")
    assert checked.returncode == 0, checked.stderr
    assert checked.said('ignored unknown keys: "nextPageToken"')


def test_the_request_is_what_a_fivetran_function_reads(project):
    """agent, state, secrets and sync_id, plus setup_test only when testing."""
    demo = project(
        """
        import json, pathlib
        def lambda_handler(request, context):
            with open(pathlib.Path(__file__).parent / "requests.jsonl", "a") as log:
                log.write(json.dumps(request) + "\\n")
            return {"state": {"cursor": "2024-01-01"}, "hasMore": "FALSE"}
        """,
        function={"handler": "lambda_handler"},
        secrets={"apiKey": "k-123456789"},
    )

    assert demo.connector("test", "demo").returncode == 0
    assert demo.run().returncode == 0

    tested, synced = (
        json.loads(line) for line in (demo.root / "requests.jsonl").read_text().splitlines()
    )
    assert tested["setup_test"] is True
    assert "setup_test" not in synced
    assert set(synced) == {"agent", "state", "secrets", "sync_id"}
    assert synced["agent"].startswith("connector-runtime/") and synced["agent"].endswith(
        "/demo/demo"
    )
    assert synced["secrets"] == {"apiKey": "k-123456789"}
    assert synced["state"] == {}
    assert demo.state() == {"cursor": "2024-01-01"}
