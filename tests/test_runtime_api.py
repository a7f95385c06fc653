"""`runtime: provided`: executables speaking AWS Lambda's Runtime API, served on loopback.

Three real clients through the CLI: AWS's bash-and-curl custom runtime loop
(`runtime_api/bash/bootstrap`), a Go program using net/http alone
(`runtime_api/go_client/`, built with the `go` on PATH) and `awslambdaric`, the Python
runtime interface client AWS ships, run as the bootstrap. Then the Runtime API's corners
(a wrong request id, chunked answers, an init error without a type, a process that exits
between events, output caught up with each answer) against the invoker directly, driven by
small Python bootstraps. Without curl or go the tests that need them skip, or fail under
CI=true (`.ci/run` installs both).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import Project, open_warehouse, run_connector
from lambda_rie import unavailable

from connector_runtime import errors
from connector_runtime.invokers.runtime_api import RuntimeApiInvoker

pytestmark = pytest.mark.slow  # builds a Go program and starts runtimes: most of a minute

CLIENTS = Path(__file__).parent / "runtime_api"
EXAMPLE = Path(__file__).parent.parent / "examples" / "go_runtime_api"
REQUEST = {"agent": "connector-runtime/test", "state": {}, "secrets": {}, "sync_id": "s-1"}


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def go_build(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """`go_build(folder)`: the binary of the Go module in `folder`, built once per source.

    Offline (standard library only) and static; the build cache and binaries are kept in
    pytest's cache, so a second run does not compile again.
    """
    go = shutil.which("go")
    if go is None:
        unavailable("go is not on PATH: apt-get install golang-go (Go 1.19 or later)")
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("go-runtime-api") if cache else tmp_path_factory.mktemp("go")
    env = {
        **os.environ,
        "GOCACHE": str(folder / "build-cache"),
        "GOPATH": str(folder / "gopath"),
        "GOPROXY": "off",
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }

    def build(source: Path) -> Path:
        files = sorted(p for p in source.iterdir() if p.suffix == ".go" or p.name == "go.mod")
        digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files))
        binary = folder / f"{source.name}-{digest.hexdigest()[:16]}"
        if not binary.exists():
            partial = binary.with_suffix(".partial")
            done = subprocess.run(
                [go, "build", "-o", str(partial), "."],
                cwd=source,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, f"go build in {source} failed:\n{done.stderr}"
            partial.replace(binary)  # atomic: a concurrent run sees the whole file or none
        return binary

    return build


@pytest.fixture
def curl() -> str:
    found = shutil.which("curl")
    if found is None:
        unavailable("curl is not on PATH: apt-get install curl (the bash runtime uses it)")
    return found


def runtime_project(
    tmp_path: Path, bootstrap: Path | str, *, function: dict | None = None, **options
) -> Project:
    """A project whose function is `bootstrap` (a file to copy, or a script's text)."""
    demo = Project(tmp_path, "demo")
    target = tmp_path / "bootstrap"
    if isinstance(bootstrap, Path):
        shutil.copy(bootstrap, target)
    else:
        target.write_text(textwrap.dedent(bootstrap))
    target.chmod(0o755)
    runtime = {"local": "bootstrap", "runtime": "provided", "timeout": "30s"}
    demo.write_config(function={**runtime, **(function or {})}, **options)
    return demo


def function_output(demo: Project) -> str:
    logs = demo.connector("syncs", demo.name, "--logs", "--json")
    assert logs.returncode == 0, logs.stderr
    return json.loads(logs.stdout)["function_output"]


def the_alert(demo: Project, result) -> tuple[dict, list[str]]:
    """The one alert of a failed `connector run`, and the function output it showed."""
    assert result.returncode == 1, result.stderr
    ours, _, printed = result.stderr.partition("function output (this sync, last lines):\n")
    assert "Traceback" not in ours, result.stderr  # the function's own output may hold one
    (alert,) = demo.alerts()
    assert alert["kind"] == "function_error" and result.said(alert["message"]), result.stderr
    return alert, printed.splitlines()


def gone(pid: int, within: float = 10.0) -> bool:
    """Whether `pid` has died, waiting up to `within` seconds for a SIGKILL to land.

    A killed grandchild is reparented to PID 1 and stays a zombie until PID 1 reaps it,
    which a container's init may never do: a zombie counts as gone.
    """
    deadline = time.monotonic() + within
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return True
        if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


# -- bash and curl -----------------------------------------------------------------------------

BASH_PAGES = """\
echo "function.sh loaded" >&2

handler() {
  local page
  page="$(grep -o '"page":[0-9]*' <<<"$1" | cut -d: -f2)"
  page="${page:-0}"
  echo "$$" >>pids
  echo "bash handler: page $page" >&2
  FAIL_ON_PAGE
  local more=false
  [ "$page" -lt 2 ] && more=true
  printf '{"state":{"page":%d},"insert":{"pages":[{"page":%d,"pid":%d,"handler":"%s",' \\
    "$((page + 1))" "$page" "$$" "$_HANDLER"
  printf '"task_root":"%s","function":"%s","tz":"%s","api":"%s"}]},' \\
    "$LAMBDA_TASK_ROOT" "$AWS_LAMBDA_FUNCTION_NAME" "$TZ" "${AWS_LAMBDA_RUNTIME_API%:*}"
  printf '"schema":{"pages":{"primary_key":["page"]}},"hasMore":%s}\\n' "$more"
}
"""


def bash_project(tmp_path: Path, on_page_1: str = ":", **function) -> Project:
    (tmp_path / "function.sh").write_text(BASH_PAGES.replace("FAIL_ON_PAGE", on_page_1))
    return runtime_project(
        tmp_path,
        CLIENTS / "bash" / "bootstrap",
        function={"handler": "function.handler", **function},
    )


def test_bash_and_curl_runtime_syncs_every_page_from_one_warm_process(tmp_path, curl):
    demo = bash_project(tmp_path)
    result = demo.run()
    assert result.returncode == 0, result.stderr
    rows = demo.records("SELECT * EXCLUDE (_fivetran_synced) FROM demo.pages ORDER BY page")
    assert [row["page"] for row in rows] == [0, 1, 2]
    assert len({row["pid"] for row in rows}) == 1  # one process served the whole sync
    assert {key: rows[0][key] for key in ("handler", "task_root", "function", "tz", "api")} == {
        "handler": "function.handler",
        "task_root": str(tmp_path),
        "function": "demo",
        "tz": ":UTC",
        "api": "127.0.0.1",
    }
    assert demo.state() == {"page": 3}
    (sync,) = demo.syncs()
    assert (sync["status"], sync["pages"], sync["rows_upserted"]) == ("succeeded", 3, 3)
    output = function_output(demo).splitlines()
    assert output[0] == "function.sh loaded"
    assert [line for line in output if line.startswith("bash handler")] == [
        "bash handler: page 0",
        "bash handler: page 1",
        "bash handler: page 2",
    ]
    (pid,) = {int(line) for line in (tmp_path / "pids").read_text().split()}
    assert gone(pid)  # stopped at the end of the sync


def test_a_failing_handler_is_posted_as_an_error_with_its_type(tmp_path, curl):
    demo = bash_project(
        tmp_path, 'if [ "$page" = 1 ]; then echo "upstream said no" >&2; return 4; fi'
    )
    alert, printed = the_alert(demo, demo.run())
    assert alert["error_type"] == "Handler.Failed"
    assert alert["message"] == "handler failed with status 4"
    assert demo.query("SELECT page FROM demo.pages") == [(0,)]
    assert demo.state() == {"page": 1}
    assert printed[-1] == "upstream said no"


def test_an_init_error_is_the_type_the_bootstrap_posted(tmp_path, curl):
    demo = bash_project(tmp_path, handler="function.no_such_handler")
    alert, printed = the_alert(demo, demo.run())
    assert alert["error_type"] == "Runtime.HandlerNotFound"
    assert alert["message"] == f"no function no_such_handler in {tmp_path}/function.sh"
    assert demo.tables() == [] and demo.state() == {}
    assert printed == ["function.sh loaded"]


def test_a_hang_past_the_timeout_kills_the_process_and_is_sandbox_timedout(tmp_path, curl):
    hang = 'if [ "$page" = 1 ]; then sleep 60 & echo $! >sleeper; wait; fi'
    # 5 s: page 0's call (bash and curl starting up) must fit it on a loaded machine too
    demo = bash_project(tmp_path, hang, timeout="5s")
    started = time.monotonic()
    alert, printed = the_alert(demo, demo.run())
    assert time.monotonic() - started < 45  # not the hang's 60 s
    assert alert["error_type"] == "Sandbox.Timedout"
    assert alert["message"] == "Task timed out after 5.00 seconds"
    assert alert["stack_trace"][-1] == "bash handler: page 1"  # its last lines
    assert demo.query("SELECT page FROM demo.pages") == [(0,)] and demo.state() == {"page": 1}
    (pid,) = {int(line) for line in (tmp_path / "pids").read_text().split()}
    assert gone(pid) and gone(int((tmp_path / "sleeper").read_text()))  # its children too


# -- Go, with net/http -------------------------------------------------------------------------


LAMBDA_SEES = (
    "function_arn",
    "content_type",
    "handler",
    "task_root",
    "working_dir",
    "function_name",
    "memory_size",
    "version",
    "region",
)


def test_go_program_gets_lambdas_headers_and_environment(tmp_path, go_build):
    demo = runtime_project(
        tmp_path,
        go_build(CLIENTS / "go_client"),
        function={"runtime": "provided.al2023", "timeout": "45s", "memory_mb": 512},
    )
    started = time.time()
    result = demo.run()
    finished = time.time()
    assert result.returncode == 0, result.stderr
    rows = demo.records("SELECT * FROM demo.invocations ORDER BY page")
    assert [(r["page"], r["served"]) for r in rows] == [(0, 1), (1, 2), (2, 3)]  # warm
    assert len({r["pid"] for r in rows}) == 1
    assert len({r["request_id"] for r in rows}) == 3
    (sync,) = demo.syncs()
    for row in rows:
        assert row["sync_id"] == sync["sync_id"]
        assert (started + 45) * 1000 - 1000 <= row["deadline_ms"] <= (finished + 45) * 1000
        assert row["trace_id"].startswith("Root=1-") and ";Sampled=0" in row["trace_id"]
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    assert {key: rows[0][key] for key in LAMBDA_SEES} == {
        "function_arn": f"arn:aws:lambda:{region}:000000000000:function:demo",
        "content_type": "application/json",
        "handler": "bootstrap",  # no `handler:`: the file's name
        "task_root": str(tmp_path),
        "working_dir": str(tmp_path),
        "function_name": "demo",
        "memory_size": "512",
        "version": "$LATEST",
        "region": region,
    }
    assert rows[0]["runtime_api"].startswith("127.0.0.1:")
    assert demo.state() == {"page": 3}


def test_go_programs_posted_error_takes_its_type_from_the_header(tmp_path, go_build):
    demo = runtime_project(tmp_path, go_build(CLIENTS / "go_client"), secrets={"fail_on_page": 1})
    alert, printed = the_alert(demo, demo.run())
    assert (alert["error_type"], alert["message"]) == (
        "Upstream.Refused",
        "page 1 refused by upstream",
    )
    assert demo.query("SELECT page FROM demo.invocations") == [(0,)]
    assert demo.state() == {"page": 1}
    assert printed[-1].startswith("go client: page 1, request ")


def test_example_go_runtime_api(tmp_path, go_build):
    """examples/go_runtime_api, built as its header says and run from its folder."""
    folder = tmp_path / "go_runtime_api"
    shutil.copytree(
        EXAMPLE, folder, ignore=shutil.ignore_patterns("bootstrap", "warehouse.duckdb*")
    )
    shutil.copy(go_build(EXAMPLE), folder / "bootstrap")
    for _ in range(2):  # the second sync finds nothing new
        result = run_connector("run", cwd=folder)
        assert result.returncode == 0, result.stderr
    with open_warehouse(folder / "warehouse.duckdb") as con:
        rows = con.execute(
            "SELECT id, subject, status, strftime(updated_at, '%Y-%m-%d %H:%M'), _fivetran_deleted"
            " FROM support.tickets ORDER BY id"
        ).fetchall()
        state = con.execute("SELECT CAST(state AS VARCHAR) FROM connector_runtime.state").fetchall()
    assert rows == [
        (101, "Cannot log in", "solved", "2025-03-02 08:00", False),
        (102, "Invoice missing VAT number", "open", "2025-03-01 09:40", False),
        (103, "Login page times out", "open", "2025-03-01 10:05", True),  # merged into 101
        (104, "Export to CSV", "pending", "2025-03-02 11:30", False),
        (105, "Dark mode", "open", "2025-03-03 16:20", False),
    ]
    assert [json.loads(s) for (s,) in state] == [{"cursor": 7}]


# -- awslambdaric, AWS's Python runtime interface client ----------------------------------------

PYTHON_FUNCTION = """\
import os

class RateLimited(Exception):
    pass

def lambda_handler(event, context):
    page = event["state"].get("page", 0)
    secrets = event["secrets"]
    print(f"python page {page}")
    if page == secrets.get("crash_on_page"):
        os._exit(3)
    if page == secrets.get("raise_on_page"):
        raise RateLimited("quota of 100 calls used up")
    if page == secrets.get("grow_on_page"):
        hoard = bytearray(1024 * 1024 * 1024)
    row = {
        "page": page,
        "pid": os.getpid(),
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }
    return {
        "state": {"page": page + 1},
        "insert": {"items": [row]},
        "schema": {"items": {"primary_key": ["page"]}},
        "hasMore": page < 2,
    }
"""


def awslambdaric_project(tmp_path: Path, source: str = PYTHON_FUNCTION, **options) -> Project:
    (tmp_path / "app.py").write_text(textwrap.dedent(source))
    bootstrap = f'#!/bin/sh\nexec "{sys.executable}" -m awslambdaric "$_HANDLER"\n'
    function = {"handler": "app.lambda_handler", **options.pop("function", {})}
    return runtime_project(tmp_path, bootstrap, function=function, **options)


def test_awslambdaric_runs_a_fivetran_lambda_handler(tmp_path):
    demo = awslambdaric_project(tmp_path)
    result = demo.run()
    assert result.returncode == 0, result.stderr
    rows = demo.records("SELECT * FROM demo.items ORDER BY page")
    assert [r["page"] for r in rows] == [0, 1, 2]
    assert len({r["pid"] for r in rows}) == 1 and len({r["request_id"] for r in rows}) == 3
    assert {r["function_name"] for r in rows} == {"demo"}
    assert all(0 < r["remaining_ms"] <= 30_000 for r in rows)
    assert demo.state() == {"page": 3}
    output = function_output(demo)
    assert all(f"python page {n}" in output for n in range(3)), output


@pytest.mark.parametrize(
    ("secrets", "function", "error_type", "message"),
    [
        pytest.param(
            {"raise_on_page": 1}, {}, "RateLimited", "quota of 100 calls used up", id="raised"
        ),
        pytest.param(
            {"crash_on_page": 1},
            {},
            "Runtime.ExitError",
            "Runtime exited with error: exit status 3",
            id="crashed",
        ),
        pytest.param(
            {"grow_on_page": 1},
            {"memory_mb": 256},
            "MemoryError",
            "MemoryError (the function gave no message)",
            id="over-memory_mb",
        ),
    ],
)
def test_awslambdaric_failures_on_page_two(tmp_path, secrets, function, error_type, message):
    demo = awslambdaric_project(tmp_path, secrets=secrets, function=function)
    alert, printed = the_alert(demo, demo.run())
    assert (alert["error_type"], alert["message"]) == (error_type, message)
    assert demo.query("SELECT page FROM demo.items") == [(0,)] and demo.state() == {"page": 1}
    assert "python page 1" in printed
    if error_type == "Runtime.ExitError":
        assert alert["stack_trace"][-1] == "python page 1"  # the process's last lines
    if error_type == "RateLimited":
        assert any("app.py" in str(frame) for frame in alert["stack_trace"]), alert


def test_awslambdaric_import_error_is_an_init_error(tmp_path):
    demo = awslambdaric_project(tmp_path, "import not_a_module_anywhere\n")
    alert, printed = the_alert(demo, demo.run())
    assert alert["error_type"] == "Runtime.ImportModuleError"
    assert "Unable to import module 'app'" in alert["message"]
    assert "not_a_module_anywhere" in alert["message"]
    assert demo.tables() == [] and demo.state() == {}
    # what awslambdaric logged before it posted the init error and exited
    assert any(line.startswith("[ERROR] Runtime.ImportModuleError") for line in printed), printed


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "mode", "said"),
    [
        pytest.param(
            {"local": "bootstrap", "runtime": "provided"},
            0o644,
            ["connectors.demo.function.local:", "is not executable", "chmod +x bootstrap"],
            id="not-executable",
        ),
        pytest.param(
            {"local": "bootstrap", "runtime": "provided", "isolation": "inline"},
            0o755,
            ["connectors.demo.function.isolation:", "remove `isolation: inline`"],
            id="inline",
        ),
        pytest.param(
            {"local": None, "http": "http://127.0.0.1:9/fn", "runtime": "provided"},
            0o755,
            ["connectors.demo.function:", "runtime: provided runs an executable: set local"],
            id="not-local",
        ),
        pytest.param(
            {"local": "bootstrap", "runtime": "go1.x"},
            0o755,
            [
                "connectors.demo.function.runtime:",
                "'provided', 'provided.al2023' or 'provided.al2'",
            ],
            id="unknown-runtime",
        ),
    ],
)
def test_config_errors_name_the_field(tmp_path, function, mode, said):
    demo = Project(tmp_path, "demo")
    (tmp_path / "bootstrap").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bootstrap").chmod(mode)
    demo.write_config(function=function)
    result = demo.connector("validate")
    assert result.returncode == 2, result.stderr
    for text in said:
        assert result.said(text), result.stderr
    assert not result.said("is not a .py"), result.stderr  # no file-type error besides
    assert "Traceback" not in result.stderr


# -- the Runtime API's corners, against the invoker --------------------------------------------

PYTHON_CLIENT = f"""\
#!{sys.executable}
import http.client, json, os, sys, time

host = os.environ["AWS_LAMBDA_RUNTIME_API"]
api = "/2018-06-01/runtime"

def call(method, path, body=None, headers=None, chunked=False):
    connection = http.client.HTTPConnection(host)
    connection.request(method, api + path, body=body, headers=headers or {{}}, encode_chunked=chunked)
    reply = connection.getresponse()
    return reply.status, reply.getheaders(), reply.read()
"""


@pytest.fixture
def client(tmp_path):
    """`client(body)`: an invoker of a Python bootstrap: PYTHON_CLIENT then `body`."""
    invokers: list[RuntimeApiInvoker] = []

    def make(body: str, **options) -> RuntimeApiInvoker:
        path = tmp_path / f"bootstrap{len(invokers)}"
        path.write_text(PYTHON_CLIENT + textwrap.dedent(body))
        path.chmod(0o755)
        options.setdefault("timeout", 20)
        invokers.append(RuntimeApiInvoker(path, **options))
        return invokers[-1]

    yield make
    for invoker in invokers:
        invoker.close()


def test_wrong_ids_and_paths_are_refused_and_a_chunked_answer_is_read_whole(client):
    invoker = client(
        """\
        while True:
            status, headers, event = call("GET", "/invocation/next")
            request_id = dict(headers)["Lambda-Runtime-Aws-Request-Id"]
            refused = [
                call("POST", "/invocation/not-this-one/response", b"{}")[0],
                call("POST", "/invocation/next", b"{}")[0],
                call("GET", "/invocation/" + request_id)[0],
                call("POST", "/init", b"{}")[0],
            ]
            answer = json.dumps({"state": json.loads(event)["state"], "refused": refused})
            chunks = (answer[i : i + 7].encode() for i in range(0, len(answer), 7))
            call("POST", f"/invocation/{request_id}/response", chunks, chunked=True)
        """
    )
    for page in range(2):
        answer = json.loads(invoker.invoke({**REQUEST, "state": {"page": page}}))
        assert answer == {"state": {"page": page}, "refused": [400, 404, 404, 404]}


def test_an_init_error_without_a_type_or_shape_is_runtime_init_error(client):
    invoker = client(
        """\
        print("reading settings", flush=True)
        call("POST", "/init/error", b"settings.toml is missing")
        sys.exit(1)
        """
    )
    with pytest.raises(errors.FunctionError) as failed:
        invoker.invoke(REQUEST)
    assert failed.value.error_type == "Runtime.InitError"
    assert str(failed.value) == "connector failed to start: settings.toml is missing"
    assert invoker.output.text() == "reading settings"


def test_an_error_shape_without_a_type_gets_the_headers_and_stays_warm(client):
    invoker = client(
        """\
        while True:
            status, headers, event = call("GET", "/invocation/next")
            request_id = dict(headers)["Lambda-Runtime-Aws-Request-Id"]
            body = json.dumps({"errorMessage": f"no luck in {os.getpid()}", "stackTrace": ["x"]})
            type_header = {"Lambda-Runtime-Function-Error-Type": "Upstream.Down"}
            call("POST", f"/invocation/{request_id}/error", body.encode(), type_header)
        """
    )
    answers = [json.loads(invoker.invoke(REQUEST)) for _ in range(2)]
    assert answers[0] == answers[1]  # the same process answered both
    assert answers[0]["errorType"] == "Upstream.Down" and answers[0]["stackTrace"] == ["x"]


def test_a_process_that_exits_between_events_is_started_again(client):
    invoker = client(
        """\
        status, headers, event = call("GET", "/invocation/next")
        request_id = dict(headers)["Lambda-Runtime-Aws-Request-Id"]
        call("POST", f"/invocation/{request_id}/response", json.dumps({"pid": os.getpid()}))
        """  # one event, then it ends (exit status 0)
    )
    pids = [json.loads(invoker.invoke(REQUEST))["pid"] for _ in range(4)]
    assert len(set(pids)) == 4


def test_exiting_before_answering_is_an_exit_error_even_with_status_0(client):
    invoker = client(
        """\
        call("GET", "/invocation/next")
        print("took the event, then left")
        """
    )
    with pytest.raises(errors.FunctionError) as failed:
        invoker.invoke(REQUEST)
    assert failed.value.error_type == "Runtime.ExitError"
    assert str(failed.value) == "Runtime exited without providing a reason"
    assert failed.value.stack_trace == ["took the event, then left"]


def test_what_each_call_printed_is_in_output_when_invoke_returns(client):
    invoker = client(
        """\
        while True:
            status, headers, event = call("GET", "/invocation/next")
            request_id = dict(headers)["Lambda-Runtime-Aws-Request-Id"]
            n = json.loads(event)["state"]["n"]
            print(f"call {n} to stdout", flush=True)
            print(f"call {n} to stderr", file=sys.stderr, flush=True)
            sys.stdout.write(f"call {n} unfinished")
            sys.stdout.flush()
            call("POST", f"/invocation/{request_id}/response", json.dumps({"n": n}))
            print()
        """
    )
    for n in range(30):
        assert json.loads(invoker.invoke({**REQUEST, "state": {"n": n}})) == {"n": n}
        lines = invoker.output.text().split("\n")
        assert "" not in lines  # the newline after an unfinished line adds no empty one
        assert lines[-3:] == [f"call {n} to stdout", f"call {n} to stderr", f"call {n} unfinished"]


def test_a_program_that_cannot_start_is_invoke_failed_naming_it(tmp_path):
    script = tmp_path / "bootstrap"
    script.write_text("echo this has no #! line\n")
    script.chmod(0o755)
    with RuntimeApiInvoker(script) as invoker, pytest.raises(errors.InvokeFailed) as failed:
        invoker.invoke(REQUEST)
    assert str(failed.value) == (
        f"cannot start {script}: Exec format error; is it a script without a #! line, or "
        "built for another system?"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another user needs root")
def test_another_users_process_cannot_take_an_event(client, tmp_path, curl):
    invoker = client(
        """\
        with open("api", "w") as address:
            address.write(host)
        while True:
            status, headers, event = call("GET", "/invocation/next")
            request_id = dict(headers)["Lambda-Runtime-Aws-Request-Id"]
            call("POST", f"/invocation/{request_id}/response", event)
        """
    )
    assert json.loads(invoker.invoke(REQUEST)) == REQUEST  # now it waits for the next event
    next_event = f"http://{(tmp_path / 'api').read_text()}/2018-06-01/runtime/invocation/next"
    thief = subprocess.run(
        [curl, "--silent", "--max-time", "10", next_event],
        user=65534,  # nobody
        group=65534,
        extra_groups=[],
        capture_output=True,
        timeout=30,
    )
    # 52: an empty reply, 56: the connection reset; a served one would wait for an event
    assert thief.returncode in (52, 56), thief
    second = {**REQUEST, "state": {"page": 2}}
    assert json.loads(invoker.invoke(second)) == second


def test_closing_ends_a_call_in_flight_at_once(client, tmp_path):
    """The sync closes its invoker when a page fails while the next is being asked for."""
    invoker = client(
        """\
        call("GET", "/invocation/next")
        with open("took", "w") as took:
            took.write(str(os.getpid()))
        time.sleep(600)
        """,
        timeout=600,
    )
    outcome: list[BaseException] = []

    def ask() -> None:
        try:
            invoker.invoke(REQUEST)
        except BaseException as exc:
            outcome.append(exc)

    asking = threading.Thread(target=ask)
    asking.start()
    took = tmp_path / "took"
    deadline = time.monotonic() + 30
    while not (took.exists() and took.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert took.exists(), "the process never took the event"
    closing = threading.Thread(target=invoker.close)  # the test must not hang if it blocks
    closing.start()
    for thread in (closing, asking):
        thread.join(timeout=30)
        assert not thread.is_alive(), f"{thread.name} still waits"
    (failure,) = outcome
    assert isinstance(failure, errors.FunctionError) and failure.error_type == "Runtime.ExitError"
    assert "closed" in str(failure)
    assert gone(int(took.read_text()))
    with pytest.raises(errors.InvokeFailed, match="called after its invoker closed"):
        invoker.invoke(REQUEST)
