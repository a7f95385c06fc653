"""LocalPythonInvoker against real handler files, in real worker processes and inline."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import structlog

from connector_runtime import errors
from connector_runtime.invokers.local import LocalPythonInvoker

REQUEST = {"agent": "connector-runtime/test", "state": {}, "secrets": {}, "sync_id": "s-1"}


def with_state(**state: object) -> dict:
    return {**REQUEST, "state": state}


@pytest.fixture(autouse=True)
def restore_imports():
    """Inline loading edits sys.path and sys.modules; keep tests from seeing each other's."""
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


@pytest.fixture(params=["process", "inline"])
def isolation(request) -> str:
    return request.param


@pytest.fixture
def make_invoker(tmp_path):
    """Write `source` as a handler file and return an invoker for it, closed after the test."""
    invokers: list[LocalPythonInvoker] = []

    def make(source: str, *, name: str = "handler.py", **options) -> LocalPythonInvoker:
        options.setdefault("timeout", 10)  # a broken protocol fails fast instead of hanging
        path = write_file(tmp_path / name, source)
        invokers.append(LocalPythonInvoker(path, **options))
        return invokers[-1]

    yield make
    for invoker in invokers:
        invoker.close()


def write_file(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


def answer(invoker: LocalPythonInvoker, request: dict = REQUEST) -> dict:
    return json.loads(invoker.invoke(request))


def test_one_argument_handler_receives_the_request(make_invoker, isolation):
    invoker = make_invoker(
        """
        def handler(request):
            cursor = request["state"].get("cursor", 0) + 1
            return {"state": {"cursor": cursor}, "insert": {"orders": [{"id": cursor}]}}
        """,
        isolation=isolation,
    )
    assert answer(invoker, with_state(cursor=41)) == {
        "state": {"cursor": 42},
        "insert": {"orders": [{"id": 42}]},
    }


def test_two_argument_handler_receives_a_lambda_context(make_invoker, isolation):
    invoker = make_invoker(
        """
        def lambda_handler(event, context):
            fields = {name: getattr(context, name) for name in (
                "aws_request_id", "function_name", "function_version", "invoked_function_arn",
                "memory_limit_in_mb", "log_group_name", "log_stream_name", "identity",
                "client_context")}
            return {"state": event["state"], **fields,
                    "remaining": context.get_remaining_time_in_millis()}
        """,
        isolation=isolation,
        function_name="orders",
        memory_mb=512,
        timeout=60,
    )
    first, second = answer(invoker), answer(invoker)
    assert first["state"] == {}
    assert uuid.UUID(first["aws_request_id"]).version == 4
    assert first["aws_request_id"] != second["aws_request_id"]
    assert first["function_name"] == "orders"
    assert first["function_version"] == "$LATEST"
    assert first["invoked_function_arn"].startswith("arn:aws:lambda:")
    assert first["invoked_function_arn"].endswith(":function:orders")
    assert first["memory_limit_in_mb"] == "512"
    assert first["log_group_name"] == "/aws/lambda/orders"
    assert "[$LATEST]" in first["log_stream_name"]
    assert first["identity"] is None and first["client_context"] is None
    assert 55_000 < first["remaining"] <= 60_000


@pytest.mark.parametrize(
    ("source", "handler"),
    [
        pytest.param("def lambda_handler(event):\n    return {'state': {}}\n", None, id="default"),
        pytest.param(
            "async def lambda_handler(event):\n    return {'state': {}}\n",
            "lambda_handler",
            id="async-named",
        ),
    ],
)
def test_one_argument_lambda_handler_fails_as_on_lambda_with_a_hint(
    make_invoker, isolation, source, handler
):
    """Lambda always calls handler(event, context): what fails there must fail here."""
    invoker = make_invoker(source, handler=handler, isolation=isolation)
    error = answer(invoker)
    assert error["errorType"] == "TypeError"
    assert error["errorMessage"] == (
        "lambda_handler() takes 1 positional argument but 2 were given: AWS Lambda calls "
        "the handler as lambda_handler(event, context) and it fails there the same way; "
        "add the context parameter: def lambda_handler(event, context)"
    )
    assert error["stackTrace"] == []  # no frame of the user's: the call itself failed


def test_type_error_inside_a_lambda_handler_is_its_own(make_invoker, isolation):
    invoker = make_invoker(
        """
        def lambda_handler(event, context):
            return len(event["state"], 2)
        """,
        isolation=isolation,
    )
    error = answer(invoker)
    assert error["errorType"] == "TypeError"
    assert error["errorMessage"] == "len() takes exactly one argument (2 given)"
    assert [frame[2] for frame in error["stackTrace"]] == ["lambda_handler"]


def test_async_handler_keeps_its_event_loop_between_calls(make_invoker, isolation):
    invoker = make_invoker(
        """
        import asyncio

        first_loop = None

        async def handler(request):
            global first_loop
            await asyncio.sleep(0)
            first_loop = first_loop or asyncio.get_running_loop()
            return {"state": {}, "same_loop": first_loop is asyncio.get_running_loop()}
        """,
        isolation=isolation,
    )
    assert answer(invoker) == {"state": {}, "same_loop": True}
    assert answer(invoker) == {"state": {}, "same_loop": True}


@pytest.mark.parametrize(
    ("source", "handler", "expected"),
    [
        pytest.param(
            "def handler(r): return 'handler'\ndef lambda_handler(e, c): return 'lambda'\n",
            None,
            "handler",
            id="handler-first",
        ),
        pytest.param(
            "def lambda_handler(e, c): return 'lambda'\n", None, "lambda", id="else-lambda"
        ),
        pytest.param(
            "def handler(r): return 'handler'\ndef sync(r): return 'sync'\n",
            "sync",
            "sync",
            id="named",
        ),
    ],
)
def test_handler_resolution(make_invoker, isolation, source, handler, expected):
    invoker = make_invoker(source, handler=handler, isolation=isolation)
    assert answer(invoker) == expected


def test_missing_file_raises_invoke_failed(tmp_path, isolation):
    missing = tmp_path / "nowhere.py"
    with (
        LocalPythonInvoker(missing, isolation=isolation) as invoker,
        pytest.raises(errors.InvokeFailed, match="nowhere.py"),
    ):
        invoker.invoke(REQUEST)


@pytest.mark.parametrize(
    ("handler", "named"),
    [("sync_orders", "'sync_orders'"), (None, "'handler' or 'lambda_handler'")],
)
def test_missing_handler_raises_invoke_failed(make_invoker, isolation, handler, named):
    invoker = make_invoker("def other(r): return {}\n", handler=handler, isolation=isolation)
    with pytest.raises(errors.InvokeFailed) as failure:
        invoker.invoke(REQUEST)
    assert "handler.py" in str(failure.value)
    assert named in str(failure.value)


def test_sibling_module_imports(make_invoker, tmp_path, isolation):
    write_file(tmp_path / f"pagination_{isolation}.py", "PAGE_SIZE = 250\n")
    invoker = make_invoker(
        f"""
        from pagination_{isolation} import PAGE_SIZE

        def handler(request):
            return {{"state": {{}}, "page_size": PAGE_SIZE}}
        """,
        isolation=isolation,
    )
    assert answer(invoker)["page_size"] == 250


def test_exception_becomes_lambda_error_shape(make_invoker, isolation):
    invoker = make_invoker(
        """
        def handler(request):
            return fetch_page(request["secrets"])

        def fetch_page(secrets):
            raise PermissionError("token rejected")
        """,
        isolation=isolation,
    )
    error = answer(invoker)
    assert error["errorType"] == "PermissionError"
    assert error["errorMessage"] == "token rejected"
    assert [frame[2] for frame in error["stackTrace"]] == ["handler", "fetch_page"]
    assert {frame[0] for frame in error["stackTrace"]} == {str(invoker.spec.path)}
    assert error["stackTrace"][-1][3] == 'raise PermissionError("token rejected")'


def test_syntax_error_answers_and_a_fixed_file_loads_on_the_next_call(make_invoker, isolation):
    invoker = make_invoker("def handler(request)\n    return {}\n", isolation=isolation)
    error = answer(invoker)
    assert error["errorType"] == "Runtime.UserCodeSyntaxError"
    assert error["stackTrace"][0][:2] == [invoker.spec.path, 1]
    write_file(Path(invoker.spec.path), "def handler(request):\n    return {'state': {'ok': 1}}\n")
    assert answer(invoker) == {"state": {"ok": 1}}


def test_failing_import_answers_import_module_error(make_invoker, isolation):
    invoker = make_invoker("import no_such_module_xyz\n", isolation=isolation)
    error = answer(invoker)
    assert error["errorType"] == "Runtime.ImportModuleError"
    assert "no_such_module_xyz" in error["errorMessage"]


def test_unserializable_answer_is_a_marshal_error(make_invoker, isolation):
    invoker = make_invoker("def handler(r): return {'state': object()}\n", isolation=isolation)
    assert answer(invoker)["errorType"] == "Runtime.MarshalError"


def test_warm_state_persists_across_calls(make_invoker, isolation):
    invoker = make_invoker(
        """
        import os
        calls = 0

        def handler(request):
            global calls
            calls += 1
            return {"calls": calls, "pid": os.getpid()}
        """,
        isolation=isolation,
    )
    answers = [answer(invoker) for _ in range(3)]
    assert [a["calls"] for a in answers] == [1, 2, 3]
    assert len({a["pid"] for a in answers}) == 1


def test_a_worker_sets_its_loaded_modules_aside_and_still_collects_calls_garbage(
    make_invoker,
):
    """What the worker loaded is frozen out of cyclic collection (`_settle`); a reference
    cycle a call leaves behind is still collected, whichever call made it."""
    invoker = make_invoker(
        """
        import gc
        import weakref

        class Node:
            pass

        left = []

        def handler(request):
            gc.collect()
            collected = [ref() is None for ref in left]
            node = Node()
            node.me = node  # garbage once the call returns, freed only by the collector
            left.append(weakref.ref(node))
            return {"frozen": gc.get_freeze_count(), "collected": collected}
        """
    )
    answers = [answer(invoker) for _ in range(3)]
    assert all(a["frozen"] > 1000 for a in answers)  # the worker's own modules at least
    assert [a["collected"] for a in answers] == [[], [True], [True, True]]


def test_int_beyond_int64_round_trips_exactly(make_invoker, isolation):
    invoker = make_invoker(
        "def handler(r): return {'state': {'cursor': r['state']['cursor'] + 1}}\n",
        isolation=isolation,
    )
    assert answer(invoker, with_state(cursor=2**70))["state"]["cursor"] == 2**70 + 1


def test_both_isolations_return_identical_bytes(make_invoker):
    source = """
        from datetime import datetime, timezone
        from decimal import Decimal

        def handler(request):
            return {"state": {"big": 2 ** 65} if request["state"] else {},
                    "insert": {"payments": [{"amount": Decimal("12.50"), "name": "Zoë",
                               "at": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)}]}}
        """
    for request in (REQUEST, with_state(big=True)):
        inline = make_invoker(source, isolation="inline").invoke(request)
        process = make_invoker(source, isolation="process").invoke(request)
        assert process == inline
        assert b'"amount":12.5' in process  # an exact number either way, never a string


def test_sys_exit_is_an_exit_error(make_invoker, isolation):
    invoker = make_invoker("import sys\ndef handler(r): sys.exit(2)\n", isolation=isolation)
    with pytest.raises(errors.FunctionError, match="exit status 2") as failure:
        invoker.invoke(REQUEST)
    assert failure.value.error_type == "Runtime.ExitError"


CRASHY = """
    import os
    import sys
    import time

    calls = 0

    def handler(request):
        global calls
        calls += 1
        action = request["state"].get("action")
        print(f"starting {action}")
        if action == "os_exit":
            os._exit(3)
        if action == "hang":
            time.sleep(30)
        if action == "segfault":
            import ctypes
            ctypes.string_at(0)
        if action == "allocate":
            blob = bytearray(2 * 1024 ** 3)
            return {"allocated": len(blob)}
        return {"calls": calls, "pid": os.getpid()}
    """


def test_os_exit_is_an_exit_error_with_the_log_tail_and_a_fresh_worker_follows(make_invoker):
    invoker = make_invoker(CRASHY)
    before = answer(invoker)
    with pytest.raises(errors.FunctionError, match="exit status 3") as failure:
        invoker.invoke(with_state(action="os_exit"))
    assert failure.value.error_type == "Runtime.ExitError"
    assert failure.value.log_tail[-1] == "starting os_exit"
    assert failure.value.stack_trace == failure.value.log_tail
    after = answer(invoker)
    assert after["calls"] == 1 and after["pid"] != before["pid"]


def test_signal_is_an_exit_error_naming_it(make_invoker):
    invoker = make_invoker(CRASHY)
    with pytest.raises(errors.FunctionError, match="signal SIGSEGV") as failure:
        invoker.invoke(with_state(action="segfault"))
    assert failure.value.error_type == "Runtime.ExitError"
    assert any("Segmentation fault" in line for line in failure.value.log_tail)


def test_hang_past_the_timeout_kills_the_worker_and_the_next_call_works(make_invoker):
    invoker = make_invoker(CRASHY, timeout=1)
    before = answer(invoker)
    with pytest.raises(errors.FunctionError, match="timed out after 1 s") as failure:
        invoker.invoke(with_state(action="hang"))
    assert failure.value.error_type == "Sandbox.Timedout"
    with pytest.raises(ProcessLookupError):
        os.kill(before["pid"], 0)
    after = answer(invoker)
    assert after["calls"] == 1 and after["pid"] != before["pid"]


def test_memory_blow_up_is_bounded_by_memory_mb(make_invoker):
    invoker = make_invoker(CRASHY, memory_mb=512)
    try:
        assert answer(invoker, with_state(action="allocate"))["errorType"] == "MemoryError"
    except errors.FunctionError as failure:
        assert failure.error_type == "Runtime.ExitError"
    assert "calls" in answer(invoker)


def test_prints_and_fd1_writes_do_not_corrupt_the_answer(make_invoker):
    with structlog.testing.capture_logs() as logs:
        invoker = make_invoker(
            """
        import os
        import sys

        print("at import")

        def handler(request):
            print("progress 50%")
            sys.stdout.write("no newline")
            os.write(1, b"straight to fd 1\\n")
            print("to stderr", file=sys.stderr)
            return {"state": {"done": True}}
        """
        )
        assert answer(invoker) == {"state": {"done": True}}
        assert answer(invoker) == {"state": {"done": True}}
        invoker.close()
    lines = [entry["line"] for entry in logs if entry["event"] == "function_output"]
    assert lines[:2] == ["at import", "progress 50%"]
    assert "to stderr" in lines
    assert any(line.endswith("straight to fd 1") for line in lines)


def test_worker_output_is_logged(make_invoker):
    with structlog.testing.capture_logs() as logs:
        invoker = make_invoker("def handler(r):\n    print('progress 50%')\n    return {}\n")
        answer(invoker)
        invoker.close()
    assert {
        "event": "function_output",
        "function": "connector",
        "line": "progress 50%",
        "log_level": "info",
    } in logs


def test_close_stops_the_worker_and_is_idempotent(make_invoker):
    invoker = make_invoker(CRASHY)
    pid = answer(invoker)["pid"]
    invoker.close()
    invoker.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_connector_runtime_folder_in_the_current_directory_is_not_the_worker(
    make_invoker, tmp_path, monkeypatch
):
    """The worker is the runtime's own, whatever the directory it starts in holds (a
    checkout of this project, say); the handler's folder is still on sys.path."""
    decoy = tmp_path / "here" / "connector_runtime"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise ImportError('the decoy was imported')\n")
    monkeypatch.chdir(decoy.parent)
    write_file(tmp_path / "helper.py", "NAME = 'sibling'\n")
    invoker = make_invoker(
        "import helper\ndef handler(request): return {'state': {'from': helper.NAME}}\n",
        isolation="process",
    )
    assert answer(invoker) == {"state": {"from": "sibling"}}
