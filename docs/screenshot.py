"""Take the README's dashboard screenshot: docs/dashboard.png.

Copies `examples/transactions` to a temporary folder, adds a second connector (`orders`)
whose function fails, starts `connector serve` there, lets both schedules fire once,
syncs `orders` once more through the API (two failures, two open alerts) and photographs the dashboard in headless Chromium, 1280 px wide.

    .venv/bin/python docs/screenshot.py                 # the overview
    .venv/bin/python docs/screenshot.py --page /connectors/transactions

Needs Playwright (in the dev extra) and Chromium (`apt-get install chromium`; another
binary through CHROMIUM=/path).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "transactions"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

ORDERS = '''\
"""A connector whose upstream API is down: every sync fails and opens an alert."""

import urllib.error


def fetch(page):
    raise urllib.error.HTTPError(
        f"https://api.example.com/v2/orders?page={page}", 503, "Service Unavailable", {}, None
    )


def handler(request):
    fetch(request["state"].get("page", 1))
'''


class Serve:
    """`connector serve` in `folder`; its `serving` log line read from stderr."""

    def __init__(self, folder: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "connector_runtime.cli", "serve"],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.serving: dict | None = None
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(30) or self.serving is None:
            self.stop()
            raise SystemExit("connector serve did not start")

    def _read(self) -> None:
        for line in self.process.stderr:
            if self.serving is None and line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == "serving":
                    self.serving = event
                    self.ready.set()
        self.ready.set()

    def api(self, method: str, path: str) -> dict:
        token = self.serving["login"].partition("token=")[2]
        request = urllib.request.Request(
            self.serving["url"] + path, method=method, headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else {}

    def sync(self, name: str) -> str:
        """Start a sync (once the one running, a scheduled one say, is done); its status."""
        deadline = time.monotonic() + 120
        while True:
            try:
                sync_id = self.api("POST", f"/api/connectors/{name}/run")["sync_id"]
                break
            except urllib.error.HTTPError as exc:
                if exc.code != 409 or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)
        while (status := self.api("GET", f"/api/syncs/{sync_id}")["status"]) == "running":
            time.sleep(0.1)
        return status

    def settled(self) -> None:
        """Wait until every connector has synced once (their schedules fire soon after start)."""
        deadline = time.monotonic() + 120
        while any(
            c["last_sync"] is None or c["status"] == "running"
            for c in self.api("GET", "/api/connectors")["connectors"]
        ):
            if time.monotonic() > deadline:
                raise SystemExit("the first scheduled syncs did not finish within 2 minutes")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def prepare(folder: Path) -> None:
    shutil.copy(EXAMPLE / "handler.py", folder / "handler.py")
    (folder / "orders.py").write_text(textwrap.dedent(ORDERS))
    config = yaml.safe_load((EXAMPLE / "connectors.yaml").read_text())
    config["server"] = {"listen": "127.0.0.1:0"}
    config["connectors"]["orders"] = {
        "function": {"local": "orders.py", "timeout": "1m"},
        "schedule": "1h",
    }
    (folder / "connectors.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page", default="/", help="the dashboard page to photograph")
    parser.add_argument("--height", type=int, default=330, help="at least; the page may be taller")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args()
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        prepare(folder)
        serve = Serve(folder)
        try:
            serve.settled()  # transactions loads its 2,000 rows, orders fails
            print(f"sync orders again: {serve.sync('orders')}", file=sys.stderr)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": args.height})
                page.goto(serve.serving["login"])
                page.goto(serve.serving["url"] + args.page)
                expect(page.locator("#live")).to_have_class("live-dot on")  # live updates on
                page.screenshot(path=args.out, full_page=True)
                browser.close()
        finally:
            serve.stop()
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)", file=sys.stderr)


if __name__ == "__main__":
    main()
