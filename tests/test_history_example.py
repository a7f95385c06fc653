"""examples/history: a customer's plan over three monthly exports, as its files say to run
it, through the real CLI; then its "as of" query."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

from conftest import open_warehouse
from test_e2e_cli import copy_example


def test_example_history_keeps_each_plan_and_answers_as_of(tmp_path, connector):
    folder = copy_example("history", tmp_path)
    for _ in range(4):  # the fourth run sends the third export again: nothing changed
        result = connector("run", cwd=folder)
        assert result.returncode == 0, result.stderr
    with open_warehouse(folder / "warehouse.duckdb") as con:
        starts = [
            started
            for (started,) in con.execute(
                "SELECT started_at FROM connector_runtime.syncs ORDER BY started_at"
            ).fetchall()
        ]
        versions = con.execute(
            "SELECT id, plan, _fivetran_start, _fivetran_end, _fivetran_active"
            " FROM billing.customers ORDER BY id, _fivetran_start"
        ).fetchall()
    s1, s2, s3, _ = starts
    forever = versions[-1][3]
    ms = timedelta(milliseconds=1)
    assert versions == [
        (1, "free", s1, s2 - ms, False),
        (1, "pro", s2, s3 - ms, False),
        (1, "team", s3, forever, True),
        (2, "pro", s1, forever, True),  # the same plan in every export: one version
        (3, "free", s1, s3 - ms, False),  # left with export 3 (softDelete)
        (4, "free", s3, forever, True),
    ]
    assert forever.isoformat() == "9999-12-31T23:59:59.999000+00:00"

    between = (s3 - ms).isoformat()  # after sync 2, before sync 3
    shown = subprocess.run(
        [sys.executable, "as_of.py", "warehouse.duckdb", between],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert [line.split()[:3] for line in shown[1:]] == [
        ["1", "Ada", "pro"],
        ["2", "Grace", "pro"],
        ["3", "Linus", "free"],
    ]
    everything = subprocess.run(
        [sys.executable, "as_of.py", "warehouse.duckdb"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert everything.count("→") == 6 and everything.count("after sync") == 4
