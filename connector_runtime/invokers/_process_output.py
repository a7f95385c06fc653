"""The output of a process that answers elsewhere (over HTTP), kept in step with its answers.

`ProcessOutput(pipe, ...)` reads a process's stdout and stderr (one pipe) on a thread;
`catch_up()`, called once an answer has arrived, returns when every byte written to the
pipe before it has been taken.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import termios
import threading
from collections import deque
from typing import Any

from connector_runtime.invokers import OUTPUT_TAIL_BYTES, OutputTail

TAIL_LINES = 50
CATCH_UP_SECONDS = 5.0  # how long an answer waits for the lines printed before it
FINISH_SECONDS = 2.0  # how long a process's end waits for the reader


class ProcessOutput:
    """What the process and its children write to stdout and stderr (one pipe).

    Each line is logged as `function_output`, kept in `tail` (for failures) and appended
    to `output`. The answer comes over HTTP, the lines over the pipe: `catch_up` waits
    until the reader has taken every byte written so far, so a call's lines are in
    `output` when it returns (an unfinished last line counts as one).
    """

    def __init__(self, pipe: Any, function_name: str, log: Any, output: OutputTail) -> None:
        self._pipe, self._function_name, self._log, self.output = pipe, function_name, log, output
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._partial = b""
        self._line_cut = False  # `catch_up` took an unfinished line
        self._busy = False  # the reader holds bytes it has not yet added
        self._done = False
        self._state = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def catch_up(self) -> None:
        """Return once all the pipe held when called is in `output` (or after a while)."""
        with self._state:
            self._state.wait_for(
                lambda: self._done or (not self._busy and _unread(self._pipe) == 0),
                CATCH_UP_SECONDS,
            )
            if not self._busy and self._partial:
                self._take_partial()
                self._line_cut = True

    def finish(self) -> None:
        """Wait (a little) for the reader to reach the end of the pipe."""
        self._reader.join(timeout=FINISH_SECONDS)

    def _read(self) -> None:
        poller = select.poll()
        poller.register(self._pipe.fileno(), select.POLLIN)
        try:
            while True:
                poller.poll()
                with self._state:
                    self._busy = True
                chunk = os.read(self._pipe.fileno(), 65536)
                with self._state:
                    if not chunk:
                        break
                    self._take(chunk)
                    self._busy = False
                    self._state.notify_all()
        finally:
            with self._state:
                self._take_partial()
                self._done = True
                self._state.notify_all()
            self._pipe.close()

    def _take(self, chunk: bytes) -> None:
        if self._line_cut and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the end of the line `catch_up` already took
        self._line_cut = False
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        self._partial = self._partial[-4 * OUTPUT_TAIL_BYTES :]  # a line without end stays bounded
        for line in lines:
            self._add(line)

    def _take_partial(self) -> None:
        if self._partial:
            self._add(self._partial)
            self._partial = b""

    def _add(self, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip("\r")
        self.tail.append(line)
        self.output.append(line)
        self._log.info("function_output", function=self._function_name, line=line)


def _unread(pipe: Any) -> int:
    """Bytes waiting in the pipe."""
    return struct.unpack("i", fcntl.ioctl(pipe.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
