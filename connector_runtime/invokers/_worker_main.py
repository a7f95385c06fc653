"""A local Python function's worker process: `python -m
connector_runtime.invokers._worker_main SPEC_JSON` (`local.py` starts it for
`isolation="process"`).

It loads the handler once (`_worker.FunctionHost`) and serves requests until its stdin
closes, framed as `_worker` describes: a request's JSON in, one reply out (or a
streamed reply's frames). The protocol moves off fds 0 and 1 first, so what the handler
prints reaches stderr, which the parent logs. The worker caps its own address space
(`memory_mb`), ends when the runtime that started it dies, and exits without the
interpreter's teardown once stdin closes.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import json
import os
import sys
import threading
import time
from typing import Any, BinaryIO

from connector_runtime.invokers._worker import (
    END_OF_CALL,
    IMPORT_FAILED,
    LENGTH,
    NOT_FOUND,
    PART,
    SHAPED,
    STREAM_END,
    FunctionHost,
    FunctionSpec,
    HandlerImportError,
    HandlerNotFound,
    Parts,
)


class _Channel:
    """The worker's end of the framed pipe to the parent."""

    def __init__(self, reader: BinaryIO, writer: BinaryIO) -> None:
        self._reader = reader
        self._writer = writer
        self._replies = 0

    @classmethod
    def take_over_stdio(cls) -> _Channel:
        """Move the protocol to private fds: user prints, `input()` and C-level writes to
        fd 1 then land on stderr (the parent logs it) or /dev/null, never in a frame."""
        channel = cls(os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb"))
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(2, 1)
        sys.stdout.reconfigure(line_buffering=True)
        return channel

    def receive(self) -> dict[str, Any] | None:
        header = self._reader.read(LENGTH.size)
        if len(header) < LENGTH.size:
            return None
        (length,) = LENGTH.unpack(header)
        # The stdlib, not orjson: orjson.loads turns integers beyond 64 bits into floats.
        return json.loads(self._reader.read(length))

    def send(self, kind: bytes, payload: bytes) -> None:
        """The frame that ends a reply, after the call's end-of-output mark."""
        self._replies += 1
        _end_output(self._replies)
        self._frame(kind, payload)

    def stream(self, parts: Parts) -> None:
        """A streamed reply: a host's `SHAPED` header, a `PART` frame per part as the
        handler yields it, then `STREAM_END`."""
        header = parts.header()
        if header is not None:
            self._frame(SHAPED, header)
        for part in parts:
            self._frame(PART, part)
        self.send(STREAM_END, b"")

    def _frame(self, kind: bytes, payload: bytes) -> None:
        self._writer.write(LENGTH.pack(len(payload) + 1) + kind)
        self._writer.write(payload)
        self._writer.flush()


def _end_output(call: int) -> None:
    """Flush what the handler printed, then mark the end of call number `call` on fd 2."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # the handler may have closed or replaced it
            stream.flush()
    line = END_OF_CALL + b"%d\n" % call
    with contextlib.suppress(OSError):  # fd 2 closed: the parent stops waiting for marks
        while line:
            line = line[os.write(2, line) :]


def _limit_memory(memory_mb: int | None) -> None:
    try:
        import resource
    except ImportError:  # not on this platform: run unbounded
        return
    if memory_mb:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = memory_mb * 1024 * 1024
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def main(argv: list[str]) -> None:
    """Serve one function until stdin closes; a failed load answers the first request."""
    spec = FunctionSpec(**json.loads(argv[1]))
    channel = _Channel.take_over_stdio()
    faulthandler.enable()  # a segfault leaves a Python traceback in the log tail
    _exit_with_parent()
    _limit_memory(spec.memory_mb)
    try:
        host = FunctionHost(spec, in_worker=True)
    except HandlerNotFound as exc:
        _refuse(channel, NOT_FOUND, str(exc).encode())
        return
    except HandlerImportError as exc:
        _refuse(channel, IMPORT_FAILED, exc.answer)
        return
    _settle()
    calls, typing = 0, False
    while (request := channel.receive()) is not None:
        reply = host.call(request)
        if isinstance(reply, Parts):
            channel.stream(reply)
        else:
            channel.send(*reply)
        calls += 1
        host.typing.load_if_due()  # the answer is on its way
        host.loaded.note()
        if calls == 1 or typing != (host.typing.typer is not None):
            typing = host.typing.typer is not None
            _settle()  # what the first call imported, or Arrow once loaded
    _exit_at_once()


def _settle() -> None:
    """Set what lives as long as the worker aside from cyclic garbage collection: the
    handler's module and all it imported, Arrow once loaded. A page of many rows sets off
    collections that would walk those objects again each time: the bench's 10,000-row
    pages took 21-22 ms of CPU on average to answer (a tenth 27 ms or more), and 19-20
    ms (22-23) with them set aside. Garbage is collected first, so none of it is kept;
    what calls make later is collected as before."""
    gc.collect()
    gc.freeze()


def _exit_at_once() -> None:
    """Stdin closed: end now, without the interpreter's teardown of every module the
    handler loaded (tens of milliseconds the runtime would wait for). A Lambda sandbox is
    frozen and discarded rather than shut down, so atexit hooks do not run there either."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def _exit_with_parent(poll_seconds: float = 0.5) -> None:
    """End this worker when the runtime that started it dies (even by `kill -9`): no
    orphan keeps calling an API, and no hang outlives the timeout only the parent enforces."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(70)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _refuse(channel: _Channel, kind: bytes, payload: bytes) -> None:
    if channel.receive() is not None:
        channel.send(kind, payload)


if __name__ == "__main__":
    main(sys.argv)
