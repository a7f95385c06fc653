"""The invoker seam: call a connector's function with one request, return its answer.

An invoker knows how to reach one kind of function (a local Python or JavaScript file,
AWS Lambda, an HTTP URL). It does not interpret the answer beyond transport: the sync
loop parses and validates it (`connector_runtime.protocol`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class Invoker(ABC):
    """Calls one function. Created once per sync, closed at its end.

    `invoke` returns the function's answer as JSON bytes, whatever it is: a valid page,
    an error-shaped object (`errorMessage`, ...) or garbage; judging it is the caller's
    job. It raises:

    - `errors.TransientInvokeError` when the call may succeed if repeated (throttling,
      5xx, timeouts, connection errors); the caller retries with backoff;
    - `errors.FunctionError` when the function ran and failed without answering
      (a crash, an exit, a timeout; `error_type` as Lambda names it, e.g.
      `Runtime.ExitError`, `Sandbox.Timedout`);
    - `errors.InvokeFailed` when it cannot be reached at all and retrying won't help.
    """

    @abstractmethod
    def invoke(self, request: dict[str, Any]) -> bytes:
        """Send `request` to the function and return its answer as JSON bytes."""

    def close(self) -> None:
        """Release what the invoker holds (a worker process, a client). Idempotent."""

    def __enter__(self) -> Invoker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
