"""The sync loop (design §2-3): run a sync → loop pages → apply one page → invoke.

Each layer does one thing. `run_sync` takes the lock and records the sync and its
outcome; `_Sync.pages` (`paging.PagingAhead`) asks for pages, ahead of the one being
written, until `hasMore` is false, and retries transient failures of a call;
`_Sync.apply` plans and writes one page with its state; a streamed page goes through
`streaming.StreamedPages`. A failure anywhere stops the sync with one alert; the state
stays at the last committed page.
"""

from __future__ import annotations

import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from . import __version__, first_page, masking
from .delivery import Deliverer, DeliverySettings, DeliveryStats, PageContext, page_events
from .destination import (
    Alert,
    Destination,
    PageResult,
    SchemaChange,
    SyncRecord,
    TableCounts,
    open_destination,
)
from .errors import (
    DestinationError,
    InvokeFailed,
    SyncFailure,
    TransientDestinationError,
    TransientInvokeError,
)
from .events import bus
from .invokers import Invoker, OutputTail, Stream
from .naming import NameMap
from .page import PagePlanner, PageWrite, TableSettings
from .paging import PagingAhead, discard_page_object, read_page
from .protocol import Request, Response
from .retry import RetryPolicy, with_retries
from .storage import S3PageStore
from .streaming import StreamedPages, judge_stream, shown_key

# An alert's texts are masked, then cut to these many characters (`syncs.error`: one line)
ALERT_MESSAGE_CHARS = 64 * 1024
STACK_TRACE_CHARS = 64 * 1024  # of the trace as JSON; whole frames are dropped from its end
ERROR_TYPE_CHARS = 200
SYNC_ERROR_CHARS = 1000


@dataclass(frozen=True)
class SyncJob:
    """Everything needed to sync one connector, resolved from the config."""

    connector: str
    schema: str
    destination_url: str
    invoker: Callable[[], Invoker]
    secrets: dict[str, Any] = field(default_factory=dict)
    naming: str = "fivetran"
    settings: TableSettings = field(default_factory=TableSettings)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_sync_duration: float = 6 * 3600.0
    storage: S3PageStore | None = None  # sync through cloud storage (design §2)
    delivery: DeliverySettings | None = None  # records go to a function (design §12)
    prefetch: bool = True  # ask for page N+1 while page N is written (design §2)

    def request(
        self,
        state: dict[str, Any],
        sync_id: str,
        *,
        setup_test: bool | None = None,
        location: dict[str, str] | None = None,
    ) -> dict:
        """The request the function gets (design §2); `location`: its `bucket` and `file`."""
        return Request(
            agent=self.agent(),
            state=state,
            secrets=self.secrets,
            sync_id=sync_id,
            setup_test=setup_test,
            **(location or {}),
        ).payload()

    def agent(self) -> str:
        return f"connector-runtime/{__version__}/{self.connector}/{self.schema}"

    def page_object(self, sync_id: str, page: int | str) -> dict[str, str] | None:
        """Where the function may write page `page` of sync `sync_id`; None without storage."""
        if self.storage is None:
            return None
        return self.storage.location(self.connector, sync_id, page)


@dataclass(frozen=True)
class PageProgress:
    """Reported after each committed page."""

    number: int
    rows: int
    result: PageResult
    has_more: bool


@dataclass
class SyncOutcome:
    """What a finished sync did; `record` is its `connector_runtime.syncs` row."""

    record: SyncRecord
    tables: dict[str, dict[str, int]] = field(default_factory=dict)
    alert: Alert | None = None
    function_output: str = ""  # the tail of what the function printed, masked
    delivery: dict[str, Any] | None = None  # a destination function's counts (design §12)
    schema_changes: list[SchemaChange] = field(default_factory=list)  # in the order applied

    @property
    def ok(self) -> bool:
        return self.record.status in ("succeeded", "rescheduled")

    def document(self) -> dict[str, Any]:
        """The sync's document with its per-table counts, its schema changes and its alert."""
        return {
            **self.record.document(),
            "tables": self.tables,
            "schema_changes": [change.document() for change in self.schema_changes],
            "alert": self.alert.document() if self.alert is not None else None,
            **({"delivery": self.delivery} if self.delivery is not None else {}),
        }


def run_sync(
    job: SyncJob,
    *,
    trigger: str = "manual",
    on_page: Callable[[PageProgress], None] | None = None,
    stop: threading.Event | None = None,
    sync_id: str | None = None,
) -> SyncOutcome:
    """One sync of `job`; raises SyncInProgress if one is already running.

    `stop`, once set, ends the sync after its current page, as `rescheduled`."""
    masking.register(job.secrets)
    invoker = _started(job)  # its worker loads the function while the warehouse opens
    sync_id = sync_id or str(uuid.uuid4())
    first = first_page.ask_first(job, invoker, sync_id, trigger)  # page 1 meanwhile, if it can
    try:
        with (
            open_destination(job.destination_url) as destination,
            destination.lock(job.connector),
        ):
            on_page = on_page or (lambda _: None)
            sync = _Sync(job, destination, trigger, on_page, stop, sync_id, invoker, first)
            outcome = sync.run()
    finally:
        if first is not None and not first.handed_over:
            first.drop(structlog.get_logger().bind(connector=job.connector, sync_id=sync_id))
        if invoker is not None:
            invoker.close()
    sync.announce()  # once the lock is free: whoever hears "finished" may start the next
    return outcome


def _started(job: SyncJob) -> Invoker | None:
    """The job's invoker, its worker started; None if it cannot be made now: the sync
    makes it again, and its failure is then the sync's alert."""
    try:
        invoker = job.invoker()
    except Exception:
        return None
    invoker.start()
    return invoker


def internal_error(exc: Exception) -> SyncFailure:
    """An unexpected exception as a failure, with its traceback for the alert."""
    return DestinationError(
        f"internal error: {exc!r}",
        error_type=type(exc).__name__,
        stack_trace=traceback.format_exception(exc),
    )


def check_function(job: SyncJob) -> tuple[str, str]:
    """`connector test`: one request with `setup_test: true`, validated and planned as a
    page would be (against empty tables), written nowhere. Returns a summary and what the
    function printed. Raises SyncFailure, with `function_output` set."""
    masking.register(job.secrets)
    sync_id = str(uuid.uuid4())
    location = job.page_object(sync_id, "test")
    try:
        return _check(job, job.request({}, sync_id, setup_test=True, location=location))
    finally:
        if location is not None:
            discard_page_object(job, location, structlog.get_logger())


def _check(job: SyncJob, request: dict) -> tuple[str, str]:
    with job.invoker() as invoker:
        try:
            raw = with_retries(
                lambda: invoker.invoke(request), job.retry, TransientInvokeError, what="invoke"
            )
        except TransientInvokeError as exc:
            failure = InvokeFailed(exc.gave_up(job.retry.attempts))
            failure.function_output = invoker.output.text()
            raise failure from exc
        except SyncFailure as failure:
            failure.function_output = invoker.output.text()
            raise
        shape = invoker.shape  # design §13: which handler shape answered
        try:  # a streamed answer is read while its worker is still there
            summary = _judge(job, request, raw)
        except SyncFailure as failure:
            failure.function_output = invoker.output.text()
            raise
        output = invoker.output.text()
    return (f"{shape} handler; {summary}" if shape else summary), output


def _judge(job: SyncJob, request: dict, raw: bytes | Stream) -> str:
    if isinstance(raw, Stream):
        return judge_stream(job, request, raw)
    stored = "file" in request and job.storage is not None
    location = {"bucket": request["bucket"], "file": request["file"]} if stored else None
    response = read_page(job, raw, location)
    planner = PagePlanner(job.connector, job.schema, NameMap(job.naming), {}, job.settings)
    page = planner.plan(response, sync_id=request["sync_id"], number=1, synced_at=datetime.now(UTC))
    tables = ", ".join(f"{w.table.name}: {len(w.table.columns)} columns" for w in page.tables)
    summary = f"{response.row_count} rows; {tables or 'no tables'}; hasMore {response.has_more}"
    if response.ignored_keys:
        summary += f"; ignored unknown keys: {', '.join(map(shown_key, response.ignored_keys))}"
    return summary


class _Sync(PagingAhead, StreamedPages):
    def __init__(
        self,
        job: SyncJob,
        destination: Destination,
        trigger: str,
        on_page: Callable[[PageProgress], None],
        stop: threading.Event | None,
        sync_id: str,
        invoker: Invoker | None = None,
        first: first_page.FirstCall | None = None,
    ) -> None:
        self.job, self.destination, self.on_page, self.stop = job, destination, on_page, stop
        self.invoker = invoker  # made ahead (`run_sync`); else made when pages are asked for
        self.first = first  # page 1 asked for while the warehouse opened (`run_sync`)
        self.record = SyncRecord(sync_id, job.connector, trigger, datetime.now(UTC))
        self.outcome = SyncOutcome(self.record)
        self.log = structlog.get_logger().bind(connector=job.connector, sync_id=self.record.sync_id)
        self.soft_delete: set[str] = set()
        self.output: OutputTail | None = None
        self.resolved: list[Alert] = []  # open alerts this sync's success resolves
        self.page_object: dict[str, str] | None = None  # in cloud storage, until deleted
        self.ignored_keys: set[str] = set()  # unknown answer keys already warned about

    def run(self) -> SyncOutcome:
        snapshot = self.destination.begin_sync(
            self.record, reset_state=self.record.trigger == "resync"
        )
        first_page.remember(self.job, snapshot.state)
        self.planner = PagePlanner(
            self.job.connector,
            self.job.schema,
            NameMap.load(self.job.naming, snapshot.names),
            dict(snapshot.catalog),
            self.job.settings,
        )
        self.log.info("sync_started", trigger=self.record.trigger)
        bus.publish("sync.started", {"sync": self.record.document()})
        try:
            status = self.pages(snapshot.state)
            if status == "succeeded":
                self.finish(
                    snapshot.cycle_started_at or self.record.started_at,
                    resync=snapshot.cycle_trigger == "resync",
                )
        except SyncFailure as failure:
            status = "failed"
            self.fail(failure)
        except Exception as exc:  # a bug of ours: still one alert, and the sync row closed
            status = "failed"
            self.fail(internal_error(exc))
        except KeyboardInterrupt:
            self.record = replace(
                self.record, status="failed", finished_at=datetime.now(UTC), error="interrupted"
            )
            self.destination.end_sync(self.record)
            raise
        self.record = replace(self.record, status=status, finished_at=datetime.now(UTC))
        if status == "succeeded":
            self.resolved = self.destination.list_alerts(self.job.connector)
        self.destination.end_sync(self.record)
        self.outcome.record = self.record
        self.keep_output()
        self.log.info(
            "sync_finished",
            status=status,
            pages=self.record.pages,
            rows_upserted=self.record.rows_upserted,
            rows_deleted=self.record.rows_deleted,
        )
        return self.outcome

    def announce(self) -> None:
        """`sync.finished` (with per-table counts and the alert) and the alerts it resolved."""
        bus.publish("sync.finished", {"sync": self.outcome.document()})
        for resolved in self.resolved:
            resolved = replace(resolved, resolved_at=self.record.finished_at)
            bus.publish("alert.resolved", {"alert": resolved.document()})

    def keep_output(self) -> None:
        """The tail of what the function printed, with the sync's row (already masked)."""
        output = self.output.text() if self.output is not None else ""
        self.outcome.function_output = output
        if not output:
            return
        try:
            self.destination.save_function_output(self.record.sync_id, output)
        except Exception as exc:  # the output is a convenience; the sync's outcome stands
            self.log.warning("function_output_not_kept", error=str(exc))

    def stopping(self) -> bool:
        """Out of time, or asked to stop: end after the current page."""
        return self.out_of_time() or (self.stop is not None and self.stop.is_set())

    def warn_ignored(self, response: Response) -> None:
        """One warning per sync for each unknown key the function answers with."""
        new = [key for key in response.ignored_keys if key not in self.ignored_keys]
        if new:
            self.ignored_keys.update(new)
            self.log.warning(
                "unknown_answer_keys_ignored",
                keys=[shown_key(key) for key in new],
                hint="the protocol's keys are state, insert, delete, schema, softDelete, hasMore",
            )

    @contextmanager
    def deliverer(self) -> Iterator[None]:
        """The destination function's senders for this sync, if records go to one."""
        if self.job.delivery is None:
            yield
            return
        self.delivery_stats = DeliveryStats()
        try:
            with Deliverer(self.job.delivery, self.delivery_stats, self.log) as self.sender:
                yield
        finally:
            self.save_deliveries()

    def save_deliveries(self) -> None:
        self.outcome.delivery = self.delivery_stats.document()
        try:
            self.destination.save_deliveries(
                self.record.sync_id, self.job.connector, self.delivery_stats.document()
            )
        except Exception as exc:  # the counts are a record; the page's outcome stands
            self.log.warning("deliveries_not_saved", error=str(exc))

    def deliver(self, response: Response, page: PageWrite) -> PageWrite:
        """Send the page's records to the destination function; return the page as it is
        then committed: its state (and names) only, no tables. `delivered_counts` then
        holds what it sent (added to, for each part of a streamed page)."""
        context = PageContext(
            connector=self.job.connector,
            schema=self.job.schema,
            agent=self.job.agent(),
            sync_id=self.record.sync_id,
            page=page.number,
            synced_at=self.record.started_at,
            requested_state=self.current.requested_state,
            part=page.part,
        )
        names = self.planner.names
        keys = {}  # each table's key columns, by the names the function sent
        for write in page.tables:
            source = write.table.source
            sent = {n: c for (t, c), n in names.entries.items() if t == source and c}
            keys[source] = [sent.get(column, column) for column in write.table.primary_key]
        events = page_events(response, context, names, self.job.settings, keys)
        self.sender.deliver(events)
        self.save_deliveries()
        if page.part is None or page.part == 1:
            self.delivered_counts = PageResult()
        for event in events:
            tally = self.delivered_counts.tables.setdefault(names.table(event.table), TableCounts())
            if event.payload["context"]["operation"] == "delete":
                tally.deleted += 1
            else:
                tally.upserted += 1
        return replace(page, tables=[])

    def apply(self, response: Response) -> None:
        """Plan and write one page with its state; on any failure nothing of it remains."""
        number = self.record.pages + 1
        page = self.planner.plan(
            response, sync_id=self.record.sync_id, number=number, synced_at=self.record.started_at
        )
        planned = page
        if self.job.delivery is not None:
            try:
                page = self.deliver(response, page)
            except Exception:
                self.planner.rollback(planned)
                raise
        try:
            result = with_retries(
                lambda: self.destination.apply_page(page),
                self.job.retry,
                TransientDestinationError,
                what="apply_page",
            )
        except Exception as exc:
            self.planner.rollback(page)
            if isinstance(exc, SyncFailure):
                raise
            raise DestinationError(f"page {number} could not be written: {exc}") from exc
        self.planner.commit(planned)
        self.outcome.schema_changes += result.schema_changes
        if self.job.delivery is not None:
            result = self.delivered_counts
        self.committed(number, response, response.row_count, result, response.soft_delete)

    def committed(
        self, number: int, response: Response, rows: int, result: PageResult, soft_delete: Any
    ) -> None:
        """After page `number` committed (`response` or its last part): its object in
        storage deleted, its state and softDelete tables remembered, its counts added and
        reported."""
        first_page.remember(self.job, response.state)
        self.discard_page_object()
        self.soft_delete.update(self.planner.names.table(t) for t in soft_delete)
        self.count(number, result)
        self.on_page(PageProgress(number, rows, result, response.has_more))
        bus.publish("sync.progress", {"sync": self.progress()})

    def progress(self) -> dict[str, Any]:
        """The running sync's document with its live numbers (page, rows, rows/s, elapsed)."""
        elapsed = (datetime.now(UTC) - self.record.started_at).total_seconds()
        rows = self.record.rows_upserted + self.record.rows_deleted
        return {
            **self.record.document(),
            "page": self.record.pages,
            "rows": rows,
            "rows_per_s": round(rows / elapsed, 1) if elapsed > 0 else None,
            "elapsed_s": round(elapsed, 3),
        }

    def count(self, number: int, result: PageResult) -> None:
        upserted, deleted = result.upserted, result.deleted
        self.record = replace(
            self.record,
            pages=number,
            rows_upserted=self.record.rows_upserted + upserted,
            rows_deleted=self.record.rows_deleted + deleted,
        )
        for name, counts in result.tables.items():
            totals = self.outcome.tables.setdefault(
                name, {"upserted": 0, "deleted": 0, "missing": 0}
            )
            totals["upserted"] += counts.upserted
            totals["deleted"] += counts.deleted
            totals["missing"] += counts.missing

    def out_of_time(self) -> bool:
        elapsed = (datetime.now(UTC) - self.record.started_at).total_seconds()
        return elapsed > self.job.max_sync_duration

    def finish(self, cutoff: datetime, *, resync: bool) -> None:
        """Soft deletes at the successful end of a sync cycle (softDelete tables, re-sync)."""
        if self.job.delivery is not None:
            # records went to a function: no table holds what was not re-sent
            if self.soft_delete:
                self.log.warning(
                    "soft_delete_not_delivered",
                    tables=sorted(self.soft_delete),
                    hint="a destination function gets deletes only as delete records",
                )
            return
        catalog = self.planner.catalog
        tables = {t for t in self.soft_delete if t in catalog}
        if resync:
            tables |= {name for name, info in catalog.items() if info.primary_key}
        try:
            marked = self.destination.finish_cycle(
                self.job.connector, self.job.schema, sorted(tables), cutoff, self.record.started_at
            )
        except SyncFailure:
            raise
        except Exception as exc:
            raise DestinationError(f"end-of-sync soft deletes failed: {exc}") from exc
        for name, count in marked.items():
            self.outcome.tables.setdefault(name, {"upserted": 0, "deleted": 0, "missing": 0})
            self.outcome.tables[name]["deleted"] += count
        self.record = replace(
            self.record, rows_deleted=self.record.rows_deleted + sum(marked.values())
        )

    def discard_page_object(self) -> None:
        """Delete the current page's object in cloud storage, once applied or failed."""
        location, self.page_object = self.page_object, None
        if location is not None:
            discard_page_object(self.job, location, self.log)

    def fail(self, failure: SyncFailure) -> None:
        """One alert for the failure: every text masked first, then bounded (a function
        may answer with a megabyte of `errorMessage`); `syncs.error` gets one short line."""
        self.discard_page_object()  # a failed page leaves nothing behind in storage either
        message = masking.excerpt(failure.message, ALERT_MESSAGE_CHARS, note=masking.CUT)
        error_type = masking.excerpt(failure.error_type, ERROR_TYPE_CHARS, one_line=True)
        stack_trace = failure.stack_trace
        if stack_trace is not None:
            stack_trace = masking.excerpt_frames(stack_trace, STACK_TRACE_CHARS)
        alert = Alert(
            str(uuid.uuid4()),
            self.job.connector,
            self.record.sync_id,
            datetime.now(UTC),
            failure.severity,
            failure.kind,
            error_type,
            message,
            stack_trace,
        )
        self.log.error("sync_failed", kind=failure.kind, error_type=error_type, message=message)
        try:
            self.destination.record_alert(alert)
        except Exception as exc:  # the warehouse may be what failed; the log still has it
            self.log.error("alert_not_saved", error=str(exc))
        bus.publish("alert.opened", {"alert": alert.document()})
        error = masking.excerpt(
            f"{failure.kind}: {message}", SYNC_ERROR_CHARS, one_line=True, note=masking.CUT
        )
        self.record = replace(self.record, error=error)
        self.outcome.alert = alert
