"""Run any executable that speaks AWS Lambda's Runtime API (`runtime: provided`), locally.

A Go, Rust, Java or .NET program built for Lambda's `provided` runtimes, or a bash
bootstrap looping over curl, asks its host for work with HTTP. This invoker is that
host (design §13): for each process it serves the Runtime API on a free 127.0.0.1 port
and starts the executable with the environment Lambda gives it (`runtime_environment`:
`AWS_LAMBDA_RUNTIME_API` points at the server, `_HANDLER` is the function's `handler`,
else the file's name, `LAMBDA_TASK_ROOT` and the working directory are the executable's
folder, `TZ` is UTC). The process stays warm for the invoker's life (one sync); `close`
stops it, and a call still in flight (the sync paging ahead) fails at once. Only the
runtime's own user may connect (`_runtime_api_server`): an event carries the secrets.

Each `invoke` hands one event, the request as JSON, to the process's waiting
`GET /2018-06-01/runtime/invocation/next`, with Lambda's headers
(`Lambda-Runtime-Aws-Request-Id`, `-Deadline-Ms`, `-Invoked-Function-Arn`, `-Trace-Id`),
and waits for:

- `POST …/invocation/{id}/response`: its body is the answer, returned as it is;
- `POST …/invocation/{id}/error`: an `{errorMessage, ...}` body is the answer (its
  `errorType`, if missing, taken from the `Lambda-Runtime-Function-Error-Type` header);
  any other body raises `FunctionError` of that header's type, else `Function.Unhandled`;
- `POST …/init/error`: the same, the type defaulting to `Runtime.InitError`; the process
  is then stopped, so the next call starts afresh, as Lambda re-initialises;
- the process exiting first: `FunctionError` `Runtime.ExitError` ("Runtime exited with
  error: exit status 2"); exiting between calls, having answered, is no error: the next
  call starts a new process for its event;
- no answer within `timeout` (counted from the call, a first call's start-up included):
  the process group is killed, `FunctionError` `Sandbox.Timedout`.

Either `FunctionError` carries the last lines the process printed as `stack_trace` and
`log_tail`. Everything it (and its children) write to stdout and stderr is logged as
`function_output` and kept in the invoker's `output`; the lines printed before an answer
are there when `invoke` returns. `memory_mb` caps each process's writable memory
(`RLIMIT_DATA`, which reserved address space does not count against, so the JVM and .NET
start as usual) and is passed on as `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`.

Unlike Lambda: no 6 MB limit either way (the other local runners have none), a response
sent with chunked encoding (`Lambda-Runtime-Function-Response-Mode: streaming`) is read
whole, and the Extensions and Telemetry APIs are not served (404).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import subprocess
import threading
import time
import uuid
from functools import partial
from pathlib import Path
from secrets import token_hex
from typing import Any

import structlog

from connector_runtime import errors
from connector_runtime.invokers import Invoker, OutputTail
from connector_runtime.invokers._process_output import ProcessOutput
from connector_runtime.invokers._runtime_api_server import RuntimeApiServer
from connector_runtime.jsonio import encode_json

STOP_GRACE_SECONDS = 2.0
ACCOUNT_ID = "000000000000"  # in the function ARN: no account is involved


class RuntimeApiInvoker(Invoker):
    """Calls an executable speaking the Lambda Runtime API, in one warm process at a time;
    `env` is added to its environment after Lambda's variables."""

    def __init__(
        self,
        path: Path,
        *,
        handler: str | None = None,
        timeout: float = 900.0,
        memory_mb: int | None = 4096,
        function_name: str = "connector",
        log: Any = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path).resolve()
        self.timeout = timeout
        environment = runtime_environment(self.path, handler, function_name, memory_mb)
        self.env = {**environment, **(env or {})}
        self._start = partial(
            _Sandbox, self.path, self.env, memory_mb, function_name, log or structlog.get_logger()
        )
        self._sandbox: _Sandbox | None = None
        self._closed = False
        self._calling = threading.Lock()  # one call at a time, as one Lambda sandbox takes
        self._guard = threading.Lock()  # `_sandbox` and `_closed`; never held while waiting

    def invoke(self, request: dict[str, Any]) -> bytes:
        event = encode_json(request)
        with self._calling:
            try:
                return self._call(event)
            except _Undelivered:  # it exited between calls: a new process gets the event
                return self._call(event)  # a new one never raises it: it answered nothing

    def close(self) -> None:
        """Stop the process; a call in flight (paging ahead) ends at once, failed."""
        with self._guard:
            self._closed = True
            sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            sandbox.stop()

    def _call(self, event: bytes) -> bytes:
        sandbox = self._warm_sandbox()
        try:
            return sandbox.invoke(event, self.timeout)
        finally:
            if sandbox.ended:
                self._retire(sandbox)

    def _warm_sandbox(self) -> _Sandbox:
        """The sandbox for a call: a new one if there is none, or it exited since its last."""
        with self._guard:
            if self._closed:
                raise errors.InvokeFailed(f"{self.path.name}: called after its invoker closed")
            exited = self._sandbox if self._sandbox is not None and self._sandbox.ended else None
            if self._sandbox is None or exited is not None:
                self._sandbox = self._start(self.output)
            sandbox = self._sandbox
        if exited is not None:
            exited.stop()
        return sandbox

    def _retire(self, sandbox: _Sandbox) -> None:
        with self._guard:
            if self._sandbox is sandbox:
                self._sandbox = None
        sandbox.stop()


def runtime_environment(
    path: Path, handler: str | None, function_name: str, memory_mb: int | None
) -> dict[str, str]:
    """The variables Lambda sets for a `provided` runtime, but `AWS_LAMBDA_RUNTIME_API`."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    today = time.strftime("%Y/%m/%d", time.gmtime())
    return {
        "_HANDLER": handler or path.name,
        "LAMBDA_TASK_ROOT": str(path.parent),
        "AWS_LAMBDA_FUNCTION_NAME": function_name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb or 10240),  # unbounded: Lambda's most
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function_name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": f"{today}/[$LATEST]{token_hex(16)}",
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "TZ": ":UTC",  # as on Lambda: a function's local time is UTC
    }


class _Undelivered(Exception):
    """The process exited before taking the event, having answered an earlier one."""


class _Invocation:
    """One event on its way to the process, and the answer or failure it ends with."""

    def __init__(self, event: bytes, timeout: float) -> None:
        self.request_id = str(uuid.uuid4())
        self.event = event
        self.deadline = time.monotonic() + timeout
        self.handed_out = False
        self.answer: bytes | None = None
        self.failure: Exception | None = None
        self.done = threading.Event()

    @property
    def deadline_ms(self) -> int:
        """The deadline as Lambda sends it: milliseconds since the epoch."""
        return int((time.time() + self.deadline - time.monotonic()) * 1000)

    def settle(self, answer: bytes | None = None, failure: Exception | None = None) -> bool:
        """Record how the call ended; False if it had already ended."""
        if self.done.is_set():
            return False
        self.answer, self.failure = answer, failure
        self.done.set()
        return True


class _Sandbox:
    """One process and the Runtime API server it talks to; the process starts with the
    first call, so a call is always waiting for what it reports.

    `ended` once the process has exited, timed out or reported an init error: the invoker
    then stops it and starts another for the next call.
    """

    def __init__(
        self,
        path: Path,
        env: dict[str, str],
        memory_mb: int | None,
        function_name: str,
        log: Any,
        output: OutputTail,
    ) -> None:
        self.path, self.env, self.memory_mb = path, env, memory_mb
        self.function_name, self.log, self.output = function_name, log, output
        region = env["AWS_REGION"]
        self.function_arn = f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{function_name}"
        self._process: subprocess.Popen | None = None
        self._exit_code: int | None = None
        self._init_failed = self._killed = self._closing = False
        self._answered = 0  # calls answered, by response or error
        self._current: _Invocation | None = None
        self._state = threading.Condition()  # guards the above; `next` waits on it
        self._server = RuntimeApiServer(self)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    @property
    def ended(self) -> bool:
        return self._exit_code is not None or self._init_failed or self._killed

    def invoke(self, event: bytes, timeout: float) -> bytes:
        call = _Invocation(event, timeout)
        with self._state:  # launched under the lock: `stop` sees the process, or it never starts
            if self._closing:
                raise _stopped()
            if self.ended:
                raise _Undelivered  # exited between calls (ended otherwise, it was stopped)
            self._current = call
            self._state.notify_all()
            if self._process is None:
                self._launch()
        if not call.done.wait(max(0.0, call.deadline - time.monotonic())):
            self._kill()
            call.settle(
                failure=self._failure(
                    f"Task timed out after {timeout:.2f} seconds", "Sandbox.Timedout"
                )
            )
        with self._state:
            self._current = None
        if self._init_failed:  # it exits by itself, its last words written out
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=STOP_GRACE_SECONDS)
        self.printed.catch_up()
        if call.failure is not None:
            raise call.failure
        return call.answer

    def stop(self) -> None:
        """End the process (SIGTERM, then SIGKILL after a grace) and the server; a call in
        flight fails at once. Idempotent."""
        with self._state:
            if self._closing:
                return
            self._closing = True
            self._state.notify_all()
            call = self._current
        if call is not None:
            call.settle(failure=_stopped())
        if self._process is not None:
            if self._process.poll() is None:
                self._signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(timeout=STOP_GRACE_SECONDS)
            self._signal(signal.SIGKILL)  # what is left of its group holds the output pipe
            self._process.wait()
            self._watcher.join(timeout=STOP_GRACE_SECONDS)
        self._server.shutdown()
        self._server.server_close()

    def _launch(self) -> None:
        host, port = self._server.server_address[:2]
        try:
            self._process = subprocess.Popen(
                [str(self.path)],
                cwd=self.path.parent,
                env={**os.environ, **self.env, "AWS_LAMBDA_RUNTIME_API": f"{host}:{port}"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the runtime only; a kill takes its children
            )
        except OSError as exc:
            self._init_failed = True
            hint = "; is it a script without a #! line, or built for another system?"
            hint = hint if exc.errno == errno.ENOEXEC else ""
            raise errors.InvokeFailed(f"cannot start {self.path}: {exc.strerror}{hint}") from exc
        _limit_memory(self._process.pid, self.memory_mb)
        self.printed = ProcessOutput(
            self._process.stdout, self.function_name, self.log, self.output
        )
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()
        self.log.debug(
            "function_runtime_started", function=self.function_name, pid=self._process.pid
        )

    # --- the Runtime API's side (called on the server's threads) ---------------------

    def next_event(self) -> _Invocation | None:
        """The next event, once `invoke` has one; None when the sandbox stops first."""
        with self._state:
            self._state.wait_for(
                lambda: (
                    self._closing or (self._current is not None and not self._current.handed_out)
                )
            )
            if self._closing:
                return None
            self._current.handed_out = True
            return self._current

    def answered(self, request_id: str, answer: bytes | None, failure: Exception | None) -> bool:
        """A response or error for `request_id`; False if no call in flight has that id."""
        with self._state:
            call = self._current
            if call is None or not call.handed_out or call.request_id != request_id:
                return False
            self._answered += 1
        return call.settle(answer, failure)

    def init_failed(self, answer: bytes | None, failure: Exception | None) -> None:
        """The process reported an init error: the call in flight ends with it."""
        with self._state:
            self._init_failed = True
            call = self._current
        if call is not None:
            call.settle(answer, failure)

    # --- failures --------------------------------------------------------------------

    def _watch(self) -> None:
        code = self._process.wait()
        self.printed.finish()
        with self._state:
            self._exit_code = code
            call = self._current
            if self._closing or self._killed or call is None:
                return
            undelivered = self._answered > 0 and not call.handed_out
        if undelivered:
            call.settle(failure=_Undelivered())
        elif call.settle(
            failure=self._failure(f"Runtime {_exit_reason(code)}", "Runtime.ExitError")
        ):
            self.log.warning("function_runtime_exited", function=self.function_name, status=code)

    def _kill(self) -> None:
        with self._state:
            self._killed = True
        self._signal(signal.SIGKILL)
        self._process.wait()
        self.printed.finish()

    def _failure(self, headline: str, error_type: str) -> errors.FunctionError:
        tail = list(self.printed.tail)
        failure = errors.FunctionError(headline, error_type=error_type, stack_trace=tail)
        failure.log_tail = tail
        return failure

    def _signal(self, number: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, number)


def _stopped() -> errors.FunctionError:
    return errors.FunctionError(
        "Runtime stopped: its invoker was closed (the sync ended)", error_type="Runtime.ExitError"
    )


def _exit_reason(code: int) -> str:
    """How Lambda words a runtime's exit: status 0 gave no reason."""
    if code == 0:
        return "exited without providing a reason"
    if code > 0:
        return f"exited with error: exit status {code}"
    try:
        return f"exited with error: signal {signal.Signals(-code).name}"
    except ValueError:
        return f"exited with error: signal {-code}"


def _limit_memory(pid: int, memory_mb: int | None) -> None:
    """Cap the process's writable memory; its children inherit the cap when they start."""
    if not memory_mb or not hasattr(resource, "prlimit"):  # prlimit: Linux only
        return
    limit = memory_mb * 1024 * 1024
    with contextlib.suppress(OSError, ValueError):  # gone already, or not allowed: unbounded
        _, hard = resource.prlimit(pid, resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.prlimit(pid, resource.RLIMIT_DATA, (limit, hard))
