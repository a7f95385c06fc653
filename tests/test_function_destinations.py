"""Function destinations end to end through the CLI (design §12): a source function's
records go to a destination function (local Python, node, or HTTP on loopback), at least
once, with the page's state committed only after every record is acknowledged."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from conftest import serving

pytest.register_assert_rewrite("lambda_rie")
pytest_plugins = ["lambda_rie"]

SOURCE = """
import json, pathlib

HERE = pathlib.Path(__file__).parent


def handler(request):
    page = request["state"].get("page", 0)
    pages = json.loads((HERE / "pages.json").read_text())
    return {"state": {"page": page + 1}, **pages[page], "hasMore": page + 1 < len(pages)}
"""

PAGES = [
    {
        "insert": {
            "customers": [{"id": i, "email": f"u{i}@x.io", "plan": "free"} for i in range(4)]
        },
        "schema": {"customers": {"primary_key": ["id"]}},
    },
    {
        "insert": {"customers": [{"id": 1, "email": "u1@x.io", "plan": "pro"}]},
        "delete": {"customers": [{"id": 3}]},
    },
]

RECEIVER = """
import json, pathlib

HERE = pathlib.Path(__file__).parent


def handler(event, context=None):
    refuse = json.loads((HERE / "refuse.json").read_text()) if (HERE / "refuse.json").exists() else []
    events = event.get("events", [event])
    for one in events:
        if one["context"]["primary_key"]["id"] in refuse:
            return {"statusCode": 422, "message": f"no plan for {one['context']['primary_key']['id']}"}
    with open(HERE / "received.jsonl", "a") as out:
        for one in events:
            out.write(json.dumps(one) + "\\n")
    return {"statusCode": 200, "message": "stored"}
"""


def fan_out_project(project, destination: dict, pages=PAGES, **options):
    demo = project(SOURCE, destination=destination, **options)
    (demo.root / "pages.json").write_text(json.dumps(pages))
    return demo


def received(demo) -> list[dict]:
    path = demo.root / "received.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def deliveries(demo) -> list[tuple]:
    return demo.query(
        "SELECT delivered, retried, failed, p50_ms IS NOT NULL, p95_ms >= p50_ms"
        " FROM connector_runtime.deliveries"
    )


def test_records_go_to_a_local_function_and_no_table_is_created(project):
    demo = fan_out_project(
        project,
        {"function": {"local": "receiver.py"}, "concurrency": 2},
        tables={"customers": {"columns": {"email": "hash"}}},
    )
    (demo.root / "receiver.py").write_text(RECEIVER)

    result = demo.run()

    assert result.returncode == 0, result.stderr
    got = received(demo)
    assert [(e["context"]["operation"], e["data"]["id"]) for e in got if e["data"]["id"] == 1] == [
        ("upsert", 1),
        ("upsert", 1),
    ]
    assert sorted(
        (e["context"]["page"], e["context"]["operation"], e["data"]["id"]) for e in got
    ) == [
        (1, "upsert", 0),
        (1, "upsert", 1),
        (1, "upsert", 2),
        (1, "upsert", 3),
        (2, "delete", 3),
        (2, "upsert", 1),
    ]
    assert all(len(e["data"].get("email", "x" * 64)) == 64 for e in got)  # hashed
    assert [e["data"] for e in got if e["context"]["operation"] == "delete"] == [{"id": 3}]
    assert demo.tables() == []  # nothing in the connector's schema: the records went out
    assert demo.state() == {"page": 2}
    assert deliveries(demo) == [(6, 0, 0, True, True)]
    assert [
        (s["status"], s["pages"], s["rows_upserted"], s["rows_deleted"]) for s in demo.syncs()
    ] == [("succeeded", 2, 5, 1)]
    assert result.said("destination function: 6 records delivered, 0 retried, 0 failed")

    listed = demo.connector("syncs", "demo", "--json")
    assert listed.returncode == 0, listed.stderr
    (sync,) = json.loads(listed.stdout)
    assert sync["delivery"]["delivered"] == 6


def test_a_refused_record_fails_the_sync_and_its_page_is_delivered_again(project):
    demo = fan_out_project(project, {"function": {"local": "receiver.py"}, "concurrency": 1})
    (demo.root / "receiver.py").write_text(RECEIVER)
    (demo.root / "refuse.json").write_text("[3]")

    failed = demo.run()

    assert failed.returncode == 1
    ((alert,),) = [demo.alerts()]
    assert alert["kind"] == "delivery_failed"
    assert alert["message"] == (
        "delivering table 'customers', key {\"id\":3} failed: the function answered 422: no plan for 3"
    )
    assert demo.state() == {}  # the page is not committed: it will be fetched again
    first_try = {e["context"]["event_id"] for e in received(demo)}
    assert len(first_try) == 3  # ids 0, 1, 2 went out before 3 was refused

    (demo.root / "refuse.json").write_text("[]")
    assert demo.run().returncode == 0
    again = [e for e in received(demo) if e["context"]["page"] == 1]
    # at least once: 0, 1 and 2 came twice, with the same event ids, so they can be dropped
    assert len(again) == 7
    assert {e["context"]["event_id"] for e in again} == first_try | {
        e["context"]["event_id"] for e in again if e["data"]["id"] == 3
    }
    assert demo.state() == {"page": 2}
    assert [a["resolved"] for a in demo.alerts()] == [True]


def test_batches_reach_the_function_as_events(project):
    demo = fan_out_project(project, {"function": {"local": "receiver.py"}, "batch_size": 10})
    (demo.root / "receiver.py").write_text(
        RECEIVER.replace(
            'events = event.get("events", [event])',
            'events = event["events"]\n    assert set(event) == {"events"}',
        )
    )
    assert demo.run().returncode == 0
    assert len(received(demo)) == 6
    assert deliveries(demo)[0][:3] == (6, 0, 0)


def test_records_go_to_a_javascript_function(project):
    demo = fan_out_project(project, {"function": {"local": "receiver.mjs"}})
    (demo.root / "receiver.mjs").write_text(
        """
        import { appendFileSync } from "node:fs";
        export const handler = async (event) => {
          appendFileSync(new URL("./received.jsonl", import.meta.url), JSON.stringify(event) + "\\n");
          return { statusCode: 202 };
        };
        """
    )
    result = demo.run()
    assert result.returncode == 0, result.stderr
    assert len(received(demo)) == 6


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        with server.lock:
            server.calls += 1
            busy = server.calls in server.busy_calls
            if not busy:
                server.events.append(event)
        status, body = (503, b"busy") if busy else (204, b"")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.lock, server.calls, server.events, server.busy_calls = threading.Lock(), 0, [], {2}
    with serving(server):
        yield server


def test_an_http_destination_is_judged_by_its_status_and_retried_when_busy(project, http_receiver):
    url = f"http://127.0.0.1:{http_receiver.server_address[1]}/deliver"
    demo = fan_out_project(
        project,
        {"function": {"http": url, "retry": {"base": "10ms", "cap": "20ms"}}, "concurrency": 1},
    )
    result = demo.run()
    assert result.returncode == 0, result.stderr
    assert len(http_receiver.events) == 6
    assert deliveries(demo)[0][:3] == (6, 1, 0)  # the 503 was retried


def test_a_destination_config_is_checked(project):
    demo = fan_out_project(project, {"function": {"local": "receiver.py"}, "concurrency": 0})
    result = demo.connector("validate")
    assert result.returncode != 0
    assert result.said("destination.concurrency")

    document = yaml.safe_load(demo.config.read_text())
    document["connectors"]["demo"]["destination"] = {"function": {"local": "missing.py"}}
    demo.config.write_text(yaml.safe_dump(document))
    result = demo.run()
    assert result.returncode != 0
    assert result.said("destination.function.local: no such file")


def test_records_go_to_a_lambda_function(project, lambda_function, monkeypatch):
    """The real AWS SDK against a real Lambda runtime on loopback (one call at a time)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDUMMYTESTKEY00000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dummy-secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    demo = fan_out_project(project, {"function": {"local": "receiver.py"}})
    (demo.root / "receiver.py").write_text(RECEIVER)
    url = lambda_function("receiver.handler", directory=demo.root)
    document = yaml.safe_load(demo.config.read_text())
    document["connectors"]["demo"]["destination"] = {
        "function": {"lambda": "function", "endpoint_url": url, "region": "us-east-1"},
        "concurrency": 1,
    }
    demo.config.write_text(yaml.safe_dump(document))

    result = demo.run()

    assert result.returncode == 0, result.stderr
    assert len(received(demo)) == 6
    assert deliveries(demo)[0][:3] == (6, 0, 0)
