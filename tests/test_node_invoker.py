"""NodeInvoker against real JavaScript handler files in real node worker processes, and the
JavaScript examples through the CLI into real DuckDB files.

Without `node` on PATH these tests skip, or fail when CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import structlog

from connector_runtime import errors
from connector_runtime.config import load_config
from connector_runtime.invokers.node import NodeInvoker
from connector_runtime.jobs import build_job

REQUEST = {"agent": "connector-runtime/test", "state": {}, "secrets": {}, "sync_id": "s-1"}
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def with_state(**state: object) -> dict:
    return {**REQUEST, "state": state}


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
def make_invoker(tmp_path, node):
    """Write `source` as a handler file and return an invoker for it, closed after the test."""
    invokers: list[NodeInvoker] = []

    def make(source: str, *, name: str = "handler.cjs", **options) -> NodeInvoker:
        options.setdefault("timeout", 10)  # a broken protocol fails fast instead of hanging
        path = write_file(tmp_path / name, source)
        invokers.append(NodeInvoker(path, **options))
        return invokers[-1]

    yield make
    for invoker in invokers:
        invoker.close()


def write_file(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def answer(invoker: NodeInvoker, request: dict = REQUEST) -> dict:
    return json.loads(invoker.invoke(request))


# -- loading and calling --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "source"),
    [
        pytest.param(
            "handler.js",
            "exports.handler = (event) => ({ state: event.state, format: typeof module });\n",
            id="commonjs-exports",
        ),
        pytest.param(
            "handler.cjs",
            "async function handler(event) { return { state: event.state, format: typeof module }; }"
            "\nmodule.exports = { handler };\n",
            id="commonjs-module-exports",
        ),
        pytest.param(
            "handler.mjs",
            "export const handler = async (event) => ({ state: event.state, format: typeof module });\n",
            id="esm-mjs",
        ),
        pytest.param(
            "esm/handler.js",
            "export async function handler(event) { return { state: event.state, format: typeof module }; }\n",
            id="esm-js-type-module",
        ),
    ],
)
def test_commonjs_and_esm_handlers_load(make_invoker, tmp_path, name, source):
    write_file(tmp_path / "esm" / "package.json", '{"type": "module"}\n')
    invoker = make_invoker(source, name=name)
    commonjs = name.endswith(".cjs") or name == "handler.js"
    assert answer(invoker, with_state(cursor=41)) == {
        "state": {"cursor": 41},
        "format": "object" if commonjs else "undefined",  # ESM has no `module`
    }


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("exports.handler = async (event) => ({ n: event.state.n + 1 });", id="async"),
        pytest.param("exports.handler = (event) => ({ n: event.state.n + 1 });", id="sync-return"),
        pytest.param(
            "exports.handler = (event) => new Promise((resolve) =>\n"
            "  setTimeout(() => resolve({ n: event.state.n + 1 }), 10));",
            id="returned-promise",
        ),
        pytest.param(
            "exports.handler = (event, context, callback) =>\n"
            "  setTimeout(() => callback(null, { n: event.state.n + 1 }), 10);",
            id="callback",
        ),
        pytest.param(
            "exports.handler = (event, context) => context.succeed({ n: event.state.n + 1 });",
            id="context-succeed",
        ),
        pytest.param(
            "exports.handler = (event, context) => {\n"
            "  setTimeout(() => context.succeed({ n: event.state.n + 1 }), 10);\n};",
            id="context-succeed-later",
        ),
    ],
)
def test_call_styles(make_invoker, source):
    assert answer(make_invoker(source), with_state(n=1)) == {"n": 2}


@pytest.mark.parametrize(
    ("source", "handler", "expected"),
    [
        pytest.param(
            "exports.handler = () => 'handler';\nexports.lambda_handler = () => 'lambda';\n",
            None,
            "handler",
            id="handler-first",
        ),
        pytest.param(
            "exports.lambda_handler = () => 'lambda';\n", None, "lambda", id="else-lambda"
        ),
        pytest.param(
            "exports.handler = () => 'handler';\nexports.sync = () => 'sync';\n",
            "sync",
            "sync",
            id="named",
        ),
    ],
)
def test_handler_resolution(make_invoker, source, handler, expected):
    assert answer(make_invoker(source, handler=handler)) == expected


def test_context_has_the_fields_of_lambdas_node_runtime(make_invoker):
    invoker = make_invoker(
        """
        exports.handler = (event, context, callback) => {
          const { getRemainingTimeInMillis, done, succeed, fail, ...fields } = context;
          callback(null, { ...fields, remaining: getRemainingTimeInMillis() });
        };
        """,
        function_name="orders",
        memory_mb=512,
        timeout=60,
    )
    first, second = answer(invoker), answer(invoker)
    assert uuid.UUID(first["awsRequestId"]).version == 4
    assert first["awsRequestId"] != second["awsRequestId"]
    assert first["functionName"] == "orders"
    assert first["functionVersion"] == "$LATEST"
    assert first["invokedFunctionArn"].startswith("arn:aws:lambda:")
    assert first["invokedFunctionArn"].endswith(":function:orders")
    assert first["memoryLimitInMB"] == "512"
    assert first["logGroupName"] == "/aws/lambda/orders"
    assert "[$LATEST]" in first["logStreamName"]
    assert first["callbackWaitsForEmptyEventLoop"] is True
    assert 55_000 < first["remaining"] <= 60_000


@pytest.mark.parametrize(("waits", "fired_before_answer"), [("true", True), ("false", False)])
def test_a_callback_answer_waits_for_the_empty_event_loop_unless_told_not_to(
    make_invoker, waits, fired_before_answer
):
    invoker = make_invoker(
        f"""
        let fired = false;
        exports.handler = (event, context, callback) => {{
          context.callbackWaitsForEmptyEventLoop = {waits};
          const firedBefore = fired;
          setTimeout(() => {{ fired = true; }}, 200);
          callback(null, {{ firedBefore }});
        }};
        """
    )
    assert answer(invoker) == {"firedBefore": False}
    # Waiting, the timer fired before the first answer; not waiting, the instance was
    # frozen until this second call, which reads `fired` before the timer's turn comes.
    assert answer(invoker) == {"firedBefore": fired_before_answer}


def test_warm_state_persists_across_calls(make_invoker):
    invoker = make_invoker(
        """
        let calls = 0;
        exports.handler = async () => ({ calls: ++calls, pid: process.pid });
        """
    )
    answers = [answer(invoker) for _ in range(3)]
    assert [a["calls"] for a in answers] == [1, 2, 3]
    assert len({a["pid"] for a in answers}) == 1


def test_bigint_answers_are_exact_json_integers(make_invoker):
    invoker = make_invoker("exports.handler = () => ({ state: { cursor: 2n ** 70n + 1n } });")
    assert invoker.invoke(REQUEST) == b'{"state":{"cursor":%d}}' % (2**70 + 1)


# -- errors the function answers with ------------------------------------------------------


def test_thrown_error_becomes_the_error_shape_naming_the_user_file(make_invoker):
    invoker = make_invoker(
        """
        async function fetchPage(secrets) {
          throw new TypeError('token rejected');
        }
        exports.handler = async (event) => fetchPage(event.secrets);
        """
    )
    error = answer(invoker)
    assert error["errorType"] == "TypeError"
    assert error["errorMessage"] == "token rejected"
    assert error["stackTrace"][0] == "TypeError: token rejected"
    frames = error["stackTrace"][1:]
    assert frames and all(invoker.spec.path in frame for frame in frames)
    assert "fetchPage" in frames[0] and "handler" in frames[-1]


@pytest.mark.parametrize(
    ("body", "error_type", "message"),
    [
        pytest.param(
            "callback(new RangeError('page out of range'))",
            "RangeError",
            "page out of range",
            id="callback-error",
        ),
        pytest.param("context.fail(new Error('failed'))", "Error", "failed", id="context-fail"),
        pytest.param("throw 'plain string'", "string", "plain string", id="thrown-string"),
        pytest.param(
            "Promise.reject(new SyntaxError('bad json')).catch(callback)",
            "SyntaxError",
            "bad json",
            id="caught-rejection",
        ),
    ],
)
def test_function_errors_answer_with_the_error_shape(make_invoker, body, error_type, message):
    invoker = make_invoker(f"exports.handler = (event, context, callback) => {{ {body}; }};")
    error = answer(invoker)
    assert (error["errorType"], error["errorMessage"]) == (error_type, message)
    assert isinstance(error["stackTrace"], list)


def test_unserializable_answer_is_a_marshal_error(make_invoker):
    invoker = make_invoker("exports.handler = () => { const a = {}; a.self = a; return a; };")
    assert answer(invoker)["errorType"] == "Runtime.MarshalError"


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("exports.handler = () => new Promise(() => {});", id="never-settles"),
        pytest.param("exports.handler = () => {};", id="returns-nothing"),
        pytest.param("exports.handler = (event, context, callback) => {};", id="never-calls-back"),
    ],
)
def test_a_handler_that_never_answers_says_so(make_invoker, source):
    invoker = make_invoker(source)
    assert answer(invoker)["errorType"] == "Runtime.NoAnswer"


def test_syntax_error_answers_and_a_fixed_file_loads_on_the_next_call(make_invoker):
    invoker = make_invoker("exports.handler = (event) => {\n")
    error = answer(invoker)
    assert error["errorType"] == "Runtime.UserCodeSyntaxError"
    write_file(Path(invoker.spec.path), "exports.handler = () => ({ state: { ok: 1 } });\n")
    assert answer(invoker) == {"state": {"ok": 1}}


def test_failing_import_answers_import_module_error(make_invoker):
    invoker = make_invoker(
        "import 'no-such-package-xyz';\nexport const handler = () => 1;\n", name="handler.mjs"
    )
    error = answer(invoker)
    assert error["errorType"] == "Runtime.ImportModuleError"
    assert "no-such-package-xyz" in error["errorMessage"]


def test_missing_file_raises_invoke_failed(tmp_path, node):
    with (
        NodeInvoker(tmp_path / "nowhere.js") as invoker,
        pytest.raises(errors.InvokeFailed, match="nowhere.js"),
    ):
        invoker.invoke(REQUEST)


def test_missing_handler_raises_invoke_failed(make_invoker):
    invoker = make_invoker("exports.other = () => ({});\n")
    with pytest.raises(errors.InvokeFailed, match="'handler' or 'lambda_handler'"):
        invoker.invoke(REQUEST)


def test_missing_node_raises_invoke_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with (
        NodeInvoker(write_file(tmp_path / "handler.js", "")) as invoker,
        pytest.raises(errors.InvokeFailed, match="Node.js 18"),
    ):
        invoker.invoke(REQUEST)


# -- output, crashes, timeouts, memory -------------------------------------------------------


def test_output_reaches_the_log_and_never_corrupts_the_answer(make_invoker):
    with structlog.testing.capture_logs() as logs:
        invoker = make_invoker(
            """
            const fs = require('node:fs');
            const { execSync } = require('node:child_process');
            console.log('at import');
            exports.handler = async () => {
              console.log('progress %d%%', 50);
              process.stdout.write('no newline');
              fs.writeSync(1, 'straight to fd 1\\n');
              execSync('echo from a child process', { stdio: 'inherit' });
              console.error('to stderr');
              return { state: { done: true } };
            };
            """
        )
        assert answer(invoker) == {"state": {"done": True}}
        assert answer(invoker) == {"state": {"done": True}}
        invoker.close()
    lines = [entry["line"] for entry in logs if entry["event"] == "function_output"]
    assert lines[:2] == ["at import", "progress 50%"]
    assert any(line.endswith("straight to fd 1") for line in lines)
    assert {"from a child process", "to stderr"} <= set(lines)
    assert {"function": "connector", "line": "at import", "log_level": "info"}.items() <= next(
        entry for entry in logs if entry.get("line") == "at import"
    ).items()


CRASHY = """
    let calls = 0;
    exports.handler = async (event) => {
      calls += 1;
      const action = event.state.action;
      console.log(`starting ${action}`);
      if (action === 'exit') process.exit(3);
      if (action === 'reject') Promise.reject(new Error('nobody awaited me'));
      if (action === 'hang') await new Promise(() => setInterval(() => {}, 1000));
      if (action === 'allocate') {
        const kept = [];
        for (;;) kept.push(new Array(100000).fill(kept.length));
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
      return { calls, pid: process.pid };
    };
    """


def test_process_exit_is_an_exit_error_with_the_log_tail_and_a_fresh_worker_follows(
    make_invoker,
):
    invoker = make_invoker(CRASHY)
    before = answer(invoker)
    with pytest.raises(errors.FunctionError, match="exit status 3") as failure:
        invoker.invoke(with_state(action="exit"))
    assert failure.value.error_type == "Runtime.ExitError"
    assert failure.value.log_tail[-1] == "starting exit"
    assert failure.value.stack_trace == failure.value.log_tail
    after = answer(invoker)
    assert after["calls"] == 1 and after["pid"] != before["pid"]


def test_unhandled_rejection_is_an_exit_error(make_invoker):
    invoker = make_invoker(CRASHY)
    with pytest.raises(errors.FunctionError, match="exit status 1") as failure:
        invoker.invoke(with_state(action="reject"))
    assert failure.value.error_type == "Runtime.ExitError"
    assert any("nobody awaited me" in line for line in failure.value.log_tail)


def test_hang_past_the_timeout_kills_the_worker_and_the_next_call_works(make_invoker):
    invoker = make_invoker(CRASHY, timeout=1)
    before = answer(invoker)
    started = time.monotonic()
    with pytest.raises(errors.FunctionError, match="timed out after 1 s") as failure:
        invoker.invoke(with_state(action="hang"))
    assert failure.value.error_type == "Sandbox.Timedout"
    assert time.monotonic() - started < 5
    with pytest.raises(ProcessLookupError):
        os.kill(before["pid"], 0)
    after = answer(invoker)
    assert after["calls"] == 1 and after["pid"] != before["pid"]


def test_memory_blow_up_is_bounded_by_memory_mb(make_invoker):
    invoker = make_invoker(CRASHY, memory_mb=64)
    with pytest.raises(errors.FunctionError) as failure:
        invoker.invoke(with_state(action="allocate"))
    assert failure.value.error_type == "Runtime.ExitError"
    assert any("heap out of memory" in line for line in failure.value.log_tail)
    assert answer(invoker)["calls"] == 1


def test_close_stops_the_worker_and_is_idempotent(make_invoker):
    invoker = make_invoker(CRASHY)
    pid = answer(invoker)["pid"]
    invoker.close()
    invoker.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# -- configuration and the CLI ---------------------------------------------------------------


def write_config(tmp_path: Path, function: str) -> Path:
    write_file(tmp_path / "index.js", "exports.handler = () => ({ state: {} });\n")
    config = tmp_path / "connectors.yaml"
    config.write_text(f"connectors:\n  demo:\n    function: {function}\n")
    return config


def test_inline_isolation_of_a_js_function_is_a_config_error(tmp_path):
    config = write_config(tmp_path, "{local: index.js, isolation: inline}")
    with pytest.raises(errors.ConfigError, match=r"connectors.demo.function.isolation: inline"):
        build_job(load_config(config), "demo")


def test_a_js_function_without_node_on_path_is_a_config_error(tmp_path, monkeypatch):
    config = write_config(tmp_path, "{local: index.js}")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(errors.ConfigError, match=r"no `node` on PATH; install Node.js 18"):
        build_job(load_config(config), "demo")


def test_commonjs_example_syncs_through_the_cli(tmp_path, node, connector, warehouse):
    config = copy_example("js_commonjs", tmp_path)
    result = connector("run", config=config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with warehouse(tmp_path / "warehouse.duckdb") as con:
        rows = con.execute(
            "SELECT id, name, city, signed_up_at, lifetime_value, active FROM crm.customers"
            " ORDER BY id"
        ).fetchall()
        state = con.execute("SELECT CAST(state AS VARCHAR) FROM connector_runtime.state").fetchone()
    assert len(rows) == 25
    first = rows[0]
    assert first[:3] == (1, "Customer 1", "Oslo")
    assert first[3].isoformat() == "2025-01-01T09:30:00+00:00"
    assert first[4:] == (12.5, True)
    assert rows[6][5] is False  # customer 7
    assert json.loads(state[0]) == {"after_id": 25}


def test_esm_example_syncs_through_the_cli(tmp_path, node, connector, warehouse):
    config = copy_example("js_esm", tmp_path)
    result = connector("run", config=config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with warehouse(tmp_path / "warehouse.duckdb") as con:
        rows = con.execute(
            "SELECT id, customer, CAST(amount AS VARCHAR), placed_at, _fivetran_deleted"
            " FROM shop.orders ORDER BY id"
        ).fetchall()
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [
        (1, "ana", "19.90", False),
        (2, "bo", "5.00", True),  # cancelled on the second page
        (3, "ana", "120.25", False),
        (4, "cy", "42.00", False),
        (5, "bo", "7.50", False),
        (6, "dee", "310.00", False),
    ]
    assert rows[0][3].isoformat() == "2025-03-01T10:00:00+00:00"


def copy_example(name: str, tmp_path: Path) -> Path:
    """The example's files (not a warehouse left from running it by hand) in `tmp_path`."""
    for source in (EXAMPLES / name).iterdir():
        if source.suffix in (".js", ".mjs", ".cjs", ".yaml", ".json"):
            shutil.copy(source, tmp_path / source.name)
    return tmp_path / "connectors.yaml"


# -- large pages go as columns ----------------------------------------------------------------

COLUMNS_SOURCE = """
exports.handler = async (event) => {
  const rows = [];
  for (let i = 0; i < 70; i++) {
    const row = JSON.parse(`{"id": ${i}, "__proto__": "p${i}"}`);  // an own key, as from an API
    Object.assign(row, { big: 2n ** 70n, at: new Date(Date.UTC(2024, 0, 1)),
                         nested: { k: [i, null, 'x'] }, missing: event.state.ragged && i === 5 ? undefined : i });
    rows.push(row);
  }
  return { state: { done: true }, insert: { items: rows }, hasMore: false };
};
"""


@pytest.mark.parametrize("ragged", [False, True])
def test_a_large_page_goes_as_columns_and_reads_as_its_rows(make_invoker, ragged):
    """70 plain rows with the same keys go as columns; a row whose value JSON leaves out
    (undefined) sends the table as rows, where that key is missing."""
    from connector_runtime.columns import ColumnarAnswer, ColumnRows
    from connector_runtime.protocol import decode_answer

    invoker = make_invoker(COLUMNS_SOURCE)
    raw = invoker.invoke(with_state(ragged=ragged))
    assert isinstance(raw, ColumnarAnswer) is not ragged
    rows = decode_answer(raw)["insert"]["items"]
    assert isinstance(rows, ColumnRows) is not ragged
    rows = list(rows)
    assert len(rows) == 70
    assert rows[7] == {
        "id": 7,
        "__proto__": "p7",
        "big": 2**70,
        "at": "2024-01-01T00:00:00.000Z",
        "nested": {"k": [7, None, "x"]},
        "missing": 7,
    }
    assert ("missing" in rows[5]) is not ragged
