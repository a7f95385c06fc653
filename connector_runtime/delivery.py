"""Function destinations (design §12): each synced record is sent to a user's function.

A page's records become events (`page_events`): `{data, context}`, `data` the record as
the source function sent it after column blocking and hashing, `context` naming where it
came from, with an `event_id` that is the same whenever the same record is fetched again
from the same state. `Deliverer.deliver` sends a page's events and returns only when
every one is acknowledged, so the sync commits the page's state after its delivery:
at least once.

Ordering and concurrency: events are split into `concurrency` lanes by their key, so
the records of one key go out in order, through one lane; lanes run at once, each with
its own invoker (for a local function, a warm worker of its own). A lane sends its
events one call each, or `{"events": [...]}` batches of `batch_size`.

Answers: `{"statusCode": 2xx, ...}` is delivered. 429 or 5xx, a thrown error (the
error shape), a crashed worker or a timeout are retried with the connector's backoff;
any other status fails the sync with a `delivery_failed` alert naming the table, the
key, the status and the function's message. An HTTP destination's own status counts:
a 2xx answer without a JSON `statusCode` is delivered.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import masking
from .batches import hashed
from .errors import (
    DeliveryFailed,
    FunctionError,
    InvokeFailed,
    SyncFailure,
    TransientDeliveryError,
    TransientInvokeError,
)
from .invokers import Invoker, OutputTail
from .jsonio import decode_json, encode_json
from .naming import NameMap
from .page import TableSettings
from .protocol import Response
from .retry import RetryPolicy, with_retries

SHOWN_MESSAGE_CHARS = 500
SHOWN_KEY_CHARS = 200
EVENT_NAMESPACE = uuid.UUID("5b1f2a52-8c1e-4f0e-9d55-2f3b1f0c7a10")  # ours: event ids


@dataclass(frozen=True)
class Event:
    """One record on its way: its lane key (table and key, or position) and the payload."""

    table: str
    key: dict[str, Any] | None
    payload: dict[str, Any]

    @property
    def lane_key(self) -> bytes:
        key = self.key if self.key is not None else self.payload["context"]["event_id"]
        return encode_json([self.table, key])


@dataclass(frozen=True)
class PageContext:
    """What every event of one page shares."""

    connector: str
    schema: str
    agent: str
    sync_id: str
    page: int
    synced_at: datetime
    requested_state: dict[str, Any]  # the state the page was asked for with
    part: int | None = None  # of a streamed page (design §13): part of each event's identity


def page_events(
    response: Response,
    context: PageContext,
    names: NameMap,
    settings: TableSettings,
    primary_keys: dict[str, Sequence[str]],
) -> list[Event]:
    """The page's records as events, in the order the function sent them: for each table,
    its upserts, then its deletes (the order the warehouse applies them).

    `primary_keys` maps source table names to their key columns (source names); a table
    without one is appended to, and its events are told apart by position."""
    state = encode_json(_canonical(context.requested_state))
    synced_at = context.synced_at.isoformat().replace("+00:00", "Z")
    events: list[Event] = []
    for table in dict.fromkeys([*response.insert, *response.delete]):
        name = names.table(table)
        if name in settings.skip:
            continue
        blocked = settings.blocked.get(name, frozenset())
        to_hash = settings.hashed.get(name, frozenset())
        key_columns = list(primary_keys.get(table, ()))
        seen: dict[bytes, int] = {}
        operations = [
            ("upsert", response.insert.get(table, [])),
            ("delete", response.delete.get(table, [])),
        ]
        for operation, rows in operations:
            for position, row in enumerate(rows):
                key = {column: row.get(column) for column in key_columns} if key_columns else None
                identity = (
                    encode_json(key) if key is not None else f"{operation}:{position}".encode()
                )
                if context.part is not None:  # the same key may come again in another part
                    identity = b"part %d:%s" % (context.part, identity)
                occurrence = seen.get(identity, 0)
                seen[identity] = occurrence + 1
                data = _shown(
                    table, key if operation == "delete" and key else row, names, blocked, to_hash
                )
                event_id = _event_id(context.connector, state, table, identity, occurrence)
                payload = {
                    "data": data,
                    "context": {
                        "connector": context.connector,
                        "schema": context.schema,
                        "table": table,
                        "operation": operation,
                        "primary_key": key,
                        "sync_id": context.sync_id,
                        "page": context.page,
                        "synced_at": synced_at,
                        "event_id": event_id,
                        "agent": context.agent,
                    },
                }
                events.append(Event(table, key, payload))
    return events


def _shown(
    table: str,
    row: dict[str, Any],
    names: NameMap,
    blocked: frozenset[str],
    to_hash: frozenset[str],
) -> dict[str, Any]:
    """The record with blocked columns left out and hashed ones hashed (settings are by
    warehouse name; the record keeps the function's own names)."""
    if not blocked and not to_hash:
        return row
    shown = {}
    for column, value in row.items():
        name = names.column(table, column)
        if name in blocked:
            continue
        shown[column] = hashed(value) if name in to_hash else value
    return shown


def _event_id(connector: str, state: bytes, table: str, identity: bytes, occurrence: int) -> str:
    """A UUID from what identifies the record: the same record fetched again from the same
    state gets the same id, so a consumer can drop a redelivery."""
    digest = hashlib.sha256()
    for part in (connector.encode(), state, table.encode(), identity, str(occurrence).encode()):
        digest.update(len(part).to_bytes(8, "big") + part)
    return str(uuid.uuid5(EVENT_NAMESPACE, digest.hexdigest()))


def _canonical(value: Any) -> Any:
    """`value` with object keys sorted, so equal states give equal bytes."""
    if isinstance(value, dict):
        return {key: _canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


# --- sending --------------------------------------------------------------------------


@dataclass
class DeliveryStats:
    """Counts and call latencies of one sync's deliveries."""

    delivered: int = 0
    retried: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(
        self, *, delivered: int = 0, retried: int = 0, failed: int = 0, ms: float | None = None
    ) -> None:
        with self._lock:
            self.delivered += delivered
            self.retried += retried
            self.failed += failed
            if ms is not None:
                self.latencies_ms.append(ms)

    def percentile(self, fraction: float) -> float | None:
        """The latency below which `fraction` of the calls answered (nearest rank)."""
        with self._lock:
            ordered = sorted(self.latencies_ms)
        if not ordered:
            return None
        rank = max(1, -(-len(ordered) * fraction // 1))  # ceil, at least the first
        return round(ordered[int(rank) - 1], 3)

    def document(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "retried": self.retried,
            "failed": self.failed,
            "p50_ms": self.percentile(0.50),
            "p95_ms": self.percentile(0.95),
        }


@dataclass(frozen=True)
class DeliverySettings:
    """A connector's `destination:` when it is a function."""

    invoker: Callable[[], Invoker]
    batch_size: int = 1
    concurrency: int = 4
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class Deliverer:
    """Sends pages of events to the destination function, `concurrency` lanes at once.

    Use as a context manager: the lanes' invokers (warm workers, for local functions)
    stay up for the whole sync and are closed at its end."""

    def __init__(self, settings: DeliverySettings, stats: DeliveryStats, log: Any) -> None:
        self.settings, self.stats, self.log = settings, stats, log
        self.output = OutputTail()
        self._stack = ExitStack()
        self._invokers: list[Invoker | None] = [None] * settings.concurrency
        self._pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="deliver")

    def __enter__(self) -> Deliverer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._stack.close()

    def deliver(self, events: list[Event]) -> None:
        """Send every event; return once all are acknowledged, or raise the first failure
        (the other lanes stop at their next call)."""
        if not events:
            return
        lanes: list[list[Event]] = [[] for _ in range(self.settings.concurrency)]
        for event in events:
            lanes[zlib.crc32(event.lane_key) % len(lanes)].append(event)
        stop = threading.Event()
        futures = [
            self._pool.submit(self._run_lane, index, lane, stop)
            for index, lane in enumerate(lanes)
            if lane
        ]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            stop.set()
            wait(futures)
            raise failed[0].exception()

    def _invoker(self, lane: int) -> Invoker:
        invoker = self._invokers[lane]
        if invoker is None:
            invoker = self._stack.enter_context(self.settings.invoker())
            self._invokers[lane] = invoker
        return invoker

    def _run_lane(self, lane: int, events: list[Event], stop: threading.Event) -> None:
        invoker = self._invoker(lane)
        for batch in _batches(events, self.settings.batch_size):
            if stop.is_set():
                return
            self._send(invoker, batch)

    def _send(self, invoker: Invoker, batch: list[Event]) -> None:
        request = (
            batch[0].payload
            if self.settings.batch_size == 1
            else {"events": [e.payload for e in batch]}
        )
        attempts = 0

        def call() -> None:
            nonlocal attempts
            attempts += 1
            started = time.monotonic()
            try:
                raw = invoker.invoke(request)
            except FunctionError as exc:  # a crashed worker, a timeout: try again
                said = f": {exc.message}"
                raise TransientDeliveryError(
                    f"the destination function failed{said}",
                    answered=("the destination function failed", said),
                ) from exc
            except TransientDeliveryError:
                raise
            except TransientInvokeError as exc:
                raise TransientDeliveryError(
                    str(exc), retry_after=exc.retry_after, answered=exc.answered
                ) from exc
            except InvokeFailed as exc:  # an HTTP destination's 4xx, a missing handler
                raise self._failure(batch, str(exc)) from exc
            _judge(raw, batch, self._failure)
            self.stats.record(ms=(time.monotonic() - started) * 1000)

        try:
            with_retries(call, self.settings.retry, TransientDeliveryError, what="deliver")
        except TransientDeliveryError as exc:
            self.stats.record(retried=attempts - 1, failed=len(batch))
            raise self._failure(batch, exc.gave_up(self.settings.retry.attempts)) from exc
        except DeliveryFailed:
            self.stats.record(retried=attempts - 1, failed=len(batch))
            raise
        self.stats.record(retried=attempts - 1, delivered=len(batch))

    def _failure(self, batch: list[Event], what: str) -> DeliveryFailed:
        first = batch[0]
        # a table without a key: its record is named by its event id
        key = (
            first.key
            if first.key is not None
            else {"event_id": first.payload["context"]["event_id"]}
        )
        shown_key = masking.excerpt(encode_json(key).decode("utf-8", "replace"), SHOWN_KEY_CHARS)
        more = f" (and {len(batch) - 1} more records of its batch)" if len(batch) > 1 else ""
        return DeliveryFailed(
            f"delivering table {first.table!r}, key {shown_key}{more} failed: {what}"
        )


def _batches(events: list[Event], size: int) -> Iterator[list[Event]]:
    for start in range(0, len(events), size):
        yield events[start : start + size]


def _judge(
    raw: bytes, batch: list[Event], failure: Callable[[list[Event], str], SyncFailure]
) -> None:
    """Delivered (returns), retry (TransientDeliveryError) or failed (DeliveryFailed)."""
    try:
        answer = decode_json(raw)
    except ValueError:
        raise failure(batch, f"the function's answer is not JSON: {_excerpt(raw)}") from None
    if isinstance(answer, dict) and "errorMessage" in answer:
        said = f": {_excerpt(answer.get('errorMessage'))}"
        raise TransientDeliveryError(
            f"the function threw{said}", answered=("the function threw", said)
        )
    if not isinstance(answer, dict) or "statusCode" not in answer:
        raise failure(
            batch,
            'a destination function answers {"statusCode": 200, "message": "..."}, '
            f"got {_excerpt(encode_json(answer))}",
        )
    status = answer["statusCode"]
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if type(status) is not int:
        raise failure(batch, f"statusCode must be a number, got {_excerpt(encode_json(status))}")
    said = answer.get("message", answer.get("body"))
    said = f": {_excerpt(said)}" if said not in (None, "") else ""
    if 200 <= status < 300:
        return
    if status == 429 or status >= 500:
        raise TransientDeliveryError(
            f"the function answered {status}{said}",
            answered=(f"the function answered {status}", said),
        )
    raise failure(batch, f"the function answered {status}{said}")


def _excerpt(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return masking.excerpt(
        value if isinstance(value, str) else str(value), SHOWN_MESSAGE_CHARS, one_line=True
    )
