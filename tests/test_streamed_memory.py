"""A streamed page through `connector run` needs the memory of a small one.

The function is a Python generator sending one page of `bytes` of JSON in parts of 2,000
rows. The CLI runs as a child of this test, reaped with `os.wait4`, whose `ru_maxrss`
is that process's peak (and its function worker's, which it reaps). A page held whole
would cost its size several times over (its JSON, then its rows as Python objects).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import CLI, cli_env

pytestmark = pytest.mark.slow  # an 80 MB page: a few seconds

GENERATOR = """
def row(i):
    return {"id": i, "name": f"customer {i}", "score": i * 0.5, "active": i % 2 == 0,
            "seen_at": "2026-01-02T10:00:00Z", "tags": ["a", str(i % 7)],
            "address": {"city": "Lisbon", "zip": f"{i % 10000:04d}"}}


def handler(request):
    target, sent, key = request["secrets"]["bytes"], 0, 0
    while sent < target:
        rows = [row(key + n) for n in range(2000)]
        yield {"insert": {"customers": rows}, "schema": {"customers": {"primary_key": ["id"]}}}
        key += len(rows)
        sent += len(rows) * 190  # about the JSON of one row
    yield {"state": {"rows": key}, "hasMore": False}
"""


def peak_of_a_run(project, megabytes: int) -> tuple[int, int]:
    """The CLI's peak RSS in MB syncing one page of `megabytes`, and the rows synced."""
    demo = project(GENERATOR, secrets={"bytes": megabytes * 1024 * 1024})
    demo.warehouse_path.unlink(missing_ok=True)
    log = demo.root / f"run-{megabytes}.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [*CLI, "-c", str(demo.config), "run", "demo"],
            cwd=demo.root,
            env=cli_env(),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, log.read_text()[-3000:]
    ((rows, pages),) = demo.query(
        "SELECT count(DISTINCT id), (SELECT pages FROM connector_runtime.syncs) FROM demo.customers"
    )
    assert pages == 1 and rows == demo.state()["rows"]
    return usage.ru_maxrss // 1024, rows


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KB is Linux's")
def test_a_streamed_page_needs_the_memory_of_a_small_one(project):
    small, small_rows = peak_of_a_run(project, 4)
    large, large_rows = peak_of_a_run(project, 80)
    assert large_rows > 15 * small_rows
    # held whole, 80 MB of JSON would be several hundred MB of rows in Python
    assert large - small < 60, f"peak RSS {small} MB for 4 MB, {large} MB for 80 MB"
