"""Fakes for users' own tests: a function that replays pages, no process or network."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .invokers import Invoker
from .jsonio import encode_json


class ScriptedInvoker(Invoker):
    """Answers each call with the next scripted page.

    A page is a response dict, raw bytes (sent as they are), an exception (raised), or a
    callable taking the request and returning one of those. `requests` keeps every
    request received, so a test can assert on the state it was sent.
    """

    def __init__(self, pages: Iterable[Any]) -> None:
        self.pages = list(pages)
        self.requests: list[dict[str, Any]] = []

    def invoke(self, request: dict[str, Any]) -> bytes:
        self.requests.append(request)
        if not self.pages:
            raise AssertionError("ScriptedInvoker ran out of pages")
        page = self.pages.pop(0)
        if isinstance(page, Callable) and not isinstance(page, type):
            page = page(request)
        if isinstance(page, BaseException):
            raise page
        return page if isinstance(page, bytes) else encode_json(page)
