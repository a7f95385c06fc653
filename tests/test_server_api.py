"""The control plane of `connector serve` through a real process and real sockets: the
HTTP API (auth, runs, pause, state, alerts), its event stream and metrics, and the other
`connector` commands acting through it while a sync holds the DuckDB warehouse.

Every test starts the real `connector serve` on a free loopback port and talks to it
with `http.client`. Slow syncs are held by files (`<connector>.hold`), never by timing:
a test waits for the handler to say it is waiting, looks, then releases it. Only an
absence (no scheduled sync while paused) is watched over a window of several intervals.
"""

from __future__ import annotations

import http.client
import json
import signal
import stat
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import Project
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Mount
from test_serve_ops import calls, handler_source, json_lines, stop, wait_until

HTTP_TIMEOUT = 20.0
FAST = 15.0  # what "promptly" means for a command; the old DuckDB lock wait was 60 s

HANDLERS = handler_source('''
def paged(name, request):
    """Three pages of 10 rows per sync (the state counts pages on). While `<name>.hold`
    exists, each sync's second and third page wait, after writing `<name>.waiting`."""
    record(name, request)
    page = request["state"].get("page", 0)
    if page % 3 and (HERE / f"{name}.hold").exists():
        (HERE / f"{name}.waiting").write_text(str(page))
        while (HERE / f"{name}.hold").exists():
            time.sleep(0.02)
    rows = [{"id": page * 10 + i, "page": page, "label": f"row {page * 10 + i}"} for i in range(10)]
    return {
        "state": {"page": page + 1},
        "insert": {"items": rows},
        "schema": {"items": {"primary_key": ["id"]}},
        "hasMore": (page + 1) % 3 != 0,
    }


def slow(request):
    return paged("slow", request)


def other(request):
    return paged("other", request)


def ticker(request):
    record("ticker", request)
    n = request["state"].get("n", 0) + 1
    return {
        "state": {"n": n},
        "insert": {"ticks": [{"id": n}]},
        "schema": {"ticks": {"primary_key": ["id"]}},
    }


def broken(request):
    record("broken", request)
    check_the_token(request)


def check_the_token(request):
    raise PermissionError("the API refused the token")
''')


# -- the project and its server ---------------------------------------------------------


def configure(made: Project, connectors: dict[str, dict]) -> None:
    """connectors.yaml: each connector calls handler.py's `handler` (default: its name)."""
    document = {
        "warehouse": "duckdb:///warehouse.duckdb",
        "server": {"listen": "127.0.0.1:0"},  # a free port: tests never collide
        "connectors": {
            name: {
                "function": {"local": "handler.py", "handler": options.pop("handler", name)},
                **options,
            }
            for name, options in ((n, dict(o)) for n, o in connectors.items())
        },
    }
    made.config.write_text(yaml.safe_dump(document, sort_keys=False))


def new_project(root, connectors: dict[str, dict]) -> Project:
    made = Project(root, "slow")
    made.write_handler(HANDLERS)
    configure(made, connectors)
    return made


def server_file(made: Project):
    return made.root / ".connector-runtime" / "server.json"


def hold(made: Project, name: str) -> None:
    """From now on, `name`'s syncs wait before their second page."""
    (made.root / f"{name}.waiting").unlink(missing_ok=True)
    (made.root / f"{name}.hold").touch()


def release(made: Project, name: str) -> None:
    (made.root / f"{name}.hold").unlink(missing_ok=True)


def waiting_at(made: Project, name: str) -> int | None:
    """The page a held sync of `name` waits before, if one does."""
    marker = made.root / f"{name}.waiting"
    return int(marker.read_text()) if marker.exists() and marker.read_text() else None


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:500]!r})"


class Api:
    """A client of one server: `call` for any request, `get`/`post` with the token."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port

    def connection(self, timeout: float = HTTP_TIMEOUT) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def call(
        self,
        method: str,
        path: str,
        *,
        auth: bool = True,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> Reply:
        """One request on a fresh connection; an event stream's body is not read."""
        sent = dict(headers or {})
        if auth:
            sent["Authorization"] = f"Bearer {self.token}"
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        if data is not None:
            sent["Content-Type"] = "application/json"
        connection = self.connection()
        try:
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            streaming = response.getheader("content-type", "").startswith("text/event-stream")
            return Reply(response.status, response.headers, b"" if streaming else response.read())
        finally:
            connection.close()

    def get(self, path: str) -> Any:
        reply = self.call("GET", path)
        assert reply.status == 200, (path, reply)
        return reply.json()

    def post(self, path: str, body: Any = None) -> Reply:
        return self.call("POST", path, body=body)

    def run(self, name: str) -> str:
        reply = self.post(f"/api/connectors/{name}/run")
        assert reply.status == 202, reply
        return reply.json()["sync_id"]

    def sync(self, sync_id: str) -> dict:
        return self.get(f"/api/syncs/{sync_id}")

    def connector(self, name: str) -> dict:
        return self.get(f"/api/connectors/{name}")

    def finished(self, sync_id: str, timeout: float = 30.0) -> dict:
        """The sync's document once it no longer runs."""
        found: dict = {}

        def ended() -> bool:
            found.clear()
            found.update(self.sync(sync_id))
            return found["status"] != "running"

        wait_until(ended, timeout=timeout, what=f"sync {sync_id} finished")
        return found


@dataclass
class Served:
    process: Any
    api: Api
    info: dict
    log: list[dict] = field(default_factory=list)  # serve's JSON log lines, once it exited


def wait_for_server(made: Project, process) -> dict:
    """server.json of this process, once /healthz answers."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, stderr = process.communicate()
            raise AssertionError(f"serve exited {process.returncode}:\n{stderr[-3000:]}")
        try:
            info = json.loads(server_file(made).read_text())
        except (OSError, ValueError):
            info = None
        api = Api(info["url"], info["token"]) if info and info["pid"] == process.pid else None
        if api is not None and api.call("GET", "/healthz", auth=False).status == 200:
            return info
        time.sleep(0.05)
    raise AssertionError("serve did not write server.json and answer /healthz within 30 s")


@contextmanager
def serving(made: Project) -> Iterator[Served]:
    """`connector serve` for the body; then SIGTERM, exit 0 and server.json removed."""
    process = made.start("serve")
    served = None
    try:
        info = wait_for_server(made, process)
        served = Served(process, Api(info["url"], info["token"]), info)
        yield served
    finally:
        for held in made.root.glob("*.hold"):  # held pages finish, so the stop is quick
            held.unlink()
        if process.poll() is None:
            _, code, stderr = stop(process, timeout=20)
        else:
            code, stderr = process.returncode, process.communicate()[1]
    assert code == 0, stderr[-3000:]
    assert not server_file(made).exists()
    served.log = json_lines(stderr)


def skipped_paused(log: list[dict], name: str) -> int:
    return sum(
        1
        for e in log
        if e["event"] == "sync_skipped" and e.get("connector") == name and e["reason"] == "paused"
    )


# -- 1. serve with every schedule form ----------------------------------------------------

SCHEDULES = {
    "every30s": ("30s", "every 30s", 30),
    "every15m": ("15m", "every 15m", 900),
    "every1d": ("1d", "every 1d", 86400),
    "quarter": ({"cron": "*/15 * * * *"}, "cron */15 * * * *", None),
    "weekdays": ({"cron": "0 9 * * 1-5"}, "cron 0 9 * * 1-5", None),
}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_serve_with_every_schedule_form_lists_next_runs_and_refuses_a_second_serve(tmp_path):
    made = new_project(
        tmp_path,
        {name: {"handler": "ticker", "schedule": s} for name, (s, _, _) in SCHEDULES.items()},
    )
    with serving(made) as served:
        api = served.api
        assert stat.S_IMODE(server_file(made).stat().st_mode) == 0o600
        assert stat.S_IMODE(server_file(made).parent.stat().st_mode) == 0o700
        assert served.info["url"] == f"http://127.0.0.1:{api.port}"
        health = api.call("GET", "/healthz", auth=False)
        assert (health.status, health.json()) == (200, {"ok": True})

        now = datetime.now(UTC)
        listed = {c["name"]: c for c in api.get("/api/connectors")["connectors"]}
        assert list(listed) == list(SCHEDULES)
        for name, (_, text, seconds) in SCHEDULES.items():
            connector = listed[name]
            assert (connector["schedule"], connector["paused"], connector["scheduled"]) == (
                text,
                False,
                True,
            ), connector
            assert connector["next_run"] is not None, connector
            next_run = at(connector["next_run"])
            if seconds is not None:  # fires soon after start, then every interval (+ jitter)
                jitter = min(seconds / 10, 60)
                assert now - timedelta(seconds=10) < next_run, connector
                assert next_run <= now + timedelta(seconds=seconds + jitter + 10), connector
        quarter = at(listed["quarter"]["next_run"])  # + up to 60 s of jitter
        assert now < quarter <= now + timedelta(minutes=16), quarter
        assert (quarter.minute % 15, quarter.tzinfo is not None) == (0, True), quarter
        weekdays = at(listed["weekdays"]["next_run"])  # crontab's 1-5: Monday to Friday
        assert now < weekdays <= now + timedelta(days=3, minutes=2), weekdays
        assert (weekdays.weekday() < 5, weekdays.hour, weekdays.minute) == (True, 9, 0), weekdays

        # a second serve on the same config: one line, exit 2; the first is untouched
        before = server_file(made).read_text()
        second = made.connector("serve", timeout=30)
        assert second.returncode == 2, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert second.said("already running") and second.said(f"pid {served.process.pid}")
        assert "Traceback" not in second.stderr
        assert server_file(made).read_text() == before
        assert api.call("GET", "/healthz", auth=False).status == 200
    assert not server_file(made).exists()


def test_serve_without_schedules_is_api_only_and_outlives_a_stale_server_file(tmp_path):
    made = new_project(tmp_path, {"slow": {}, "other": {}})
    with serving(made) as served:
        api = served.api
        assert stat.S_IMODE(server_file(made).stat().st_mode) == 0o600
        listed = api.get("/api/connectors")["connectors"]
        assert [(c["name"], c["schedule"], c["next_run"]) for c in listed] == [
            ("slow", None, None),
            ("other", None, None),
        ]
        assert api.finished(api.run("other"))["status"] == "succeeded"
        assert calls(made, "slow") == []  # nothing scheduled it

    # killed with -9, serve leaves its server.json; the commands and a new serve see through it
    killed = made.start("serve")
    try:
        wait_for_server(made, killed)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.communicate()
    assert json.loads(server_file(made).read_text())["pid"] == killed.pid
    status = made.connector("status")
    assert status.returncode == 0, status.stderr
    assert status.said("connector serve is not running")
    with serving(made) as served:
        assert served.api.get("/api/connectors/other")["last_sync"]["status"] == "succeeded"


# -- 2. auth on every route ---------------------------------------------------------------

# method, the path as the app declares it, what fills it in, the answer with the token;
# the API, then the dashboard's pages, forms and static files (behind the same auth)
ROUTES = [
    ("GET", "/metrics", {}, 200),
    ("GET", "/api/connectors", {}, 200),
    ("GET", "/api/connectors/{name}", {"name": "slow"}, 200),
    ("GET", "/api/connectors/{name}/syncs", {"name": "broken"}, 200),
    ("GET", "/api/connectors/{name}/schema_changes", {"name": "slow"}, 200),
    ("GET", "/api/syncs/{sync_id}", {}, 200),
    ("GET", "/api/alerts", {}, 200),
    ("GET", "/api/events", {}, 200),
    ("POST", "/api/connectors/{name}/run", {"name": "slow"}, 202),
    ("POST", "/api/connectors/{name}/resync", {"name": "other"}, 202),
    ("POST", "/api/connectors/{name}/pause", {"name": "ticker"}, 204),
    ("POST", "/api/connectors/{name}/resume", {"name": "ticker"}, 204),
    ("POST", "/api/connectors/{name}/state", {"name": "ticker"}, 204),
    ("POST", "/api/alerts/{alert_id}/resolve", {}, 204),
    ("GET", "/", {}, 200),
    ("GET", "/index.json", {}, 200),
    ("GET", "/alerts", {}, 200),
    ("GET", "/alerts.json", {}, 200),
    ("POST", "/alerts/{alert_id}/resolve", {"alert_id": "{second_alert_id}"}, 303),
    ("GET", "/connectors/{name}", {"name": "broken"}, 200),
    ("GET", "/connectors/{name}.json", {"name": "broken"}, 200),
    ("POST", "/connectors/{name}/{action}", {"name": "other", "action": "resume"}, 303),
    ("GET", "/static/{path}", {"path": "dashboard.css"}, 200),
]
BODIES = {"/api/connectors/{name}/state": {"state": {"n": 7}}}


def test_the_route_table_is_every_route_of_the_app():
    from connector_runtime.server.app import create_app

    app = create_app(None, None, None, None, "token").app  # the routes only; nothing is called
    declared = set()
    for route in app.routes:
        if isinstance(route, Mount):  # static files: any path below it
            declared.add(("GET", route.path + "/{path}"))
        else:
            declared |= {(m, route.path) for m in route.methods - {"HEAD"}}
    open_routes = {
        ("GET", "/healthz"),
        # background functions' pages: each call's own token authorizes them
        # (tests/test_background_functions.py)
        ("POST", "/api/callbacks/{sync_id}/{call:int}"),
    }
    assert declared == {(m, path) for m, path, _, _ in ROUTES} | open_routes


@dataclass
class AuthServer:
    made: Project
    api: Api
    ids: dict[str, str]


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory) -> Iterator[AuthServer]:
    """One server for the auth tests, with two failed syncs and their open alerts."""
    made = new_project(
        tmp_path_factory.mktemp("auth"), {n: {} for n in ("slow", "other", "ticker", "broken")}
    )
    with serving(made) as served:
        api = served.api
        first, second = (api.finished(api.run("broken")) for _ in range(2))
        assert first["status"] == second["status"] == "failed", (first, second)
        ids = {
            "sync_id": first["sync_id"],
            "alert_id": first["alert"]["alert_id"],
            "second_alert_id": second["alert"]["alert_id"],
        }
        yield AuthServer(made, api, ids)


@pytest.mark.parametrize(
    ("method", "template", "fill", "expected"),
    ROUTES,
    ids=[f"{m} {p}" for m, p, _, _ in ROUTES],
)
def test_every_route_refuses_without_the_token_and_answers_with_it(
    auth_server, method, template, fill, expected
):
    api = auth_server.api
    path = template.format(**{**auth_server.ids, **fill}).format(**auth_server.ids)
    body = BODIES.get(template)
    for headers in (
        {},
        {"Authorization": "Bearer not-the-token"},
        {"Authorization": f"Basic {api.token}"},
        {"Cookie": "connector_runtime_session=forged"},
    ):
        refused = api.call(method, path, auth=False, headers=headers, body=body)
        assert refused.status == 401, (headers, refused)
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert "Authorization: Bearer" in refused.json()["error"]
    answered = api.call(method, path, body=body)
    assert answered.status == expected, answered
    if expected == 200 and (template.startswith("/api/") or template.endswith(".json")):
        assert template == "/api/events" or isinstance(answered.json(), dict), answered


def test_login_cookie_and_cross_site_posts(auth_server):
    api = auth_server.api
    origin = api.url
    assert api.post("/api/connectors/ticker/resume").status == 204  # whatever ran before

    health = api.call("GET", "/healthz", auth=False)
    assert (health.status, health.json()) == (200, {"ok": True})

    for path in ("/login?token=wrong", "/login", f"/login?token={api.token}x"):
        refused = api.call("GET", path, auth=False)
        assert refused.status == 401, (path, refused)
        assert "set-cookie" not in {k.lower() for k in refused.headers}
    login = api.call("GET", f"/login?token={api.token}", auth=False)
    assert login.status == 303, login
    assert login.headers["Location"] == "/"
    set_cookie = login.headers["Set-Cookie"]
    attributes = {part.strip().lower() for part in set_cookie.split(";")}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes, set_cookie
    assert api.token not in set_cookie  # an HMAC of the token, never the token itself
    cookie = {"Cookie": set_cookie.split(";", 1)[0]}

    for path in ("/", "/api/connectors", "/api/connectors/ticker", "/metrics"):
        assert api.call("GET", path, auth=False, headers=cookie).status == 200, path

    # a POST with the cookie must name this origin; with the token, any foreign one is refused
    pause = "/api/connectors/ticker/pause"
    for headers in (
        cookie,
        {**cookie, "Origin": "null"},
        {**cookie, "Origin": "https://evil.example"},
        {**cookie, "Origin": f"http://127.0.0.1:{api.port + 1}"},
    ):
        refused = api.call("POST", pause, auth=False, headers=headers)
        assert refused.status == 403, (headers, refused)
        assert "cross-site" in refused.json()["error"]
    refused = api.call("POST", pause, headers={"Origin": "https://evil.example"})
    assert refused.status == 403, refused
    assert api.connector("ticker")["paused"] is False  # none of them acted

    allowed = api.call("POST", pause, auth=False, headers={**cookie, "Origin": origin})
    assert allowed.status == 204, allowed
    assert api.connector("ticker")["paused"] is True
    resume = "/api/connectors/ticker/resume"
    assert api.call("POST", resume, headers={"Origin": origin}).status == 204
    assert api.connector("ticker")["paused"] is False


# -- 3. runs, pause, alerts and state through the API ---------------------------------------


def error_of(reply: Reply, status: int, code: str) -> str:
    assert reply.status == status, reply
    document = reply.json()
    assert document["code"] == code, document
    return document["error"]


def test_run_progress_conflicts_state_and_tables_through_the_api(tmp_path):
    made = new_project(tmp_path, {"slow": {}, "broken": {}})
    hold(made, "slow")
    with serving(made) as served:
        api = served.api
        sync_id = api.run("slow")
        first = api.sync(sync_id)  # readable at once, before its first page
        assert (first["sync_id"], first["connector"], first["trigger"], first["status"]) == (
            sync_id,
            "slow",
            "manual",
            "running",
        )

        wait_until(lambda: waiting_at(made, "slow") == 1, what="slow waits before page 2")
        # page 2 is asked for as soon as page 1's state is read: page 1 may still be writing
        wait_until(lambda: api.sync(sync_id)["page"] == 1, what="page 1 committed")
        running = api.sync(sync_id)
        assert (running["status"], running["page"], running["rows"]) == ("running", 1, 10)
        assert running["rows_per_s"] > 0 and running["elapsed_s"] > 0, running
        assert running["rows_upserted"] == 10
        overview = api.connector("slow")
        assert overview["status"] == "running"
        assert (overview["running"]["sync_id"], overview["running"]["page"]) == (sync_id, 1)
        history = api.get("/api/connectors/slow/syncs")["syncs"]
        assert [(s["sync_id"], s.get("page")) for s in history] == [(sync_id, 1)]

        for action in ("run", "resync"):  # one sync per connector at a time
            error = error_of(api.post(f"/api/connectors/slow/{action}"), 409, "in_progress")
            assert "already in progress" in error
        state = api.post("/api/connectors/slow/state", {"state": {"page": 0}})
        assert "already in progress" in error_of(state, 409, "in_progress")

        release(made, "slow")
        done = api.finished(sync_id)
        assert (done["status"], done["pages"], done["rows_upserted"]) == ("succeeded", 3, 30)
        assert done["tables"] == {"items": {"upserted": 30, "deleted": 0, "missing": 0}}
        assert done["finished_at"] is not None
        assert api.sync(sync_id)["status"] == "succeeded"
        assert api.connector("slow")["status"] == "idle"

        # the state, replaced while idle, is what the next sync starts from
        assert api.connector("slow")["state"] == {"page": 3}
        assert api.post("/api/connectors/slow/state", {"state": {"page": 0}}).status == 204
        assert api.connector("slow")["state"] == {"page": 0}
        again = api.finished(api.run("slow"))
        assert again["status"] == "succeeded", again
        assert [c["state"] for c in calls(made, "slow")[-3:]] == [
            {"page": 0},
            {"page": 1},
            {"page": 2},
        ]

        # where the rows landed: columns, types, key and row counts
        tables = api.connector("slow")["tables"]
        assert [(t["name"], t["primary_key"], t["rows"]) for t in tables] == [("items", ["id"], 30)]
        columns = {c["name"]: c["type"] for c in tables[0]["columns"]}
        assert columns == {"id": "LONG", "page": "LONG", "label": "STRING"}
        assert tables[0]["reference"] == "slow.items"
        assert [s["trigger"] for s in api.get("/api/connectors/slow/syncs?limit=5")["syncs"]] == [
            "manual",
            "manual",
        ]
        assert len(api.get("/api/connectors/slow/syncs?limit=1")["syncs"]) == 1

        # a failing handler opens an alert; resolved through the API, once
        failed = api.finished(api.run("broken"))
        assert failed["status"] == "failed" and "the API refused the token" in failed["error"]
        alerts = api.get("/api/alerts")["alerts"]
        assert [(a["connector"], a["sync_id"], a["resolved_at"]) for a in alerts] == [
            ("broken", failed["sync_id"], None)
        ]
        alert = alerts[0]
        assert (alert["kind"], alert["error_type"]) == ("function_error", "PermissionError")
        assert "the API refused the token" in alert["message"]
        assert any("check_the_token" in str(frame) for frame in alert["stack_trace"]), alert
        assert api.get("/api/alerts?connector=slow")["alerts"] == []
        assert api.connector("broken")["open_alerts"] == 1
        logs = api.get(f"/api/syncs/{failed['sync_id']}?logs=1")
        assert "function_output" in logs

        resolve = f"/api/alerts/{alert['alert_id']}/resolve"
        assert api.post(resolve).status == 204
        assert api.get("/api/alerts?connector=broken")["alerts"] == []
        every = api.get("/api/alerts?connector=broken&status=all")["alerts"]
        assert [a["alert_id"] for a in every] == [alert["alert_id"]]
        assert at(every[0]["resolved_at"]) >= at(every[0]["created_at"])
        assert api.connector("broken")["open_alerts"] == 0
        error_of(api.post(resolve), 404, "not_found")

        # unknown names and bad requests: JSON errors a client can act on
        for method, path in (
            ("GET", "/api/connectors/nope"),
            ("GET", "/api/connectors/nope/syncs"),
            ("POST", "/api/connectors/nope/run"),
            ("POST", "/api/connectors/nope/resync"),
            ("POST", "/api/connectors/nope/pause"),
            ("POST", "/api/connectors/nope/resume"),
            ("GET", "/api/alerts?connector=nope"),
        ):
            assert "nope" in error_of(api.call(method, path), 404, "config_error"), path
        error_of(api.post("/api/connectors/nope/state", {"state": {}}), 404, "config_error")
        error_of(api.call("GET", "/api/syncs/no-such-sync"), 404, "not_found")
        error_of(api.post("/api/alerts/no-such-alert/resolve"), 404, "not_found")
        error_of(api.call("GET", "/api/connectors/slow/syncs?limit=0"), 400, "bad_request")
        error_of(api.call("GET", "/api/connectors/slow/syncs?before=soon"), 400, "bad_request")
        error_of(api.call("GET", "/api/alerts?status=closed"), 400, "bad_request")
        for body in (b"{not json", {"state": [1]}, {"cursor": 1}):
            state = api.post("/api/connectors/slow/state", body)
            error_of(state, 400, "bad_request")
        assert api.connector("slow")["state"] == {"page": 3}

    # the warehouse agrees with what the API said
    assert made.query("SELECT count(*), min(id), max(id) FROM slow.items") == [(30, 0, 29)]
    statuses = made.query(
        "SELECT connector, status, count(*) FROM connector_runtime.syncs GROUP BY 1, 2 ORDER BY 1"
    )
    assert statuses == [("broken", "failed", 1), ("slow", "succeeded", 2)]


@pytest.mark.slow  # serve restarted
def test_pause_persists_across_restarts_and_keeps_schedules_off(tmp_path):
    made = new_project(tmp_path, {"ticker": {"schedule": "1s"}})
    with serving(made) as served:
        api = served.api
        wait_until(lambda: len(calls(made, "ticker")) >= 2, what="two scheduled syncs")
        assert api.post("/api/connectors/ticker/pause").status == 204
        paused = api.connector("ticker")
        assert (paused["paused"], paused["next_run"]) == (True, None)

        # a tick that read the flag just before the pause may still start a sync: let one
        # full interval pass and that sync end, then no sync starts for three intervals
        wait_until(lambda: api.connector("ticker")["running"] is None, what="idle")
        time.sleep(1.2)
        wait_until(lambda: api.connector("ticker")["running"] is None, what="idle")
        seen = len(calls(made, "ticker"))
        time.sleep(3)
        assert len(calls(made, "ticker")) == seen
    assert skipped_paused(served.log, "ticker") >= 2

    with serving(made) as served:  # paused in the warehouse: still paused after a restart
        api = served.api
        assert api.connector("ticker")["paused"] is True
        assert api.get("/api/connectors")["connectors"][0]["paused"] is True
        time.sleep(2.5)
        assert len(calls(made, "ticker")) == seen
        assert api.post("/api/connectors/ticker/resume").status == 204
        resumed = api.connector("ticker")
        assert resumed["paused"] is False and resumed["next_run"] is not None
        wait_until(lambda: len(calls(made, "ticker")) > seen, what="a scheduled sync again")
        wait_until(
            lambda: (
                api.get("/api/connectors/ticker/syncs?limit=1")["syncs"][0]["status"] == "succeeded"
            ),
            what="the resumed sync succeeded",
        )
        newest = api.get("/api/connectors/ticker/syncs?limit=1")["syncs"][0]
        assert newest["trigger"] == "schedule"
    assert skipped_paused(served.log, "ticker") >= 2


# -- 4. the event stream -------------------------------------------------------------------


class EventStream:
    """GET /api/events, read line by line in this thread (the socket times out)."""

    def __init__(self, api: Api) -> None:
        self.connection = api.connection(timeout=HTTP_TIMEOUT)
        self.connection.request(
            "GET", "/api/events", headers={"Authorization": f"Bearer {api.token}"}
        )
        self.response = self.connection.getresponse()
        assert self.response.status == 200
        assert self.response.getheader("content-type").startswith("text/event-stream")
        # the server subscribes before it sends this comment: from here on, nothing is missed
        assert self.response.readline() == b": connected\n"

    def next(self, timeout: float = HTTP_TIMEOUT) -> tuple[str, dict]:
        """The next event; keepalive comments do not count as one."""
        deadline = time.monotonic() + timeout
        event, data = None, None
        while True:
            assert time.monotonic() < deadline, f"no event within {timeout}s"
            line = self.response.readline()
            assert line, "the event stream ended"
            line = line.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
            elif line == "" and event is not None:
                return event, data

    def until(self, last: str, sync_id: str) -> list[tuple[str, dict]]:
        """This sync's events up to and including `last`."""
        seen = []
        while True:
            event, data = self.next()
            document = data.get("sync") or data.get("alert")
            if document["sync_id"] != sync_id:
                continue
            seen.append((event, document))
            if event == last:
                return seen

    def close(self) -> None:
        self.connection.close()


def test_event_stream_follows_syncs_and_alerts(tmp_path):
    made = new_project(tmp_path, {"slow": {}, "broken": {}})
    with serving(made) as served:
        api = served.api
        stream = EventStream(api)
        try:
            sync_id = api.run("slow")
            events = stream.until("sync.finished", sync_id)
            assert [e for e, _ in events] == [
                "sync.started",
                "sync.progress",
                "sync.progress",
                "sync.progress",
                "sync.finished",
            ]
            progress = [d for e, d in events if e == "sync.progress"]
            assert [(p["page"], p["rows"], p["status"]) for p in progress] == [
                (1, 10, "running"),
                (2, 20, "running"),
                (3, 30, "running"),
            ]
            assert all(p["rows_per_s"] > 0 and p["elapsed_s"] > 0 for p in progress), progress
            finished = events[-1][1]
            assert (finished["status"], finished["pages"], finished["rows_upserted"]) == (
                "succeeded",
                3,
                30,
            )

            failing = api.run("broken")
            events = stream.until("sync.finished", failing)
            assert [e for e, _ in events] == ["sync.started", "alert.opened", "sync.finished"]
            alert = events[1][1]
            assert (alert["connector"], alert["kind"], alert["error_type"]) == (
                "broken",
                "function_error",
                "PermissionError",
            )
            assert events[2][1]["status"] == "failed"

            # resolved by hand: the stream says so too
            assert api.post(f"/api/alerts/{alert['alert_id']}/resolve").status == 204
            event, data = stream.next()
            assert event == "alert.resolved", (event, data)
            assert data["alert"]["alert_id"] == alert["alert_id"]
            assert data["alert"]["resolved_at"] is not None
        finally:
            stream.close()


# -- 5. metrics -----------------------------------------------------------------------------


def scrape(api: Api) -> dict[tuple[str, frozenset], float]:
    reply = api.call("GET", "/metrics")
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"].startswith("text/plain"), reply.headers
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.body.decode())
        for sample in family.samples
    }


def metric(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_count_syncs_rows_alerts_and_durations(tmp_path):
    made = new_project(tmp_path, {"slow": {}, "broken": {}})
    with serving(made) as served:
        api = served.api
        first = scrape(api)
        assert metric(first, "connector_running_syncs") == 0
        assert metric(first, "connector_alerts_open", connector="slow") == 0  # seeded at start

        started = time.time()
        for n in (1, 2):
            assert api.finished(api.run("slow"))["status"] == "succeeded"
            wait_until(
                lambda n=n: (
                    metric(
                        scrape(api), "connector_syncs_total", connector="slow", status="succeeded"
                    )
                    == n
                ),
                what=f"{n} succeeded syncs counted",
            )
            samples = scrape(api)
            slow = {"connector": "slow"}
            assert metric(samples, "connector_rows_total", operation="upserted", **slow) == 30 * n
            assert metric(samples, "connector_rows_total", operation="deleted", **slow) == 0
            assert metric(samples, "connector_sync_duration_seconds_count", **slow) == n
            assert metric(samples, "connector_sync_duration_seconds_bucket", le="+Inf", **slow) == n
            last = metric(samples, "connector_last_success_timestamp_seconds", **slow)
            assert started - 5 <= last <= time.time() + 5, last
            assert metric(samples, "connector_alerts_open", **slow) == 0
            assert metric(samples, "connector_running_syncs") == 0

        hold(made, "slow")
        held = api.run("slow")  # the third sync: pages 6 to 8, held before page 7
        wait_until(lambda: waiting_at(made, "slow") == 7, what="slow waits before page 7")
        assert metric(scrape(api), "connector_running_syncs") == 1
        release(made, "slow")
        api.finished(held)

        failed = api.finished(api.run("broken"))
        wait_until(
            lambda: (
                metric(scrape(api), "connector_syncs_total", connector="broken", status="failed")
                == 1
            ),
            what="the failed sync counted",
        )
        samples = scrape(api)
        assert metric(samples, "connector_alerts_open", connector="broken") == 1
        assert (
            metric(samples, "connector_last_success_timestamp_seconds", connector="broken") is None
        )
        text = api.call("GET", "/metrics").body.decode()
        for name in (
            "connector_syncs_total",
            "connector_rows_total",
            "connector_sync_duration_seconds",
            "connector_alerts_open",
            "connector_last_success_timestamp_seconds",
        ):
            assert f'{name}{{connector="slow"' in text or f'{name}_bucket{{connector="slow"' in text
            assert f"# TYPE {name.removesuffix('_total')}" in text, name
        assert "\nconnector_running_syncs 0.0\n" in text

        assert api.post(f"/api/alerts/{failed['alert']['alert_id']}/resolve").status == 204
        assert metric(scrape(api), "connector_alerts_open", connector="broken") == 0


# -- 6. the other commands, through serve, while a sync holds DuckDB ---------------------------


def status_line(result, name: str) -> str:
    lines = [line for line in result.stdout.splitlines() if line.strip().startswith(name + " ")]
    assert len(lines) == 1, result.stdout + result.stderr
    return " ".join(lines[0].split())


@pytest.mark.slow  # a sync held open for seconds
def test_commands_act_through_serve_while_a_sync_holds_the_warehouse(tmp_path):
    made = new_project(tmp_path, {"slow": {"schedule": "1d"}, "other": {}})
    with serving(made) as served:
        api, pid = served.api, served.process.pid
        wait_until(lambda: api.connector("slow")["last_sync"] is not None, what="first sync")
        assert api.finished(api.connector("slow")["last_sync"]["sync_id"])["status"] == "succeeded"

        # `connector run` of a served connector: serve runs it, the command follows it
        hold(made, "slow")
        follower = made.start("run", "slow")
        try:
            wait_until(lambda: waiting_at(made, "slow") == 4, what="slow waits before page 5")
            wait_until(
                lambda: (api.connector("slow")["running"] or {}).get("page") == 1,
                what="page 1 of the held sync committed",
            )

            began = time.monotonic()
            status = made.connector("status", timeout=60)
            took = time.monotonic() - began
            assert status.returncode == 0, status.stderr
            assert took < FAST, took
            line = status_line(status, "slow")
            assert line.startswith("slow running page 1, 10 rows every 1d"), line
            assert not status.said("not running")

            as_json = made.connector("status", "--json", timeout=60)
            assert as_json.returncode == 0, as_json.stderr
            listed = {c["name"]: c for c in json.loads(as_json.stdout)}
            assert listed["slow"]["status"] == "running" and listed["slow"]["running"]["page"] == 1
            assert listed["slow"]["scheduled"] is True and listed["other"]["status"] == "idle"

            # the reading commands at once (none of them may wait for the warehouse)
            reads = [
                ("alerts",),
                ("alerts", "slow", "--all"),
                ("syncs", "slow"),
                ("syncs", "slow", "--json"),
                ("show", "slow"),
                ("state", "show", "slow"),
            ]
            with ThreadPoolExecutor(len(reads)) as pool:
                results = list(pool.map(lambda args: made.connector(*args, timeout=60), reads))
            for args, result in zip(reads, results, strict=True):
                assert result.returncode == 0, (args, result.stderr)
                assert "Traceback" not in result.stderr, result.stderr
                if args[0] == "syncs" and "--json" in args:
                    newest = json.loads(result.stdout)[0]
                    assert (newest["status"], newest["page"]) == ("running", 1), newest
                if args[0] == "syncs" and "--json" not in args:
                    assert result.printed("manualrunning"), result.stdout
                if args[0] == "show":
                    assert result.printed("slow:runningpage1"), result.stdout
                    assert result.printed("slow.items:40rows,primarykeyid"), result.stdout
                if args[0] == "state":
                    assert json.loads(result.stdout) == {"page": 4}

            with ThreadPoolExecutor(2) as pool:
                refusing = pool.submit(made.connector, "state", "set", "slow", '{"page": 0}')
                again = pool.submit(made.connector, "run", "slow").result()
                refused = refusing.result()
            assert refused.returncode == 1, refused.stderr
            assert refused.said("in progress") and refused.said("the state is unchanged")
            assert again.returncode == 1, again.stderr
            assert again.said("already in progress") and "Traceback" not in again.stderr

            paused = made.connector("pause", "other", timeout=60)
            assert paused.returncode == 0, paused.stderr
            listed = {c["name"]: c for c in json.loads(made.connector("status", "--json").stdout)}
            assert listed["other"]["paused"] is True
            assert made.connector("resume", "other", timeout=60).returncode == 0

            ran = made.connector("run", "other", timeout=60)
            assert ran.returncode == 0, ran.stderr
            assert ran.said(f"connector serve (pid {pid}) runs the sync"), ran.stderr
            assert ran.said("other: succeeded") and ran.said("3 page(s), 30 rows upserted")
            assert api.get("/api/connectors/other/syncs")["syncs"][0]["trigger"] == "manual"
            assert api.sync(api.connector("slow")["running"]["sync_id"])["page"] == 1
        finally:
            release(made, "slow")
            try:
                followed_out, followed_err = follower.communicate(timeout=60)
            except BaseException:
                follower.kill()
                follower.communicate()
                raise
    assert follower.returncode == 0, followed_err
    assert f"connector serve (pid {pid}) runs the sync" in followed_err
    assert "slow: succeeded" in followed_err and "3 page(s), 30 rows upserted" in followed_err
    assert made.state() == {"page": 6}
    assert made.query("SELECT count(*) FROM slow.items") == [(60,)]
    triggers = made.query(
        "SELECT trigger, status FROM connector_runtime.syncs WHERE connector = 'slow'"
        " ORDER BY started_at"
    )
    assert triggers == [("schedule", "succeeded"), ("manual", "succeeded")]
