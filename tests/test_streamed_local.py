"""Streamed answers (design §13) from local functions: Python handlers in real worker
processes and inline, JavaScript handlers in real node workers.

A handler that returns a generator, an async generator, an async iterator or a
`ReadableStream` answers a `Stream` of parts. Without `node` on PATH the JavaScript tests
skip, or fail when CI=true (conftest's `node` fixture).
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pytest
from test_local_invoker import REQUEST, with_state
from test_local_invoker import restore_imports as restore_imports  # an autouse fixture
from typescript_toolchain import link_esbuild

from connector_runtime import errors
from connector_runtime.invokers import Stream
from connector_runtime.invokers.local import LocalPythonInvoker
from connector_runtime.invokers.node import NodeInvoker

PAGE_END = {"state": {"cursor": 3}, "hasMore": False}
ROWS = [{"insert": {"orders": [{"id": n}]}} for n in (1, 2, 3)]


@pytest.fixture
def make_invoker(tmp_path):
    """Write `source` as a handler file (`.py`: a Python invoker, else node) and return
    an invoker for it, closed after the test."""
    invokers: list[LocalPythonInvoker | NodeInvoker] = []

    def make(source: str, *, name: str = "handler.py", **options):
        options.setdefault("timeout", 30)  # a broken protocol fails instead of hanging
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        kind = LocalPythonInvoker if path.suffix == ".py" else NodeInvoker
        invokers.append(kind(path, **options))
        return invokers[-1]

    yield make
    for invoker in invokers:
        invoker.close()


@pytest.fixture(params=["process", "inline"])
def isolation(request) -> str:
    return request.param


def streamed(invoker, request: dict = REQUEST) -> list:
    """The parts of a streamed answer, read to its end."""
    stream = invoker.invoke(request)
    assert isinstance(stream, Stream)
    with stream:
        parts = [json.loads(part) for part in stream]
    assert stream.ended
    return parts


def worker_pid(invoker) -> int:
    return json.loads(invoker.invoke(with_state(action="pid")))["state"]["pid"]


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- Python --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            """
            def handler(request):
                for n in (1, 2, 3):
                    yield {"insert": {"orders": [{"id": n}]}}
                yield {"state": {"cursor": 3}, "hasMore": False}
            """,
            id="generator",
        ),
        pytest.param(
            """
            import asyncio

            async def handler(request):
                for n in (1, 2, 3):
                    await asyncio.sleep(0)
                    yield {"insert": {"orders": [{"id": n}]}}
                yield {"state": {"cursor": 3}, "hasMore": False}
            """,
            id="async-generator",
        ),
        pytest.param(
            """
            async def handler(request):  # a coroutine answering a generator
                return iter([{"insert": {"orders": [{"id": n}]}} for n in (1, 2, 3)]
                            + [{"state": {"cursor": 3}, "hasMore": False}])
            """,
            id="awaited-iterator",
        ),
        pytest.param(
            """
            def handler(request):  # NDJSON text cut mid-line, as str and bytes
                yield '{"insert": {"orders": [{"id": 1}]}}\\n{"insert": {"ord'
                yield b'ers": [{"id": 2}]}}\\n\\n  {"insert": {"orders": [{"id"'
                yield ': 3}]}}\\n{"state": {"cursor": 3},'
                yield ' "hasMore": false}'
            """,
            id="ndjson-chunks",
        ),
        pytest.param(
            """
            def handler(request):  # text and dicts mixed
                yield {"insert": {"orders": [{"id": 1}]}}
                yield '{"insert": {"orders": [{"id": 2}]}}\\n'
                yield {"insert": {"orders": [{"id": 3}]}}
                yield '{"state": {"cursor": 3}, "hasMore": false}'
            """,
            id="mixed",
        ),
    ],
)
def test_a_python_handler_streams_its_parts(make_invoker, isolation, body):
    invoker = make_invoker(body, isolation=isolation)
    assert streamed(invoker) == [*ROWS, PAGE_END]
    assert invoker.shape == "fivetran"


def test_a_raise_mid_stream_ends_it_with_the_error_shape(make_invoker, isolation):
    invoker = make_invoker(
        """
        def handler(request):
            yield {"insert": {"orders": [{"id": 1}]}}
            raise RuntimeError("the API went away")
        """,
        isolation=isolation,
    )
    first, failure = streamed(invoker)
    assert first == ROWS[0]
    assert failure["errorMessage"] == "the API went away"
    assert failure["errorType"] == "RuntimeError"
    [frame] = failure["stackTrace"]
    assert frame[0].endswith("handler.py") and frame[2:] == [
        "handler",
        'raise RuntimeError("the API went away")',
    ]


def test_a_part_that_will_not_encode_ends_the_stream_with_a_marshal_error(make_invoker):
    invoker = make_invoker(
        """
        def handler(request):
            yield {"insert": {"orders": [{"id": 1}]}}
            yield {"insert": {"orders": [{"id": object()}]}}
            yield {"state": {}}
        """
    )
    first, failure = streamed(invoker)
    assert first == ROWS[0]
    assert failure["errorType"] == "Runtime.MarshalError"
    assert failure["errorMessage"].startswith("Unable to marshal response:")


def test_what_the_stream_printed_is_in_the_output_at_its_end(make_invoker):
    invoker = make_invoker(
        """
        def handler(request):
            for n in range(50):
                print("part", n)
                yield {"insert": {"orders": [{"id": n}]}}
            yield {"state": {}}
        """
    )
    assert len(streamed(invoker)) == 51
    assert invoker.output.text().splitlines()[-1] == "part 49"


@pytest.mark.parametrize("shape", [None, "netlify"])
def test_a_netlify_body_that_is_a_generator_streams(make_invoker, isolation, shape):
    invoker = make_invoker(
        """
        def handler(event, context):
            def body():
                yield {"insert": {"orders": [{"id": 1}]}}
                yield '{"state": {"cursor": 3}, "hasMore": false}\\n'
            return {"statusCode": 200, "body": body()}
        """,
        isolation=isolation,
        shape=shape,
    )
    assert streamed(invoker) == [ROWS[0], PAGE_END]
    assert invoker.shape == "netlify"


def test_a_streamed_netlify_body_with_a_failed_status_is_quoted(make_invoker):
    invoker = make_invoker(
        """
        def handler(event, context):
            def body():
                yield "the upstream API said no\\n"
                yield {"detail": "quota exceeded"}
            return {"statusCode": 502, "body": body()}
        """,
        shape="netlify",
    )
    with pytest.raises(errors.InvokeFailed) as failure:
        invoker.invoke(REQUEST)
    assert str(failure.value) == (
        "the netlify handler answered 502 Bad Gateway: "
        'the upstream API said no {"detail":"quota exceeded"}'
    )


def test_an_azure_body_that_is_a_generator_streams(make_invoker):
    invoker = make_invoker(
        """
        def main(req):
            return {"status": 200, "body": iter([{"state": {"cursor": 3}, "hasMore": False}])}
        """,
        shape=None,
    )
    assert streamed(invoker) == [PAGE_END]
    assert invoker.shape == "azure"


STREAMER = """
    import os
    import sys
    import time

    def handler(request):
        action = request["state"].get("action")
        if action == "pid":
            return {"state": {"pid": os.getpid()}}
        return parts(action, request["state"].get("count", 1))

    def parts(action, count):
        blob = "x" * (1024 * 1024)
        for n in range(count):
            print("made part", n)
            yield {"insert": {"blobs": [{"id": n, "blob": blob}]}}
        if action == "hang":
            time.sleep(600)
        if action == "exit":
            print("leaving mid-stream")
            sys.exit(3)
        yield {"state": {"count": count}}
"""


def test_a_stream_past_the_timeout_kills_the_worker_and_the_next_call_works(make_invoker):
    invoker = make_invoker(STREAMER, timeout=4)
    before = worker_pid(invoker)
    stream = invoker.invoke(with_state(action="hang"))
    assert json.loads(next(stream))["insert"]["blobs"][0]["id"] == 0
    with pytest.raises(errors.FunctionError, match="timed out after 4 s") as failure:
        next(stream)
    stream.close()
    assert failure.value.error_type == "Sandbox.Timedout"
    assert not is_running(before)
    assert worker_pid(invoker) != before


def test_an_exit_mid_stream_is_an_exit_error_and_a_fresh_worker_follows(make_invoker):
    invoker = make_invoker(STREAMER)
    before = worker_pid(invoker)
    with pytest.raises(errors.FunctionError, match="exit status 3") as failure:
        streamed(invoker, with_state(action="exit"))
    assert failure.value.error_type == "Runtime.ExitError"
    assert failure.value.log_tail[-1] == "leaving mid-stream"
    assert worker_pid(invoker) != before


def test_closing_a_stream_early_kills_its_worker_and_the_next_call_works(make_invoker):
    invoker = make_invoker(STREAMER)
    before = worker_pid(invoker)
    stream = invoker.invoke(with_state(count=50))  # more than the pipe holds: it blocks
    next(stream)
    stream.close()
    stream.close()  # idempotent
    assert not is_running(before)
    after = worker_pid(invoker)
    assert after != before
    assert streamed(invoker, with_state(count=2))[-1] == {"state": {"count": 2}}
    assert worker_pid(invoker) == after  # a stream read to its end keeps the worker warm


def test_a_stream_left_unread_is_dropped_at_the_next_call(make_invoker):
    invoker = make_invoker(STREAMER)
    before = worker_pid(invoker)
    invoker.invoke(with_state(count=50))
    assert worker_pid(invoker) != before


def test_a_stream_read_on_after_its_invoker_closed_says_so(make_invoker):
    invoker = make_invoker(STREAMER)
    stream = invoker.invoke(with_state(count=3))
    invoker.close()
    with pytest.raises(errors.InvokeFailed, match="closed .* before it was read to its end"):
        list(stream)


def test_closing_an_inline_stream_early_closes_the_generator(make_invoker, tmp_path):
    closed = tmp_path / "closed"
    invoker = make_invoker(
        f"""
        def handler(request):
            try:
                while True:
                    yield {{"insert": {{"orders": [{{"id": 1}}]}}}}
            finally:
                open({str(closed)!r}, "w").close()
        """,
        isolation="inline",
    )
    stream = invoker.invoke(REQUEST)
    assert json.loads(next(stream)) == ROWS[0]
    stream.close()
    assert closed.exists()


def test_a_200_mb_stream_passes_in_bounded_memory(make_invoker):
    invoker = make_invoker(STREAMER, timeout=120)
    worker_pid(invoker)  # started and warm
    before = peak = resident_mb()
    received = 0
    with invoker.invoke(with_state(count=200)) as stream:
        for number, part in enumerate(stream):
            received += len(part)
            if number % 10 == 0:
                peak = max(peak, resident_mb())
    assert received > 200 * 1024 * 1024
    assert json.loads(part) == {"state": {"count": 200}}
    assert peak - before < 100


def resident_mb() -> float:
    """This process's resident memory (VmRSS), in MB."""
    status = Path("/proc/self/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("VmRSS:")]
    return int(line.split()[1]) / 1024


def test_a_normal_answer_still_comes_as_bytes(make_invoker, isolation):
    invoker = make_invoker(
        "def handler(request):\n    return {'state': {}, 'insert': {'t': [{'id': 1}]}}\n",
        isolation=isolation,
    )
    assert json.loads(invoker.invoke(REQUEST)) == {"state": {}, "insert": {"t": [{"id": 1}]}}


# -- JavaScript ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "body"),
    [
        pytest.param(
            "handler.mjs",
            """
            export async function* handler(event) {
              for (const id of [1, 2, 3]) yield { insert: { orders: [{ id }] } };
              yield { state: { cursor: 3 }, hasMore: false };
            }
            """,
            id="async-generator",
        ),
        pytest.param(
            "handler.cjs",
            """
            exports.handler = async () => (function* () {
              for (const id of [1, 2, 3]) yield { insert: { orders: [{ id }] } };
              yield { state: { cursor: 3 }, hasMore: false };
            })();
            """,
            id="generator",
        ),
        pytest.param(
            "handler.mjs",
            """
            export const handler = async () => {
              const chunks = [
                '{"insert": {"orders": [{"id": 1}]}}\\n{"insert": {"ord',
                'ers": [{"id": 2}]}}\\n\\n {"insert": {"orders": [{"id"',
                ': 3}]}}\\r\\n{"state": {"cursor": 3}, "hasMore": false}',
              ];
              const encoder = new TextEncoder();
              return new ReadableStream({
                pull(controller) {
                  if (chunks.length) controller.enqueue(encoder.encode(chunks.shift()));
                  else controller.close();
                },
              });
            };
            """,
            id="readable-stream-of-ndjson",
        ),
        pytest.param(
            "handler.mjs",
            """
            export const handler = async () => ({
              async *[Symbol.asyncIterator]() {
                yield { insert: { orders: [{ id: 1 }] } };
                yield '{"insert": {"orders": [{"id": 2}]}}\\n';
                yield Buffer.from('{"insert": {"orders": [{"id": 3}]}}\\n');
                yield { state: { cursor: 3 }, hasMore: false };
              },
            });
            """,
            id="async-iterable-mixed",
        ),
    ],
)
def test_a_javascript_handler_streams_its_parts(make_invoker, node, name, body):
    invoker = make_invoker(body, name=name)
    assert streamed(invoker) == [*ROWS, PAGE_END]
    assert invoker.shape == "fivetran"


def test_a_typescript_async_generator_streams(make_invoker, node, tmp_path):
    link_esbuild(tmp_path)
    invoker = make_invoker(
        """
        interface Request { state: { cursor?: number } }

        export async function* handler(event: Request): AsyncGenerator<object> {
          for (const id of [1, 2, 3]) yield { insert: { orders: [{ id }] } };
          yield { state: { cursor: 3 }, hasMore: false };
        }
        """,
        name="handler.ts",
    )
    assert streamed(invoker) == [*ROWS, PAGE_END]


def test_a_web_response_of_ndjson_streams_its_body(make_invoker, node):
    invoker = make_invoker(
        """
        export default async (req) => {
          const { state } = await req.json();
          const lines = [
            '{"insert": {"orders": [{"id": 1}]}}\\n{"insert": {"orders": [{"id": 2}]}}\\n',
            '{"insert": {"orders": [{"id": 3}]}}\\n',
            JSON.stringify({ state: { cursor: 3 }, hasMore: false }),
          ];
          const encoder = new TextEncoder();
          const body = new ReadableStream({
            pull(controller) {
              if (lines.length) controller.enqueue(encoder.encode(lines.shift()));
              else controller.close();
            },
          });
          return new Response(body, { headers: { 'Content-Type': 'application/x-ndjson' } });
        };
        """,
        name="handler.mjs",
        shape=None,
    )
    assert streamed(invoker) == [*ROWS, PAGE_END]
    assert invoker.shape == "web"


def test_a_netlify_body_that_is_an_async_generator_streams(make_invoker, node):
    invoker = make_invoker(
        """
        exports.handler = async (event, context) => ({
          statusCode: 200,
          body: (async function* () {
            yield { insert: { orders: [{ id: 1 }] } };
            yield { state: { cursor: 3 }, hasMore: false };
          })(),
        });
        """,
        name="handler.cjs",
        shape=None,
    )
    assert streamed(invoker) == [ROWS[0], PAGE_END]
    assert invoker.shape == "netlify"


def test_a_throw_mid_stream_ends_it_with_the_error_shape(make_invoker, node):
    invoker = make_invoker(
        """
        exports.handler = async function* () {
          yield { insert: { orders: [{ id: 1 }] } };
          throw new TypeError('the API went away');
        };
        """,
        name="handler.cjs",
    )
    first, failure = streamed(invoker)
    assert first == ROWS[0]
    assert failure["errorMessage"] == "the API went away"
    assert failure["errorType"] == "TypeError"
    assert any("handler.cjs:4" in line for line in failure["stackTrace"])


def test_a_stream_that_can_never_go_on_says_so(make_invoker, node):
    invoker = make_invoker(
        """
        exports.handler = async function* () {
          yield { insert: { orders: [{ id: 1 }] } };
          await new Promise(() => {}); // nothing pending could ever settle it
        };
        """,
        name="handler.cjs",
    )
    first, failure = streamed(invoker)
    assert first == ROWS[0]
    assert failure["errorType"] == "Runtime.NoAnswer"
    assert failure["errorMessage"].startswith("the streamed answer stopped before its end")


JS_STREAMER = """
    exports.handler = async (event) => {
      if (event.state.action === 'pid') return { state: { pid: process.pid } };
      return (async function* () {
        const blob = 'x'.repeat(1024 * 1024);
        for (let id = 0; id < event.state.count; id++) {
          console.log(`made part ${id}`);
          yield { insert: { blobs: [{ id, blob }] } };
        }
        yield { state: { count: event.state.count } };
      })();
    };
"""


def test_closing_a_javascript_stream_early_kills_its_worker_and_the_next_call_works(
    make_invoker, node
):
    invoker = make_invoker(JS_STREAMER, name="handler.cjs")
    before = worker_pid(invoker)
    stream = invoker.invoke(with_state(count=50))
    assert json.loads(next(stream))["insert"]["blobs"][0]["id"] == 0
    stream.close()
    assert not is_running(before)
    after = worker_pid(invoker)
    assert after != before
    assert streamed(invoker, with_state(count=2))[-1] == {"state": {"count": 2}}
    assert worker_pid(invoker) == after


@pytest.mark.parametrize(
    ("source", "name"),
    [
        pytest.param(STREAMER, "handler.py", id="python"),
        pytest.param(JS_STREAMER, "handler.cjs", id="javascript"),
    ],
)
def test_a_stream_not_read_pauses_its_handler(make_invoker, request, source, name):
    if name.endswith(".cjs"):
        request.getfixturevalue("node")
    invoker = make_invoker(source, name=name)
    with invoker.invoke(with_state(count=50)) as stream:  # 1 MB parts: the pipe holds none
        next(stream)
        time.sleep(1.0)  # time enough to make all 50, were it not paused
        made = [line for line in invoker.output.text().splitlines() if line.startswith("made")]
        assert 1 <= len(made) <= 4
