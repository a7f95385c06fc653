"""Errors, grouped by the decision they drive.

    ConnectorRuntimeError
    ├── ConfigError            refuse the config: nothing runs, exit 2
    ├── SyncInProgress         refuse a second sync of one connector: exit 1
    ├── TransientInvokeError   retry the invoke with backoff (never leaves the retry loop)
    │   └── TransientDeliveryError  retry sending records to a destination function
    ├── TransientDestinationError  retry the page: nothing of it was committed
    │   └── TransientStorageError  retry reading the page's object in cloud storage
    └── SyncFailure            stop the sync, write an alert of `kind`, exit 1
        ├── FunctionError          kind function_error: the function answered with an error
        ├── InvalidResponse        kind invalid_response: the answer breaks the protocol
        ├── InvokeFailed           kind invoke_failed: the function could not be reached
        ├── DestinationError       kind destination_error: the warehouse refused a write
        │   └── StorageError       the page's object in cloud storage could not be read
        ├── DeliveryFailed         kind delivery_failed: a destination function refused a record
        ├── ConfigConflict         kind config_error: the config asks what the warehouse refuses
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

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        *,
        answered: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        # The function (or its host) was reached and answered with an error status: the
        # message's head ("<url> answered 500 Internal Server Error") and the rest.
        self.answered = answered

    def gave_up(self, attempts: int) -> str:
        """What a failure says once `attempts` calls all ended with this error."""
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if self.answered is not None:
            head, rest = self.answered
            return f"{head} after {tries}{rest}"
        return f"the function could not be reached after {tries}: {self}"


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


class StorageError(DestinationError):
    """Cloud storage (design §2) refused the page's object: no such bucket, access denied."""


class TransientStorageError(TransientDestinationError):
    """Cloud storage could not answer this time (throttling, 5xx, connection): retry."""


class TransientDeliveryError(TransientInvokeError):
    """A destination function did not take a record this time (429, 5xx, threw): retry."""


class DeliveryFailed(SyncFailure):
    """A destination function refused a record, or kept failing (design §12)."""

    kind = "delivery_failed"


class ConfigConflict(SyncFailure):
    """The config asks for what the warehouse's tables cannot become (history mode turned
    off); the message names the table and what to do instead."""

    kind = "config_error"


class Stalled(SyncFailure):
    """Too many consecutive `hasMore: true` pages without a row."""

    kind = "stalled"
