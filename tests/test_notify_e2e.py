"""Alert notifications end to end: the real `connector` CLI in a subprocess, a real
handler, a real DuckDB warehouse and a real webhook receiver on 127.0.0.1.

`connector run` drains its notifier before it exits (`Notifier.close()`), so once the
command has returned every POST it made has reached the receiver. Under `connector
serve` the test waits on the receiver's own condition ("n POSTs arrived"), never on a
sleep; the guard timeouts are only reached by a failing test.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

GUARD = 30.0  # seconds: only a failing test waits this long
CLOSE_TIMEOUT = 10.0  # Notifier.close(timeout=10.0): how long `run` waits for a webhook

HANDLER = '''\
import pathlib

HERE = pathlib.Path(__file__).parent


def handler(request):
    """Fails while the file `fail` exists (its text is the message), else syncs a row."""
    fail = HERE / "fail"
    if fail.exists():
        raise ValueError(fail.read_text())
    return {"state": {"ok": True}, "insert": {"items": [{"id": 1}]}}
'''
MESSAGE = "the API refused the token\n  (HTTP 401: invalid_token)"
ONE_LINE = "the API refused the token (HTTP 401: invalid_token)"


class Receiver:
    """A webhook on 127.0.0.1: records each POST and answers the next of `statuses` (the
    last one repeats); `wait_for(n)` returns once n POSTs have arrived."""

    def __init__(self, statuses: tuple[int, ...]) -> None:
        self.statuses = list(statuses)
        self.posts: list[dict[str, Any]] = []
        self.arrived = threading.Condition()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def bodies(self) -> list[dict[str, Any]]:
        with self.arrived:
            return [json.loads(post["body"]) for post in self.posts]

    def wait_for(self, count: int, timeout: float = GUARD) -> list[dict[str, Any]]:
        """The bodies once `count` POSTs have arrived (AssertionError after `timeout`)."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.posts) >= count, timeout):
                raise AssertionError(f"{len(self.posts)} POSTs within {timeout}s, not {count}")
        return self.bodies()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.arrived:
                    receiver.posts.append({"path": self.path, "body": body})
                    statuses = receiver.statuses
                    status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
                    receiver.arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def receiver() -> Iterator[Any]:
    """`receiver(*statuses)` starts a Receiver (200 by default); stopped after the test."""
    started: list[Receiver] = []

    def start(*statuses: int) -> Receiver:
        started.append(Receiver(statuses or (200,)))
        return started[-1]

    yield start
    for one in started:
        one.stop()


def closed_port_url() -> str:
    """A webhook URL on a loopback port nothing listens on: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def notifying(made, webhook: str, **connector_options: Any):
    """The project's config with a top-level `notify: [{webhook: ...}]`."""
    document = yaml.safe_load(made.config.read_text())
    document["notify"] = [{"webhook": webhook}]
    document["connectors"][made.name].update(connector_options)
    made.config.write_text(yaml.safe_dump(document, sort_keys=False))
    return made


def failing(made, message: str = MESSAGE) -> None:
    (made.root / "fail").write_text(message)


def fixed(made) -> None:
    (made.root / "fail").unlink()


def timed_run(made):
    started = time.monotonic()
    result = made.run()
    return result, time.monotonic() - started


def assert_opened(body: dict, made) -> dict:
    """An alert.opened notification for the project's one open alert; the alert."""
    [stored] = [a for a in made.alerts() if not a["resolved"]]
    alert = body["alert"]
    assert body["event"] == "alert.opened"
    assert body["connector"] == alert["connector"] == "demo"
    assert alert["alert_id"] == stored["alert_id"] and alert["sync_id"] == stored["sync_id"]
    assert (alert["kind"], alert["error_type"]) == ("function_error", "ValueError")
    assert alert["message"] == stored["message"] == MESSAGE
    assert alert["resolved_at"] is None
    assert (
        body["text"] == f"connector-runtime: demo failed: function_error (ValueError): {ONE_LINE}"
    )
    assert "\n" not in body["text"]
    return alert


def assert_resolved(body: dict, opened: dict) -> None:
    assert body["event"] == "alert.resolved"
    assert body["connector"] == "demo"
    assert body["alert"]["alert_id"] == opened["alert_id"]
    assert body["alert"]["resolved_at"] is not None
    assert body["text"] == "connector-runtime: demo recovered: alert function_error resolved"


# -- connector run ----------------------------------------------------------------------


def test_run_notifies_once_when_an_alert_opens_and_once_when_it_resolves(project, receiver):
    hook = receiver()
    made = notifying(project(HANDLER), hook.url)
    failing(made)

    failed = made.run()
    assert failed.returncode == 1, failed.stderr
    [body] = hook.bodies()
    opened = assert_opened(body, made)

    fixed(made)
    succeeded = made.run()
    assert succeeded.returncode == 0, succeeded.stderr
    assert len(hook.posts) == 2
    assert_resolved(hook.bodies()[1], opened)
    assert all(post["path"] == "/hook" for post in hook.posts)

    again = made.run()  # nothing opens or resolves: nothing is sent
    assert again.returncode == 0, again.stderr
    assert len(hook.posts) == 2


def test_a_webhook_answering_500_then_200_gets_it_and_the_sync_is_unaffected(project, receiver):
    hook = receiver(500, 200, 500, 200)
    made = notifying(project(HANDLER), hook.url)
    failing(made)

    failed = made.run()
    assert failed.returncode == 1, failed.stderr
    assert len(hook.posts) == 2  # the 500, then the same notification again
    first, second = hook.bodies()
    assert first == second
    opened = assert_opened(second, made)

    fixed(made)
    succeeded = made.run()
    assert succeeded.returncode == 0, succeeded.stderr
    assert len(hook.posts) == 4
    assert_resolved(hook.bodies()[3], opened)
    assert [s["status"] for s in made.syncs()] == ["failed", "succeeded"]
    for result in (failed, succeeded):
        assert "Traceback" not in result.stderr
        assert "notification_failed" not in result.stderr


@pytest.mark.slow  # a webhook retried with its backoff: about 20 s
def test_a_webhook_that_is_down_changes_neither_the_exit_code_nor_the_outcome(project):
    url = closed_port_url()
    made = notifying(project(HANDLER), url)
    failing(made)

    failed, failed_seconds = timed_run(made)
    fixed(made)
    succeeded, succeeded_seconds = timed_run(made)

    assert failed.returncode == 1 and succeeded.returncode == 0, failed.stderr
    assert [s["status"] for s in made.syncs()] == ["failed", "succeeded"]
    assert [a["resolved"] for a in made.alerts()] == [True]
    for result, seconds in ((failed, failed_seconds), (succeeded, succeeded_seconds)):
        assert "Traceback" not in result.stdout + result.stderr
        # retried for at most the notifier's close() timeout, then given up with one line
        assert seconds < CLOSE_TIMEOUT + 15, seconds
        gave_up = ("notification_failed", "notifications_abandoned")
        assert any(word in result.stderr for word in gave_up), result.stderr
        assert url not in result.stderr and "/hook" not in result.stderr  # the path is secret


# -- connector serve --------------------------------------------------------------------


class Serving:
    """`connector serve` in the background: its JSON log lines as they come, its API."""

    def __init__(self, made) -> None:
        self.made = made
        self.process = made.start("serve")
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.wait_for_log("serving")
        info = json.loads((made.root / ".connector-runtime" / "server.json").read_text())
        self.url, self.token = info["url"], info["token"]

    def _read(self) -> None:
        for line in self.process.stderr:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def events(self) -> list[dict]:
        """serve's log lines so far; off a terminal each is a JSON object."""
        with self.changed:
            return [_parsed(line) for line in self.lines]

    def wait_for_log(self, event: str, **fields: Any) -> dict:
        """The first log entry `event` with `fields`, waiting for it (or serve's exit)."""

        def found() -> dict | None:
            for entry in map(_parsed, self.lines):
                if entry.get("event") == event and all(
                    entry.get(k) == v for k, v in fields.items()
                ):
                    return entry
            return None

        with self.changed:
            ok = self.changed.wait_for(
                lambda: found() is not None or self.process.poll() is not None, GUARD
            )
            entry = found()
        assert ok and entry is not None, f"no {event} {fields} in serve's log: {self.lines}"
        return entry

    def call(self, method: str, path: str) -> tuple[int, Any]:
        request = urllib.request.Request(self.url + path, data=b"" if method == "POST" else None)
        request.method = method
        request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=GUARD) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        if not body:
            return status, None
        try:
            return status, json.loads(body)
        except ValueError:  # /metrics is text
            return status, body.decode()

    def stop(self) -> int:
        self.process.terminate()
        try:
            code = self.process.wait(GUARD)
        except Exception:
            self.process.kill()
            raise
        self.reader.join(GUARD)  # every line up to the exit
        return code


def _parsed(line: str) -> dict:
    try:
        return json.loads(line)
    except ValueError:
        return {"event": None, "line": line}


def open_alerts_metric(serving: Serving) -> str:
    status, text = serving.call("GET", "/metrics")
    assert status == 200
    [line] = [
        x for x in text.splitlines() if x.startswith('connector_alerts_open{connector="demo"}')
    ]
    return line.split()[-1]


def test_serve_notifies_alerts_of_scheduled_and_api_syncs_and_of_an_api_resolve(project, receiver):
    hook = receiver()
    # an interval schedule fires soon after serve starts, then not for an hour
    made = notifying(project(HANDLER), hook.url, schedule="1h")
    failing(made)
    serving = Serving(made)
    try:
        # a failing scheduled sync: alert.opened
        [body] = hook.wait_for(1)
        assert body["event"] == "alert.opened"
        first = body["alert"]
        ended = serving.wait_for_log("sync_done", connector="demo")
        assert ended["status"] == "failed"
        status, syncs = serving.call("GET", "/api/connectors/demo/syncs?limit=5")
        assert status == 200, syncs
        assert [(s["sync_id"], s["trigger"]) for s in syncs["syncs"]] == [
            (first["sync_id"], "schedule")
        ]
        assert (first["kind"], first["message"]) == ("function_error", MESSAGE)
        assert body["text"].endswith(f"function_error (ValueError): {ONE_LINE}")
        assert open_alerts_metric(serving) == "1.0"

        # resolved through the API: alert.resolved, and the gauge follows
        status, _ = serving.call("POST", f"/api/alerts/{first['alert_id']}/resolve")
        assert status == 204
        resolved = hook.wait_for(2)[1]
        assert_resolved(resolved, first)
        assert open_alerts_metric(serving) == "0.0"
        status, _ = serving.call("POST", f"/api/alerts/{first['alert_id']}/resolve")
        assert status == 404  # resolved already: nothing more is sent

        # `connector run` goes through serve: one alert.opened (serve's), none from the CLI
        through_serve = made.run()
        assert through_serve.returncode == 1, through_serve.stderr
        assert through_serve.said("connector serve (pid")
        opened = hook.wait_for(3)[2]
        assert opened["event"] == "alert.opened"
        second = opened["alert"]
        assert second["alert_id"] != first["alert_id"]

        # fixed, and a sync asked for through the API: its success resolves the alert
        fixed(made)
        status, started = serving.call("POST", "/api/connectors/demo/run")
        assert status == 202, started
        serving.wait_for_log("sync_done", connector="demo", status="succeeded")
        assert_resolved(hook.wait_for(4)[3], second)
    finally:
        code = serving.stop()
    assert code == 0, "".join(serving.lines[-20:])
    assert [b["event"] for b in hook.bodies()] == [
        "alert.opened",
        "alert.resolved",
        "alert.opened",
        "alert.resolved",
    ]
    assert not [e for e in serving.events() if e["event"] == "notification_failed"]
    assert "Traceback" not in "".join(serving.lines)
