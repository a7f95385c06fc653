"""A worker's process as the runtime sees it (`WorkerProcess`): requests in, replies out,
and what it prints logged in step with the replies. `local.WarmWorker` keeps one per
invoker for Python (`_worker.py`) and node (`node_worker.mjs`) workers.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import struct
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from connector_runtime import errors
from connector_runtime.invokers import OutputTail
from connector_runtime.invokers._worker import END_OF_CALL, LENGTH

TAIL_LINES = 50
STOP_GRACE_SECONDS = 2.0
# How long a call's reply waits for the output reader to reach the call's end mark. It is
# normally there within a millisecond: the worker writes the mark before the reply, and
# no more than a pipe's capacity of output can be unread then.
OUTPUT_CATCH_UP_SECONDS = 5.0
_FRAME_HEAD = struct.Struct(">Ic")  # a reply frame's length, then its kind byte


class WorkerProcess:
    """One warm worker subprocess, and a thread that logs what it writes to stderr.

    `command` starts a program that reads request frames on its stdin and writes reply
    frames to its stdout (`_worker.py`; `node_worker.mjs` behind `node.py`'s fd shuffle).
    Each line of its stderr (where its stdout prints land too) is logged as
    `function_output`, kept in `tail` (the last `TAIL_LINES`, for failures) and appended
    to `output`.

    The reader thread may lag behind the reply, which comes on another pipe. So before
    the frame that ends each reply the worker flushes its output and writes `END_OF_CALL`
    with the call's number to stderr; having read that frame, `end_call` waits until the
    reader has passed that mark (all the call printed is then in `output`), at most
    `OUTPUT_CATCH_UP_SECONDS`. If a mark never comes (the function closed or redirected
    fd 2), later calls don't wait again until a mark is read.
    """

    def __init__(
        self,
        command: list[str],
        function_name: str,
        log: Any,
        output: OutputTail,
        env: dict[str, str] | None = None,
    ) -> None:
        try:
            self._process = subprocess.Popen(
                command,
                env={**os.environ, **env} if env else None,  # added to the runtime's own
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # Ctrl-C reaches the runtime only; a kill takes its children
            )
        except OSError as exc:
            raise errors.InvokeFailed(f"cannot start a worker ({command[0]}): {exc}") from exc
        os.set_blocking(self._process.stdin.fileno(), False)
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.output, self._log = output, log
        self._calls = 0  # requests sent
        self.replying = False  # a call's reply is not yet read to its end
        self._timeout, self._deadline = 0.0, 0.0  # of the current call
        self._calls_ended = 0  # the last end-of-call mark read from stderr
        self._marks_arrive = True  # false once a mark was missed, true again at the next
        self._reader_done = False
        self._caught_up = threading.Condition()
        self._stderr_reader = threading.Thread(
            target=self._log_output, args=(function_name,), daemon=True
        )
        self._stderr_reader.start()
        log.debug("function_worker_started", function=function_name, pid=self._process.pid)

    def exchange(self, request: bytes, timeout: float) -> tuple[bytes, bytes]:
        """Send one request; return the kind and payload of its reply's first frame.

        A streamed reply's further frames come from `next_frame`, by the same deadline;
        once the reply is read to its end, `end_call`. Raises `FunctionError` (the worker
        is then gone) if it exits or the call outlasts `timeout`.
        """
        self._timeout, self._deadline = timeout, time.monotonic() + timeout
        self._calls += 1
        self.replying = True
        with self._failures():
            self._write(LENGTH.pack(len(request)) + request, self._deadline)
            return self._frame()

    def next_frame(self) -> tuple[bytes, bytes]:
        """The next frame of the current call's reply; raises as `exchange` does, and
        `InvokeFailed` once the worker was stopped (its stream, or its invoker, closed)."""
        if self._process.stdout.closed:
            raise errors.InvokeFailed(
                "the streamed answer was closed (or its invoker was) before it was read to "
                "its end; nothing more of it can be read"
            )
        with self._failures():
            return self._frame()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def idle(self) -> bool:
        """Alive, its last reply read to its end: it may serve another sync."""
        return not self.replying and self._process.poll() is None and not self._reader_done

    def adopt(self, log: Any, output: OutputTail) -> None:
        """Log and keep what it prints from now on in `log` and `output` (the next sync's)."""
        self._log, self.output = log, output
        self.tail.clear()

    def end_call(self) -> None:
        """The reply is read: wait until `output` holds all the call printed."""
        self.replying = False
        self._await_output(self._calls)

    def _frame(self) -> tuple[bytes, bytes]:
        length, kind = _FRAME_HEAD.unpack(self._read(_FRAME_HEAD.size, self._deadline))
        return kind, self._read(length - 1, self._deadline)

    @contextlib.contextmanager
    def _failures(self) -> Iterator[None]:
        """A call's timeout or the worker's end as the `FunctionError` Lambda reports."""
        try:
            yield
        except TimeoutError:
            self.kill()
            headline = f"Task timed out after {self._timeout:g} s"
            raise self._failure(headline, "Sandbox.Timedout") from None
        except (EOFError, BrokenPipeError):
            headline = f"Runtime exited with error: {self._exit_description()}"
            raise self._failure(headline, "Runtime.ExitError") from None

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
        self.replying = False  # nothing more comes
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

    def _await_output(self, call: int) -> None:
        """Wait until the reader has read all that call number `call` printed."""
        with self._caught_up:
            if not self._marks_arrive:
                return
            if not self._caught_up.wait_for(
                lambda: self._calls_ended >= call or self._reader_done, OUTPUT_CATCH_UP_SECONDS
            ):
                self._marks_arrive = False
                self._log.warning(
                    "function_output_unsynchronized",
                    pid=self._process.pid,
                    detail="the worker's end-of-call mark did not arrive; a call's output "
                    "may now be recorded after it returns",
                )

    def _log_output(self, function_name: str) -> None:
        try:
            with self._process.stderr as output:
                for raw in output:
                    self._take_output(raw, self._log, function_name)
        finally:
            with self._caught_up:
                self._reader_done = True
                self._caught_up.notify_all()

    def _take_output(self, raw: bytes, log: Any, function_name: str) -> None:
        """One line of stderr: output (kept and logged), an end-of-call mark, or both."""
        text, mark, number = raw.partition(END_OF_CALL)
        if text or not mark:  # output without a newline before the mark ends at it
            line = text.decode(errors="replace").rstrip("\r\n")
            self.tail.append(line)
            self.output.append(line)
            log.info("function_output", function=function_name, line=line)
        if mark:
            with contextlib.suppress(ValueError), self._caught_up:
                self._calls_ended = int(number)
                self._marks_arrive = True
                self._caught_up.notify_all()

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
