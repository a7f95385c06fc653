"""Answers that are valid JSON but hard to carry (issue 11), end to end through the CLI:
integers beyond 64 bits, NaN and Infinity, deep nesting, error shapes without a usable
message, exceptions that cannot describe themselves, millisecond durations.

Most tests use `test_e2e_cli`'s scripted handler (pages.json replayed by the state's
`page`); a page failing on page two is judged by its `assert_failed_on_page_two`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from conftest import serving
from test_e2e_cli import (
    GOOD_PAGE,
    KEYED,
    NEVER_REACHED,
    assert_failed_on_page_two,
    calls,
    scripted_project,
    spoiled,
)

from connector_runtime.config import RetryConfig
from connector_runtime.jsonio import MAX_DEPTH, decode_json, encode_json
from connector_runtime.protocol import parse_response

BIG = 2**70 + 1  # no float is this integer: a round trip through a double would show


def nested(levels: int, leaf=1):
    """`leaf` inside `levels` arrays."""
    for _ in range(levels):
        leaf = [leaf]
    return leaf


def depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


# -- 1. integers beyond 64 bits in the state ----------------------------------------------


def test_a_state_integer_beyond_64_bits_is_saved_and_sent_back_exactly(project):
    demo = scripted_project(
        project,
        [
            {"state": {"page": 1, "cursor": BIG}, "insert": {"t": [{"id": 1, "n": BIG}]}},
            None,  # never asked for: page 0 says hasMore false
        ],
    )
    first = demo.run()
    assert first.returncode == 0, first.stderr
    assert demo.state() == {"page": 1, "cursor": BIG}
    assert demo.query("SELECT id, CAST(n AS VARCHAR) FROM demo.t") == [(1, str(BIG))]

    (demo.root / "pages.json").write_text(
        json.dumps([None, {"state": {"page": 1, "cursor": BIG + 1}, "hasMore": False}])
    )
    second = demo.run()
    assert second.returncode == 0, second.stderr
    # the function got the very integer back, not a double near it
    assert [c["state"] for c in calls(demo)] == [{}, {"page": 1, "cursor": BIG}]
    assert demo.state() == {"page": 1, "cursor": BIG + 1}
    assert [s["status"] for s in demo.syncs()] == ["succeeded", "succeeded"]


# -- 6. NaN and Infinity ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [(float("nan"), "NaN"), (float("inf"), "Infinity"), (float("-inf"), "-Infinity")],
    ids=["nan", "infinity", "minus-infinity"],
)
def test_a_non_finite_number_in_the_state_is_an_invalid_response(project, value, shown):
    # pages.json holds the NaN token; the handler reads it as a Python float("nan")
    bad = spoiled(state={"page": 2, "cursor": value})
    demo = scripted_project(project, [GOOD_PAGE, bad, NEVER_REACHED])
    alert = assert_failed_on_page_two(
        demo, demo.run(), "invalid_response", None, [f"state.cursor is {shown}"]
    )
    assert alert["message"] == f"state.cursor is {shown}, which JSON cannot carry"


def test_a_nan_deep_in_the_state_is_named_by_its_path(project):
    bad = spoiled(state={"page": 2, "cursors": [{"id": 1}, {"id": float("nan")}]})
    demo = scripted_project(project, [GOOD_PAGE, bad, NEVER_REACHED])
    alert = assert_failed_on_page_two(demo, demo.run(), "invalid_response", None)
    assert alert["message"] == "state.cursors[1].id is NaN, which JSON cannot carry"


class _Answers(BaseHTTPRequestHandler):
    """Answers every POST with the server's `bodies`, in turn (the last one repeats)."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        bodies = self.server.bodies
        body = bodies.pop(0) if len(bodies) > 1 else bodies[0]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def http_function(*bodies: bytes) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    server.bodies = list(bodies)
    with serving(server):
        yield f"http://127.0.0.1:{server.server_address[1]}/"


def test_nan_text_from_an_http_function_is_refused_in_the_state(project):
    demo = project("")
    first = b'{"state": {"page": 1}, "insert": {"good": [{"id": 1}]}, "hasMore": true}'
    second = b'{"state": {"page": 2, "cursor": NaN}, "insert": {"good": [{"id": 2}]}}'
    with http_function(first, second) as url:
        document = yaml.safe_load(demo.config.read_text())
        document["connectors"]["demo"]["function"] = {"http": url}
        demo.config.write_text(yaml.safe_dump(document))
        result = demo.run()
    assert result.returncode == 1, result.stderr
    [alert] = demo.alerts()
    assert (alert["kind"], alert["message"]) == (
        "invalid_response",
        "state.cursor is NaN, which JSON cannot carry",
    )
    assert demo.state() == {"page": 1}  # page 2 left nothing behind
    assert demo.query("SELECT id FROM demo.good") == [(1,)]


def test_nan_and_infinity_in_a_double_column_keep_their_ieee_values(project):
    rows = [
        {"id": 1, "x": float("nan")},
        {"id": 2, "x": float("inf")},
        {"id": 3, "x": float("-inf")},
        {"id": 4, "x": 1.5},
        {"id": 5, "x": None},
    ]
    demo = scripted_project(project, [{"state": {"page": 0}, "insert": {"t": rows}}])
    result = demo.run()
    assert result.returncode == 0, result.stderr
    stored = demo.query("SELECT id, x, isnan(x), typeof(x) FROM demo.t ORDER BY id")
    assert [(i, nan) for i, _, nan, _ in stored] == [
        (1, True),
        (2, False),
        (3, False),
        (4, False),
        (5, None),
    ]
    assert [x for _, x, _, _ in stored][1:] == [float("inf"), float("-inf"), 1.5, None]
    assert {kind for *_, kind in stored} == {"DOUBLE"}


# -- 7. deep nesting ------------------------------------------------------------------------


def test_state_and_json_values_nested_250_deep_are_carried(project):
    deep = nested(250, "leaf")
    demo = scripted_project(
        project,
        [{"state": {"page": 1, "deep": deep}, "insert": {"t": [{"id": 1, "doc": deep}]}}, None],
        code="if n == 1:\n    pages[1] = {'state': request['state'], 'hasMore': False}\n",
    )
    first = demo.run()
    assert first.returncode == 0, first.stderr
    assert demo.state() == {"page": 1, "deep": deep}
    [(doc,)] = demo.query("SELECT CAST(doc AS VARCHAR) FROM demo.t")
    assert json.loads(doc) == deep
    second = demo.run()  # the deep state goes back to the function and is saved again
    assert second.returncode == 0, second.stderr
    assert calls(demo)[1]["state"] == {"page": 1, "deep": deep}


def test_an_answer_nested_deeper_than_the_limit_says_so(project):
    too_deep = nested(MAX_DEPTH, "leaf")  # 4 levels more inside the answer
    bad = spoiled(insert={"good": [{"id": 2, "doc": too_deep}]})
    demo = scripted_project(project, [GOOD_PAGE, bad, NEVER_REACHED])
    alert = assert_failed_on_page_two(demo, demo.run(), "invalid_response", None)
    assert alert["message"].startswith(
        f"the function's answer is nested deeper than {MAX_DEPTH} levels (at insert.good[0].doc"
    ), alert["message"]
    assert "recursion" not in alert["message"]


def test_the_depth_limit_is_what_every_json_writer_carries():
    at_limit = {"state": {}, "insert": {"t": [{"doc": nested(MAX_DEPTH - 4)}]}}
    assert depth(at_limit) == MAX_DEPTH
    raw = encode_json(at_limit)
    response = parse_response(raw)
    assert response.insert["t"][0]["doc"] == nested(MAX_DEPTH - 4)
    assert decode_json(encode_json({"state": nested(MAX_DEPTH - 1)}))  # a request's depth
    assert parse_response(json.dumps({"state": {"a": nested(MAX_DEPTH - 2)}}).encode())
    assert _refusal(MAX_DEPTH - 1).endswith(
        f"nested deeper than {MAX_DEPTH} levels (at state.a[0][0][0][0]...)"
    )
    # beyond the depth Python's own parser reaches
    assert _refusal(5000) == f"the function's answer is nested deeper than {MAX_DEPTH} levels"


def _refusal(levels: int) -> str:
    """The message for a state whose `a` holds `levels` nested arrays."""
    from connector_runtime.errors import InvalidResponse

    raw = b'{"state": {"a": ' + b"[" * levels + b"1" + b"]" * levels + b"}}"
    with pytest.raises(InvalidResponse) as refused:
        parse_response(raw)
    return refused.value.message


# -- 4. error answers without a usable message -----------------------------------------------


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("", "Boom (the function gave no message)"),
        ("  \n", "Boom (the function gave no message)"),
        (None, "Boom (the function gave no message)"),
        ({}, "Boom (the function gave no message)"),
        ([], "Boom (the function gave no message)"),
        (0, "errorMessage was 0, not a message"),
        (True, "errorMessage was true, not a message"),
        ({"code": 7}, 'errorMessage was {"code":7}, not a message'),
    ],
    ids=["empty", "blank", "null", "empty-object", "empty-array", "zero", "true", "object"],
)
def test_an_error_answer_without_a_message_still_says_something(project, message, shown):
    error = {"errorMessage": message, "errorType": "Boom"}
    demo = scripted_project(project, [GOOD_PAGE, error, NEVER_REACHED])
    alert = assert_failed_on_page_two(demo, demo.run(), "function_error", "Boom")
    assert alert["message"] == shown


def test_an_error_answer_without_a_type_is_a_function_error():
    from connector_runtime.errors import FunctionError

    with pytest.raises(FunctionError) as raised:
        parse_response(b'{"errorMessage": "", "errorType": " "}')
    assert (raised.value.error_type, raised.value.message) == (
        "FunctionError",
        "FunctionError (the function gave no message)",
    )


def test_an_exception_without_a_message_names_its_type(project):
    demo = scripted_project(
        project, [GOOD_PAGE, GOOD_PAGE, NEVER_REACHED], code="if n == 1:\n    raise MemoryError()\n"
    )
    alert = assert_failed_on_page_two(demo, demo.run(), "function_error", "MemoryError")
    assert alert["message"] == "MemoryError (the function gave no message)"


# -- 8. an exception whose __str__ raises ---------------------------------------------------

UNREADABLE = """
class Unreadable(Exception):
    def __str__(self):
        raise ValueError("no text today")
"""


def test_an_exception_whose_str_raises_is_a_function_error_with_its_trace(project):
    demo = scripted_project(
        project,
        [GOOD_PAGE, GOOD_PAGE, NEVER_REACHED],
        preamble=UNREADABLE,
        code="if n == 1:\n    raise Unreadable()\n",
    )
    alert = assert_failed_on_page_two(demo, demo.run(), "function_error", "Unreadable")
    assert alert["message"] == (
        "Unreadable (its message could not be read: ValueError: no text today)"
    )
    file, _, function, code = alert["stack_trace"][-1]
    assert (file.endswith("handler.py"), function) == (True, "handler")
    assert "raise Unreadable()" in code


def test_an_inline_exception_whose_str_raises_is_described_too(project):
    demo = scripted_project(
        project,
        [GOOD_PAGE, GOOD_PAGE, NEVER_REACHED],
        preamble=UNREADABLE,
        code="if n == 1:\n    raise Unreadable()\n",
        function={"isolation": "inline"},
    )
    alert = assert_failed_on_page_two(demo, demo.run(), "function_error", "Unreadable")
    assert alert["message"].startswith("Unreadable (its message could not be read: ValueError")


# -- 9. durations in milliseconds -----------------------------------------------------------


def test_retry_durations_take_milliseconds(project):
    demo = scripted_project(
        project,
        [{"state": {"page": 0}, "insert": {"t": [{"id": 1}]}}],
        function={"retry": {"base": "10ms", "cap": "1.5ms"}},
    )
    refused = demo.run()  # cap below base: the units were read
    assert refused.returncode == 2 and refused.said("cap must not be shorter than base")

    demo.write_config(function={"retry": {"base": "10ms", "cap": "250 ms"}, "timeout": "2500ms"})
    result = demo.run()
    assert result.returncode == 0, result.stderr
    retry = RetryConfig(base="10ms", cap="250 ms")
    assert (retry.base, retry.cap) == (0.01, 0.25)


# -- 2. a huge integer and a float in one inferred column -----------------------------------


@pytest.mark.parametrize("same_page", [True, False], ids=["one-page", "two-pages"])
def test_a_huge_integer_and_a_float_in_one_column_widen_to_double(project, same_page):
    huge, fraction = {"id": 1, "x": 10**30}, {"id": 2, "x": 1.5}
    if same_page:
        pages = [
            {
                "state": {"page": 0},
                "insert": {"t": [huge, fraction]},
                "schema": {"t": KEYED["good"]},
            }
        ]
    else:
        pages = [
            {
                "state": {"page": 1},
                "insert": {"t": [huge]},
                "schema": {"t": KEYED["good"]},
                "hasMore": True,
            },
            {"state": {"page": 0}, "insert": {"t": [fraction]}},
        ]
    demo = scripted_project(project, pages)
    result = demo.run()
    assert result.returncode == 0, result.stderr
    assert demo.query("SELECT id, x, typeof(x) FROM demo.t ORDER BY id") == [
        (1, 1e30, "DOUBLE"),
        (2, 1.5, "DOUBLE"),
    ]


# -- the same through a JavaScript function -------------------------------------------------

NODE_HANDLER = """\
export async function handler(request) {
  const page = request.state.page ?? 0;
  if (page === 0) return { state: { page: 1 }, insert: { good: [{ id: 1 }] }, hasMore: true };
  if (MODE === 'nan') return { state: { page: 2, cursor: NaN }, insert: { good: [{ id: 2 }] } };
  if (MODE === 'bigint') return { state: { page: 2, cursor: 2n ** 70n + 1n }, hasMore: false };
  const unreadable = new Error('hidden');
  Object.defineProperty(unreadable, 'message', { get() { throw new RangeError('no text'); } });
  throw MODE === 'no-prototype' ? Object.create(null) : unreadable;
}
"""


@pytest.mark.parametrize(
    ("mode", "kind", "error_type", "message"),
    [
        (
            "nan",
            "invalid_response",
            "InvalidResponse",
            "state.cursor is NaN, which JSON cannot carry",
        ),
        ("bigint", None, None, None),
        (
            "unreadable",
            "function_error",
            "Error",
            "Error (its message could not be read: RangeError: no text)",
        ),
        (
            "no-prototype",
            "function_error",
            "object",
            "object (its message could not be read: TypeError: Cannot convert object to "
            "primitive value)",
        ),
    ],
)
def test_a_javascript_function_gets_the_same_judgement(project, mode, kind, error_type, message):
    if shutil.which("node") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is not on PATH (CI=true: the tests need it)")
        pytest.skip("node is not on PATH")
    demo = project("")
    (demo.root / "handler.mjs").write_text(f"const MODE = {json.dumps(mode)};\n{NODE_HANDLER}")
    demo.handler = demo.root / "handler.mjs"
    demo.write_config()
    result = demo.run()
    if kind is None:
        assert result.returncode == 0, result.stderr
        assert demo.state() == {"page": 2, "cursor": BIG}
        return
    assert result.returncode == 1, result.stderr
    [alert] = demo.alerts()
    assert (alert["kind"], alert["error_type"], alert["message"]) == (kind, error_type, message)
    assert demo.state() == {"page": 1}
    assert demo.query("SELECT id FROM demo.good") == [(1,)]
