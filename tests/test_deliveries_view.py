"""Delivery counts of syncs whose records went to a function, where an operator reads them:
`connector syncs` (its table and `--json`), the API of `connector serve`, the dashboard.

The counts are written into a real DuckDB warehouse through the Destination API, as a
sync writes them, so these tests need no destination function.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from conftest import Project
from test_dashboard import Served, history, watched_page
from test_dashboard import browser as browser  # fixture

from connector_runtime.control import delivery_text
from connector_runtime.destination import SyncRecord, open_destination

HANDLER = """
def handler(request):
    return {"state": {}, "hasMore": False}
"""
STATS = {"delivered": 1200, "retried": 3, "failed": 0, "p50_ms": 12.5, "p95_ms": 41.0}
SHOWN = "1,200 (3 retried, p95 41 ms)"


def counts(delivered: int, retried: int = 0, failed: int = 0, p95: float | None = None) -> dict:
    return {
        "delivered": delivered,
        "retried": retried,
        "failed": failed,
        "p50_ms": p95,
        "p95_ms": p95,
    }


@pytest.mark.parametrize(
    ("stats", "shown"),
    [
        pytest.param(None, "", id="none"),
        pytest.param(counts(7), "7", id="all-first-time"),
        pytest.param(counts(1200, 3, p95=41.0), SHOWN, id="retried+p95"),
        pytest.param(counts(0, 5, 2, 0.84), "0 (5 retried, 2 failed, p95 0.8 ms)", id="failed"),
        pytest.param(counts(10**6, p95=1234.4), "1,000,000 (p95 1,234 ms)", id="slow"),
    ],
)
def test_delivery_text(stats, shown):
    assert delivery_text(stats) == shown


def record_syncs(made: Project) -> None:
    """Two finished syncs of `demo`: `plain`, then `delivering` five minutes later."""
    first = datetime(2026, 12, 1, 10, tzinfo=UTC)
    with open_destination(f"duckdb:///{made.warehouse_path}") as destination:
        for sync_id, started in (("plain", first), ("delivering", first + timedelta(minutes=5))):
            record = SyncRecord(sync_id, "demo", "manual", started)
            destination.begin_sync(record)
            finished = started + timedelta(seconds=3)
            done = replace(record, finished_at=finished, status="succeeded", rows_upserted=1200)
            destination.end_sync(done)


def save_counts(made: Project) -> None:
    with open_destination(f"duckdb:///{made.warehouse_path}") as destination:
        destination.save_deliveries("delivering", "demo", STATS)


def rows_by_sync(stdout: str) -> tuple[list[str], list[str]]:
    """The table's header words and its rows (newest first)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    return lines[0].split(), lines[1:]


def test_connector_syncs_shows_delivered_only_when_a_listed_sync_delivered(project):
    made = project(HANDLER)
    record_syncs(made)
    before = made.connector("syncs", "demo")
    assert before.returncode == 0, before.stderr
    header, rows = rows_by_sync(before.stdout)
    assert "delivered" not in header and len(rows) == 2, before.stdout

    save_counts(made)
    after = made.connector("syncs", "demo")
    assert after.returncode == 0, after.stderr
    header, (newest, older) = rows_by_sync(after.stdout)
    assert header[-2:] == ["delivered", "error"], after.stdout
    assert SHOWN in newest and "retried" not in older, after.stdout

    listed = made.connector("syncs", "demo", "--json")
    assert listed.returncode == 0, listed.stderr
    documents = json.loads(listed.stdout)
    assert [(s["sync_id"], s["delivery"]) for s in documents] == [
        ("delivering", STATS),
        ("plain", None),
    ]


@pytest.fixture(scope="module")
def serving(tmp_path_factory) -> Iterator[tuple[Project, Served]]:
    """`connector serve` over a warehouse holding the two syncs and the counts."""
    made = Project(tmp_path_factory.mktemp("deliveries"), "demo")
    made.write_handler(textwrap.dedent(HANDLER))
    made.write_config()
    record_syncs(made)
    save_counts(made)
    served = Served.start(made.root, str(made.config))
    try:
        yield made, served
    finally:
        served.stop()


def test_the_api_and_the_cli_through_serve_give_each_sync_its_delivery(serving):
    made, served = serving
    history_page = served.api("GET", "/api/connectors/demo/syncs")["syncs"]
    assert [(s["sync_id"], s["delivery"]) for s in history_page] == [
        ("delivering", STATS),
        ("plain", None),
    ]
    assert served.api("GET", "/api/syncs/delivering")["delivery"] == STATS
    assert served.api("GET", "/api/syncs/plain")["delivery"] is None

    listed = made.connector("syncs", "demo", "--json")  # through the API of serve
    assert listed.returncode == 0, listed.stderr
    assert [s["delivery"] for s in json.loads(listed.stdout)] == [STATS, None]


def test_the_dashboard_shows_delivered_on_the_connector_page(browser, serving):
    from playwright.sync_api import expect  # installed: the browser fixture skips otherwise

    _, served = serving
    with watched_page(browser, served, "/connectors/demo") as page:
        expect(page.locator("table.syncs thead")).to_contain_text("Delivered")
        newest, older = history(page).all()
        expect(newest.locator('[data-label="Delivered"]')).to_have_text(SHOWN)
        expect(older.locator('[data-label="Delivered"]')).to_have_text("")
