"""Call a local Python handler file the way AWS Lambda's Python runtime would.

`lambda_handler` is always called as Lambda calls it, `lambda_handler(event, context)`
with a Lambda-shaped context: a one-parameter `lambda_handler` fails with Python's
TypeError, as it would once deployed, and a hint to add `context`. Another handler with
one positional parameter is called as `handler(request)` (the runtime's own shape); with
two (or `*args`) as `handler(event, context)`. `async def` handlers
are awaited on one event loop that lives as long as the loaded module. The answer is
serialized to JSON bytes (see `jsonio.encode_json`); an exception becomes Lambda's
error shape `{errorMessage, errorType, stackTrace: [[file, line, function, code], ...]}`,
returned, not raised. Handlers written for Netlify (`handler(event, context)` returning
`{statusCode, body}`) or Azure Functions (`main(req)`) are called as those hosts call
them (`_shapes`); a non-2xx status they answer with raises `InvokeFailed` quoting the
body, and `shape` says which shape the last answer came in.

A handler that returns a generator, an async generator or another iterator (or a host's
answer whose body is one) streams (design §13): `invoke` returns a `Stream` of its parts,
read from the handler as the stream is iterated (`_worker.Parts` says what each item
becomes). A raise mid-stream is one last part, its error shape.

Loading: the file's directory goes first on `sys.path` and the module is imported once.
A missing file or handler attribute raises `InvokeFailed`; a module that fails to import
answers with an error shape (`Runtime.UserCodeSyntaxError`, `Runtime.ImportModuleError`
or the exception's own type) and is imported afresh on the next call, as Lambda re-inits.

Isolation:

- `process` (default): a warm worker subprocess (`_worker_main.py`) per invoker, in its own
  session. A crash, an exit (`sys.exit` included) or a signal raises `FunctionError`
  `Runtime.ExitError`; a call longer than `timeout` kills the worker and raises
  `Sandbox.Timedout`; `memory_mb` caps the worker's address space (`RLIMIT_AS`), so a
  blow-up ends as a `MemoryError` shape or an exit. Either error carries the last lines
  the worker wrote to stdout/stderr as `stack_trace` (and `log_tail`); the next call
  starts a fresh worker. A stream's parts come one frame at a time, the timeout counting
  to its end; closing it early kills the worker. Every output line is logged as
  `function_output` and kept in the invoker's `output`, whichever worker wrote it: when
  a call returns or raises (or its stream ends), what it printed is there (see `_worker_process.WorkerProcess`).
- `inline`: the handler runs in this process and thread. Same bytes and error shapes,
  and `sys.exit` still becomes `Runtime.ExitError` (then a fresh import), but nothing
  guards against `os._exit`, segfaults, hangs (the timeout only drives the context's
  countdown) or memory; a stream's parts are read in this thread as it is iterated, and
  closing it closes the handler's generator; `sys.path` and `sys.modules` keep the
  handler's entries. During a call (the module's import and the reading of each part
  included) `sys.stdout` and `sys.stderr` are replaced by tees: what is written through
  them still reaches the real streams and its lines go to `output`. Writes that bypass
  them (`sys.stdout.buffer`, fd 1 or 2, C code, child processes) are not captured; the
  streams are process-wide, so what another thread prints during the call is. For
  trusted, well-behaved functions and tests.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import structlog

from connector_runtime import errors, masking
from connector_runtime.columns import ColumnarAnswer
from connector_runtime.invokers import Invoker, OutputTail, Stream, _shapes
from connector_runtime.invokers._kept_workers import KEPT
from connector_runtime.invokers._worker import (
    ANSWER,
    CHANGED,
    CHECK,
    COLUMNS,
    DESCRIBE,
    DESCRIBED,
    IMPORT_FAILED,
    NOT_FOUND,
    PART,
    SHAPED,
    STREAM_END,
    TYPED,
    FunctionHost,
    FunctionSpec,
    HandlerImportError,
    HandlerNotFound,
    Parts,
    encode_json,
)
from connector_runtime.invokers._worker_process import WorkerProcess

# what a worker whose module loaded replies with (else IMPORT_FAILED or NOT_FOUND)
_LOADED_REPLIES = (ANSWER, COLUMNS, TYPED, SHAPED, DESCRIBED, PART, STREAM_END)
STATUS_BODY_CHARS = 500  # of a non-2xx answer's body, quoted in its alert
CHECK_SECONDS = 10.0  # for a kept worker to say whether its files changed


class LocalPythonInvoker(Invoker):
    """Calls a handler in a local `.py` file, in a warm worker process or inline.

    `env` is added to the worker's environment (design §2: `AWS_ENDPOINT_URL_S3`); inline
    refuses it, as setting it in this process would reach every other connector.
    `keep_warm` (seconds; 0: not at all) keeps the worker after `close` for the next
    invoker of the same function, as long as the files it loaded are unchanged.
    `shape` (design §13) is how the handler is called and answers; None detects it (a
    source function without `shape:`); the default, fivetran, is request in, answer out.
    """

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
        env: dict[str, str] | None = None,
        shape: str | None = "fivetran",
        keep_warm: float = 0.0,
    ) -> None:
        if isolation not in ("process", "inline"):
            raise ValueError(f"isolation must be 'process' or 'inline', not {isolation!r}")
        if env and isolation == "inline":
            raise ValueError("env is for a worker process; isolation 'inline' has none")
        self.spec = FunctionSpec(
            path=str(Path(path).resolve()),
            handler=handler,
            function_name=function_name,
            timeout=timeout,
            memory_mb=memory_mb,
            shape=shape,
        )
        self.isolation = isolation
        log = log if log is not None else structlog.get_logger()
        self._worker = WarmWorker(
            lambda: _python_command(self.spec),
            self.spec,
            log,
            self.output,
            env=env,
            keep_warm=keep_warm if isolation == "process" else 0.0,
        )
        self._host: FunctionHost | None = None

    def invoke(self, request: dict[str, Any]) -> bytes | Stream:
        if self.isolation == "process":
            return self._worker.call(request)
        reply = self._invoke_inline(request)
        if isinstance(reply, Parts):
            self.shape = reply.shaped.shape if reply.shaped else self.spec.shape or "fivetran"
            return Stream(self._inline_parts(reply), self.spec.path, close=reply.close)
        page, self.shape = answer_of(*reply, self.spec)
        return page

    @property
    def shape(self) -> str | None:
        return self._worker.shape

    @shape.setter
    def shape(self, shape: str | None) -> None:
        self._worker.shape = shape

    def describe(self) -> dict[str, Any]:
        """The handler's name and shape, loaded in a worker as a sync would (inline too)."""
        return self._worker.describe()

    def start(self) -> None:
        if self.isolation == "process":
            self._worker.start()

    def close(self) -> None:
        self._worker.close()
        if self._host is not None:
            self._host.close()
            self._host = None

    def _invoke_inline(self, request: dict[str, Any]) -> tuple[bytes, bytes] | Parts:
        # A private copy, as a worker would receive: the handler can't alter the caller's state.
        request = json.loads(encode_json(request))
        try:
            with self._running_inline():
                self._host = self._host or FunctionHost(self.spec)
                self._host.typing.load_if_due()  # after the last answer, as a worker does
                return self._host.call(request)
        except HandlerImportError as exc:
            return ANSWER, exc.answer
        except HandlerNotFound as exc:
            raise errors.InvokeFailed(str(exc)) from exc

    def _inline_parts(self, parts: Parts) -> Iterator[bytes]:
        """A streamed answer's parts, each read from the handler as a call runs inline."""
        each = iter(parts)
        while True:
            with self._running_inline():
                part = next(each, None)
            if part is None:
                return
            yield part

    @contextlib.contextmanager
    def _running_inline(self) -> Iterator[None]:
        """The handler's prints teed into `output`; its `sys.exit` as a worker's exit."""
        try:
            with _captured_prints(self.output):
                yield
        except SystemExit as exc:
            self.close()  # like a crashed worker: the next call imports the module afresh
            status = _exit_status(exc.code)
            raise errors.FunctionError(
                f"Runtime exited with error: exit status {status}", error_type="Runtime.ExitError"
            ) from exc


class WarmWorker:
    """The worker behind a process-isolated invoker: started on the first call, kept warm
    between calls, replaced after it dies or when the function's module failed to load.

    A streamed answer (design §13) is a `Stream` that reads the worker's frames as it is
    iterated, each by the call's deadline (the function's `timeout` counts from the
    call's start to the stream's end, as Lambda's does for a whole invocation). Closed
    before its end (or left unread at the next call), it kills the worker, which may be
    blocked writing a part; the next call starts a fresh one.

    Every worker it starts appends its output lines to the one `output`.
    """

    def __init__(
        self,
        command: Callable[[], list[str]],
        spec: FunctionSpec,
        log: Any,
        output: OutputTail | None = None,
        *,
        env: dict[str, str] | None = None,
        keep_warm: float = 0.0,
    ) -> None:
        self.command, self.spec, self.log, self.env = command, spec, log, env
        self.keep_warm = keep_warm  # seconds a worker is kept for the next sync; 0: none
        self.output = output if output is not None else OutputTail()
        self.shape: str | None = None  # of the last answer (design §13)
        self._worker: WorkerProcess | None = None
        self._stream: Stream | None = None  # the last streamed answer, until it is closed
        self.where = spec.source or spec.path  # names the function in a stream's messages

    def call(self, request: dict[str, Any]) -> bytes | Stream:
        """The page the function answered `request` with (or its error shape), or the
        `Stream` of its parts."""
        if (unread := self._stream) is not None:
            unread.close()
        kind, payload = self._exchange(request)
        streamed = _streamed_shape(kind, payload)
        complete = streamed is None or kind == STREAM_END
        if complete and (worker := self._worker) is not None:  # None: retired, output all read
            worker.end_call()
        if streamed is None:
            page, self.shape = answer_of(kind, payload, self.spec)
            return page
        self.shape = streamed or self.spec.shape or "fivetran"
        return self._open_stream(payload if kind == PART else None, ended=kind == STREAM_END)

    def describe(self) -> dict[str, Any]:
        """`{"handler", "shape"}` of the loaded handler, without calling it; then the
        worker ends. A module that fails to load raises `InvokeFailed` saying why."""
        try:
            kind, payload = self._exchange(DESCRIBE)
        finally:
            self.close()
        if kind == IMPORT_FAILED:
            failed = json.loads(payload)
            raise errors.InvokeFailed(f"{failed.get('errorType')}: {failed.get('errorMessage')}")
        return json.loads(payload)

    def start(self) -> None:
        """Start the worker now, without waiting for it to load the function; a failure
        to start is left to the first call, which raises it."""
        if self._worker is None:
            with contextlib.suppress(Exception):
                self._start()

    def _start(self) -> None:
        command = self.command()
        kept = KEPT.take(self._key(command)) if self.keep_warm else None
        if kept is not None and self._still_loaded(kept):
            kept.adopt(self.log, self.output)
            self._worker = kept
            self.log.debug("function_worker_reused", function=self.spec.function_name, pid=kept.pid)
            return
        self._worker = WorkerProcess(
            command, self.spec.function_name, self.log, self.output, self.env
        )

    def _key(self, command: list[str]) -> tuple:
        return tuple(command), tuple(sorted((self.env or {}).items()))

    def _still_loaded(self, worker: WorkerProcess) -> bool:
        """Whether a kept worker runs what is on disk now; if not, it is stopped."""
        try:
            kind, payload = worker.exchange(encode_json(CHECK), CHECK_SECONDS)
            worker.end_call()
        except errors.FunctionError:
            return False  # it died while kept
        changed = json.loads(payload).get("changed") if kind == CHANGED else "its protocol"
        if changed is None:
            return True
        self.log.info("function_worker_replaced", function=self.spec.function_name, changed=changed)
        worker.stop()
        return False

    def _exchange(self, request: dict[str, Any]) -> tuple[bytes, bytes]:
        """The reply's first frame."""
        if self._worker is None:
            self._start()
        try:
            kind, payload = self._worker.exchange(encode_json(request), self.spec.timeout)
        except errors.FunctionError:
            self._worker = None  # it is dead; the next call starts a fresh one
            raise
        if kind not in _LOADED_REPLIES:  # the module did not load: retire the worker so
            self._retire()  # that the next call imports it afresh
        if kind == NOT_FOUND:
            raise errors.InvokeFailed(payload.decode())
        return kind, payload

    def _open_stream(self, first: bytes | None, *, ended: bool) -> Stream:
        worker = self._worker

        def end() -> None:  # the stream is closed: kill a worker still writing it
            if self._stream is stream:
                self._stream = None
            if worker is not None and worker.replying:
                worker.kill()
                self._forget(worker)

        stream = Stream(() if ended else self._parts(worker, first), self.where, close=end)
        self._stream = stream
        return stream

    def _parts(self, worker: WorkerProcess, first: bytes | None) -> Iterator[bytes]:
        """The parts of a streamed reply, frame by frame, until `STREAM_END`."""
        if first is not None:
            yield first
        while True:
            try:
                kind, payload = worker.next_frame()
            except errors.FunctionError:
                self._forget(worker)
                raise
            if kind == STREAM_END:
                worker.end_call()
                return
            if kind != PART:
                worker.kill()
                self._forget(worker)
                raise errors.InvokeFailed(
                    f"the worker broke its protocol: a {kind!r} frame inside a streamed answer"
                )
            yield payload

    def _forget(self, worker: WorkerProcess) -> None:
        """`worker` is dead: the next call starts a fresh one."""
        if self._worker is worker:
            self._worker = None

    def close(self) -> None:
        """End the invoker's use of its worker: keep it for the next sync (`keep_warm`)
        if it is idle and alive, else stop it."""
        if (unread := self._stream) is not None:
            unread.close()
        worker = self._worker
        if worker is None or not (self.keep_warm and worker.idle):
            self._retire()
            return
        self._worker = None
        worker.adopt(self.log, OutputTail())  # printed while kept: logged, not the sync's
        KEPT.keep(self._key(self.command()), worker, self.keep_warm)

    def _retire(self) -> None:
        """Stop the worker without keeping it (its module failed to load, it is busy, or
        workers are not kept)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()


def _streamed_shape(kind: bytes, payload: bytes) -> str | None:
    """For the first frame of a streamed reply, the host shape it is in ("" for the
    runtime's own); None for a reply of one frame."""
    if kind in (PART, STREAM_END):
        return ""
    if kind != SHAPED:
        return None
    header = json.loads(payload.partition(b"\n")[0])
    return header["shape"] if header.get("stream") else None


def answer_of(
    kind: bytes, payload: bytes, spec: FunctionSpec
) -> tuple[bytes | ColumnarAnswer, str | None]:
    """The page in a worker's reply, and the shape it came in; `InvokeFailed` quoting the
    body (masked, cut) when a host's shape answered with a status other than 2xx."""
    if kind == IMPORT_FAILED:  # refused a call: its error shape is the answer
        return payload, spec.shape
    if kind in (COLUMNS, TYPED):
        typed = kind == TYPED
        return ColumnarAnswer.from_payload(payload, typed=typed), spec.shape or "fivetran"
    if kind != SHAPED:
        return payload, spec.shape or "fivetran"
    header, _, body = payload.partition(b"\n")
    answered = json.loads(header)
    status = answered["status"]
    if not 200 <= status < 300:
        text = masking.excerpt(body.decode("utf-8", "replace"), STATUS_BODY_CHARS, one_line=True)
        raise errors.InvokeFailed(
            f"the {answered['shape']} handler answered {_shapes.status_line(status)}: "
            f"{text or '(empty body)'}"
        )
    return body, answered["shape"]


def _python_command(spec: FunctionSpec) -> list[str]:
    # -P: the current directory is not put first on sys.path, where a `connector_runtime`
    # folder (a checkout of this project) would replace the runtime's own worker; the
    # handler's folder goes there instead, as Lambda's task root does (`load_handler`)
    command = [sys.executable, "-P", "-m", "connector_runtime.invokers._worker_main"]
    return [*command, json.dumps(asdict(spec))]


def _exit_status(code: object) -> int:
    """The process exit status `sys.exit(code)` would produce."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


@contextlib.contextmanager
def _captured_prints(output: OutputTail):
    """Tee `sys.stdout` and `sys.stderr` into `output` until the block ends."""
    tees = _Tee(sys.stdout, output), _Tee(sys.stderr, output)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = tees
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        for tee in tees:
            tee.end()


class _Tee:
    """A text stream that writes through to `stream` and appends its lines to `output`.

    A line still open when the call ends is appended as it is. Any other attribute
    (`encoding`, `fileno`, `buffer`, ...) is the real stream's.
    """

    def __init__(self, stream: Any, output: OutputTail) -> None:
        self._stream, self._output = stream, output
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        written = self._stream.write(text) if self._stream is not None else None
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._output.append(line.rstrip("\r"))
        return len(text) if written is None else written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._stream is not None:
            self._stream.flush()

    def end(self) -> None:
        """Append the unfinished line, if any."""
        with self._lock:
            partial, self._partial = self._partial, ""
        if partial:
            self._output.append(partial.rstrip("\r"))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
