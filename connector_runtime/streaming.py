"""Streamed answers (design §13): a page that arrives in parts, applied as one page.

`StreamedPages` is the part of a sync (`sync._Sync`) that reads such a page: each part
checked (`checked_parts`), planned against the parts before it and handed to the
warehouse while the page's one transaction is open (`Destination.apply_parts`), so
memory holds one part. On MySQL, whose DDL commits by itself, the parts are first read
into a temporary file to learn the tables' final shape (`shapes_first`).
"""

from __future__ import annotations

import json
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from . import masking
from .collector import gc_paused
from .errors import (
    DestinationError,
    InvalidResponse,
    InvokeFailed,
    SyncFailure,
    TransientDestinationError,
    TransientInvokeError,
)
from .invokers import Invoker, Stream
from .naming import NameMap
from .page import PagePlanner, PageWrite, TableWrite
from .protocol import Response, decode_answer, validate_part
from .retry import with_retries


def shown_key(key: str) -> str:
    """An unknown answer key as a message shows it: JSON-quoted, masked, cut."""
    return masking.excerpt(json.dumps(key, ensure_ascii=False), 60, one_line=True)


def judge_stream(job: Any, request: dict, stream: Stream) -> str:
    """`_judge` for a streamed answer: every part checked and planned, one at a time."""
    planner = PagePlanner(job.connector, job.schema, NameMap(job.naming), {}, job.settings)
    rows = parts = 0
    last: Response | None = None
    ignored: dict[str, None] = {}
    with stream:
        for _, part, _ in checked_parts(stream, request["state"]):
            at = datetime.now(UTC)
            planner.commit(planner.plan(part, sync_id=request["sync_id"], number=1, synced_at=at))
            parts += 1
            rows += part.row_count
            ignored.update(dict.fromkeys(part.ignored_keys))
            last = part
    tables = ", ".join(f"{name}: {len(t.columns)} columns" for name, t in planner.catalog.items())
    summary = (
        f"streamed in {parts} parts; {rows} rows; {tables or 'no tables'}; hasMore {last.has_more}"
    )
    if ignored:
        summary += f"; ignored unknown keys: {', '.join(map(shown_key, ignored))}"
    return summary


def read_part(raw: bytes, index: int, where: str, requested_state: dict[str, Any]) -> Response:
    """Part `index` of a streamed answer from `where`, checked (`validate_part`); an
    `InvalidResponse` says which part it was."""
    try:
        return validate_part(decode_answer(raw), requested_state)
    except InvalidResponse as exc:
        exc.message = f"streamed answer from {where}, part {index}: {exc.message}"
        exc.args = (exc.message,)
        raise


def checked_parts(
    stream: Stream, requested_state: dict[str, Any]
) -> Iterator[tuple[int, Response, bytes]]:
    """The parts of a streamed answer as they arrive: each part's number, the part checked
    (`read_part`) and its raw JSON; `InvalidResponse` for a part after the one that
    carried state, and for a stream that ends without it."""
    last = False
    index = 0
    for index, raw in enumerate(stream, 1):
        if last:
            raise InvalidResponse(
                f"streamed answer from {stream.where}, part {index}: came after the part "
                "that carried state; that part must be the last"
            )
        with gc_paused():
            part = read_part(raw, index, stream.where, requested_state)
        last = part.is_last
        yield index, part, raw
    if not last:
        raise InvalidResponse(
            f"the streamed answer from {stream.where} ended without its last part, the one "
            f"that carries state and hasMore, after {index} parts (did the function stop "
            "mid-stream?); nothing of the page was written"
        )


_SPOOLED = struct.Struct(">Q")  # each spooled part: its length, then its JSON


def _unspooled(spool: Any) -> Iterator[bytes]:
    """The parts written to `spool`, read back one at a time; the file closed at the end."""
    with spool:
        while header := spool.read(_SPOOLED.size):
            (length,) = _SPOOLED.unpack(header)
            yield spool.read(length)


class StreamedPages:
    """What `sync._Sync` does with a streamed answer; the rest of a sync is its own
    (planning, delivering, counting and reporting a committed page)."""

    def apply_streamed(self, invoker: Invoker, fetched: Any) -> tuple[Response, int]:
        """Apply a streamed answer (design §13) as one page, its parts read as they are
        written; return its last part (with the state and hasMore) and its rows.

        A stream cannot be read twice: when the warehouse's connection or the stream
        breaks before the commit (nothing of the page is written), the page is asked for
        again with the same state, as many times as the retry policy allows."""
        policy = self.job.retry
        for attempt in range(1, policy.attempts + 1):
            self.current, self.page_object = fetched, fetched.location
            try:
                if not isinstance(fetched.answer, Stream):  # answered whole this time
                    self.warn_ignored(fetched.answer)
                    self.apply(fetched.answer)
                    return fetched.answer, fetched.answer.row_count
                return self.apply_parts(fetched)
            except (TransientDestinationError, TransientInvokeError) as exc:
                if attempt == policy.attempts:
                    if isinstance(exc, TransientInvokeError):
                        raise InvokeFailed(exc.gave_up(policy.attempts)) from exc
                    raise DestinationError(f"{exc} (after {attempt} attempts)") from exc
                wait = policy.delay(attempt - 1, getattr(exc, "retry_after", None))
                self.log.warning(
                    "retrying",
                    what="streamed_page",
                    attempt=attempt,
                    of=policy.attempts,
                    wait_s=round(wait, 2),
                    error=str(exc),
                )
                time.sleep(wait)
                fetched = self.fetch(invoker, fetched.requested_state, fetched.number)
        raise AssertionError("unreachable: attempts >= 1")

    def apply_parts(self, fetched: Any) -> tuple[Response, int]:
        """One pass over a streamed answer: each part validated, planned and handed to the
        warehouse while its transaction is open; on any failure nothing of it remains."""
        number, stream = self.record.pages + 1, fetched.answer
        catalog = dict(self.planner.catalog)
        planned: list[PageWrite] = []  # names given so far; tables kept only until applied
        last: list[Response] = []
        soft_delete: set[str] = set()
        rows = 0

        def parts(checked: Iterator[tuple[int, Response, bytes]]) -> Iterator[PageWrite]:
            nonlocal rows
            for index, part, _ in checked:
                self.warn_ignored(part)
                with gc_paused():  # one part at a time: cycles are collected between parts
                    page = self.plan_part(part, number, index)
                planned.append(replace(page, tables=[]))
                self.planner.commit(page)  # the next part is planned against this one
                if self.job.delivery is not None:
                    page = self.deliver(part, page)
                rows += part.row_count
                soft_delete.update(part.soft_delete)
                if part.is_last:
                    last.append(part)
                yield page

        try:
            checked = checked_parts(stream, fetched.requested_state)
            if self.job.delivery is None and not self.destination.transactional_ddl:
                checked = self.shapes_first(checked, fetched)
                catalog = dict(self.planner.catalog)  # committed: the point to go back to
            result = self.destination.apply_parts(parts(checked))
        except BaseException as exc:
            stream.close()
            self.planner.catalog.clear()
            self.planner.catalog.update(catalog)
            for page in planned:
                self.planner.rollback(page)
            if isinstance(exc, SyncFailure | TransientDestinationError | TransientInvokeError):
                raise
            if not isinstance(exc, Exception):
                raise
            raise DestinationError(f"page {number} could not be written: {exc}") from exc
        (response,) = last
        self.outcome.schema_changes += result.schema_changes
        if self.job.delivery is not None:
            result = self.delivered_counts
        self.committed(number, response, rows, result, soft_delete)
        return response, rows

    def plan_part(self, part: Response, number: int, index: int) -> PageWrite:
        return self.planner.plan(
            part,
            sync_id=self.record.sync_id,
            number=number,
            synced_at=self.record.started_at,
            part=index,
        )

    def shapes_first(
        self, checked: Iterator[tuple[int, Response, bytes]], fetched: Any
    ) -> Iterator[tuple[int, Response, bytes]]:
        """For a warehouse whose DDL commits by itself (MySQL): no table may change while
        the page's transaction is open. So the stream is read once into a temporary file
        and planned only to learn where its tables end up; their DDL (and the names the
        parts brought) commits first, as a whole page's DDL does there; the parts are then
        read back from the file, each planned again, now with nothing left to change."""
        before = dict(self.planner.catalog)
        names: list = []
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - read back lazily, closed there
        try:
            for index, part, raw in checked:
                page = self.plan_part(part, self.record.pages + 1, index)
                names += page.names
                self.planner.commit(page)
                spool.write(_SPOOLED.pack(len(raw)) + raw)
            changed = [
                TableWrite(table, before.get(name))
                for name, table in self.planner.catalog.items()
                if table != before.get(name)
            ]
            if changed or names:  # counted as no page: the sync's pages stay as they are
                shapes = PageWrite(
                    self.job.connector,
                    self.job.schema,
                    self.record.sync_id,
                    self.record.pages,
                    self.record.started_at,
                    fetched.requested_state,
                    changed,
                    names,
                )
                result = with_retries(
                    lambda: self.destination.apply_page(shapes),
                    self.job.retry,
                    TransientDestinationError,
                    what="apply_page",
                )
                self.outcome.schema_changes += result.schema_changes
        except BaseException:
            spool.close()
            self.planner.catalog.clear()
            self.planner.catalog.update(before)
            self.planner.names.forget(names)
            raise
        spool.seek(0)
        return checked_parts(
            Stream(_unspooled(spool), fetched.answer.where), fetched.requested_state
        )
