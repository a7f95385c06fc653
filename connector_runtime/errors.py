"""Errors, grouped by the decision they drive.

    ConnectorRuntimeError
    ├── ConfigError            refuse the config: nothing runs, exit 2
    ├── SyncInProgress         refuse a second sync of one connector: exit 1
    ├── TransientInvokeError   retry the invoke with backoff (never leaves the retry loop)
    ├── TransientDestinationError  retry the page: nothing of it was committed
    └── SyncFailure            stop the sync, write an alert of `kind`, exit 1
        ├── FunctionError          kind function_error: the function answered with an error
        ├── InvalidResponse        kind invalid_response: the answer breaks the protocol
        ├── InvokeFailed           kind invoke_failed: the function could not be reached
        ├── DestinationError       kind destination_error: the warehouse refused a write
        └── Stalled                kind stalled: hasMore without rows, too many times

Nothing outside this module decides anything from an error's message text.
"""

from __future__ import annotations


class ConnectorRuntimeError(Exception):
    """Base of every error the runtime raises on purpose."""


class ConfigError(ConnectorRuntimeError):
    """The configuration is invalid; `str()` names the file, line and field."""


class SyncInProgress(ConnectorRuntimeError):
    """Another process holds this connector's sync lock."""


class TransientInvokeError(ConnectorRuntimeError):
    """The function could not answer this time (429, 5xx, timeout, connection): retry."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TransientDestinationError(ConnectorRuntimeError):
    """The warehouse connection failed before the page committed: retry the page."""


class SyncFailure(ConnectorRuntimeError):
    """The sync stops here; an alert of `kind` is written and the state stays put."""

    kind = "error"
    severity = "error"

    def __init__(
        self,
        message: str,
        *,
        error_type: str | None = None,
        stack_trace: list | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type or type(self).__name__
        self.stack_trace = stack_trace


class FunctionError(SyncFailure):
    """The function answered with `errorMessage`, raised, crashed, exited or timed out."""

    kind = "function_error"


class InvalidResponse(SyncFailure):
    """The function's answer breaks the protocol; the message names table, row and field."""

    kind = "invalid_response"


class InvokeFailed(SyncFailure):
    """The function could not be invoked, after retries where they apply."""

    kind = "invoke_failed"


class DestinationError(SyncFailure):
    """The warehouse refused the page (a type, constraint or permission error)."""

    kind = "destination_error"


class Stalled(SyncFailure):
    """Too many consecutive `hasMore: true` pages without a row."""

    kind = "stalled"
