"""Background functions (design §13): started without waiting for their answer; each
POSTs its page to the `callback` its request carries.

`BackgroundInvoker` wraps the invoker of any runner (local Python or JavaScript, HTTP,
Lambda). Each `invoke` adds `callback: {url, token}` to the request, starts the call in a
thread and returns the first of:

- the page POSTed to `callback.url` (`callbacks.board`): the answer, judged as any answer
  is (an `errorMessage` in it is a function error). The call may go on after posting;
- the call failing before its page came: a crash, an exit or a timeout of a local
  worker, a thrown error (an `errorMessage` answer), an unreachable host, a non-2xx
  status. The sync fails at once rather than waiting out the timeout;
- for a runner whose call lasts as long as the function runs (`ends_with_return`: local
  and Lambda), the call returning without a page (after `RETURN_GRACE_SECONDS` for a
  POST still on its way): `FunctionError` `Background.NoPage`. What a function leaves
  running after it returns waits until its next call, as on AWS Lambda, where Netlify
  runs background functions. An HTTP host answers at once (Netlify: 202), so there only
  the timeout ends the wait;
- `timeout` passing: `FunctionError` `Background.Timedout`.

The call's own answer is otherwise ignored (Netlify drops what a background function
returns). The URL is `connector serve`'s API when this process serves
(`board.served_at`), else a loopback `Listener` opened on the first call and closed with
the invoker. A local function has one warm worker, which takes one call at a time: the
next call, and `close()`, wait for the previous call to return, even if its page came
earlier. `close()` cuts short a call whose page is still awaited (asked for ahead, then
not wanted: design §2's paging ahead).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from connector_runtime.callbacks import Awaited, CallbackBoard, Listener, board
from connector_runtime.errors import FunctionError
from connector_runtime.invokers import Invoker, OutputTail
from connector_runtime.jsonio import decode_json

RETURN_GRACE_SECONDS = 5.0  # for a POST still on its way when the call returns
STUCK_CALL_SECONDS = 30.0  # past its own timeout, a call's thread is left behind
STOPPED_CALL_SECONDS = 5.0  # for a call to end once its worker is closed


class BackgroundInvoker(Invoker):
    """Calls `inner` in the background; the page comes by callback within `timeout`."""

    def __init__(
        self,
        inner: Callable[[], Invoker],
        *,
        timeout: float,
        ends_with_return: bool = True,
        callbacks: CallbackBoard | None = None,
    ) -> None:
        self.inner = inner()
        self.timeout = timeout
        self.ends_with_return = ends_with_return
        self.callbacks = callbacks or board
        self._calls = 0
        self._running: threading.Thread | None = None
        self._listener: Listener | None = None
        self._lock = threading.Lock()  # `invoke` may run in a prefetch thread (design §2)
        self._awaited: Awaited | None = None  # the call whose page is awaited, if any
        self._closing = False

    @property
    def output(self) -> OutputTail:
        """What the wrapped function printed."""
        return self.inner.output

    def invoke(self, request: dict[str, Any]) -> bytes:
        self._await_previous()
        with self._lock:
            if self._closing:
                raise FunctionError("the sync ended before this call started")
            self._calls += 1
            awaited = self.callbacks.expect(request["sync_id"], self._calls, self._base_url())
            self._awaited = awaited
            self._running = threading.Thread(
                target=self._call,
                args=(request | {"callback": awaited.callback}, awaited),
                name=f"background-call-{self._calls}",
                daemon=True,
            )
            self._running.start()
        try:
            return awaited.wait(self.timeout)
        finally:
            self.callbacks.forget(awaited)

    def close(self) -> None:
        """Once every page came, the last call may finish what it does after posting; a
        call still awaited (a page asked for ahead, then not wanted) is cut short."""
        with self._lock:
            self._closing = True
            cut = self._awaited is not None and not self._awaited.settled(0)
            if cut:
                self._awaited.fail(FunctionError("the sync ended before the page came"))
        if not cut:
            self._await_previous()
        self.inner.close()  # ends a call still running with its worker
        if self._running is not None:
            self._running.join(timeout=STOPPED_CALL_SECONDS)
            self.inner.close()  # a call that started its worker only now
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _call(self, request: dict[str, Any], awaited: Awaited) -> None:
        """The call itself, in its thread: only how it fails matters to the waiting sync."""
        try:
            answer = self.inner.invoke(request)
        except BaseException as exc:  # handed to the waiting thread, raised there
            awaited.fail(exc)
            return
        if _is_error(answer):
            awaited.fail_with(answer)
        elif self.ends_with_return and not awaited.settled(RETURN_GRACE_SECONDS):
            awaited.fail(
                FunctionError(
                    "the background function returned without POSTing its page to its "
                    "callback (the request's callback.url, with Authorization: Bearer "
                    "<callback.token>); post it before returning: what a function leaves "
                    "running after it returns waits, as on AWS Lambda and Netlify",
                    error_type="Background.NoPage",
                )
            )

    def _await_previous(self) -> None:
        if self._running is not None:
            self._running.join(timeout=self.timeout + STUCK_CALL_SECONDS)

    def _base_url(self) -> str:
        if self.callbacks.served_at is not None:
            return self.callbacks.served_at
        if self._listener is None:
            self._listener = Listener(self.callbacks)
        return self._listener.url


def _is_error(answer: bytes) -> bool:
    """An error-shaped answer (`errorMessage`): the function failed instead of posting."""
    try:
        parsed = decode_json(answer)
    except ValueError:
        return False
    return isinstance(parsed, dict) and "errorMessage" in parsed
