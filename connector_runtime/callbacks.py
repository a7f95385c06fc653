"""Where background functions POST their pages (design §13).

A background function is started without waiting for its answer; its request carries
`callback: {url, token}` and it POSTs its page to that URL with
`Authorization: Bearer <token>`. `board` (one per process) holds the pages being waited
for; `route()` is the one HTTP endpoint that receives them, mounted by `connector serve`
in its API and, without a server, by a `Listener` on loopback that a background
function's invoker opens for its sync.

`POST /api/callbacks/{sync_id}/{call}`, where `call` counts the calls of one sync (the
page's number unless a call was retried). The callback's token authorizes it, not the
serve API's token. Answers:

- 202 the page is taken; the sync applies it as it would an answer;
- 401 no `Authorization: Bearer` header; 403 a wrong token;
- 409 this call's page was posted already (the first one counts);
- 410 nobody waits for it any more (the wait timed out, the call failed first, or the
  sync ended); 404 no such call, or one forgotten long ago.
"""

from __future__ import annotations

import hmac
import secrets
import socket
import threading
import time
from collections import OrderedDict

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .errors import FunctionError

PATH_PREFIX = "/api/callbacks/"
FINISHED_KEPT = 10_000  # calls remembered after their wait, to answer 409/410 rather than 404


class Awaited:
    """One call's page, awaited at its callback URL: the first of the page, the call's
    failure, or its error answer settles it; what comes later is refused or ignored."""

    def __init__(self, sync_id: str, call: int, url: str) -> None:
        self.sync_id, self.call, self.url = sync_id, call, url
        self.token = secrets.token_urlsafe(32)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._outcome: tuple[str, object] | None = None  # ("page" | "answer" | "failure", ...)

    @property
    def callback(self) -> dict[str, str]:
        """What the request carries: `{url, token}`."""
        return {"url": self.url, "token": self.token}

    def take_page(self, page: bytes) -> bool:
        """The POSTed page; False if the call was settled otherwise first."""
        return self._settle("page", page)

    def fail(self, failure: BaseException) -> None:
        """The call ended without its page (a crash, an unreachable host, no page)."""
        self._settle("failure", failure)

    def fail_with(self, answer: bytes) -> None:
        """The function answered with an error shape instead of posting its page."""
        self._settle("answer", answer)

    def wait(self, timeout: float | None = None) -> bytes:
        """The posted page, or the function's error answer; raises the call's failure, or
        `FunctionError` (`Background.Timedout`) when nothing came within `timeout`."""
        if not self._done.wait(timeout):
            self.fail(FunctionError(self._late(timeout), error_type="Background.Timedout"))
        kind, value = self._outcome
        if kind == "failure":
            raise value
        return value

    def settled(self, timeout: float) -> bool:
        """Whether the call is settled, waiting up to `timeout` seconds for it."""
        return self._done.wait(timeout)

    def _settle(self, kind: str, value: object) -> bool:
        with self._lock:
            if self._outcome is not None:
                return False
            self._outcome = (kind, value)
        self._done.set()
        return True

    def _late(self, timeout: float) -> str:
        return (
            f"the background function did not POST its page to its callback within "
            f"{timeout:g} s (its timeout): a background function sends its page to the "
            "request's callback.url with Authorization: Bearer <callback.token>"
        )


class CallbackBoard:
    """The pages this process waits for, and the callers that post them. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[tuple[str, int], Awaited] = {}
        self._finished: OrderedDict[tuple[str, int], tuple[str, str]] = OrderedDict()
        self.served_at: str | None = None  # `connector serve`'s URL for functions, if it runs

    def expect(self, sync_id: str, call: int, base_url: str) -> Awaited:
        """Wait for the page of call `call` of sync `sync_id`, posted under `base_url`."""
        url = f"{base_url.rstrip('/')}{PATH_PREFIX}{sync_id}/{call}"
        awaited = Awaited(sync_id, call, url)
        with self._lock:
            self._waiting[(sync_id, call)] = awaited
        return awaited

    def forget(self, awaited: Awaited) -> None:
        """Stop waiting: a later POST gets 410 (409 once a page came)."""
        key = (awaited.sync_id, awaited.call)
        with self._lock:
            if self._waiting.get(key) is awaited:
                del self._waiting[key]
                self._remember(key, awaited.token, "abandoned")

    def admit(self, sync_id: str, call: int, authorization: str) -> tuple[int, str]:
        """Whether a POST may bring this call's page (202), else the refusal's status and
        words: asked before its body is read, so no stranger makes the server read one."""
        with self._lock:
            return self._verdict(sync_id, call, authorization)[:2]

    def post(self, sync_id: str, call: int, authorization: str, body: bytes) -> tuple[int, str]:
        """Take a POSTed page: the HTTP status to answer and what it says."""
        with self._lock:
            status, said, awaited = self._verdict(sync_id, call, authorization)
            if status != 202:
                return status, said
            if not awaited.take_page(body):
                return 410, f"call {call} ended before its page came"
            del self._waiting[(sync_id, call)]
            self._remember((sync_id, call), awaited.token, "posted")
        return 202, "page received"

    def _verdict(
        self, sync_id: str, call: int, authorization: str
    ) -> tuple[int, str, Awaited | None]:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return 401, "send Authorization: Bearer <callback.token> from the request", None
        awaited = self._waiting.get((sync_id, call))
        expected, outcome = (
            (awaited.token, "waiting") if awaited else self._finished.get((sync_id, call), ("", ""))
        )
        if not outcome:
            return 404, f"no call {call} of sync {sync_id} is known here", None
        if not hmac.compare_digest(token.strip().encode(), expected.encode()):
            return 403, "wrong token: use the callback.token of this call's request", None
        if outcome == "posted":
            return 409, f"the page of call {call} was posted already; the first one counts", None
        if outcome == "abandoned":
            return 410, f"nobody waits for call {call} any more (timed out, failed or ended)", None
        return 202, "", awaited

    def _remember(self, key: tuple[str, int], token: str, outcome: str) -> None:
        self._finished[key] = (token, outcome)
        self._finished.move_to_end(key)
        while len(self._finished) > FINISHED_KEPT:
            self._finished.popitem(last=False)


board = CallbackBoard()


def route(callbacks: CallbackBoard | None = None) -> Route:
    """`POST /api/callbacks/{sync_id}/{call}`, taking pages for `callbacks` (the board)."""
    callbacks = callbacks or board

    async def receive(request: Request) -> Response:
        where = request.path_params["sync_id"], request.path_params["call"]
        authorization = request.headers.get("authorization", "")
        status, said = callbacks.admit(*where, authorization)
        if status == 202:
            status, said = callbacks.post(*where, authorization, await request.body())
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        key = "status" if status == 202 else "error"
        return JSONResponse({key: said}, status_code=status, headers=headers)

    return Route(PATH_PREFIX + "{sync_id}/{call:int}", receive, methods=["POST"])


class Listener:
    """The callback route alone, on a free loopback port, for one sync outside `serve`."""

    def __init__(self, callbacks: CallbackBoard | None = None) -> None:
        import uvicorn

        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(
            Starlette(routes=[route(callbacks)]), log_config=None, access_log=False, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="callbacks",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._socket.close()
