"""A sync's first page, asked for while the warehouse opens (paging ahead, design §2).

The function's first call needs the connector's saved state, which only the warehouse
knows: opening it and reading the state takes a DuckDB file 10-60 ms, a database server
a few round trips. Where the state can be known before, the first call does not wait:

- the state this process last committed (or read) for the connector in that warehouse:
  under `connector serve` or a `connector worker`, every scheduled sync after the first;
- `{}` for a re-sync, which starts from an empty state, and for a warehouse that holds
  nothing yet (a DuckDB file not made yet: a project's first sync).

Once the warehouse says the state, the answer is taken if it was asked for with that
state, and dropped unread otherwise (another process synced the connector, or its state
was reset meanwhile), as an answer asked ahead for a page that failed is dropped: the
function is then asked again with the saved state. `prefetch: false`, for functions
that must never be called with a state that is not the saved one, asks for the first
page only once the warehouse has said its state, as it asks for every page.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, wait
from typing import TYPE_CHECKING, Any

import orjson

from .destination import destination_class
from .paging import ask, drop_later

if TYPE_CHECKING:
    from .invokers import Invoker
    from .sync import SyncJob

# (warehouse URL, connector) -> the state this process last saw saved, as sorted JSON
_SAVED: dict[tuple[str, str], bytes] = {}


def remember(job: SyncJob, state: dict[str, Any]) -> None:
    """`state` is the connector's saved state now (read at the start, or committed)."""
    remember_state(job.destination_url, job.connector, state)


def remember_state(url: str, connector: str, state: dict[str, Any]) -> None:
    """The connector's state in the warehouse at `url` is `state` now (also when an
    operator replaced it through this process)."""
    key = (url, connector)
    text = _sorted_json(state)
    if text is None:
        _SAVED.pop(key, None)
    else:
        _SAVED[key] = text


class FirstCall:
    """The call for page 1, started with `state` before the warehouse said its own."""

    def __init__(self, job: SyncJob, sync_id: str, state: dict[str, Any], call: Future) -> None:
        self.job, self.sync_id, self.state, self.call = job, sync_id, state, call
        self.handed_over = False

    def take(self, saved: dict[str, Any], log: Any) -> Future | None:
        """The call, if it was asked for with the `saved` state; else None, the answer
        dropped."""
        asked = _sorted_json(self.state)
        if asked is not None and asked == _sorted_json(saved):
            self.handed_over = True
            return self.call
        log.debug("first_page_asked_again", reason="the saved state is not the one expected")
        wait([self.call])  # the function answers one call at a time
        self.drop(log)
        return None

    def drop(self, log: Any) -> None:
        """Drop the answer unread once the call ends (its stream closed, its object in
        cloud storage deleted)."""
        self.handed_over = True
        drop_later(self.job, self.sync_id, self.call, 1, log)


def ask_first(
    job: SyncJob, invoker: Invoker | None, sync_id: str, trigger: str
) -> FirstCall | None:
    """Page 1 asked for now, in a thread, when the saved state can be known before the
    warehouse is opened; None otherwise (and with `prefetch: false`)."""
    if invoker is None or not job.prefetch:
        return None
    state = _likely_state(job, trigger)
    if state is None:
        return None
    location = job.page_object(sync_id, 1)
    call = _in_thread(lambda: ask(job, invoker, state, sync_id, location))
    return FirstCall(job, sync_id, state, call)


def _likely_state(job: SyncJob, trigger: str) -> dict[str, Any] | None:
    if trigger == "resync":
        return {}
    try:
        if destination_class(job.destination_url).holds_nothing(job.destination_url):
            return {}
    except Exception:  # noqa: BLE001 - opening the warehouse says what is wrong with it
        return None
    text = _SAVED.get((job.destination_url, job.connector))
    return None if text is None else orjson.loads(text)


def _sorted_json(state: Any) -> bytes | None:
    try:
        return orjson.dumps(state, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):  # an integer beyond 64 bits: no guess
        return None


def _in_thread(work: Any) -> Future:
    """`work()` run in a thread of its own, as a future."""
    future: Future = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(work())
        except BaseException as exc:  # noqa: BLE001 - handed to whoever takes the call
            future.set_exception(exc)

    threading.Thread(target=run, name="first-page", daemon=True).start()
    return future
