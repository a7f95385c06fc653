"""The function's side of a local Python connector: load the handler, call it the way
AWS Lambda's Python runtime does, and turn whatever comes back into JSON bytes.

`lambda_handler` is called exactly as Lambda calls it, `lambda_handler(event, context)`:
a one-parameter `lambda_handler` fails here as it would once deployed, with a hint.
Other handlers are called by their parameters: one means the runtime's own
`handler(request)`, two (or `*args`) Lambda's `(event, context)`. Handlers written for
Netlify or Azure Functions get what those hosts pass and answer as there (`_shapes`).

`local.py` imports this module for `isolation="inline"`; for `isolation="process"` it
runs `_worker_main`, a process that serves requests with it until its stdin closes.
Both directions are framed as a 4-byte big-endian length, then the frame: a request's
JSON from the parent, one kind byte (`ANSWER`, `COLUMNS`, `TYPED`, `SHAPED`, `DESCRIBED`, `CHANGED`, `IMPORT_FAILED`,
`NOT_FOUND`, `PART`, `STREAM_END`) and its payload from the worker. A request `DESCRIBE` is
answered with the handler's name and shape (`connector validate`), without calling it;
`CHECK`, with the first file the worker loaded that has changed since (`_loaded_files`).

A streamed answer (design §13: the handler returned a generator, an async generator or
another iterator; `Parts`) is several frames: `PART` frames, one per partial page,
then one empty `STREAM_END`. A host-shaped one (`{"statusCode": 200, "body": <a
generator>}`) opens with a `SHAPED` frame whose header says `"stream": true` and whose
body is empty. The worker writes each frame as the handler yields, so a parent that
stops reading pauses the handler (the pipe fills).

Before the frame that ends each reply (the only one, or `STREAM_END`) the worker flushes
`sys.stdout` and `sys.stderr` and writes `END_OF_CALL` and the call's number (1, 2, ...)
as a line of its own to fd 2, where its output goes: once the parent's reader of that
pipe reaches the line, it has read all the call printed (`_worker_process.WorkerProcess`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import os
import struct
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connector_runtime.columns import TypingAhead, encode_columnar
from connector_runtime.errors import InvokeFailed
from connector_runtime.invokers import _shapes, ndjson_lines
from connector_runtime.invokers._loaded_files import LoadedFiles
from connector_runtime.jsonio import encode_json

if TYPE_CHECKING:  # imported when a handler is async: most are not, and it is slow to load
    import asyncio

ANSWER = b"A"  # the handler's answer, or its error shape
COLUMNS = b"C"  # an answer with large tables as columns (`columns.encode_columnar`)
TYPED = b"T"  # the same, with columns typed here as Arrow (`typed_columns`)
SHAPED = b"S"  # an answer of a host's shape: `_shapes.Shaped.header()`, then the body
DESCRIBED = b"D"  # to DESCRIBE: {"handler": name, "shape": shape or null}
DESCRIBE = {"connector-runtime": "describe"}  # a request never has this key
CHANGED = b"H"  # to CHECK: {"changed": the first file loaded that changed since, or null}
CHECK = {"connector-runtime": "check"}  # asked of a kept worker before its next sync
IMPORT_FAILED = b"I"  # the module failed to import: an error shape; retire this worker
NOT_FOUND = b"N"  # no such file or handler attribute: a message for InvokeFailed
PART = b"P"  # one part of a streamed answer: the JSON of a partial page, or an error shape
STREAM_END = b"E"  # a streamed answer is complete (empty payload)

LENGTH = struct.Struct(">I")
# Ends a call's output on fd 2; the NUL keeps any real output from looking like it.
# `node_worker.mjs` writes the same line.
END_OF_CALL = b"\x00connector-runtime:end-of-call:"
# Of a streamed body answered with a status other than 2xx: enough to quote in an alert.
FAILED_BODY_BYTES = 4096
LAMBDA_HANDLER = "lambda_handler"  # the name that says "written for AWS Lambda"
DEFAULT_HANDLERS = ("handler", LAMBDA_HANDLER, "main")  # main: Azure Functions' entry point


@dataclass(frozen=True)
class FunctionSpec:
    """Where a local function lives and the Lambda-style limits it runs under."""

    path: str
    handler: str | None
    function_name: str
    timeout: float
    memory_mb: int | None
    shape: str | None = None  # design §13; None: detected
    source: str | None = None  # the file as written, when `path` is its build (TypeScript)


class HandlerNotFound(Exception):
    """The file or the handler attribute does not exist: there is nothing to call."""


class HandlerImportError(Exception):
    """The user's module failed to import; `answer` is the error shape to return."""

    def __init__(self, answer: bytes) -> None:
        super().__init__("the function's module failed to import")
        self.answer = answer


class LambdaContext:
    """The `context` a Lambda-style handler receives, with AWS Lambda's attributes.

    `memory_limit_in_mb` is a string, as Lambda's Python runtime gives it.
    """

    function_version = "$LATEST"
    identity = None
    client_context = None

    def __init__(self, spec: FunctionSpec, log_stream_name: str) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self.function_name = spec.function_name
        self.invoked_function_arn = (
            f"arn:aws:lambda:local:000000000000:function:{spec.function_name}"
        )
        self.memory_limit_in_mb = str(spec.memory_mb) if spec.memory_mb else None
        self.log_group_name = f"/aws/lambda/{spec.function_name}"
        self.log_stream_name = log_stream_name
        self._deadline = time.monotonic() + spec.timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class FunctionHost:
    """One loaded handler, called again and again like a warm Lambda instance.

    Raises `HandlerNotFound` or `HandlerImportError` when the handler cannot be loaded.
    Async handlers run on one event loop that lives as long as the host, so clients
    kept in module globals survive between calls. `in_worker`: in a worker process of
    its own, which loads Arrow beside its calls (`TypingAhead`).
    """

    def __init__(self, spec: FunctionSpec, *, in_worker: bool = False) -> None:
        self.spec = spec
        self._name, self._handler = load_handler(Path(spec.path), spec.handler)
        self._takes_context = self._name == LAMBDA_HANDLER or _takes_context(self._handler)
        # None: fivetran or netlify, told apart by each answer
        self.shape = spec.shape or _shapes.shape_by_signature(self._name, self._handler)
        self._log_stream_name = f"{time.strftime('%Y/%m/%d')}/[$LATEST]{uuid.uuid4().hex}"
        self._loop: asyncio.AbstractEventLoop | None = None
        memory = spec.memory_mb
        self.typing = TypingAhead(
            enabled=memory is None or memory >= TypingAhead.MIN_MEMORY_MB, background=in_worker
        )
        self.loaded = LoadedFiles()
        self.loaded.note(spec.path)

    def call(self, request: dict[str, Any]) -> tuple[bytes, bytes] | Parts:
        """The reply to `request`: `ANSWER` and the page as JSON bytes (an exception as its
        error shape), `SHAPED` and a host's answer (`_shapes.Shaped`), or the `Parts` of
        a streamed answer, read from the handler as they are iterated.

        `SystemExit` and other non-`Exception`s are not caught: an exit is a crash.
        """
        if request == DESCRIBE:
            return DESCRIBED, encode_json({"handler": self._name, "shape": self.shape})
        if request == CHECK:
            return CHANGED, encode_json({"changed": self.loaded.changed()})
        try:
            answer = self._answer(request)
        except _shapes.WrongAnswer as exc:
            return ANSWER, encode_json(error_shape(exc, _shapes.INVALID_ANSWER, stack_trace=[]))
        except Exception as exc:
            return ANSWER, encode_json(error_shape(exc))
        if isinstance(answer, Parts):
            return answer
        if isinstance(answer, _shapes.Shaped):
            return SHAPED, answer.header() + answer.body
        with contextlib.suppress(TypeError, ValueError):  # encode_answer says why, as Lambda does
            columnar = encode_columnar(answer, self.typing.typer)
            if columnar is not None:
                self.typing.large_answer()
                return (TYPED if columnar.typed else COLUMNS), columnar.payload()
        return ANSWER, encode_answer(answer)

    def _answer(self, request: dict[str, Any]) -> Any:
        """The handler's answer, called in its shape's way; a `Shaped` for a host's shape,
        `Parts` for a streamed one."""
        name = self.spec.function_name
        if self.shape == "azure":
            arguments = [_shapes.azure_request(request, name)]
            if _takes_context(self._handler):
                arguments.append(_shapes.AzureContext(name))
            return self._host_answer("azure", self._run(*arguments))
        if self.shape == "netlify":
            return self._host_answer("netlify", self._run(_shapes.netlify_event(request, name)))
        if self.shape is None:
            request = _shapes.RequestEvent(request, _shapes.netlify_event(request, name))
        answer = self._run(request)
        if self.shape is None and _shapes.is_netlify_answer(answer):
            return self._host_answer("netlify", answer)
        return Parts(answer, self._event_loop, self.spec.path) if is_stream(answer) else answer

    def _host_answer(self, shape: str, answer: Any) -> _shapes.Shaped | Parts:
        """A netlify or azure answer; a body that is an iterator streams, unless the status
        is not 2xx: then its first parts are the body quoted in the alert."""
        shaped = _shapes.netlify_answer if shape == "netlify" else _shapes.azure_answer
        body = answer.get("body") if isinstance(answer, dict) else None
        if not is_stream(body):
            return shaped(answer)
        status = shaped({**answer, "body": None}).status  # its shape is checked all the same
        parts = Parts(body, self._event_loop, self.spec.path, _shapes.Shaped(shape, status, b""))
        if 200 <= status < 300:
            return parts
        return _shapes.Shaped(shape, status, parts.head(FAILED_BODY_BYTES))

    def _call_like_lambda(self, request: dict[str, Any]) -> Any:
        """`handler(event, context)`, as Lambda calls it; a handler that cannot take those
        two arguments raises Python's own TypeError, with what to change."""
        context = LambdaContext(self.spec, self._log_stream_name)
        try:
            return self._handler(request, context)
        except TypeError as exc:
            if _accepts(self._handler, request, context):
                raise  # raised inside the handler: its own error
            name = self._name
            raise TypeError(
                f"{exc}: AWS Lambda calls the handler as {name}(event, context) and it fails "
                f"there the same way; add the context parameter: def {name}(event, context)"
            ) from None

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def _run(self, *arguments: Any) -> Any:
        """The handler's answer to `arguments` (the event alone: Lambda's context is added
        when the handler takes it), its coroutine run to the end."""
        if len(arguments) > 1:
            answer = self._handler(*arguments)
        else:
            answer = (self._call_like_lambda if self._takes_context else self._handler)(*arguments)
        if inspect.isawaitable(answer):
            answer = self._event_loop().run_until_complete(answer)
        return answer

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        import asyncio

        self._loop = self._loop or asyncio.new_event_loop()
        return self._loop


def load_handler(path: Path, name: str | None) -> tuple[str, Callable[..., Any]]:
    """Import `path` as a module and return its handler and the handler's name: `name`,
    else `handler`, else `lambda_handler`."""
    module = _import_module(path)
    candidates = (name,) if name else DEFAULT_HANDLERS
    for candidate in candidates:
        handler = getattr(module, candidate, None)
        if callable(handler):
            return candidate, handler
    wanted = " or ".join(repr(candidate) for candidate in candidates)
    raise HandlerNotFound(f"{path} defines no function {wanted} to use as the handler")


def _import_module(path: Path) -> Any:
    if not path.is_file():
        raise HandlerNotFound(f"function file {path} does not exist")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise HandlerNotFound(f"function file {path} is not a Python (.py) file")
    # Lambda puts the task root first on sys.path, so sibling modules import.
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(path.stem, None)
        raise HandlerImportError(encode_json(_import_error_shape(exc, path.stem))) from exc
    return module


def _import_error_shape(exc: Exception, module: str) -> dict[str, Any]:
    """Name import failures as Lambda does, so alerts read the same in both places."""
    if isinstance(exc, SyntaxError):
        frame = [exc.filename, exc.lineno, "<module>", (exc.text or "").strip()]
        message = f"Syntax error in module '{module}': {exc}"
        return error_shape(exc, "Runtime.UserCodeSyntaxError", message, [frame])
    if isinstance(exc, ImportError):
        message = f"Unable to import module '{module}': {exc}"
        return error_shape(exc, "Runtime.ImportModuleError", message)
    return error_shape(exc)


def _takes_context(handler: Callable[..., Any]) -> bool:
    """Two positional parameters (or *args) mean Lambda's (event, context); one means (request)."""
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return True  # no signature to read: assume the Lambda convention
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in parameters)


def _accepts(handler: Callable[..., Any], *arguments: Any) -> bool:
    """Whether `handler`'s signature takes `arguments` (True when it cannot be read)."""
    try:
        inspect.signature(handler).bind(*arguments)
    except TypeError:
        return False
    except ValueError:  # no signature to read
        return True
    return True


def error_shape(
    exc: BaseException,
    error_type: str | None = None,
    message: str | None = None,
    stack_trace: list[list[Any]] | None = None,
) -> dict[str, Any]:
    """Lambda's error answer; `stackTrace` is `[file, line, function, code]` per frame.

    The message is `str(exc)`, which may be empty (`raise MemoryError()`): the runtime
    says so in the alert. An exception whose `__str__` itself raises is still described,
    as `<ExceptionType> (its message could not be read: <that error>)`.
    """
    return {
        "errorMessage": _message_of(exc) if message is None else message,
        "errorType": error_type or type(exc).__name__,
        "stackTrace": _user_frames(exc) if stack_trace is None else stack_trace,
    }


def _message_of(exc: BaseException) -> str:
    try:
        message = str(exc)
    except Exception as unreadable:  # a broken __str__ (or one returning a non-string)
        return f"{type(exc).__name__} (its message could not be read: {_described(unreadable)})"
    return message


def _described(exc: BaseException) -> str:
    """`Type: message` of an exception met while describing another one, never raising."""
    try:
        message = str(exc)
    except Exception:
        message = ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _user_frames(exc: BaseException) -> list[list[Any]]:
    """The traceback without the runtime's own frames (this module, importlib, asyncio)."""
    runtime = ["<frozen importlib"]
    if (asyncio := sys.modules.get("asyncio")) is not None:  # loaded for an async handler
        runtime.append(os.path.dirname(asyncio.__file__))
    return [
        [frame.filename, frame.lineno, frame.name, frame.line or ""]
        for frame in traceback.extract_tb(exc.__traceback__)
        if frame.filename != __file__ and not frame.filename.startswith(tuple(runtime))
    ]


def encode_answer(answer: Any) -> bytes:
    """`encode_json(answer)`, or Lambda's `Runtime.MarshalError` shape if it won't encode."""
    try:
        return encode_json(answer)
    except (TypeError, ValueError) as exc:
        return _marshal_error(exc)


def _marshal_error(exc: Exception) -> bytes:
    message = f"Unable to marshal response: {exc}"
    return encode_json(error_shape(exc, "Runtime.MarshalError", message, []))


def is_stream(answer: Any) -> bool:
    """Whether an answer (or a host's body) streams: an iterator or an async iterator, such
    as a generator; a dict, list, str or bytes never does."""
    return isinstance(answer, Iterator | AsyncIterator) and not isinstance(
        answer, dict | list | str | bytes | bytearray
    )


class Parts:
    """A streamed answer (design §13): the handler's iterator, read as it is iterated.

    Iterating yields each part as JSON bytes. An item that is a dict (or any other
    value) is one part, encoded as answers are (`Runtime.MarshalError` if it won't,
    which ends the parts); `str` or `bytes` items are NDJSON text, one part a line,
    cut anywhere (a line may span items). When the handler raises, one last part is
    its error shape, as a raise answers. An async iterator runs on the host's event
    loop. `shaped` is the host's status and shape when the answer came as a host's
    (`{"statusCode": 200, "body": <a generator>}`), None for the runtime's own shape.
    The parts end by closing the handler's iterator; `close()` does so early.
    """

    def __init__(
        self,
        items: Any,
        loop: Callable[[], asyncio.AbstractEventLoop],
        where: str,
        shaped: _shapes.Shaped | None = None,
    ) -> None:
        self.items, self.where, self.shaped = items, where, shaped
        self._loop = loop

    def header(self) -> bytes | None:
        """The `SHAPED` frame's payload that opens a host's streamed answer, else None."""
        if self.shaped is None:
            return None
        header = {"shape": self.shaped.shape, "status": self.shaped.status, "stream": True}
        return json.dumps(header).encode() + b"\n"

    def head(self, limit: int) -> bytes:
        """The first parts, a line each, until `limit` bytes are taken; then the end."""
        taken = bytearray()
        with contextlib.closing(iter(self)) as parts:
            for part in parts:
                taken += part + b"\n"
                if len(taken) >= limit:
                    break
        return bytes(taken)

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from ndjson_lines(self._chunks(), self.where)
        except InvokeFailed as exc:  # a line too long to hold
            yield encode_json(error_shape(exc, _shapes.INVALID_ANSWER, stack_trace=[]))
        finally:
            self.close()

    def close(self) -> None:
        """Stop the handler's iterator (its `finally` blocks run); idempotent."""
        with contextlib.suppress(Exception):  # a generator that won't stop is done all the same
            if hasattr(self.items, "aclose"):
                self._loop().run_until_complete(self.items.aclose())
            elif hasattr(self.items, "close"):
                self.items.close()

    def _chunks(self) -> Iterator[bytes]:
        """The items as NDJSON text; a raise, or an item that won't encode, ends it with
        its error shape's line."""
        try:
            for item in self._items():
                chunk, encoded = _ndjson(item)
                yield chunk
                if not encoded:
                    return
        except Exception as exc:
            yield b"\n" + encode_json(error_shape(exc)) + b"\n"

    def _items(self) -> Iterator[Any]:
        if not isinstance(self.items, AsyncIterator):
            yield from self.items
            return
        loop = self._loop()
        while True:
            try:
                item = loop.run_until_complete(anext(self.items))
            except StopAsyncIteration:
                return
            yield item


def _ndjson(item: Any) -> tuple[bytes, bool]:
    """One item of a streamed answer as NDJSON text, and whether it encoded (if not, the
    text is its `Runtime.MarshalError` line)."""
    if isinstance(item, str):
        return item.encode(), True
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item), True
    try:  # a line of its own: the newlines end any text before it; JSON holds no raw newline
        return b"\n" + encode_json(item) + b"\n", True
    except (TypeError, ValueError) as exc:
        return b"\n" + _marshal_error(exc) + b"\n", False
