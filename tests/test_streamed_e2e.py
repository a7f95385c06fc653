"""Streamed answers end to end, through the CLI as a user types it (`connector run`,
`connector test`, `connector syncs`): Python generators in real worker processes,
JavaScript and TypeScript in real node workers, an NDJSON HTTP function on loopback,
into real DuckDB files.

Every function here streams the same two pages (`PAGES`, chosen by the state's `page`),
so each transport must leave the same tables, state and sync record. Without node (or
esbuild for TypeScript) those tests skip, or fail when CI=true.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import serving
from test_typescript import ts_project as ts_project  # fixtures

PEOPLE = {"people": {"primary_key": ["id"]}}
# The parts of each page. `people` is keyed: Ada comes twice in page 1 (the later part
# wins) and Bob, changed in a part of page 2, is deleted by a later part of it. `events`
# has no key: its rows are appended, numbered by page and part. Page 2 adds a column.
PAGES = [
    [
        {
            "schema": PEOPLE,
            "insert": {"people": [{"id": 1, "name": "Ada"}, {"id": 2, "name": "Bob"}]},
        },
        {"insert": {"people": [{"id": 1, "name": "Ada L."}], "events": [{"kind": "signup"}]}},
        {"insert": {"events": [{"kind": "rename"}]}, "state": {"page": 1}, "hasMore": True},
    ],
    [
        {
            "insert": {
                "people": [
                    {"id": 2, "name": "Bob B."},
                    {"id": 3, "name": "Zoë", "email": "z@example.com"},
                ],
                "events": [{"kind": "leave"}],
            }
        },
        {"delete": {"people": [{"id": 2}]}},
        {"state": {"page": 2}, "hasMore": False},
    ],
]
PAGES_JSON = json.dumps(PAGES, ensure_ascii=False)

PYTHON_STREAMER = f"""\
import json

PAGES = json.loads({PAGES_JSON!r})


def handler(request):
    page = request["state"].get("page", 0)
    for part in PAGES[page]:
        yield part
"""


def assert_both_pages_synced(demo, result) -> None:
    """What syncing `PAGES` in one run leaves, and what the run printed."""
    assert result.returncode == 0, result.stderr
    assert result.said("demo: page 1, 5 upserted, 0 deleted (committed)"), result.stderr
    assert result.said("demo: page 2, 8 upserted, 1 deleted (committed)"), (
        result.stderr
    )  # the sync so far
    assert result.said("2 page(s), 8 rows upserted, 1 deleted"), result.stderr
    # by table: upserted, deleted, delete keys not found
    assert re.search(r"events\s+3\s+0\s+0\s+people\s+5\s+1\s+0\b", result.stderr)
    assert result.said("people.email added as VARCHAR"), result.stderr
    assert demo.query("SELECT id, name, email, _fivetran_deleted FROM demo.people ORDER BY id") == [
        (1, "Ada L.", None, False),
        (2, "Bob B.", None, True),
        (3, "Zoë", "z@example.com", False),
    ]
    (sync,) = listed_syncs(demo)
    batch = sync["sync_id"]
    # appended rows are numbered by sync, page and part: page 2 is the second page
    assert demo.query(
        "SELECT kind, _fivetran_batch, _fivetran_index FROM demo.events ORDER BY kind"
    ) == [
        ("leave", f"{batch}:2:1", 0),
        ("rename", f"{batch}:1:3", 0),
        ("signup", f"{batch}:1:2", 0),
    ]
    assert (sync["status"], sync["pages"], sync["rows_upserted"], sync["rows_deleted"]) == (
        "succeeded",
        2,
        8,
        1,
    )
    assert demo.state() == {"page": 2}


def listed_syncs(demo) -> list[dict]:
    """`connector syncs demo --json`: newest first."""
    listed = demo.connector("syncs", "demo", "--json")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def columns(demo, table: str) -> list[str]:
    return [
        name
        for (name,) in demo.query(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'demo' AND table_name = ? ORDER BY ordinal_position",
            table,
        )
    ]


# -- Python ----------------------------------------------------------------------------------


def test_a_python_generator_streams_two_pages(project):
    demo = project(PYTHON_STREAMER)

    assert_both_pages_synced(demo, demo.run())

    tested = demo.connector("test", "demo")
    assert tested.returncode == 0, tested.stderr
    assert tested.said(
        "demo: the function answered with a valid response (fivetran handler; streamed in 3"
        " parts; 5 rows; people: 2 columns, events: 1 columns; hasMore True)"
    ), tested.stderr


ASYNC_STREAMER = f"""\
import asyncio
import json

PAGES = json.loads({PAGES_JSON!r})
BROKEN = True


async def handler(request):
    page = request["state"].get("page", 0)
    for number, part in enumerate(PAGES[page], 1):
        if BROKEN and page == 1 and number == 3:
            raise ConnectionError("the API hung up on page 2")
        await asyncio.sleep(0)
        yield part
"""


def test_a_raise_mid_stream_fails_the_sync_and_leaves_nothing_of_the_page(project):
    demo = project(ASYNC_STREAMER)

    failed = demo.run()
    assert failed.returncode == 1, failed.stderr
    assert failed.said("function_error (ConnectionError): the API hung up on page 2")
    assert failed.said("the state stays at the last committed page; the next sync resumes there")
    (alert,) = demo.alerts()
    assert (alert["kind"], alert["error_type"], alert["message"]) == (
        "function_error",
        "ConnectionError",
        "the API hung up on page 2",
    )
    assert alert["stack_trace"][-1][0] == str(demo.handler), alert["stack_trace"]
    # page 1 stays; of page 2's first 2 parts (Bob changed and deleted, Zoë with a new
    # column, an event) nothing
    assert demo.state() == {"page": 1}
    assert demo.query("SELECT id, name FROM demo.people ORDER BY id") == [
        (1, "Ada L."),
        (2, "Bob"),
    ]
    assert columns(demo, "people") == ["id", "name", "_fivetran_synced"]
    assert demo.query("SELECT kind FROM demo.events ORDER BY kind") == [("rename",), ("signup",)]
    (sync,) = listed_syncs(demo)
    assert (sync["status"], sync["pages"], sync["rows_upserted"], sync["error"]) == (
        "failed",
        1,
        5,
        "function_error: the API hung up on page 2",
    )

    demo.write_handler(ASYNC_STREAMER.replace("BROKEN = True", "BROKEN = False"))
    fixed = demo.run()
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.said("demo: page 1, 3 upserted, 1 deleted (committed)"), fixed.stderr
    assert demo.state() == {"page": 2}
    assert demo.query("SELECT id, name, email, _fivetran_deleted FROM demo.people ORDER BY id") == [
        (1, "Ada L.", None, False),
        (2, "Bob B.", None, True),
        (3, "Zoë", "z@example.com", False),
    ]
    assert demo.query("SELECT kind FROM demo.events ORDER BY kind") == [
        ("leave",),
        ("rename",),
        ("signup",),
    ]
    newest, _ = listed_syncs(demo)
    assert (newest["status"], newest["pages"], newest["rows_upserted"], newest["rows_deleted"]) == (
        "succeeded",
        1,
        3,
        1,
    )
    assert [a["resolved"] for a in demo.alerts()] == [True]


def test_a_part_after_the_one_with_state_fails_the_sync_naming_it(project):
    demo = project(PYTHON_STREAMER + '    yield {"insert": {"events": [{"kind": "late"}]}}\n')

    result = demo.run()
    assert result.returncode == 1, result.stderr
    (alert,) = demo.alerts()
    assert alert["kind"] == "invalid_response"
    assert alert["message"] == (
        f"streamed answer from {demo.handler}, part 4: came after the part that carried state; "
        "that part must be the last"
    )
    assert result.said(f"invalid_response (InvalidResponse): {alert['message']}"), result.stderr
    assert demo.tables() == [] and demo.state() == {}
    (sync,) = listed_syncs(demo)
    assert (sync["status"], sync["pages"], sync["rows_upserted"]) == ("failed", 0, 0)

    tested = demo.connector("test", "demo")
    assert tested.returncode == 1
    assert tested.said(f"demo: invalid_response (InvalidResponse): {alert['message']}")


# -- JavaScript and TypeScript -----------------------------------------------------------

ASYNC_GENERATOR_MJS = f"""\
const PAGES = {PAGES_JSON};

export async function* handler(request) {{
  for (const part of PAGES[request.state.page ?? 0]) yield part;
}}
"""
# the page as NDJSON bytes, 5 at a time: lines are cut, and so is the ë of Zoë
READABLE_STREAM_MJS = f"""\
const PAGES = {PAGES_JSON};

export const handler = async (request) => {{
  const lines = PAGES[request.state.page ?? 0].map((part) => JSON.stringify(part) + "\\n");
  const bytes = new TextEncoder().encode(lines.join(""));
  let at = 0;
  return new ReadableStream({{
    pull(controller) {{
      if (at < bytes.length) controller.enqueue(bytes.subarray(at, (at += 5)));
      else controller.close();
    }},
  }});
}};
"""
WEB_TS = f"""\
import type {{ Context }} from "@netlify/functions";

type Part = Record<string, unknown>;
const PAGES: Part[][] = {PAGES_JSON};

export default async (req: Request, context: Context): Promise<Response> => {{
  const {{ state }} = (await req.json()) as {{ state: {{ page?: number }} }};
  const lines = PAGES[state.page ?? 0].map((part) => JSON.stringify(part) + "\\n");
  const encoder = new TextEncoder();
  const stream = new ReadableStream<Uint8Array>({{
    pull(controller) {{
      const line = lines.shift();
      if (line === undefined) controller.close();
      else controller.enqueue(encoder.encode(line));
    }},
  }});
  return new Response(stream, {{ headers: {{ "content-type": "application/x-ndjson" }} }});
}};
"""


@pytest.mark.parametrize(
    ("name", "source"),
    [
        pytest.param("handler.mjs", ASYNC_GENERATOR_MJS, id="async-generator"),
        pytest.param("handler.mjs", READABLE_STREAM_MJS, id="readable-stream-of-ndjson"),
        pytest.param("handler.ts", WEB_TS, id="typescript-web-response"),
    ],
)
def test_a_node_function_streams_two_pages(ts_project, name, source):
    demo = ts_project({name: source}, esbuild=name.endswith(".ts"), local=name)
    assert_both_pages_synced(demo, demo.run())


# -- HTTP ------------------------------------------------------------------------------------

NDJSON = "application/x-ndjson"


class _Function(BaseHTTPRequestHandler):
    """Answers each POST with the server's `answer(request, call number)`: a list of parts
    as chunked NDJSON, 16 bytes to a chunk (`cut` bytes of it, then the connection
    breaks), or a dict as one whole JSON body."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(request)
        answer, cut = self.server.answer(request, len(self.server.requests))
        if isinstance(answer, dict):
            body = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        body = ndjson(answer)[:cut]
        self.send_response(200)
        self.send_header("Content-Type", NDJSON)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for at in range(0, len(body), 16):
            chunk = body[at : at + 16]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        if cut is not None:  # no last chunk: the answer broke off
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


def ndjson(parts: list[dict]) -> bytes:
    return "".join(json.dumps(part, ensure_ascii=False) + "\n" for part in parts).encode()


@contextmanager
def http_function(answer: Callable[[dict, int], tuple]) -> Iterator[ThreadingHTTPServer]:
    """A function host on 127.0.0.1; `requests` holds every request it received."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Function)
    server.answer, server.requests = answer, []
    with serving(server):
        yield server


def http_project(project, server: ThreadingHTTPServer):
    url = f"http://127.0.0.1:{server.server_address[1]}/sync"
    retry = {"base": "10ms", "cap": "20ms"}  # a broken-off stream is asked for again at once
    return project("", function={"local": None, "http": url, "retry": retry})


def test_an_ndjson_http_function_streams_two_pages(project):
    with http_function(lambda request, _: (PAGES[request["state"].get("page", 0)], None)) as server:
        demo = http_project(project, server)
        result = demo.run()
    assert_both_pages_synced(demo, result)
    assert [request["state"] for request in server.requests] == [{}, {"page": 1}]


LOG = [
    {"insert": {"log": [{"n": 1}]}},
    {"insert": {"log": [{"n": 2}]}},
    {"state": {"page": 1}, "hasMore": False},
]
WHOLE_LOG = {"state": {"page": 1}, "insert": {"log": [{"n": 1}, {"n": 2}]}, "hasMore": False}


@pytest.mark.parametrize(
    "again", [pytest.param(LOG, id="streamed"), pytest.param(WHOLE_LOG, id="whole")]
)
def test_a_stream_broken_off_is_asked_for_again_and_applied_once(project, again):
    # the first answer breaks in the middle of its second line
    cut = len(ndjson(LOG[:1])) + 5
    with http_function(lambda _, call: (LOG, cut) if call == 1 else (again, None)) as server:
        demo = http_project(project, server)
        result = demo.run()
    assert result.returncode == 0, result.stderr
    assert result.said("the streamed answer broke off: IncompleteRead"), result.stderr
    assert result.said("demo: page 1, 2 upserted, 0 deleted (committed)"), result.stderr
    # `log` has no key: a row written twice would be there twice
    assert demo.query("SELECT n FROM demo.log ORDER BY n") == [(1,), (2,)]
    assert [request["state"] for request in server.requests] == [{}, {}]
    assert len({request["sync_id"] for request in server.requests}) == 1
    (sync,) = listed_syncs(demo)
    assert (sync["status"], sync["pages"], sync["rows_upserted"]) == ("succeeded", 1, 2)
    assert demo.state() == {"page": 1}
    assert demo.alerts() == []
