"""The dashboard in a real browser: headless Chromium (Playwright's sync API) against a real
`connector serve` process on a real DuckDB file.

One serve process and one browser are shared by the module; each test gets a fresh browser
context logged in through the login URL that `serve` printed, and fails if any of its
requests leave loopback, or the page logs a console error or throws.

Without Playwright (`pip install -e '.[dev]'`) or Chromium (`apt-get install chromium`)
these tests skip, or fail under CI=true. `CHROMIUM` names another Chromium binary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import cli_env

try:
    from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
except ImportError:  # the skip (or CI failure) below says what to install
    sync_playwright = None

CHROMIUM_ARGS = [
    "--no-sandbox",  # the suite may run as root, in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 10_000  # any one wait in a page; the syncs here take well under a second
SERVE_START_S = 30.0

# what a function may send that must show as text and never run
SCRIPT = "<script>window.__pwned=1</script>"
IMG = '<img src=x onerror="window.__pwned=2">'
PRINTED = "<script>window.__pwned=4</script>"
MARKUP_TABLE = "<b>bold</b>"
MARKUP_COLUMN = "<b>col</b>"

HANDLER = f'''
import pathlib
import time

HERE = pathlib.Path(__file__).parent


def tick(request):
    n = request["state"].get("n", 0) + 1
    rows = [{{"id": n * 100 + i, "amount": i * 2.5, "label": f"row {{i}}"}} for i in range(5 * n)]
    return {{
        "state": {{"n": n}},
        "insert": {{"orders": rows}},
        "schema": {{"orders": {{"primary_key": ["id"]}}}},
    }}


def steady(request):
    return tick(request)


def pausable(request):
    return tick(request)


def idle(request):
    """Waits for the test to create `idle.go` (it first makes sure the page listens)."""
    (HERE / "idle.called").touch()
    deadline = time.monotonic() + 30
    while not (HERE / "idle.go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return tick(request)


def broken(request):
    print({PRINTED!r})
    return {{
        "errorMessage": {"upstream said " + SCRIPT + " and " + IMG!r},
        "errorType": "UpstreamError",
        "stackTrace": ["at fetch_page (api.js:12)", {"at " + SCRIPT!r}],
    }}


def flaky(request):
    raise TimeoutError("the upstream API timed out")


def markup(request):
    return {{
        "state": {{"done": True}},
        "insert": {{{MARKUP_TABLE!r}: [{{"id": 1, {MARKUP_COLUMN!r}: "x"}}]}},
        "schema": {{{MARKUP_TABLE!r}: {{"primary_key": ["id"]}}}},
    }}
'''

NEVER_SOON = {"cron": "0 3 1 1 *"}  # scheduled, yet nothing fires while the tests run
CONNECTORS = {
    "steady": {"schedule": NEVER_SOON},
    "broken": {},
    "flaky": {},
    "markup": {"naming": "source"},
    "idle": {},
    "pausable": {"schedule": NEVER_SOON},
}


# -- what the browser needs ---------------------------------------------------------------


def _chromium() -> str | None:
    return os.environ.get("CHROMIUM") or (
        "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")
    )


def _missing(message: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: the browser tests must run)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        _missing("Playwright is not installed: pip install playwright (or pip install -e '.[dev]')")
    executable = _chromium()
    if executable is None or not os.path.exists(executable):
        _missing("Chromium is not installed: apt-get install chromium (or set CHROMIUM=/path)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


# -- connector serve ------------------------------------------------------------------------


class Served:
    """A running `connector serve`: its URL, login URL, token and folder."""

    @classmethod
    def start(cls, root: Path, config: str = "connectors.yaml") -> Served:
        """`connector -c CONFIG serve` in `root`, once it serves (stop it with `stop`)."""
        process = subprocess.Popen(
            [sys.executable, "-m", "connector_runtime.cli", "-c", config, "serve"],
            cwd=root,
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        served = cls(root, process)
        try:
            served.wait_serving()
        except BaseException:
            served.stop()
            raise
        return served

    def __init__(self, root: Path, process: subprocess.Popen) -> None:
        self.root, self.process = root, process
        self.lines: list[str] = []
        self.serving: dict | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, name="serve-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """stderr line by line as it comes; the `serving` line sets `ready`."""
        for line in self.process.stderr:
            self.lines.append(line)
            if self.serving is None:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(event, dict) and event.get("event") == "serving":
                    self.serving = event
                    self._ready.set()
        self._ready.set()  # exited: `wait_serving` reports it

    def wait_serving(self) -> None:
        if not self._ready.wait(SERVE_START_S) or self.serving is None:
            raise AssertionError(f"connector serve did not start:\n{self.log()}")

    def log(self) -> str:
        return "".join(self.lines)[-4000:]

    @property
    def url(self) -> str:
        return self.serving["url"]

    @property
    def login(self) -> str:
        return self.serving["login"]

    def api(self, method: str, path: str) -> dict:
        token = self.login.partition("token=")[2]
        request = urllib.request.Request(
            self.url + path, method=method, headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else {}

    def sync(self, name: str) -> dict:
        """Start a sync of `name` through the API and wait for its end."""
        deadline = time.monotonic() + 30
        while True:
            try:
                sync_id = self.api("POST", f"/api/connectors/{name}/run")["sync_id"]
                break
            except urllib.error.HTTPError as exc:
                # 409: the previous sync's end is readable a moment before its slot is free
                if exc.code != 409 or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
        while True:
            sync = self.api("GET", f"/api/syncs/{sync_id}")
            if sync["status"] != "running":
                return sync
            if time.monotonic() > deadline:
                raise AssertionError(f"sync of {name} still running after 30 s: {sync}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("dashboard")
    (root / "handler.py").write_text(textwrap.dedent(HANDLER))
    document = {
        "warehouse": "duckdb:///warehouse.duckdb",
        "server": {"listen": "127.0.0.1:0"},
        "connectors": {
            name: {"function": {"local": "handler.py", "handler": name}, **options}
            for name, options in CONNECTORS.items()
        },
    }
    (root / "connectors.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    server = Served.start(root)
    try:
        assert urlsplit(server.url).hostname == "127.0.0.1", server.url
        # history to show: three syncs of steady, one failure each of broken and flaky
        with ThreadPoolExecutor(4) as pool:  # different connectors sync side by side
            steady = pool.submit(lambda: [server.sync("steady") for _ in range(3)])
            others = list(pool.map(server.sync, ("broken", "flaky", "markup")))
            ended = steady.result() + others
        statuses = [s["status"] for s in ended]
        assert statuses == ["succeeded"] * 3 + ["failed", "failed", "succeeded"], ended
        yield server
    finally:
        server.stop()


# -- a logged-in browser, watched -----------------------------------------------------------


class Watch:
    """Every request URL, console error and page error of a browser context."""

    def __init__(self, context: BrowserContext) -> None:
        self.requests: list[str] = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.allowed: list[str] = []
        context.on("request", lambda request: self.requests.append(request.url))
        context.on("console", self._console)
        context.on("weberror", lambda error: self.page_errors.append(str(error.error)))

    def _console(self, message) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def allow(self, text: str) -> None:
        """Console errors containing `text` are expected by this test."""
        self.allowed.append(text)

    def check(self) -> None:
        assert any("/static/dashboard.js" in url for url in self.requests), self.requests
        away = [
            url
            for url in self.requests
            if not url.startswith("data:") and urlsplit(url).hostname != "127.0.0.1"
        ]
        assert not away, f"requests left loopback: {away}"
        errors = [e for e in self.console_errors if not any(a in e for a in self.allowed)]
        assert not errors, f"console errors: {errors}"
        assert not self.page_errors, f"page errors: {self.page_errors}"


class Dashboard:
    def __init__(self, served: Served, context: BrowserContext, watch: Watch) -> None:
        self.served, self.context, self.watch = served, context, watch
        self.page: Page = context.new_page()

    def open(self, path: str) -> Page:
        response = self.page.goto(self.served.url + path)
        assert response is not None and response.status == 200, (path, response)
        return self.page


def new_context(browser: Browser, served: Served, **options) -> BrowserContext:
    context = browser.new_context(base_url=served.url, **options)
    context.set_default_timeout(TIMEOUT_MS)
    return context


def log_in(page: Page, served: Served) -> None:
    """Open the login URL `serve` printed: it sets the cookie and lands on the overview."""
    page.goto(served.login)
    expect(page).to_have_url(served.url + "/")


@contextmanager
def watched_page(browser: Browser, served: Served, path: str) -> Iterator[Page]:
    """A page of a fresh browser context, logged in to `served` and at `path`; the context's
    requests and errors are checked when the block ends (`Watch`)."""
    context = new_context(browser, served)
    watch = Watch(context)
    try:
        page = context.new_page()
        log_in(page, served)
        response = page.goto(served.url + path)
        assert response is not None and response.status == 200, (path, response)
        yield page
    finally:
        context.close()
    watch.check()


@pytest.fixture
def dashboard(browser: Browser, served: Served) -> Iterator[Dashboard]:
    context = new_context(browser, served)
    watch = Watch(context)
    try:
        board = Dashboard(served, context, watch)
        log_in(board.page, served)
        yield board
    finally:
        context.close()
    watch.check()


def pwned(page: Page):
    return page.evaluate("() => window.__pwned")


def heading_badges(page: Page):
    return page.locator(".heading [data-connector] .badge")


def history(page: Page):
    return page.locator("table.syncs tbody tr")


# -- tests ------------------------------------------------------------------------------------


def test_before_login_the_overview_is_a_401_page_saying_how_to_log_in(browser, served):
    context = new_context(browser, served)
    try:
        page = context.new_page()
        response = page.goto(served.url + "/")
        assert response is not None and response.status == 401
        expect(page.locator("body")).to_contain_text("not logged in")
        expect(page.locator("body")).to_contain_text("/login?token=")
        expect(page.locator("body")).to_contain_text("Authorization: Bearer")
        assert page.locator("table").count() == 0  # nothing of the dashboard shows

        wrong = page.goto(served.url + "/login?token=wrong")
        assert wrong is not None and wrong.status == 401
        assert not context.cookies()
    finally:
        context.close()


def test_the_login_url_serve_printed_sets_an_httponly_strict_cookie(browser, served):
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/login\?token=[\w-]+", served.login)
    context = new_context(browser, served)
    try:
        page = context.new_page()
        log_in(page, served)
        expect(page.locator("h1")).to_have_text("Connectors")
        [cookie] = context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.evaluate("() => document.cookie") == ""  # no script can read it
        # the session holds across pages
        assert page.goto(served.url + "/alerts").status == 200
    finally:
        context.close()


def test_overview_shows_each_connector_with_status_schedule_and_last_sync(dashboard):
    page = dashboard.page
    rows = page.locator("table.connectors tbody tr")
    expect(rows).to_have_count(len(CONNECTORS))
    for name in CONNECTORS:
        expect(page.locator(f'tr[data-connector="{name}"] td').first).to_have_text(name)

    steady = page.locator('tr[data-connector="steady"]')
    expect(steady.locator('[data-label="Status"] .badge')).to_have_text("idle")
    expect(steady.locator('[data-label="Schedule"]')).to_have_text("cron 0 3 1 1 *")
    expect(steady.locator('[data-label="Last sync"] .badge')).to_have_text("succeeded")
    expect(steady.locator('[data-label="Last sync"] time')).to_have_text(
        re.compile(r"^(just now|\d+ min ago)$")
    )
    expect(steady.locator('[data-label="Rows"]')).to_have_text("15")  # the third sync's
    expect(steady.locator('[data-label="Next run"] time')).to_have_text(
        re.compile(r"^in \d+ (d|h|min)$")  # its cron's next fire: on 1 January
    )
    expect(steady.locator('[data-label="Open alerts"]')).to_have_text("0")

    broken = page.locator('tr[data-connector="broken"]')
    expect(broken.locator('[data-label="Status"] .badge')).to_have_text("failed")
    expect(broken.locator('[data-label="Schedule"]')).to_have_text("manual")
    expect(broken.locator('[data-label="Last sync"] .badge')).to_have_text("failed")
    expect(broken.locator('[data-label="Open alerts"] a')).to_have_text("1")

    page.locator('tr[data-connector="steady"] a').click()
    expect(page).to_have_url(dashboard.served.url + "/connectors/steady")


def test_connector_page_shows_history_chart_tables_and_state(dashboard):
    page = dashboard.open("/connectors/steady")
    expect(page.locator("h1")).to_have_text("steady")
    expect(heading_badges(page).first).to_have_text("idle")

    expect(history(page)).to_have_count(3)
    for row, upserted in zip(history(page).all(), ("15", "10", "5"), strict=True):  # newest first
        expect(row.locator('[data-label="Status"]')).to_have_text("succeeded")
        expect(row.locator('[data-label="Trigger"]')).to_have_text("manual")
        expect(row.locator('[data-label="Pages"]')).to_have_text("1")
        expect(row.locator('[data-label="Upserted"]')).to_have_text(upserted)

    bars = page.locator("figure.chart svg rect")
    expect(bars).to_have_count(3)
    heights = [float(bar.get_attribute("height")) for bar in bars.all()]
    assert heights[0] < heights[1] < heights[2], heights  # oldest left: 5, 10, 15 rows
    expect(page.locator("figure.chart svg polyline")).to_have_count(1)

    table = page.locator("details.table")
    expect(table).to_have_count(1)
    expect(table.locator("summary")).to_contain_text("steady")
    expect(table.locator("summary")).to_contain_text("orders")
    expect(table.locator("summary")).to_contain_text("30 rows")
    expect(table.locator("summary")).to_contain_text("key id")
    columns = {
        cells[0]: cells[1]
        for cells in (
            [cell.strip() for cell in row.locator("td").all_inner_texts()]
            for row in table.locator("table.columns tbody tr").all()
        )
    }
    assert set(columns) == {"id", "amount", "label"}, columns
    assert all(columns.values()), columns  # every column shows a type
    assert columns["id"] != columns["label"], columns

    state = json.loads(page.locator("pre.state").inner_text())
    assert state == {"n": 3}


def test_failed_syncs_show_in_the_chart_even_without_rows(dashboard):
    page = dashboard.open("/connectors/broken")
    bars = page.locator("figure.chart svg rect")
    expect(bars).to_have_count(1)
    expect(bars.first).to_have_class(re.compile(r"\bbar-failed\b"))
    assert float(bars.first.get_attribute("height")) > 0
    assert bars.first.bounding_box()["height"] >= 3  # seen on the screen, not a 0 px bar
    expect(page.locator("figure.chart figcaption")).to_contain_text("rows (most: 0)")


def test_alerts_page_shows_kind_error_type_message_and_a_stack_trace_on_click(dashboard):
    page = dashboard.open("/alerts")
    alert = page.locator("article.alert", has=page.locator('a[href="/connectors/broken"]'))
    expect(alert).to_have_count(1)
    expect(alert.locator("header .badge")).to_have_text("open")
    expect(alert.locator("code.kind")).to_have_text("function_error")
    expect(alert.locator("code.error-type")).to_have_text("UpstreamError")
    expect(alert.locator("p.message")).to_have_text(f"upstream said {SCRIPT} and {IMG}")
    expect(alert.locator("form button")).to_have_text("Resolve")

    trace = alert.locator("details")
    expect(trace.locator("summary")).to_have_text("Stack trace (2 lines)")
    expect(trace.locator("pre")).to_be_hidden()
    assert trace.get_attribute("open") is None
    trace.locator("summary").click()
    expect(trace).to_have_attribute("open", "")
    expect(trace.locator("pre")).to_be_visible()
    expect(trace.locator("pre")).to_contain_text("at fetch_page (api.js:12)")
    expect(trace.locator("pre")).to_contain_text(f"at {SCRIPT}")
    assert pwned(page) is None

    flaky = page.locator("article.alert", has=page.locator('a[href="/connectors/flaky"]'))
    expect(flaky.locator("code.error-type")).to_have_text("TimeoutError")
    expect(flaky.locator("p.message")).to_contain_text("the upstream API timed out")


def test_what_a_function_sends_shows_as_text_and_runs_nothing(dashboard):
    for path in ("/", "/alerts", "/connectors/broken"):
        page = dashboard.open(path)
        expect(page.locator("h1")).to_be_visible()
        if path != "/":
            expect(page.get_by_text(SCRIPT).first).to_be_visible()
            expect(page.get_by_text(IMG).first).to_be_visible()
        for details in page.locator("details").all():
            if details.get_attribute("open") is None:
                details.locator("summary").click()  # the stack traces render too
                expect(details).to_have_attribute("open", "")
        assert page.locator("main img, main script").count() == 0, path
        assert pwned(page) is None, path

    page = dashboard.open("/connectors/broken")
    expect(page.locator("table.syncs td.error")).to_have_text(
        f"function_error: upstream said {SCRIPT} and {IMG}"
    )
    expect(page.locator("pre.output")).to_contain_text(PRINTED)  # what the function printed

    page = dashboard.open("/connectors/markup")
    table = page.locator("details.table")
    expect(table.locator("summary code")).to_contain_text(MARKUP_TABLE)
    expect(table.locator("table.columns")).to_contain_text(MARKUP_COLUMN)
    expect(page.get_by_text(MARKUP_COLUMN, exact=True)).to_be_visible()
    assert page.locator("main b").count() == 0
    assert pwned(page) is None


def test_run_now_starts_a_sync_that_shows_as_succeeded_live(dashboard):
    served = dashboard.served
    page = dashboard.open("/connectors/idle")
    expect(heading_badges(page).first).to_have_text("idle")
    expect(history(page)).to_have_text(["No syncs yet: press Run now."])

    page.get_by_role("button", name="Run now").click()
    expect(page).to_have_url(served.url + "/connectors/idle")
    # the page the POST lands on already shows the sync (queued or started)
    expect(heading_badges(page).first).to_have_text("running")
    deadline = time.monotonic() + 20
    while not (served.root / "idle.called").exists():  # the sync has started: sync.started sent
        assert time.monotonic() < deadline, f"the sync never called the function:\n{served.log()}"
        time.sleep(0.02)

    # a page that opened after sync.started, listening for the end, with no reload pending
    page.close()
    page = dashboard.context.new_page()
    assert page.goto(served.url + "/connectors/idle").status == 200
    expect(heading_badges(page).first).to_have_text("running")
    expect(history(page).first.locator('[data-label="Status"]')).to_have_text("running")
    expect(page.locator("#live")).to_have_class(re.compile(r"\bon\b"))
    (served.root / "idle.go").touch()

    # sync.finished reloads the page: no reload of ours
    expect(history(page).first.locator('[data-label="Status"]')).to_have_text("succeeded")
    expect(heading_badges(page).first).to_have_text("idle")
    expect(history(page)).to_have_count(1)
    expect(history(page).first.locator('[data-label="Upserted"]')).to_have_text("5")
    expect(page.locator("pre.state")).to_contain_text('"n": 1')

    page.goto(served.url + "/")
    idle = page.locator('tr[data-connector="idle"]')
    expect(idle.locator('[data-label="Last sync"] .badge')).to_have_text("succeeded")


def test_resync_asks_first_and_cancel_does_nothing(dashboard):
    served = dashboard.served
    before = served.api("GET", "/connectors/steady.json")
    page = dashboard.open("/connectors/steady")

    page.get_by_role("link", name="Re-sync…").click()
    confirm = page.locator("form.confirm")
    expect(confirm).to_be_visible()
    expect(confirm).to_contain_text("Re-sync from an empty state")
    expect(confirm.get_by_role("button", name="Yes, re-sync")).to_be_visible()
    expect(page.get_by_role("link", name="Re-sync…")).to_have_count(0)

    confirm.get_by_role("link", name="Cancel").click()
    expect(page).to_have_url(served.url + "/connectors/steady")
    expect(page.locator("form.confirm")).to_have_count(0)
    expect(page.get_by_role("link", name="Re-sync…")).to_be_visible()
    expect(heading_badges(page).first).to_have_text("idle")
    expect(history(page)).to_have_count(len(before["syncs"]))

    after = served.api("GET", "/connectors/steady.json")
    assert after["syncs"] == before["syncs"] and after["state"] == before["state"]
    assert after["status"] == "idle"


def test_pause_shows_paused_and_the_button_becomes_resume(dashboard):
    page = dashboard.open("/connectors/pausable")
    expect(page.get_by_role("button", name="Pause")).to_be_visible()
    expect(heading_badges(page)).to_have_text(["idle"])

    page.get_by_role("button", name="Pause").click()
    expect(heading_badges(page)).to_have_text(["idle", "paused"])
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    expect(page.locator("dl.facts")).to_contain_text("Next runpaused")
    assert dashboard.served.api("GET", "/connectors/pausable.json")["paused"] is True

    page.goto(dashboard.served.url + "/")
    pausable = page.locator('tr[data-connector="pausable"]')
    expect(pausable.locator('[data-label="Status"] .badge')).to_have_text(["idle", "paused"])
    expect(pausable.locator('[data-label="Next run"]')).to_have_text("paused")

    page.goto(dashboard.served.url + "/connectors/pausable")
    page.get_by_role("button", name="Resume").click()
    expect(heading_badges(page)).to_have_text(["idle"])
    expect(page.get_by_role("button", name="Pause")).to_be_visible()


def test_resolve_moves_an_alert_to_resolved(dashboard):
    page = dashboard.open("/alerts")
    open_section = page.locator("section", has=page.locator("h2", has_text="Open"))
    resolved_section = page.locator("section", has=page.locator("h2", has_text="Resolved"))
    flaky = 'article.alert:has(a[href="/connectors/flaky"])'
    expect(open_section.locator(flaky)).to_have_count(1)
    expect(resolved_section.locator(flaky)).to_have_count(0)
    opened = int(open_section.locator("h2 .count").inner_text())

    open_section.locator(flaky).get_by_role("button", name="Resolve").click()
    expect(page).to_have_url(dashboard.served.url + "/alerts")
    expect(open_section.locator(flaky)).to_have_count(0)
    expect(resolved_section.locator(flaky)).to_have_count(1)
    expect(resolved_section.locator(flaky).locator("header .badge")).to_have_text("resolved")
    expect(resolved_section.locator(flaky).get_by_role("button", name="Resolve")).to_have_count(0)
    expect(open_section.locator("h2 .count")).to_have_text(str(opened - 1))

    page.goto(dashboard.served.url + "/")
    expect(page.locator('tr[data-connector="flaky"] [data-label="Open alerts"]')).to_have_text("0")


def test_a_phone_width_renders_without_horizontal_scrolling(browser, served):
    context = new_context(browser, served, viewport={"width": 390, "height": 844})
    watch = Watch(context)
    try:
        page = context.new_page()
        log_in(page, served)
        for path in ("/", "/connectors/steady", "/connectors/broken", "/alerts"):
            assert page.goto(served.url + path).status == 200
            expect(page.locator("h1")).to_be_visible()
            width = page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= 390, f"{path} is {width} px wide at 390 px"
    finally:
        context.close()
    watch.check()


def test_pages_carry_a_csp_that_forbids_inline_script(dashboard):
    for path in ("/", "/alerts", "/connectors/steady"):
        response = dashboard.page.goto(dashboard.served.url + path)
        policy = response.headers.get("content-security-policy", "")
        directives = {d.split()[0]: d.split()[1:] for d in policy.split(";") if d.strip()}
        assert directives.get("script-src") == ["'self'"], policy
        assert directives.get("default-src") == ["'none'"], policy
        assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy

    # an inline script slipped into the page is refused by the browser
    dashboard.watch.allow("violates the following Content Security Policy directive")
    ran = dashboard.page.evaluate(
        """() => new Promise((resolve) => {
            document.addEventListener("securitypolicyviolation", (e) => resolve(e.violatedDirective));
            const script = document.createElement("script");
            script.textContent = "window.__inline = 1";
            document.body.append(script);
            setTimeout(() => resolve(window.__inline === 1 ? "ran" : "no event"), 2000);
        })"""
    )
    assert ran.startswith("script-src"), ran
    assert dashboard.page.evaluate("() => window.__inline") is None
