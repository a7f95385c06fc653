"""Alert notifications against a real HTTP receiver on 127.0.0.1 (no mocks of urllib).

Every test waits on `Notifier.close()` (which drains the queue) or on a threading.Event
before asserting, never on a sleep.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from structlog.testing import capture_logs

from connector_runtime import events, masking, notify
from connector_runtime.config import Config
from connector_runtime.destination import Alert
from connector_runtime.errors import ConfigError
from connector_runtime.events import EventBus
from connector_runtime.notify import Notifier
from connector_runtime.retry import RetryPolicy

FAST = RetryPolicy(attempts=5, base=0.01, cap=0.01)
GUARD = 10.0  # seconds: only a failing test ever waits this long


class Receiver:
    """A webhook: records each POST and answers with the next of `statuses` (the last repeats).

    `gate`, when given, holds every answer until the test sets it; `arrived` is set as soon
    as a POST has been read.
    """

    def __init__(
        self,
        statuses: tuple[int, ...] = (200,),
        *,
        headers: dict[str, str] | None = None,
        gate: threading.Event | None = None,
    ) -> None:
        self.statuses, self.headers, self.gate = list(statuses), headers or {}, gate
        self.posts: list[dict[str, Any]] = []
        self.arrived = threading.Event()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        serving = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        serving.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(post["body"]) for post in self.posts]

    def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.server.shutdown()
        self.server.server_close()

    def _answer(self, path: str, headers: Any, body: bytes) -> int:
        with self._lock:
            self.posts.append(
                {"path": path, "headers": dict(headers), "body": body, "at": time.monotonic()}
            )
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        self.arrived.set()
        if self.gate is not None:
            self.gate.wait(GUARD)
        return status

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = receiver._answer(self.path, self.headers, body)
                self.send_response(status)
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def receiver() -> Iterator[Any]:
    """`receiver(statuses, ...)` starts a Receiver; all are stopped after the test."""
    started: list[Receiver] = []

    def start(*statuses: int, **options: Any) -> Receiver:
        started.append(Receiver(statuses or (200,), **options))
        return started[-1]

    yield start
    for one in started:
        one.stop()


def make_config(top_level: Sequence[str] = (), **connectors: list[str]) -> Config:
    """A config with the top-level webhooks and, per connector, its own ones."""
    return Config.model_validate(
        {
            "notify": [{"webhook": url} for url in top_level],
            "connectors": {
                name: {
                    "function": {"local": "handler.py"},
                    "notify": [{"webhook": u} for u in urls],
                }
                for name, urls in (connectors or {"demo": []}).items()
            },
        }
    )


def alert_document(connector: str = "demo", **changes: Any) -> dict[str, Any]:
    alert = Alert(
        alert_id="a-1",
        connector=connector,
        sync_id="s-1",
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        severity="error",
        kind="function_error",
        error_type="ValueError",
        message="boom",
        stack_trace=["Traceback ...", "ValueError: boom"],
    )
    return {**alert.document(), **changes}


def publish_and_drain(
    config: Config,
    *alerts: dict[str, Any],
    event: str = "alert.opened",
    retry: RetryPolicy = FAST,
    dashboard_url: str | None = None,
) -> None:
    """Publish the alerts on a fresh bus, then close the Notifier: every POST is done."""
    bus = EventBus()
    with Notifier(config, dashboard_url, retry=retry).attach(bus):
        bus.publish("sync.started", {"sync": {"connector": "demo"}})  # not an alert: ignored
        for alert in alerts:
            bus.publish(event, {"alert": alert})


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"  # nothing listens there any more


def failures(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "notification_failed"]


# -- what arrives ---------------------------------------------------------------------


def test_an_opened_alert_reaches_the_webhook_with_the_documented_body(receiver):
    hook = receiver()
    alert = alert_document()
    publish_and_drain(make_config([hook.url]), alert, dashboard_url="http://127.0.0.1:8765/")

    [post] = hook.posts
    assert post["path"] == "/hook"
    assert post["headers"]["Content-Type"] == "application/json"
    assert json.loads(post["body"]) == {
        "event": "alert.opened",
        "connector": "demo",
        "alert": alert,
        "dashboard_url": "http://127.0.0.1:8765/alerts",
        "text": "connector-runtime: demo failed: function_error (ValueError): boom",
    }


def test_a_resolved_alert_says_the_connector_recovered(receiver):
    hook = receiver()
    alert = alert_document(resolved_at="2026-01-02T04:00:00Z")
    publish_and_drain(make_config([hook.url]), alert, event="alert.resolved")

    [body] = hook.bodies()
    assert body["event"] == "alert.resolved"
    assert body["alert"] == alert
    assert body["dashboard_url"] is None
    assert body["text"] == "connector-runtime: demo recovered: alert function_error resolved"


def test_text_is_one_line_with_the_message_cut(receiver):
    hook = receiver()
    message = "first line\nsecond\tline\r\n" + "x" * 1000
    publish_and_drain(make_config([hook.url]), alert_document(message=message))

    [body] = hook.bodies()
    assert body["alert"]["message"] == message  # the document itself is sent as it is
    text = body["text"]
    assert "\n" not in text and "\r" not in text and "\t" not in text
    assert text.startswith("connector-runtime: demo failed: function_error (ValueError): ")
    assert "first line second line xxx" in text
    assert len(text) < len("connector-runtime: demo failed: function_error (ValueError): ") + 301
    assert text.endswith("…")


def test_per_connector_webhooks_get_only_their_connectors_alerts(receiver):
    everything, demo_only, other_only = receiver(), receiver(), receiver()
    config = make_config([everything.url], demo=[demo_only.url], other=[other_only.url])
    connectors = ("demo", "other", "removed_since")  # the last: not in the config
    publish_and_drain(config, *(alert_document(connector) for connector in connectors))

    assert [b["connector"] for b in everything.bodies()] == ["demo", "other", "removed_since"]
    assert [b["connector"] for b in demo_only.bodies()] == ["demo"]
    assert [b["connector"] for b in other_only.bodies()] == ["other"]


def test_a_webhook_listed_twice_for_an_alert_gets_it_once(receiver):
    hook = receiver()
    publish_and_drain(make_config([hook.url], demo=[hook.url]), alert_document())

    assert len(hook.posts) == 1


# -- retries and failures -------------------------------------------------------------


def test_5xx_is_retried_until_the_webhook_takes_it(receiver):
    hook = receiver(500, 503, 200)
    with capture_logs() as logs:
        publish_and_drain(make_config([hook.url]), alert_document())

    assert len(hook.posts) == 3
    assert all(body == hook.bodies()[0] for body in hook.bodies())
    assert failures(logs) == []


def test_429_waits_at_least_its_retry_after(receiver):
    hook = receiver(429, 200, headers={"Retry-After": "1"})
    retry = RetryPolicy(attempts=3, base=0.001, cap=5.0)  # jitter alone: about nothing
    publish_and_drain(make_config([hook.url]), alert_document(), retry=retry)

    first, second = hook.posts
    assert second["at"] - first["at"] >= 0.95  # a floor, so no upper bound to race


def test_a_4xx_is_not_retried_and_is_logged_once(receiver):
    hook = receiver(400)
    with capture_logs() as logs:
        publish_and_drain(make_config([hook.url]), alert_document())

    assert len(hook.posts) == 1
    [failure] = failures(logs)
    assert failure["status"] == 400
    assert failure["connector"] == "demo" and failure["alert_id"] == "a-1"
    assert failure["webhook"] == f"http://127.0.0.1:{hook.server.server_address[1]}/***"


def test_a_webhook_that_is_down_is_logged_and_nothing_raises():
    url = closed_port_url()
    with capture_logs() as logs:
        retry = RetryPolicy(attempts=3, base=0.01, cap=0.01)
        publish_and_drain(make_config([url]), alert_document(), retry=retry)  # raises nothing

    [failure] = failures(logs)
    assert failure["status"] is None
    assert "unreachable" in failure["error"]
    assert [e["attempt"] for e in logs if e["event"] == "retrying"] == [1, 2]
    assert url not in str(logs)
    errors = [e for e in logs if e["event"] == "event_listener_failed"]
    assert errors == []


def test_publish_returns_while_the_webhook_is_still_answering(receiver):
    gate = threading.Event()
    hook = receiver(gate=gate)  # holds its answer until the test releases it
    bus = EventBus()

    def publish_two_alerts() -> None:
        for alert_id in ("a-1", "a-2"):
            bus.publish("alert.opened", {"alert": alert_document(alert_id=alert_id)})

    with Notifier(make_config([hook.url]), retry=FAST).attach(bus):
        publisher = threading.Thread(target=publish_two_alerts)
        publisher.start()
        try:
            assert hook.arrived.wait(GUARD), "the first notification never arrived"
            publisher.join(GUARD)
            # Both publishes are done while the webhook still holds the first POST.
            assert not publisher.is_alive()
            assert not gate.is_set() and len(hook.posts) == 1
        finally:
            gate.set()

    assert [b["alert"]["alert_id"] for b in hook.bodies()] == ["a-1", "a-2"]


def test_close_is_idempotent_and_stops_listening(receiver):
    hook = receiver()
    bus = EventBus()
    notifier = Notifier(make_config([hook.url]), retry=FAST).attach(bus)
    bus.publish("alert.opened", {"alert": alert_document()})
    notifier.close()
    notifier.close()
    bus.publish("alert.opened", {"alert": alert_document(alert_id="after-close")})

    assert [b["alert"]["alert_id"] for b in hook.bodies()] == ["a-1"]


# -- secrets --------------------------------------------------------------------------


def test_secrets_never_reach_the_webhook_and_its_url_never_reaches_the_logs(receiver, monkeypatch):
    hook = receiver(500, 400)  # one retry, then a failure: both are logged
    token = "T0NOTIFY/B0NOTIFY/hook-secret-9f3a"
    url = f"{hook.url}/services/{token}"
    monkeypatch.setenv("HOOK", url)
    masking.register({"password": "notify-test-pa55word"})
    alert = alert_document(
        message="login as admin:notify-test-pa55word failed\nat " + url,
        stack_trace=["connect(password='notify-test-pa55word')"],
    )
    with capture_logs() as logs:
        publish_and_drain(make_config(["${env:HOOK}"]), alert)

    assert [p["path"] for p in hook.posts] == [f"/hook/services/{token}"] * 2
    body = hook.posts[0]["body"].decode()
    assert "notify-test-pa55word" not in body and token not in body
    assert json.loads(body)["text"] == (
        "connector-runtime: demo failed: function_error (ValueError): "
        "login as admin:*** failed at ***"
    )
    assert {e["event"] for e in logs} >= {"retrying", "notification_failed"}
    assert token not in str(logs) and url not in str(logs)


def test_a_webhook_variable_that_is_not_set_is_a_config_error(monkeypatch):
    monkeypatch.delenv("NOTIFY_TEST_UNSET", raising=False)
    config = make_config([], demo=["${env:NOTIFY_TEST_UNSET}"])
    with pytest.raises(ConfigError, match=r"connectors\.demo\.notify\.0\.webhook.*NOTIFY_TEST"):
        Notifier(config)


# -- start ----------------------------------------------------------------------------


def test_start_returns_none_when_no_webhook_is_configured():
    assert notify.start(make_config()) is None
    assert notify.start(make_config(demo=[], other=[])) is None


def test_start_attaches_to_the_process_bus(receiver):
    hook = receiver()
    notifier = notify.start(make_config([], demo=[hook.url]), "http://dash")
    assert notifier is not None
    with notifier:
        events.bus.publish("alert.opened", {"alert": alert_document()})

    [body] = hook.bodies()
    assert body["dashboard_url"] == "http://dash/alerts"
