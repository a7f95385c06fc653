"""Fakes for users' own tests: a function that replays pages, no process or network."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .invokers import Invoker, Stream
from .jsonio import encode_json


class ScriptedInvoker(Invoker):
    """Answers each call with the next scripted page.

    A page is a response dict, raw bytes (sent as they are), an exception (raised), a
    list (a streamed answer: each item a part, as a dict or bytes, or an exception raised
    when the stream reaches it), or a callable taking the request and returning one of
    those. `requests` keeps every request received, so a test can assert on the state it
    was sent; `streams` every stream answered, to see whether it was read to its end.
    """

    def __init__(self, pages: Iterable[Any]) -> None:
        self.pages = list(pages)
        self.requests: list[dict[str, Any]] = []
        self.streams: list[Stream] = []

    def invoke(self, request: dict[str, Any]) -> bytes | Stream:
        self.requests.append(request)
        if not self.pages:
            raise AssertionError("ScriptedInvoker ran out of pages")
        page = self.pages.pop(0)
        if isinstance(page, Callable) and not isinstance(page, type):
            page = page(request)
        if isinstance(page, BaseException):
            raise page
        if isinstance(page, list):
            self.streams.append(Stream(_parts(page), "the scripted function"))
            return self.streams[-1]
        return page if isinstance(page, bytes) else encode_json(page)


def _parts(parts: list[Any]) -> Iterable[bytes]:
    for part in parts:
        if isinstance(part, BaseException):
            raise part
        yield part if isinstance(part, bytes) else encode_json(part)
