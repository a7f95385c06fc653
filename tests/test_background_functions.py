"""Background functions (DESIGN.md §13), through the CLI as a user types it: a function
named *-background (or `background: true`) gets `callback: {url, token}` in its request
and POSTs its page there: to a loopback listener under `connector run` and `connector
test`, to the serve API under `connector serve`. Real node and Python workers, a real
HTTP host on loopback that answers 202 as Netlify does, real DuckDB files.
"""

from __future__ import annotations

import json
import signal
import textwrap
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from conftest import serving, start_connector

pytestmark = pytest.mark.slow  # functions waited on through callbacks: about 30 s

# Two pages, each POSTed to the callback; the first call also tries a wrong token, no
# token and a second POST, and the second page reports the statuses they got. The
# function goes on working after posting, then returns what Netlify would ignore.
CRM_BACKGROUND = """\
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const seen = [];

async function post(url, token, body) {
  const headers = token === undefined ? {} : { Authorization: `Bearer ${token}` };
  const response = await fetch(url, { method: "POST", headers, body: JSON.stringify(body) });
  return response.status;
}

export const handler = async (request) => {
  const { url, token } = request.callback;
  const call = Number(new URL(url).pathname.split("/").pop());
  await sleep(100);
  const page = request.state.page ?? 0;
  const answer = {
    state: { page: page + 1 },
    insert: { contacts: [{ id: page + 1, callback_path: new URL(url).pathname }] },
    schema: { contacts: { primary_key: ["id"] }, posts: { primary_key: ["call", "attempt"] } },
    hasMore: page === 0,
  };
  if (page === 0) {
    seen.push({ attempt: "wrong token", status: await post(url, "not-the-token", answer) });
    seen.push({ attempt: "no token", status: await post(url, undefined, answer) });
  } else {
    answer.insert.posts = seen.map((post) => ({ call: 1, ...post }));
  }
  seen.push({ attempt: "the page", status: await post(url, token, answer) });
  seen.push({ attempt: "again", status: await post(url, token, answer) });
  await sleep(300); // still working after posting: the page is applied meanwhile
  return { statusCode: 202 };
};
"""

PY_POSTER = """\
import json
import urllib.error
import urllib.request


def post(callback, body):
    request = urllib.request.Request(
        callback["url"],
        data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + callback["token"]},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
"""


def write_project(root: Path, connectors: dict, files: dict[str, str]) -> Path:
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    document = {
        "warehouse": "duckdb:///warehouse.duckdb",
        "server": {"listen": "127.0.0.1:0"},
        "connectors": connectors,
    }
    config = root / "connectors.yaml"
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    return config


def alerts(warehouse, path: Path) -> list[tuple[str, str, str]]:
    with warehouse(path) as con:
        return con.execute(
            "SELECT kind, error_type, message FROM connector_runtime.alerts ORDER BY created_at"
        ).fetchall()


# -- connector run: the loopback listener ----------------------------------------------


def test_a_netlify_background_function_posts_its_pages(tmp_path, node, connector, warehouse):
    config = write_project(
        tmp_path,
        {"crm": {"function": {"netlify": "crm-background"}}},
        {"netlify/functions/crm-background.mjs": CRM_BACKGROUND},
    )

    result = connector("run", "crm", config=config, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    with warehouse(tmp_path / "warehouse.duckdb") as con:
        contacts = con.execute("SELECT id, callback_path FROM crm.contacts ORDER BY id").fetchall()
        posts = con.execute("SELECT attempt, status FROM crm.posts ORDER BY status").fetchall()
        sync_id, state = con.execute(
            "SELECT s.sync_id, CAST(t.state AS VARCHAR) FROM connector_runtime.syncs s,"
            " connector_runtime.state t"
        ).fetchone()
    assert contacts == [
        (1, f"/api/callbacks/{sync_id}/1"),
        (2, f"/api/callbacks/{sync_id}/2"),
    ]
    assert sorted(posts, key=lambda post: post[1]) == [
        ("the page", 202),
        ("no token", 401),
        ("wrong token", 403),
        ("again", 409),  # the first page posted counts
    ]
    assert json.loads(state) == {"page": 2}


def test_a_python_background_function_under_run_and_test(tmp_path, connector, warehouse):
    handler = PY_POSTER + textwrap.dedent(
        """
        def handler(request):
            page = {"state": {"synced": True}, "insert": {"items": [{"id": 1}]}}
            if not request.get("setup_test"):
                post(request["callback"], page)
            else:
                page["insert"]["items"].append({"id": 2})
                post(request["callback"], page)
            return None  # ignored: the page came by callback
        """
    )
    config = write_project(
        tmp_path,
        {"items": {"function": {"local": "handler.py", "background": True}}},
        {"handler.py": handler},
    )

    tested = connector("test", "items", config=config, cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr
    assert tested.said("items: the function answered with a valid response (2 rows")
    assert not (tmp_path / "warehouse.duckdb").exists()

    result = connector("run", "items", config=config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with warehouse(tmp_path / "warehouse.duckdb") as con:
        assert con.execute("SELECT id FROM items.items").fetchall() == [(1,)]


@pytest.mark.parametrize(
    ("posted", "kind", "said"),
    [
        ({"errorMessage": "quota exceeded", "errorType": "QuotaError"}, "function_error", "quota exceeded"),
        ({"insert": {"items": [{"id": 1}]}}, "invalid_response", "state"),
    ],
    ids=["error-shaped", "no-state"],
)  # fmt: skip
def test_a_posted_page_is_judged_like_any_answer(
    tmp_path, connector, warehouse, posted, kind, said
):
    handler = PY_POSTER + f"\n\ndef handler(request):\n    post(request['callback'], {posted!r})\n"
    config = write_project(
        tmp_path,
        {"items": {"function": {"local": "items-background.py"}}},  # background by its name
        {"items-background.py": handler},
    )

    result = connector("run", "items", config=config, cwd=tmp_path)

    assert result.returncode == 1
    [(alert_kind, _, message)] = alerts(warehouse, tmp_path / "warehouse.duckdb")
    assert alert_kind == kind
    assert said in message
    with warehouse(tmp_path / "warehouse.duckdb") as con:  # nothing of the page written
        assert con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'items'"
        ).fetchone() == (0,)


@pytest.mark.parametrize(
    ("files", "function", "error_type", "said"),
    [
        (
            {"fail-background.mjs": "export const handler = async () => { throw new TypeError('no API key'); };"},
            {"local": "fail-background.mjs"},
            "TypeError",
            "no API key",
        ),
        (
            {"handler.py": "def handler(request):\n    return {'statusCode': 202}\n"},
            {"local": "handler.py", "background": True},
            "Background.NoPage",
            "returned without POSTing its page",
        ),
    ],
    ids=["node-throws", "python-returns-without-posting"],
)  # fmt: skip
def test_a_call_that_ends_without_its_page_fails_at_once(
    tmp_path, node, connector, warehouse, files, function, error_type, said
):
    config = write_project(tmp_path, {"demo": {"function": function}}, files)  # timeout: 15m

    started = time.monotonic()
    result = connector("run", "demo", config=config, cwd=tmp_path)

    assert time.monotonic() - started < 60  # not the 15 minutes of its timeout
    assert result.returncode == 1
    [(kind, alert_error_type, message)] = alerts(warehouse, tmp_path / "warehouse.duckdb")
    assert (kind, alert_error_type) == ("function_error", error_type)
    assert said in message


def test_a_page_asked_for_ahead_is_cut_short_when_the_sync_fails(tmp_path, connector, warehouse):
    """Page 1 is refused after page 2 was asked for (paging ahead), and page 2 would take
    minutes: the sync fails at once, its alert about page 1."""
    handler = PY_POSTER + textwrap.dedent(
        """
        import time

        def handler(request):
            if request["state"].get("page") == 1:
                time.sleep(600)  # page 2 would take ten minutes
            rows = [{"id": n, "name": f"item {n}"} for n in range(100_000)]  # a while to plan
            rows.append({"name": "a row without its primary key"})
            post(request["callback"], {
                "state": {"page": 1},
                "insert": {"items": rows},
                "schema": {"items": {"primary_key": ["id"]}},
                "hasMore": True,
            })
        """
    )
    function = {"local": "handler.py", "background": True}  # timeout: 15m
    config = write_project(tmp_path, {"items": {"function": function}}, {"handler.py": handler})

    started = time.monotonic()
    result = connector("run", "items", config=config, cwd=tmp_path)

    assert time.monotonic() - started < 60
    assert result.returncode == 1
    [(kind, _, message)] = alerts(warehouse, tmp_path / "warehouse.duckdb")
    assert kind == "invalid_response"
    assert "primary-key column 'id'" in message


# -- an HTTP host that answers 202 at once, as Netlify does ------------------------------


class NetlifyLike(ThreadingHTTPServer):
    """Answers every POST 202 with no body; then, unless the path says `silent`, POSTs
    the page to the request's callback from another thread."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _NetlifyHandler)
        self.posted: list[int] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _NetlifyHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()
        if "silent" not in self.path:
            threading.Thread(target=self._post_later, args=(request,)).start()

    def _post_later(self, request: dict) -> None:
        time.sleep(0.2)
        callback = request["callback"]
        page = {"state": {"at": 1}, "insert": {"orders": [{"id": 7, "total": 12.5}]}}
        post = urllib.request.Request(
            callback["url"],
            data=json.dumps(page).encode(),
            headers={"Authorization": f"Bearer {callback['token']}"},
            method="POST",
        )
        with urllib.request.urlopen(post, timeout=30) as response:
            self.server.posted.append(response.status)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def netlify_like():
    with serving(NetlifyLike()) as server:
        yield server


def test_an_http_background_function_answers_202_then_posts(
    tmp_path, connector, warehouse, netlify_like
):
    url = f"{netlify_like.url}/.netlify/functions/orders-background"  # background by its name
    config = write_project(tmp_path, {"orders": {"function": {"http": url}}}, {})

    result = connector("run", "orders", config=config, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert netlify_like.posted == [202]
    with warehouse(tmp_path / "warehouse.duckdb") as con:
        assert con.execute("SELECT id, total FROM orders.orders").fetchall() == [(7, 12.5)]


def test_a_function_that_never_posts_times_out_at_its_timeout(
    tmp_path, connector, warehouse, netlify_like
):
    url = f"{netlify_like.url}/silent"
    function = {"http": url, "background": True, "timeout": "2s"}
    config = write_project(tmp_path, {"orders": {"function": function}}, {})

    started = time.monotonic()
    result = connector("run", "orders", config=config, cwd=tmp_path)

    assert 2 <= time.monotonic() - started < 60
    assert result.returncode == 1
    [(kind, error_type, message)] = alerts(warehouse, tmp_path / "warehouse.duckdb")
    assert (kind, error_type) == ("function_error", "Background.Timedout")
    assert "did not POST its page to its callback within 2 s" in message


# -- connector serve: the API's callback route -----------------------------------------


RECORDING_POSTER = PY_POSTER + textwrap.dedent(
    '''
    import pathlib

    HERE = pathlib.Path(__file__).parent


    def handler(request):
        """Keeps its callback for the test; posts the page unless told to stay silent."""
        name = request["secrets"]["name"]
        (HERE / f"{name}.callback.json").write_text(json.dumps(request["callback"]))
        if name == "crm":
            post(request["callback"], {"state": {"n": 1}, "insert": {"people": [{"id": 1}]}})
        return None
    '''
)


def served(root: Path, timeout: float = 60.0) -> dict:
    info = root / ".connector-runtime" / "server.json"
    deadline = time.monotonic() + timeout
    while not info.exists():
        assert time.monotonic() < deadline, "connector serve did not start"
        time.sleep(0.05)
    return json.loads(info.read_text())


def post_status(url: str, body: bytes, authorization: str | None) -> int:
    headers = {"Authorization": authorization} if authorization else {}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_under_serve_pages_are_posted_to_its_api(tmp_path, connector, warehouse):
    function = {"local": "handler.py", "background": True}
    config = write_project(
        tmp_path,
        {
            "crm": {"function": function, "secrets": {"name": "crm"}},
            "quiet": {"function": {**function, "timeout": "1s"}, "secrets": {"name": "quiet"}},
        },
        {"handler.py": RECORDING_POSTER},
    )
    server = start_connector("serve", config=config, cwd=tmp_path)
    try:
        api = served(tmp_path)
        ran = connector("run", "crm", config=config, cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr
        assert ran.said("connector serve (pid")  # the sync ran in serve, not in this process
        silent = connector("run", "quiet", config=config, cwd=tmp_path)
        assert silent.returncode == 1
        assert silent.said("Background.Timedout")

        crm = json.loads((tmp_path / "crm.callback.json").read_text())
        quiet = json.loads((tmp_path / "quiet.callback.json").read_text())
        assert crm["url"].startswith(f"{api['url']}/api/callbacks/")
        page = b'{"state": {}}'
        token = f"Bearer {crm['token']}"
        unknown = crm["url"].rsplit("/", 1)[0] + "/99"
        assert post_status(crm["url"], page, token) == 409  # posted already
        assert post_status(crm["url"], page, "Bearer wrong") == 403
        assert post_status(crm["url"], page, None) == 401
        assert post_status(crm["url"], page, f"Bearer {api['token']}") == 403  # not the API's
        assert post_status(quiet["url"], page, f"Bearer {quiet['token']}") == 410  # timed out
        assert post_status(unknown, page, token) == 404
        # the rest of the API still wants its own token
        assert post_status(f"{api['url']}/api/connectors/crm/run", b"", token) == 401
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    with warehouse(tmp_path / "warehouse.duckdb") as con:
        assert con.execute("SELECT id FROM crm.people").fetchall() == [(1,)]


def test_public_url_is_where_functions_elsewhere_post(tmp_path, monkeypatch, connector):
    from connector_runtime.config import load_config
    from connector_runtime.scheduler import public_url

    config = write_project(tmp_path, {"crm": {"function": {"http": "https://x.example/f"}}}, {})
    listening = "http://127.0.0.1:8765"
    assert public_url(load_config(config), listening) == listening
    document = yaml.safe_load(config.read_text())
    document["server"]["public_url"] = "https://${env:TUNNEL_HOST}/runtime"
    config.write_text(yaml.safe_dump(document))
    monkeypatch.setenv("TUNNEL_HOST", "abc.tunnel.example")
    assert public_url(load_config(config), listening) == "https://abc.tunnel.example/runtime"

    document["server"]["public_url"] = "ftp://abc.tunnel.example"
    config.write_text(yaml.safe_dump(document))
    result = connector("validate", config=config, cwd=tmp_path)
    assert result.returncode == 2
    assert result.said("server.public_url: 'ftp://abc.tunnel.example' is not an http(s) URL")
