"""HttpInvoker against a real HTTP function host on loopback, alone and in the sync loop.

`FunctionHost` is a `ThreadingHTTPServer` on 127.0.0.1: each path routes to a Python
handler taking the request JSON and returning a page (or a `Reply`), and `script` makes
chosen calls of a path answer otherwise (429, 503, a hang-up, a slow answer...).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import duckdb
import pytest
from conftest import serving
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from connector_runtime import __version__, errors
from connector_runtime.invokers.http import HttpInvoker
from connector_runtime.retry import RetryPolicy
from connector_runtime.sync import SyncJob, run_sync

REQUEST = {
    "agent": "connector-runtime/test",
    "state": {"cursor": 7},
    "secrets": {},
    "sync_id": "s-1",
}
PAGE = {"state": {"cursor": 8}, "insert": {"t": [{"id": 1}]}, "hasMore": False}
JSON = {"Content-Type": "application/json"}
TOKEN = "s3cr3t-t0ken-value"


@dataclass
class Reply:
    """One scripted answer; `body` is bytes, text, or JSON-encoded; `delay` s before it."""

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


HANG_UP = Reply(status=0)  # close the connection without answering


@dataclass
class Call:
    path: str
    headers: dict[str, str]  # names lowercased
    request: dict[str, Any]


class FunctionHost:
    """A function host on 127.0.0.1; `calls` records every POST it received."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Callable[[dict], Any]] = {}
        self.scripts: dict[str, dict[int, Reply]] = defaultdict(dict)
        self.calls: list[Call] = []
        self.lock, self.stopping = threading.Lock(), threading.Event()
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.host = self
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        serve = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        serve.start()

    def url(self, path: str = "/fn", host: str = "127.0.0.1") -> str:
        scheme = "https" if isinstance(self.server.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://{host}:{self.server.server_address[1]}{path}"

    def script(self, path: str, replies: dict[int, Reply]) -> None:
        """Call number n (from 1) of `path` gets `replies[n]` instead of its handler's page."""
        self.scripts[path].update(replies)

    def calls_to(self, path: str = "/fn") -> list[Call]:
        return [call for call in self.calls if call.path == path]

    def answer(self, call: Call) -> Reply:
        with self.lock:
            self.calls.append(call)
            scripted = self.scripts[call.path].get(len(self.calls_to(call.path)))
        if scripted is not None:
            return scripted
        if call.path not in self.routes:
            return Reply(404, {"message": f"no function at {call.path}"}, JSON)
        page = self.routes[call.path](call.request)
        return page if isinstance(page, Reply) else Reply(200, page, JSON)

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that gave up: expected here
        pass


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        host: FunctionHost = self.server.host
        body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = host.answer(Call(self.path, headers, json.loads(body)))
        host.stopping.wait(reply.delay)
        if reply is HANG_UP:
            return
        payload = reply.body
        if not isinstance(payload, bytes):
            payload = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def host():
    function_host = FunctionHost()
    function_host.routes["/fn"] = lambda request: PAGE
    yield function_host
    function_host.close()


def invoke(url: str, request: dict = REQUEST, **options: Any) -> dict:
    with HttpInvoker(url, **options) as invoker:
        return json.loads(invoker.invoke(request))


def answering(host: FunctionHost, reply: Reply, **options: Any) -> Any:
    """Invoke a function that answers `reply`; return the answer or the error raised."""
    host.routes["/fn"] = lambda request: reply
    try:
        return invoke(host.url(), **options)
    except errors.ConnectorRuntimeError as exc:
        return exc


# -- answers ---------------------------------------------------------------------------


def test_request_and_headers_arrive_as_sent_and_the_page_comes_back(host):
    host.routes["/fn"] = lambda request: {**PAGE, "state": {"echo": request}}
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Api-Key": "k-123"}

    answer = invoke(host.url(), headers=headers, timeout=5)

    assert answer["state"] == {"echo": REQUEST}
    (call,) = host.calls_to()
    assert call.request == REQUEST
    assert call.headers["authorization"] == f"Bearer {TOKEN}"
    assert call.headers["x-api-key"] == "k-123"
    assert call.headers["content-type"] == "application/json"
    assert call.headers["user-agent"] == f"connector-runtime/{__version__}"


@pytest.mark.parametrize(
    "headers, body",
    [
        pytest.param({"Content-Type": "application/json; charset=utf-8"}, PAGE, id="json+charset"),
        pytest.param({"Content-Type": "application/vnd.api+json"}, PAGE, id="+json"),
        pytest.param({}, PAGE, id="no-content-type+json-body"),
        pytest.param({"Content-Type": "text/plain;charset=UTF-8"}, PAGE, id="fetch-default"),
    ],
)
def test_json_answers_are_returned(host, headers, body):
    assert answering(host, Reply(200, body, headers)) == PAGE


@pytest.mark.parametrize(
    "headers, body, named",
    [
        pytest.param(
            {"Content-Type": "text/html"}, "<html><h1>Proxy login</h1>", "text/html", id="html"
        ),
        pytest.param({}, "Service ready", "no content type", id="no-content-type+text"),
        pytest.param({"Content-Type": "text/plain"}, "OK", "text/plain", id="text-not-json"),
    ],
)
def test_a_2xx_that_is_not_json_fails_saying_what_came_back(host, headers, body, named):
    failure = answering(host, Reply(200, body, headers))

    assert isinstance(failure, errors.InvokeFailed)
    assert "200" in failure.message and named in failure.message
    assert body[:20] in failure.message


def test_the_body_excerpt_is_short(host):
    failure = answering(host, Reply(200, "<p>" + "x" * 5000, {"Content-Type": "text/html"}))

    assert isinstance(failure, errors.InvokeFailed)
    assert "<p>xxx" in failure.message and len(failure.message) < 400


# -- status classification -------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, retry_after",
    [
        pytest.param(
            Reply(429, {"message": "slow down"}, {**JSON, "Retry-After": "3"}), 3.0, id="429"
        ),
        pytest.param(Reply(503, "", {"Retry-After": "7"}), 7.0, id="503+retry-after"),
        pytest.param(Reply(500, "boom"), None, id="500"),
        pytest.param(Reply(502, {"message": "Internal server error"}, JSON), None, id="502"),
        pytest.param(Reply(504, "gateway timeout"), None, id="504"),
        pytest.param(Reply(408, ""), None, id="408"),
        pytest.param(Reply(429, "", {"Retry-After": "soon"}), None, id="429+bad-retry-after"),
    ],
)
def test_throttling_and_server_errors_are_transient(host, reply, retry_after):
    failure = answering(host, reply)

    assert isinstance(failure, errors.TransientInvokeError)
    assert failure.retry_after == retry_after
    assert str(reply.status) in str(failure)


def test_retry_after_as_an_http_date(host):
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)

    failure = answering(host, Reply(429, "", {"Retry-After": when}))

    assert isinstance(failure, errors.TransientInvokeError)
    assert 100 < failure.retry_after <= 120


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 413, 422])
def test_client_errors_fail_at_once(host, status):
    failure = answering(host, Reply(status, {"detail": "nope, not like this"}, JSON))

    assert isinstance(failure, errors.InvokeFailed)
    assert str(status) in failure.message and "nope, not like this" in failure.message
    assert ("hasMore" in failure.message) == (status == 413)


@pytest.mark.parametrize("status", [400, 500, 502])
def test_an_error_shaped_body_is_the_functions_answer(host, status):
    error = {"errorMessage": "KeyError: 'id'", "errorType": "KeyError", "stackTrace": []}

    assert answering(host, Reply(status, error, JSON)) == error
    assert len(host.calls_to()) == 1


def test_429_is_throttling_even_with_an_error_shaped_body(host):
    failure = answering(host, Reply(429, {"errorMessage": "Rate exceeded"}, JSON))

    assert isinstance(failure, errors.TransientInvokeError)


# -- transport failures ----------------------------------------------------------------


def test_connection_refused_is_transient():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there

    with pytest.raises(errors.TransientInvokeError, match="could not be reached"):
        invoke(f"http://127.0.0.1:{port}/fn", timeout=2)


def test_a_hang_up_without_an_answer_is_transient(host):
    assert isinstance(answering(host, HANG_UP), errors.TransientInvokeError)


def test_a_timeout_is_transient(host):
    started = time.monotonic()

    failure = answering(host, Reply(200, PAGE, JSON, delay=2.0), timeout=0.5)

    assert isinstance(failure, errors.TransientInvokeError)
    assert "0.5" in str(failure)
    assert time.monotonic() - started < 1.5


def test_a_url_that_is_not_http_fails_at_once():
    with pytest.raises(errors.InvokeFailed, match="not an http"):
        HttpInvoker("ftp://example.net/fn")


# -- secrets stay out of messages ------------------------------------------------------


@pytest.mark.parametrize("status", [401, 503, 200])
def test_header_values_never_appear_in_messages(host, status):
    echo = f"token Bearer {TOKEN} was refused; key k-123456 too"
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Api-Key": "k-123456"}

    failure = answering(host, Reply(status, echo, {"Content-Type": "text/html"}), headers=headers)

    assert isinstance(failure, errors.TransientInvokeError | errors.InvokeFailed)
    assert "was refused" in str(failure)
    assert TOKEN not in str(failure) and "k-123456" not in str(failure)


def test_the_query_string_stays_out_of_messages_even_when_echoed(host):
    with pytest.raises(errors.InvokeFailed) as failed:
        invoke(host.url("/nowhere") + "?code=azure-function-key")  # the 404 echoes the path

    assert "/nowhere" in failed.value.message and "no function at" in failed.value.message
    assert "azure-function-key" not in failed.value.message


# -- redirects -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [307, 308])
def test_307_and_308_within_the_origin_resend_the_post(host, status):
    host.routes["/old"] = lambda request: Reply(status, "", {"Location": "/fn"})

    assert invoke(host.url("/old"), headers={"X-Api-Key": "k-1"}) == PAGE
    (call,) = host.calls_to("/fn")
    assert call.request == REQUEST and call.headers["x-api-key"] == "k-1"


@pytest.mark.parametrize("status", [301, 302, 303])
def test_redirects_that_would_turn_the_post_into_a_get_fail(host, status):
    host.routes["/old"] = lambda request: Reply(status, "", {"Location": "/fn"})

    with pytest.raises(errors.InvokeFailed, match="307/308") as failed:
        invoke(host.url("/old"))
    assert str(status) in failed.value.message and "/fn" in failed.value.message
    assert host.calls_to("/fn") == []


def test_a_redirect_to_another_origin_is_not_followed(host):
    elsewhere = host.url("/fn", host="localhost")  # same server, another origin
    host.routes["/old"] = lambda request: Reply(307, "", {"Location": elsewhere})

    with pytest.raises(errors.InvokeFailed, match="same origin"):
        invoke(host.url("/old"), headers={"Authorization": f"Bearer {TOKEN}"})
    assert host.calls_to("/fn") == []


# -- TLS -------------------------------------------------------------------------------


@pytest.fixture
def tls_host(tmp_path):
    """A function host on https://127.0.0.1 with a self-signed certificate at `cert_file`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    function_host = FunctionHost(tls=context)
    function_host.routes["/fn"] = lambda request: PAGE
    function_host.cert_file = cert_file
    yield function_host
    function_host.close()


def test_an_untrusted_certificate_fails_at_once(tls_host):
    with pytest.raises(errors.InvokeFailed, match="TLS verification failed"):
        invoke(tls_host.url(), timeout=5)
    assert tls_host.calls == []


def test_a_trusted_certificate_or_no_verification_answers(tls_host, monkeypatch):
    assert invoke(tls_host.url(), timeout=5, verify_tls=False) == PAGE
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_host.cert_file))
    assert invoke(tls_host.url(), timeout=5) == PAGE


# -- through the sync loop -------------------------------------------------------------


def paged(pages: int, per_page: int = 4) -> Callable[[dict], dict]:
    """A function that sends `pages` pages of `per_page` rows, by its `page` cursor."""

    def handler(request: dict) -> dict:
        number = request["state"].get("page", 0)
        ids = range(number * per_page, (number + 1) * per_page)
        return {
            "state": {"page": number + 1},
            "insert": {"items": [{"id": i, "name": f"item {i}"} for i in ids]},
            "schema": {"items": {"primary_key": ["id"]}},
            "hasMore": number + 1 < pages,
        }

    return handler


@contextmanager
def warehouse(tmp_path) -> Iterator[duckdb.DuckDBPyConnection]:
    """The sync's DuckDB file, read-only, times in UTC."""
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()


def sync_over_http(tmp_path, url: str):
    job = SyncJob(
        "demo",
        "demo",
        f"duckdb:///{tmp_path}/w.duckdb",
        invoker=lambda: HttpInvoker(url, timeout=5),
        retry=RetryPolicy(attempts=5, base=0.01, cap=0.05),
    )
    return run_sync(job)


def test_a_throttled_flaky_sync_lands_every_row_once(host, tmp_path):
    host.routes["/fn"] = paged(3)
    host.script(
        "/fn",
        {
            1: Reply(429, {"message": "slow down"}, {**JSON, "Retry-After": "0"}),
            3: Reply(503, "upstream unavailable"),
            4: HANG_UP,
        },
    )

    outcome = sync_over_http(tmp_path, host.url())

    assert outcome.record.status == "succeeded" and outcome.record.pages == 3
    states = [call.request["state"] for call in host.calls_to()]
    assert states == [{}] * 2 + [{"page": 1}] * 3 + [{"page": 2}]  # 429; then 503, hang-up
    assert len({call.request["sync_id"] for call in host.calls}) == 1
    with warehouse(tmp_path) as con:
        rows = con.execute("SELECT id, count(*) FROM demo.items GROUP BY id ORDER BY id")
        assert rows.fetchall() == [(i, 1) for i in range(12)]
        synced = con.execute("SELECT DISTINCT _fivetran_synced FROM demo.items").fetchall()
        assert synced == [(outcome.record.started_at,)]
        assert con.execute("SELECT count(*) FROM connector_runtime.alerts").fetchone() == (0,)


def test_a_400_fails_the_sync_at_once_with_an_invoke_failed_alert(host, tmp_path):
    host.routes["/fn"] = paged(3)
    host.script("/fn", {2: Reply(400, {"message": "bad cursor"}, JSON)})

    outcome = sync_over_http(tmp_path, host.url())

    assert outcome.record.status == "failed" and outcome.record.pages == 1
    page_two = [call for call in host.calls_to() if call.request["state"] == {"page": 1}]
    assert len(page_two) == 1
    with warehouse(tmp_path) as con:
        alerts = con.execute("SELECT kind, message FROM connector_runtime.alerts").fetchall()
        assert con.execute("SELECT count(*) FROM demo.items").fetchone() == (4,)
    assert len(alerts) == 1 and alerts[0][0] == "invoke_failed"
    assert "400" in alerts[0][1] and "bad cursor" in alerts[0][1]


def test_an_error_shaped_500_is_a_function_error_not_retried(host, tmp_path):
    host.routes["/fn"] = lambda request: Reply(
        500, {"errorMessage": "API token expired", "errorType": "AuthError"}, JSON
    )

    outcome = sync_over_http(tmp_path, host.url())

    assert outcome.record.status == "failed" and len(host.calls) == 1
    with warehouse(tmp_path) as con:
        alerts = con.execute(
            "SELECT kind, error_type, message FROM connector_runtime.alerts"
        ).fetchall()
    assert alerts == [("function_error", "AuthError", "API token expired")]


def test_a_function_that_stays_down_fails_after_every_attempt(host, tmp_path):
    host.routes["/fn"] = lambda request: Reply(503, "down for maintenance")

    outcome = sync_over_http(tmp_path, host.url())

    assert outcome.record.status == "failed" and len(host.calls) == 5
    with warehouse(tmp_path) as con:
        ((kind, message),) = con.execute(
            "SELECT kind, message FROM connector_runtime.alerts"
        ).fetchall()
    assert kind == "invoke_failed"
    # it was reached, and said no: the alert says so, not "could not be reached"
    assert message == (
        f"{host.url()} answered 503 Service Unavailable after 5 attempts (no content type): "
        "down for maintenance"
    )


def test_a_function_that_cannot_be_reached_says_so_after_every_attempt(tmp_path):
    with socket.socket() as closed:  # a port nothing listens on: refused at once
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/fn"

    outcome = sync_over_http(tmp_path, url)

    assert outcome.record.status == "failed"
    assert outcome.alert.kind == "invoke_failed"
    assert outcome.alert.message.startswith(
        f"the function could not be reached after 5 attempts: {url} could not be reached: "
        "ConnectionRefusedError"
    )


class _KeepAliveHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # connections stay open between requests

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.peers.append(self.client_address)
        body = json.dumps(PAGE).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if len(self.server.peers) in self.server.close_after:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def keep_alive_host(close_after=()) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeepAliveHandler)
    server.peers, server.close_after = [], set(close_after)
    with serving(server):
        yield server


def test_calls_reuse_one_connection_while_the_host_keeps_it_open():
    with keep_alive_host(close_after={2}) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/fn"
        with HttpInvoker(url, timeout=5) as invoker:
            for _ in range(4):
                assert json.loads(invoker.invoke(REQUEST)) == PAGE
    first, second, third, fourth = server.peers
    assert first == second  # kept open
    assert third == fourth != second  # the host said close after the second: a new one


def test_a_connection_the_host_dropped_while_idle_is_replaced_without_a_failure():
    with keep_alive_host() as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/fn"
        with HttpInvoker(url, timeout=5) as invoker:
            assert json.loads(invoker.invoke(REQUEST)) == PAGE
            invoker._connection.sock.shutdown(socket.SHUT_RDWR)  # as an idle timeout would
            assert json.loads(invoker.invoke(REQUEST)) == PAGE
    assert len(server.peers) == 2 and server.peers[0] != server.peers[1]
