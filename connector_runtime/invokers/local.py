"""Call a local Python handler file the way AWS Lambda's Python runtime would.

A handler with one positional parameter is called as `handler(request)`; with two (or
`*args`) as `handler(event, context)` with a Lambda-shaped context. `async def` handlers
are awaited on one event loop that lives as long as the loaded module. The answer is
serialized to JSON bytes (see `jsonio.encode_json`); an exception becomes Lambda's
error shape `{errorMessage, errorType, stackTrace: [[file, line, function, code], ...]}`,
returned, not raised.

Loading: the file's directory goes first on `sys.path` and the module is imported once.
A missing file or handler attribute raises `InvokeFailed`; a module that fails to import
answers with an error shape (`Runtime.UserCodeSyntaxError`, `Runtime.ImportModuleError`
or the exception's own type) and is imported afresh on the next call, as Lambda re-inits.

Isolation:

- `process` (default): a warm worker subprocess (`_worker.py`) per invoker, in its own
  session. A crash, an exit (`sys.exit` included) or a signal raises `FunctionError`
  `Runtime.ExitError`; a call longer than `timeout` kills the worker and raises
  `Sandbox.Timedout`; `memory_mb` caps the worker's address space (`RLIMIT_AS`), so a
  blow-up ends as a `MemoryError` shape or an exit. Either error carries the last lines
  the worker wrote to stdout/stderr as `stack_trace` (and `log_tail`); the next call
  starts a fresh worker. Every output line is logged as `function_output`.
- `inline`: the handler runs in this process and thread. Same bytes and error shapes,
  and `sys.exit` still becomes `Runtime.ExitError` (then a fresh import), but nothing
  guards against `os._exit`, segfaults, hangs (the timeout only drives the context's
  countdown) or memory; prints go to this process's own stdout; `sys.path` and
  `sys.modules` keep the handler's entries. For trusted, well-behaved functions and tests.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import structlog

from connector_runtime import errors
from connector_runtime.invokers import Invoker
from connector_runtime.invokers._worker import (
    ANSWER,
    LENGTH,
    NOT_FOUND,
    FunctionHost,
    FunctionSpec,
    HandlerImportError,
    HandlerNotFound,
    encode_json,
)

TAIL_LINES = 50
STOP_GRACE_SECONDS = 2.0


class LocalPythonInvoker(Invoker):
    """Calls a handler in a local `.py` file, in a warm worker process or inline."""

    def __init__(
        self,
        path: Path,
        *,
        handler: str | None = None,
        isolation: str = "process",
        timeout: float = 900.0,
        memory_mb: int | None = 4096,
        function_name: str = "connector",
        log: Any = None,
    ) -> None:
        if isolation not in ("process", "inline"):
            raise ValueError(f"isolation must be 'process' or 'inline', not {isolation!r}")
        self.spec = FunctionSpec(
            path=str(Path(path).resolve()),
            handler=handler,
            function_name=function_name,
            timeout=timeout,
            memory_mb=memory_mb,
        )
        self.isolation = isolation
        log = log if log is not None else structlog.get_logger()
        self._worker = WarmWorker(lambda: _python_command(self.spec), self.spec, log)
        self._host: FunctionHost | None = None

    def invoke(self, request: dict[str, Any]) -> bytes:
        if self.isolation == "inline":
            return self._invoke_inline(request)
        return self._worker.call(request)

    def close(self) -> None:
        self._worker.close()
        if self._host is not None:
            self._host.close()
            self._host = None

    def _invoke_inline(self, request: dict[str, Any]) -> bytes:
        # A private copy, as a worker would receive: the handler can't alter the caller's state.
        request = json.loads(encode_json(request))
        try:
            self._host = self._host or FunctionHost(self.spec)
            return self._host.call(request)
        except HandlerImportError as exc:
            return exc.answer
        except HandlerNotFound as exc:
            raise errors.InvokeFailed(str(exc)) from exc
        except SystemExit as exc:
            self.close()  # like a crashed worker: the next call imports the module afresh
            status = _exit_status(exc.code)
            raise errors.FunctionError(
                f"Runtime exited with error: exit status {status}", error_type="Runtime.ExitError"
            ) from exc


class WarmWorker:
    """The worker behind a process-isolated invoker: started on the first call, kept warm
    between calls, replaced after it dies or when the function's module failed to load."""

    def __init__(self, command: Callable[[], list[str]], spec: FunctionSpec, log: Any) -> None:
        self.command, self.spec, self.log = command, spec, log
        self._worker: _Worker | None = None

    def call(self, request: dict[str, Any]) -> bytes:
        if self._worker is None:
            self._worker = _Worker(self.command(), self.spec.function_name, self.log)
        try:
            kind, payload = self._worker.exchange(encode_json(request), self.spec.timeout)
        except errors.FunctionError:
            self._worker = None  # it is dead; the next call starts a fresh one
            raise
        if kind != ANSWER:  # the module did not load: retire the worker so it re-imports
            self.close()
        if kind == NOT_FOUND:
            raise errors.InvokeFailed(payload.decode())
        return payload

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None


def _python_command(spec: FunctionSpec) -> list[str]:
    return [sys.executable, "-m", "connector_runtime.invokers._worker", json.dumps(asdict(spec))]


def _exit_status(code: object) -> int:
    """The process exit status `sys.exit(code)` would produce."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


class _Worker:
    """One warm worker subprocess, and a thread that logs what it writes to stderr.

    `command` starts a program that reads request frames on its stdin and writes reply
    frames to its stdout (`_worker.py`; `node_worker.mjs` behind `node.py`'s fd shuffle).
    """

    def __init__(self, command: list[str], function_name: str, log: Any) -> None:
        try:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # Ctrl-C reaches the runtime only; a kill takes its children
            )
        except OSError as exc:
            raise errors.InvokeFailed(f"cannot start a worker ({command[0]}): {exc}") from exc
        os.set_blocking(self._process.stdin.fileno(), False)
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._stderr_reader = threading.Thread(
            target=self._log_output, args=(log, function_name), daemon=True
        )
        self._stderr_reader.start()
        log.debug("function_worker_started", function=function_name, pid=self._process.pid)

    def exchange(self, request: bytes, timeout: float) -> tuple[bytes, bytes]:
        """Send one request; return the reply's kind and payload.

        Raises `FunctionError` (the worker is then gone) if it exits or times out.
        """
        deadline = time.monotonic() + timeout
        try:
            self._write(LENGTH.pack(len(request)) + request, deadline)
            (length,) = LENGTH.unpack(self._read(LENGTH.size, deadline))
            reply = self._read(length, deadline)
        except TimeoutError:
            self.kill()
            raise self._failure(f"Task timed out after {timeout:g} s", "Sandbox.Timedout") from None
        except (EOFError, BrokenPipeError):
            headline = f"Runtime exited with error: {self._exit_description()}"
            raise self._failure(headline, "Runtime.ExitError") from None
        return reply[:1], reply[1:]

    def stop(self) -> None:
        """Close stdin so the worker ends its loop; kill it if it lingers."""
        with contextlib.suppress(OSError):
            self._process.stdin.close()
        try:
            self._process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
        self._release()

    def kill(self) -> None:
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()
        self._release()

    def _release(self) -> None:
        self._stderr_reader.join(timeout=1.0)
        for pipe in (self._process.stdin, self._process.stdout):
            with contextlib.suppress(OSError):
                pipe.close()

    def _failure(self, headline: str, error_type: str) -> errors.FunctionError:
        self._release()  # the reader has now logged the worker's last lines
        tail = list(self.tail)
        failure = errors.FunctionError(headline, error_type=error_type, stack_trace=tail)
        failure.log_tail = tail
        return failure

    def _exit_description(self) -> str:
        try:
            code = self._process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:  # closed its pipe but still running
            self.kill()
            return "closed the protocol pipe and was killed"
        if code >= 0:
            return f"exit status {code}"
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"

    def _log_output(self, log: Any, function_name: str) -> None:
        with self._process.stderr as output:
            for raw in output:
                line = raw.decode(errors="replace").rstrip("\r\n")
                self.tail.append(line)
                log.info("function_output", function=function_name, line=line)

    def _write(self, data: bytes, deadline: float) -> None:
        fd = self._process.stdin.fileno()
        pending = memoryview(data)
        while pending:
            _wait_for(fd, select.POLLOUT, deadline)
            with contextlib.suppress(BlockingIOError):
                pending = pending[os.write(fd, pending) :]

    def _read(self, size: int, deadline: float) -> bytes:
        fd = self._process.stdout.fileno()
        chunks: list[bytes] = []
        while size:
            _wait_for(fd, select.POLLIN, deadline)
            chunk = os.read(fd, size)
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)


def _wait_for(fd: int, event: int, deadline: float) -> None:
    """Block until `fd` is ready (or hung up: the read or write then says so) or time's up."""
    poller = select.poll()
    poller.register(fd, event)
    if not poller.poll(math.ceil(max(0.0, deadline - time.monotonic()) * 1000)):
        raise TimeoutError
