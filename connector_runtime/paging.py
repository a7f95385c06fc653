"""Paging ahead (design §2): the sync's loop of pages, asking for each page before the
one before it is written.

While page N is written (the main thread), page N+1 is read and typed in the prefetch
thread (`PagingAhead.fetch`), and page N+2 is asked for as soon as N+1's state is read
(`_AskedAhead`): the function, the runtime's Python and the warehouse work at once. A
page that fails to commit, or a sync told to stop, drops every answer asked for after
it, unread, and deletes their objects in cloud storage once their calls have ended: the
saved state never runs ahead of the committed data. `prefetch: false` asks for each page
once the page before has committed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .collector import gc_paused
from .errors import (
    InvalidResponse,
    InvokeFailed,
    Stalled,
    StorageError,
    SyncFailure,
    TransientInvokeError,
    TransientStorageError,
)
from .invokers import Invoker, Stream
from .page import prepare
from .protocol import Response, decode_answer, validate_response
from .retry import with_retries
from .storage import url as object_url

if TYPE_CHECKING:
    from .columns import ColumnarAnswer
    from .first_page import FirstCall
    from .sync import SyncJob

MAX_EMPTY_PAGES = 10  # consecutive `hasMore: true` pages without a row before `stalled`


def _close_stream(call: Future) -> None:
    """Close the stream a call ahead got, if it got one (as its raw answer, or in the
    `Fetched` a prefetch made of it): its page will not be read now."""
    if not call.cancelled() and call.exception() is None:
        answer = call.result()
        answer = answer.answer if isinstance(answer, Fetched) else answer
        if isinstance(answer, Stream):
            answer.close()


class _AskedAhead:
    """The call for the page after the one being read, started as soon as that page's
    state is known (`PagingAhead.fetch`), and taken by the fetch of its page; once dropped (a
    page failed, or the sync stops), nothing more is asked for."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool, self.lock = pool, threading.Lock()
        self.pending: tuple[int, Future] | None = None
        self.dropped = False

    def adopt(self, number: int, call: Future) -> None:
        """Take `call`, started elsewhere, as the call for page `number`."""
        with self.lock:
            self.pending = (number, call)

    def start(self, number: int, call: Callable[[], bytes | Stream]) -> None:
        with self.lock:
            if not self.dropped:
                self.pending = (number, self.pool.submit(call))

    def take(self, number: int) -> Future | None:
        """The call for page `number`, if it was started; `CancelledError` once dropped:
        the page will not be read, and nothing more is asked for."""
        with self.lock:
            if self.dropped:
                raise CancelledError(f"page {number} is no longer wanted")
            pending, self.pending = self.pending, None
        if pending is not None and pending[0] != number:
            raise RuntimeError(f"page {pending[0]} was asked for ahead, not page {number}")
        return pending and pending[1]

    def drop(self) -> tuple[int, Future] | None:
        """Ask for nothing more; the page number and call of one started, if any."""
        with self.lock:
            self.dropped = True
            pending, self.pending = self.pending, None
        return pending


def read_page(
    job: SyncJob, raw: bytes | ColumnarAnswer, location: dict[str, str] | None
) -> Response:
    """The function's answer, merged with the page's object in cloud storage when there is
    storage (design §2), then validated. Reading the object is retried when S3's error is
    transient; any other S3 error fails the page (`StorageError`), never as an empty page."""
    answer = decode_answer(raw)
    if location is None:
        return validate_response(answer)
    try:
        merged = with_retries(
            lambda: job.storage.merge(answer, location),
            job.retry,
            TransientStorageError,
            what="read_page_object",
        )
    except TransientStorageError as exc:
        raise StorageError(f"{exc} (after {job.retry.attempts} attempts)") from exc
    try:
        return validate_response(merged)
    except InvalidResponse as exc:
        if merged is answer:  # no object: the answer alone is at fault
            raise
        exc.message += f" (the page: the answer merged with {object_url(location)})"
        exc.args = (exc.message,)
        raise


def discard_page_object(job: SyncJob, location: dict[str, str], log: Any) -> None:
    """Delete a page's object in cloud storage; a failure is only logged (the page's
    outcome stands, and a leftover object is never read again: keys are per sync)."""
    try:
        job.storage.delete(location)
    except (StorageError, TransientStorageError) as exc:
        log.warning("page_object_not_deleted", object=object_url(location), error=str(exc))


def drop_later(job: SyncJob, sync_id: str, call: Future, number: int, log: Any) -> None:
    """Drop page `number`'s answer unread once `call` (which asks for it) has ended,
    and delete the page's object in cloud storage then: a function still running may
    yet write it. A call cancelled before it started wrote nothing."""
    if call.cancel():
        return
    location = job.page_object(sync_id, number)

    def dropped(ended: Future) -> None:
        _close_stream(ended)
        if location is not None:
            discard_page_object(job, location, log)

    call.add_done_callback(dropped)


@dataclass(frozen=True)
class Fetched:
    """A validated answer (or a stream of its parts, not yet read), the state it was asked
    for with, and its page's number and object in cloud storage (None without storage)."""

    answer: Response | Stream
    requested_state: dict[str, Any]
    location: dict[str, str] | None
    number: int


class PagingAhead:
    """The page loop of `sync._Sync`, which provides the job, the record, `apply`,
    `apply_streamed` (`streaming.StreamedPages`), `stopping` and the rest."""

    first: FirstCall | None = None  # page 1, asked for before the state was read

    def pages(self, state: dict[str, Any]) -> str:
        """Ask for pages until the function says it is done; return the sync's status.

        Paging ahead (design §2), unless the function says `prefetch: false`: while page
        N is written, page N+1 is read and typed in the prefetch thread, and page N+2 is
        asked for as soon as N+1's state is read (`fetch`). If page N does not commit,
        both are dropped unread: the saved state never runs ahead of the committed data."""
        self.empty_pages = 0  # in a row, each saying hasMore (`stalled`)
        # the pools outlive the invoker: a failure closes the invoker first, which cuts a
        # prefetch call short, and the pools then have nothing left to wait for
        with (
            ThreadPoolExecutor(1, thread_name_prefix="prefetch") as ahead,
            ThreadPoolExecutor(1, thread_name_prefix="ask-ahead") as asking,
            self.invoker or self.job.invoker() as invoker,
            self.deliverer(),
        ):
            self.asked = _AskedAhead(asking)
            self.take_first(state)
            try:
                return self.page_loop(invoker, ahead, state)
            except BaseException:
                self.drop_asked()  # a call started for a page that will not be read
                raise

    def take_first(self, state: dict[str, Any]) -> None:
        """Page 1's call, made while the warehouse opened (`first_page`), is the call for
        the first page if it was asked with the saved `state`; else it is dropped."""
        first = self.first
        if first is not None and (call := first.take(state, self.log)) is not None:
            self.asked.adopt(self.record.pages + 1, call)

    def page_loop(self, invoker: Invoker, ahead: ThreadPoolExecutor, state: dict) -> str:
        self.output = invoker.output
        self.page_object = self.job.page_object(self.record.sync_id, self.record.pages + 1)
        fetched = self.fetch(invoker, state, self.record.pages + 1)
        while True:
            following = None
            if isinstance(fetched.answer, Stream):  # its state comes with its last part
                response, rows = self.apply_streamed(invoker, fetched)
                self.empty_pages = self.stalled(self.empty_pages, response.has_more, rows)
            else:
                with gc_paused():
                    response = fetched.answer
                    self.warn_ignored(response)
                    self.empty_pages = self.stalled(
                        self.empty_pages, response.has_more, response.row_count
                    )
                    if response.has_more and self.job.prefetch and not self.stopping():
                        following = ahead.submit(
                            self.fetch, invoker, response.state, fetched.number + 1
                        )
                    self.current, self.page_object = fetched, fetched.location
                    try:
                        self.apply(response)
                    except BaseException:
                        self.abandon(following, fetched.number + 1)
                        raise
            if not response.has_more:
                return "succeeded"
            if self.stopping():
                self.abandon(following, fetched.number + 1)
                return "rescheduled"
            number = fetched.number + 1
            self.page_object = self.job.page_object(self.record.sync_id, number)
            fetched = (
                following.result()
                if following is not None
                else self.fetch(invoker, response.state, number)
            )

    @staticmethod
    def stalled(empty_in_a_row: int, has_more: bool, rows: int) -> int:
        """Count pages that said hasMore without a row; `Stalled` past `MAX_EMPTY_PAGES`."""
        empty_in_a_row = empty_in_a_row + 1 if has_more and not rows else 0
        if empty_in_a_row > MAX_EMPTY_PAGES:
            raise Stalled(
                f"{empty_in_a_row} responses in a row said hasMore without a "
                "single row; stopped so the sync does not loop forever"
            )
        return empty_in_a_row

    def abandon(self, following: Future | None, number: int) -> None:
        """Drop prefetched answers whose pages will not be applied now (page `number`'s,
        and the call for the one after it); the next sync asks for them again from the
        committed state."""
        if following is None:
            return
        self.drop_later(following, number)
        self.drop_asked()

    def drop_asked(self) -> None:
        """Ask for nothing more, and drop a call already asked ahead."""
        if (dropped := self.asked.drop()) is not None:
            number, call = dropped
            self.drop_later(call, number)

    def drop_later(self, call: Future, number: int) -> None:
        drop_later(self.job, self.record.sync_id, call, number, self.log)

    def fetch(self, invoker: Invoker, state: dict[str, Any], number: int) -> Fetched:
        """Page `number`, asked for with `state`: the validated answer, and what it came from.

        When paging ahead, the call for the next page starts as soon as this answer's
        state is read, before its rows are typed (`prepare`): the function works on it
        while this page is typed and the one before it written."""
        location = self.job.page_object(self.record.sync_id, number)
        asked = self.asked.take(number) if self.job.prefetch else None
        raw = asked.result() if asked is not None else self.call(invoker, state, location)
        if isinstance(raw, Stream):
            return Fetched(raw, state, location, number)
        with gc_paused():  # the answer's rows are parsed here, often in the prefetch thread
            response = read_page(self.job, raw, location)
            if self.asks_ahead(response):
                following = self.job.page_object(self.record.sync_id, number + 1)
                self.asked.start(number + 1, lambda: self.call(invoker, response.state, following))
            prepare(response)
        return Fetched(response, state, location, number)

    def asks_ahead(self, response: Response) -> bool:
        """Whether to ask for the page after `response` before it is applied: not when the
        page ends the sync, the sync is stopping, or the page would stall it (`stalled`;
        the page before it is counted by then)."""
        if not (response.has_more and self.job.prefetch) or self.stopping():
            return False
        return bool(response.row_count) or self.empty_pages + 1 <= MAX_EMPTY_PAGES

    def call(
        self, invoker: Invoker, state: dict[str, Any], location: dict[str, str] | None
    ) -> bytes | ColumnarAnswer | Stream:
        return ask(self.job, invoker, state, self.record.sync_id, location)


def ask(
    job: SyncJob,
    invoker: Invoker,
    state: dict[str, Any],
    sync_id: str,
    location: dict[str, str] | None,
) -> bytes | ColumnarAnswer | Stream:
    """The function's raw answer to `state`, transient failures retried."""
    request = job.request(state, sync_id, location=location)

    def call() -> bytes | Stream:
        try:
            return invoker.invoke(request)
        except (SyncFailure, TransientInvokeError):
            raise
        except Exception as exc:  # a bug in an invoker must still fail the sync loudly
            raise InvokeFailed(f"invoking the function failed: {exc!r}") from exc

    try:
        return with_retries(call, job.retry, TransientInvokeError, what="invoke")
    except TransientInvokeError as exc:
        raise InvokeFailed(exc.gave_up(job.retry.attempts)) from exc
