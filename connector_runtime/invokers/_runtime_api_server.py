"""The HTTP side of AWS Lambda's Runtime API, served on loopback (`runtime_api` uses it).

`RuntimeApiServer(host)` listens on a free 127.0.0.1 port, a thread per connection, and
passes each request on to its `RuntimeApiHost`:

- `GET /2018-06-01/runtime/invocation/next` waits for `host.next_event()` and sends that
  event with Lambda's headers (a request id, the deadline, the function's ARN, a trace id);
- `POST …/invocation/{id}/response`: `host.answered(id, body, None)`;
- `POST …/invocation/{id}/error`: `host.answered(id, *posted_error(...))`;
- `POST …/init/error`: `host.init_failed(*posted_error(...))`.

Answers are 202 `{"status": "OK"}`; an id no call is waiting for gets 400
`InvalidRequestID`, any other path 404. A connection from another user's process is
closed unanswered (on Linux, which tells a connection's owner; elsewhere any is served). A body may come with a length or chunked (a
streamed response is read whole).
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from secrets import token_hex
from typing import Any, Protocol

from connector_runtime import errors, masking
from connector_runtime.jsonio import encode_json

ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"
_NETLINK_SOCK_DIAG = 4  # linux/netlink.h
_SOCK_DIAG_BY_FAMILY = 20  # linux/sock_diag.h
_UID_OFFSET = 16 + 4 + 48 + 12  # nlmsghdr, inet_diag_msg's family..retrans, id, 3 counters
_ROUTE = re.compile(
    r"^/2018-06-01/runtime/(?:invocation/(next|[^/]+/(?:response|error))|init/error)$"
)


class Event(Protocol):
    request_id: str
    event: bytes  # the request, as JSON

    @property
    def deadline_ms(self) -> int: ...


class RuntimeApiHost(Protocol):
    """What the server serves: one function's process and the call it is on."""

    function_name: str
    function_arn: str
    log: Any

    def next_event(self) -> Event | None:
        """Block until there is an event for the process; None: stop waiting, it is ending."""

    def answered(self, request_id: str, answer: bytes | None, failure: Exception | None) -> bool:
        """The call `request_id` ended with `answer` or `failure`; False if none is waiting."""

    def init_failed(self, answer: bytes | None, failure: Exception | None) -> None:
        """The process could not start; the call waiting ends with `answer` or `failure`."""


def posted_error(
    body: bytes, error_type: str | None, function_name: str, *, init: bool
) -> tuple[bytes | None, Exception | None]:
    """A posted error as (answer, failure): the answer if it has Lambda's error shape
    (`errorType` from the header if it has none; `Runtime.InitError` for an init error)."""
    try:
        error = json.loads(body)
    except ValueError:
        error = None
    error_type = error_type or ("Runtime.InitError" if init else None)
    if isinstance(error, dict) and "errorMessage" in error:
        if error_type and not error.get("errorType"):
            error["errorType"] = error_type
        return encode_json(error), None
    text = masking.excerpt(body.decode(errors="replace"), 2000) or "no message"
    what = "failed to start" if init else "reported an error"
    failure = errors.FunctionError(
        f"{function_name} {what}: {text}", error_type=error_type or "Function.Unhandled"
    )
    return None, failure


class RuntimeApiServer(ThreadingHTTPServer):
    """The Runtime API on a free loopback port, for one `host`."""

    daemon_threads = True

    def __init__(self, host: RuntimeApiHost) -> None:
        super().__init__(("127.0.0.1", 0), _RuntimeApiHandler)
        self.host = host

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Only this user's processes may connect: an event carries the connector's secrets."""
        uid = _peer_uid(client_address[1], self.server_address[1])
        if uid is None or uid == os.getuid():
            return True
        self.host.log.warning("runtime_api_refused", uid=uid, detail="another user's process")
        return False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A dropped connection (the process was killed, or exited) is reported by its exit;
        anything else that went wrong with a request is logged, not printed."""
        error = sys.exc_info()[1]
        level = "debug" if isinstance(error, OSError) else "warning"
        getattr(self.host.log, level)("runtime_api_request_failed", error=repr(error))


class _RuntimeApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and `Expect: 100-continue` as curl sends it
    disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms wait between
    server: RuntimeApiServer

    def do_GET(self) -> None:
        if self.path != "/2018-06-01/runtime/invocation/next":
            return self._reply(
                404, {"errorMessage": f"no such path {self.path}", "errorType": "NotFound"}
            )
        call = self.server.host.next_event()
        if call is None:  # stopping: the process is being ended
            self.close_connection = True
            return None
        self._send(200, call.event, self._event_headers(call))
        return None

    def do_POST(self) -> None:
        body = self._body()
        route = _ROUTE.match(self.path)
        host = self.server.host
        error_type = self.headers.get(ERROR_TYPE_HEADER)
        if route is None or route[1] == "next":
            return self._reply(
                404, {"errorMessage": f"no such path {self.path}", "errorType": "NotFound"}
            )
        if route[1] is None:  # init/error
            host.init_failed(*posted_error(body, error_type, host.function_name, init=True))
            return self._reply(202, {"status": "OK"})
        request_id, _, outcome = route[1].partition("/")
        if outcome == "response":
            answer, failure = body, None
        else:
            answer, failure = posted_error(body, error_type, host.function_name, init=False)
        if not host.answered(request_id, answer, failure):
            message = f"no invocation {request_id} is waiting for an answer"
            return self._reply(400, {"errorMessage": message, "errorType": "InvalidRequestID"})
        return self._reply(202, {"status": "OK"})

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        """Requests are not logged: the function's own output is."""

    def _event_headers(self, call: Event) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": call.request_id,
            "Lambda-Runtime-Deadline-Ms": str(call.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": self.server.host.function_arn,
            "Lambda-Runtime-Trace-Id": _trace_id(),
        }

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunked_body()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _chunked_body(self) -> bytes:
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers, if any
            pass
        return b"".join(chunks)

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the process went away mid-reply; its exit is reported
            self.close_connection = True


def _peer_uid(peer_port: int, server_port: int) -> int | None:
    """Who owns the loopback connection from `peer_port` to `server_port` (-1: no one now),
    asked of the kernel by sock_diag (as `ss` does); None where it cannot be asked."""
    loopback = socket.inet_aton("127.0.0.1") + bytes(12)
    no_cookie = struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)
    sockid = struct.pack(">HH", peer_port, server_port) + loopback + loopback + no_cookie
    request = struct.pack("=BBxxI", socket.AF_INET, socket.IPPROTO_TCP, 0xFFFFFFFF) + sockid
    header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, 1, 1, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as kernel:
            kernel.settimeout(1.0)
            kernel.send(header + request)
            reply = kernel.recv(4096)
    except (AttributeError, OSError):  # not Linux, or sock_diag not allowed here
        return None
    if struct.unpack_from("=H", reply, 4)[0] != _SOCK_DIAG_BY_FAMILY:
        return -1  # an error reply: no such connection (any more)
    return struct.unpack_from("=I", reply, _UID_OFFSET)[0]


def _trace_id() -> str:
    """An X-Ray trace header as Lambda sends one (not sampled: nothing is traced)."""
    return f"Root=1-{int(time.time()):08x}-{token_hex(12)};Parent={token_hex(8)};Sampled=0"
