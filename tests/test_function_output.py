"""What a function printed, kept per invoker (`Invoker.output`, an `OutputTail`).

Real worker processes, real `node` (skipped without it, failed under CI=true), inline
capture, and Lambda's log tail through the real AWS client against a loopback server
(the Runtime Interface Emulator sends no log tail).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import serving

from connector_runtime import errors, masking
from connector_runtime.invokers import OUTPUT_TAIL_BYTES, Invoker, OutputTail, _worker_process
from connector_runtime.invokers.http import HttpInvoker
from connector_runtime.invokers.local import LocalPythonInvoker
from connector_runtime.invokers.node import NodeInvoker

REQUEST = {"agent": "connector-runtime/test", "state": {}, "secrets": {}, "sync_id": "s-1"}
CALLS = 50


def with_state(**state: object) -> dict:
    return {**REQUEST, "state": state}


def lines_of(invoker: Invoker) -> list[str]:
    return invoker.output.text().split("\n")


@pytest.fixture(autouse=True)
def restore_imports_and_secrets():
    """Inline loading edits sys.path and sys.modules, masking keeps secrets: undo both."""
    path, modules = list(sys.path), set(sys.modules)
    with masking._lock:
        secrets = set(masking._secrets)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]
    with masking._lock:
        masking._secrets.clear()
        masking._secrets.update(secrets)


@pytest.fixture
def node() -> str:
    found = shutil.which("node")
    if found is None:
        message = "node is not on PATH; install Node.js 18+ to run the JavaScript tests"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def make_invoker(tmp_path) -> Iterator:
    """`make(source, name="handler.py", **options)`: a Python or node invoker for `source`."""
    invokers: list[Invoker] = []

    def make(source: str, *, name: str = "handler.py", **options) -> Invoker:
        options.setdefault("timeout", 10)
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        kind = LocalPythonInvoker if name.endswith(".py") else NodeInvoker
        invokers.append(kind(path, **options))
        return invokers[-1]

    yield make
    for invoker in invokers:
        invoker.close()


# -- OutputTail --------------------------------------------------------------------------


def test_text_is_the_lines_joined_and_clear_forgets_them():
    tail = OutputTail()
    assert tail.text() == ""
    tail.append("one")
    tail.append("two\n")  # its newline is not a line of its own
    tail.append("three\nfour")
    tail.append("")
    assert tail.text() == "one\ntwo\nthree\nfour\n"
    tail.clear()
    assert tail.text() == ""
    assert tail.limit == OUTPUT_TAIL_BYTES == 64 * 1024


def test_the_oldest_lines_are_dropped_to_fit_the_limit_in_bytes():
    tail = OutputTail(limit=10)
    for line in ("aaaa", "bbbb", "cccc"):
        tail.append(line)
    assert tail.text() == "bbbb\ncccc"  # 9 bytes; with "aaaa\n" it would be 14
    tail.append("é")  # 2 bytes: "bbbb\ncccc\né" would be 12
    assert tail.text() == "cccc\né"


def test_a_line_longer_than_the_limit_keeps_its_last_bytes_never_half_a_character():
    tail = OutputTail(limit=5)
    tail.append("old")
    tail.append("abcdefgh")
    assert tail.text() == "defgh"
    tail.append("xx€€")  # 8 bytes; the last 5 start inside the first €
    assert tail.text() == "€"


def test_text_never_exceeds_the_limit_whatever_the_lines():
    tail = OutputTail(limit=1000)
    for n in range(2000):
        tail.append("ü" * (n % 37) + f" line {n}")
        assert len(tail.text().encode()) <= 1000
    assert tail.text().endswith("line 1999")


def test_unencodable_text_is_kept_with_a_replacement():
    tail = OutputTail()
    tail.append("lone \udcff surrogate")
    assert tail.text() == "lone ? surrogate"
    tail.text().encode()


def test_text_is_masked_even_where_a_long_line_is_cut():
    masking.register({"token": "s3cret-value"})
    tail = OutputTail(limit=12)
    tail.append("x" * 20 + "s3cret-value")  # cut after masking: no half secret survives
    assert tail.text() == "x" * 9 + "***"
    tail.append("tok=s3cret-value")
    assert "s3cret" not in tail.text()


def test_appends_from_many_threads_are_all_kept():
    tail = OutputTail()

    def write(n: int) -> None:
        for i in range(500):
            tail.append(f"{n}:{i}")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(tail.text().split("\n")) == 8 * 500


def test_every_invoker_has_its_own_output_and_http_captures_nothing():
    first, second = HttpInvoker("http://127.0.0.1:9/"), HttpInvoker("http://127.0.0.1:9/")
    assert first.output is first.output
    assert first.output is not second.output
    assert first.output.text() == ""


# -- local Python, in a worker process ------------------------------------------------------

PRINTER = """
    import os
    import sys

    def handler(request):
        n = request["state"]["n"]
        for i in range(200):
            print(f"call {n} line {i}")
        print(f"call {n} to stderr", file=sys.stderr)
        os.write(2, f"call {n} to fd 2\\n".encode())
        sys.stdout.write(f"call {n} ends without a newline")
        return {"state": {"n": n}}
"""


def test_what_each_call_printed_is_in_output_when_invoke_returns(make_invoker):
    invoker = make_invoker(PRINTER)
    for n in range(CALLS):
        assert json.loads(invoker.invoke(with_state(n=n))) == {"state": {"n": n}}
        lines = lines_of(invoker)
        assert lines[-4:] == [
            f"call {n} line 199",
            f"call {n} to stderr",
            f"call {n} to fd 2",
            f"call {n} ends without a newline",
        ]
    assert "end-of-call" not in invoker.output.text()


def test_import_time_and_stderr_lines_are_kept_in_order(make_invoker):
    invoker = make_invoker(
        """
        import sys
        print("at import")

        def handler(request):
            print("to stdout")
            print("to stderr", file=sys.stderr)
            return {}
        """
    )
    invoker.invoke(REQUEST)
    assert lines_of(invoker) == ["at import", "to stdout", "to stderr"]


CRASHY = """
    import os

    def handler(request):
        action = request["state"].get("action")
        print(f"pid {os.getpid()} before {action}")
        if action == "exit":
            os._exit(3)
        if action == "hang":
            import time
            time.sleep(60)
        return {"pid": os.getpid()}
"""


def test_a_crashed_calls_last_lines_are_in_output(make_invoker):
    invoker = make_invoker(CRASHY)
    with pytest.raises(errors.FunctionError) as failure:
        invoker.invoke(with_state(action="exit"))
    assert failure.value.error_type == "Runtime.ExitError"
    assert lines_of(invoker)[-1].endswith("before exit")


def test_a_timed_out_calls_lines_are_in_output(make_invoker):
    invoker = make_invoker(CRASHY, timeout=1)
    with pytest.raises(errors.FunctionError) as failure:
        invoker.invoke(with_state(action="hang"))
    assert failure.value.error_type == "Sandbox.Timedout"
    assert lines_of(invoker)[-1].endswith("before hang")


def test_a_replaced_worker_keeps_appending_to_the_same_output(make_invoker):
    invoker = make_invoker(CRASHY)
    first = json.loads(invoker.invoke(REQUEST))["pid"]
    with pytest.raises(errors.FunctionError):
        invoker.invoke(with_state(action="exit"))
    second = json.loads(invoker.invoke(REQUEST))["pid"]
    assert first != second
    assert lines_of(invoker) == [
        f"pid {first} before None",
        f"pid {first} before exit",
        f"pid {second} before None",
    ]


def test_a_module_that_fails_to_import_leaves_what_it_printed(make_invoker):
    invoker = make_invoker('print("loading config")\nraise ImportError("no module named x")\n')
    assert json.loads(invoker.invoke(REQUEST))["errorType"] == "Runtime.ImportModuleError"
    assert lines_of(invoker) == ["loading config"]


def test_output_keeps_the_last_64_kb_dropping_the_oldest_lines(make_invoker):
    invoker = make_invoker(
        """
        def handler(request):
            for i in range(3000):
                print(f"line {i:05d} " + "x" * 40)
            return {}
        """
    )
    invoker.invoke(REQUEST)
    invoker.invoke(REQUEST)
    text = invoker.output.text()
    lines = text.split("\n")
    assert lines[-1] == "line 02999 " + "x" * 40
    assert all(len(line) == 51 for line in lines)  # whole lines only, 52 bytes with "\n"
    assert len(lines) == (OUTPUT_TAIL_BYTES + 1) // 52
    assert OUTPUT_TAIL_BYTES - 52 < len(text.encode()) <= OUTPUT_TAIL_BYTES


def test_output_is_masked(make_invoker):
    masking.register({"apiToken": "tok-123456"})
    invoker = make_invoker('def handler(request):\n    print("using tok-123456")\n    return {}\n')
    invoker.invoke(REQUEST)
    assert invoker.output.text() == "using ***"


def test_a_worker_that_loses_its_stderr_costs_one_wait_not_one_per_call(make_invoker, monkeypatch):
    monkeypatch.setattr(_worker_process, "OUTPUT_CATCH_UP_SECONDS", 0.3)
    invoker = make_invoker(
        """
        import os

        def handler(request):
            print("before")
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.dup2(devnull, 1)
            return {}
        """
    )
    invoker.invoke(REQUEST)  # waits 0.3 s for the end mark, then stops waiting for it
    started = time.monotonic()
    for _ in range(5):
        invoker.invoke(REQUEST)
    assert time.monotonic() - started < 1.0
    assert lines_of(invoker) == ["before"]


# -- local Python, inline ---------------------------------------------------------------------


def test_inline_prints_are_captured_and_still_reach_the_real_streams(make_invoker, capsys):
    invoker = make_invoker(
        """
        import sys
        print("at import")

        def handler(request):
            print("to stdout")
            print("to stderr", file=sys.stderr)
            sys.stdout.write("open line")
            return {}
        """,
        isolation="inline",
    )
    for _ in range(3):
        assert json.loads(invoker.invoke(REQUEST)) == {}
    print("after the call")  # not the function's
    assert lines_of(invoker) == ["at import"] + ["to stdout", "to stderr", "open line"] * 3
    captured = capsys.readouterr()
    assert captured.out == "at import\n" + "to stdout\nopen line" * 3 + "after the call\n"
    assert captured.err == "to stderr\n" * 3


def test_inline_capture_ends_with_the_call_even_when_it_exits(make_invoker):
    invoker = make_invoker(
        'import sys\ndef handler(request):\n    print("bye")\n    sys.exit(2)\n',
        isolation="inline",
    )
    stdout, stderr = sys.stdout, sys.stderr
    with pytest.raises(errors.FunctionError):
        invoker.invoke(REQUEST)
    assert (sys.stdout, sys.stderr) == (stdout, stderr)
    assert lines_of(invoker) == ["bye"]


# -- node --------------------------------------------------------------------------------------

NODE_PRINTER = """
    exports.handler = async (event) => {
      const n = event.state.n;
      for (let i = 0; i < 200; i++) console.log(`call ${n} line ${i}`);
      console.error(`call ${n} to stderr`);
      return { state: { n } };
    };
"""


def test_node_console_log_and_error_are_in_output_when_invoke_returns(make_invoker, node):
    invoker = make_invoker(NODE_PRINTER, name="handler.cjs")
    for n in range(CALLS):
        assert json.loads(invoker.invoke(with_state(n=n))) == {"state": {"n": n}}
        # Two streams on one pipe: their lines may interleave, but all are there by now.
        expected = {f"call {n} line {i}" for i in range(200)} | {f"call {n} to stderr"}
        assert set(lines_of(invoker)[-201:]) == expected
    assert "end-of-call" not in invoker.output.text()


def test_node_output_without_a_final_newline_is_a_line(make_invoker, node):
    invoker = make_invoker(
        "exports.handler = async (e) => { process.stdout.write(`open ${e.state.n}`); };",
        name="handler.cjs",
    )
    for n in range(3):
        invoker.invoke(with_state(n=n))
    assert lines_of(invoker) == ["open 0", "open 1", "open 2"]


def test_node_output_larger_than_a_pipe_is_all_there(make_invoker, node):
    """Node writes pipes asynchronously: the reply waits until the output is written."""
    invoker = make_invoker(
        """
        exports.handler = (event, context, callback) => {
          process.stdout.write('y'.repeat(300000) + '\\n');
          console.log('after the big line');
          callback(null, { done: true });
        };
        """,
        name="handler.cjs",
    )
    for _ in range(5):
        assert json.loads(invoker.invoke(REQUEST)) == {"done": True}
        assert lines_of(invoker)[-1] == "after the big line"


def test_node_crash_and_import_failure_leave_their_last_lines(make_invoker, node, tmp_path):
    invoker = make_invoker(
        """
        exports.handler = async () => {
          console.log('about to exit');
          process.exit(3);
        };
        """,
        name="handler.cjs",
    )
    with pytest.raises(errors.FunctionError):
        invoker.invoke(REQUEST)
    assert lines_of(invoker)[-1] == "about to exit"

    broken = make_invoker("console.log('loading');\nthrow new Error('bad config');\n", name="b.cjs")
    assert json.loads(broken.invoke(REQUEST))["errorMessage"] == "bad config"
    assert lines_of(broken)[0] == "loading"


# -- Lambda ------------------------------------------------------------------------------------


@contextlib.contextmanager
def lambda_with_log_tail(*tails: str) -> Iterator[str]:
    """A loopback Invoke API answering `{}` with each log tail in turn; yields its URL."""
    pending = [base64.b64encode(tail.encode()).decode() for tail in tails]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("X-Amz-Log-Result", pending.pop(0))
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as server:
        yield f"http://127.0.0.1:{server.server_port}"


def test_lambdas_log_tail_of_every_invoke_is_appended(monkeypatch, tmp_path):
    pytest.importorskip("boto3")
    from connector_runtime.invokers.aws_lambda import LambdaInvoker

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDUMMYTESTKEY00000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dummy-secret")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    first = "START RequestId: 1\nfetched page 1 ✓\nEND RequestId: 1\n"
    second = "START RequestId: 2\nfetched page 2\nEND RequestId: 2\n"
    with lambda_with_log_tail(first, second) as url:
        invoker = LambdaInvoker("function", endpoint_url=url, region="us-east-1")
        with invoker:
            assert invoker.invoke(REQUEST) == b"{}"
            assert invoker.invoke(REQUEST) == b"{}"
    assert lines_of(invoker) == [
        "START RequestId: 1",
        "fetched page 1 ✓",
        "END RequestId: 1",
        "START RequestId: 2",
        "fetched page 2",
        "END RequestId: 2",
    ]
