"""The invoker seam: call a connector's function with one request, return its answer.

An invoker knows how to reach one kind of function (a local Python or JavaScript file,
AWS Lambda, an HTTP URL). It does not interpret the answer beyond transport: the sync
loop parses and validates it (`connector_runtime.protocol`).

Each invoker also keeps the tail of what its function printed (`Invoker.output`), for
`connector test` and for the record of a failed sync.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from connector_runtime.errors import InvokeFailed

OUTPUT_TAIL_BYTES = 64 * 1024
# the longest line of a streamed answer: one partial page (design §13); a longer one is
# refused rather than read into memory whole
MAX_STREAM_LINE_BYTES = 256 * 1024 * 1024


def _mask(text: str) -> str:
    """`masking.mask`, imported here: a function's worker imports this package and needs
    none of it (its import is a third of a worker's start)."""
    from connector_runtime.masking import mask

    return mask(text)


class OutputTail:
    """The last lines a function printed: at most `limit` bytes of UTF-8, oldest dropped first.

    `append` takes one line, without its newline (a string holding newlines counts as
    several lines). `text()` returns the lines joined with "\\n", dropping whole lines
    from the oldest end until the text fits in `limit` bytes; a single line longer than
    `limit` keeps its last `limit` bytes, cut at a character boundary (so the text may be
    a few bytes shorter). Text that won't encode as UTF-8 (lone surrogates) is stored with
    "?" in its place.

    `text()` is masked: every secret registered with `connector_runtime.masking` is `***`
    in it (masking only ever shortens the text, so the bound holds; masking it again is
    harmless). An over-long line is masked before it is cut, so no secret is left half
    shown at the cut. Safe to use from several threads at once.
    """

    def __init__(self, limit: int = OUTPUT_TAIL_BYTES) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1 byte, not {limit}")
        self.limit = limit
        self._lines: deque[tuple[str, int]] = deque()  # (line, its size in bytes)
        self._size = 0  # bytes of all lines plus one newline each
        self._lock = threading.Lock()

    def append(self, line: str) -> None:
        """Add one line (several if it holds newlines); drop the oldest that no longer fit."""
        if line.endswith("\n"):
            line = line[:-1]
        with self._lock:
            for part in line.split("\n"):
                self._add(*self._fitted(part))

    def text(self) -> str:
        """The lines kept, oldest first, joined with "\\n" and masked."""
        with self._lock:
            joined = "\n".join(line for line, _ in self._lines)
        return _mask(joined)

    def clear(self) -> None:
        """Forget every line."""
        with self._lock:
            self._lines.clear()
            self._size = 0

    def _fitted(self, line: str) -> tuple[str, int]:
        """`line` as valid UTF-8 of at most `limit` bytes, and its size."""
        try:
            data = line.encode()
        except UnicodeEncodeError:
            data = line.encode(errors="replace")
            line = data.decode()
        if len(data) <= self.limit:
            return line, len(data)
        data = _mask(line).encode()[-self.limit :]
        start = 0
        while start < len(data) and data[start] & 0xC0 == 0x80:  # a continuation byte
            start += 1
        return data[start:].decode(), len(data) - start

    def _add(self, line: str, size: int) -> None:
        self._lines.append((line, size))
        self._size += size + 1
        while self._size - 1 > self.limit:  # the text has one newline fewer than lines
            _, dropped = self._lines.popleft()
            self._size -= dropped + 1


class Stream:
    """An answer that arrives in parts (design §13): an NDJSON body, or a handler that
    returned a generator, an async iterator or a `ReadableStream`.

    Iterating it yields each part as the JSON bytes of one value, in order, as they
    arrive: partial pages, the last of which carries `state` and `hasMore` (or an error
    shape). Reading a part may raise what `Invoker.invoke` raises. `close()` drops what
    is left unread (the connection, or the worker that was still writing) and is
    idempotent; a stream read to its end closes itself. `where` names where the parts
    come from, for messages.
    """

    def __init__(
        self, parts: Iterable[bytes], where: str, close: Callable[[], None] | None = None
    ) -> None:
        self.where = where
        self._parts = iter(parts)
        self._close = close
        self.ended = False  # read to its end

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._parts)
        except StopIteration:
            self.ended = True
            self.close()
            raise

    def close(self) -> None:
        close, self._close = self._close, None
        if close is not None:
            close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def ndjson_lines(
    chunks: Iterable[bytes], where: str, limit: int = MAX_STREAM_LINE_BYTES
) -> Iterator[bytes]:
    """The non-blank lines of NDJSON text arriving in `chunks` of any size, without their
    line ends; at most `limit` bytes are held for one line (a longer one is an
    `InvokeFailed` naming the line). The last line needs no newline."""
    pending = bytearray()
    number = 0
    for chunk in chunks:
        start = len(pending)
        pending += chunk
        end = pending.find(b"\n", start)
        begin = 0
        while end != -1:
            number += 1
            line = bytes(pending[begin:end]).strip()
            if line:
                yield line
            begin = end + 1
            end = pending.find(b"\n", begin)
        del pending[:begin]
        if len(pending) > limit:
            raise InvokeFailed(
                f"{where}: line {number + 1} of the streamed answer is longer than "
                f"{limit // (1024 * 1024)} MB; send smaller parts (one JSON object per line)"
            )
    line = bytes(pending).strip()
    if line:
        yield line


class Invoker(ABC):
    """Calls one function. Created once per sync, closed at its end.

    `invoke` returns the function's answer as JSON bytes, whatever it is: a valid page,
    an error-shaped object (`errorMessage`, ...) or garbage; judging it is the caller's
    job. An answer that streams (design §13) is returned as a `Stream` of its parts
    instead; the caller reads it before the next call. It raises:

    - `errors.TransientInvokeError` when the call may succeed if repeated (throttling,
      5xx, timeouts, connection errors); the caller retries with backoff;
    - `errors.FunctionError` when the function ran and failed without answering
      (a crash, an exit, a timeout; `error_type` as Lambda names it, e.g.
      `Runtime.ExitError`, `Sandbox.Timedout`);
    - `errors.InvokeFailed` when it cannot be reached at all and retrying won't help.

    `output` holds what the function printed during this invoker's life, as far as the
    invoker can see it (each subclass says what it captures).

    `shape` is the handler shape (design §13: fivetran, netlify, web, gcf, azure) the last
    answer came in, for `connector test`; None where the invoker cannot tell.
    """

    shape: str | None = None

    @property
    def output(self) -> OutputTail:
        """The tail of every line the function printed while this invoker called it.

        By the time `invoke` returns or raises, the lines printed during that call are in
        it. It outlives `close()`. Its `text()` is masked.
        """
        tail = self.__dict__.get("_output_tail")
        if tail is None:
            with _OUTPUT_LOCK:
                tail = self.__dict__.setdefault("_output_tail", OutputTail())
        return tail

    @abstractmethod
    def invoke(self, request: dict[str, Any]) -> bytes | Stream:
        """Send `request` to the function and return its answer as JSON bytes (a `Stream`
        of parts when it streams)."""

    def start(self) -> None:
        """Begin what the first call needs (a worker process) without waiting for it, so
        that it gets ready while the caller does other work. Never raises: a failure is
        the first call's to report. Optional."""

    def close(self) -> None:
        """Release what the invoker holds (a worker process, a client). Idempotent."""

    def __enter__(self) -> Invoker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_OUTPUT_LOCK = threading.Lock()  # creates each invoker's OutputTail once
