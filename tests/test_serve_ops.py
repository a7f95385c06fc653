"""`connector serve` and the operator's commands, through the CLI as a user types them
(DESIGN.md §3, §6, §9): real scheduler processes and signals, real handler files, real
DuckDB files read back between (and during) commands.

`serve` opens the warehouse only while it syncs, so a read-only look at the file may
briefly find it locked: `poll` retries until a condition holds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import time
import urllib.request

import duckdb
import pytest
import yaml

# -- helpers ----------------------------------------------------------------------------

RECORDER = '''\
import json
import pathlib
import time

HERE = pathlib.Path(__file__).parent


def record(name, request):
    """Every request, one JSON line per call, in <name>.calls.jsonl."""
    with open(HERE / f"{name}.calls.jsonl", "a") as calls:
        calls.write(json.dumps({"state": request["state"], "sync_id": request["sync_id"]}) + "\\n")
'''


def handler_source(code: str) -> str:
    return RECORDER + "\n\n" + textwrap.dedent(code)


def write_connectors(made, connectors: dict) -> None:
    """A `connectors.yaml` with several connectors, all calling handler.py."""
    document = {
        "warehouse": "duckdb:///warehouse.duckdb",
        "server": {"listen": "127.0.0.1:0"},  # a free port: tests never collide
        "connectors": {
            name: {"function": {"local": "handler.py", "handler": name}, **options}
            for name, options in connectors.items()
        },
    }
    made.config.write_text(yaml.safe_dump(document, sort_keys=False))


def calls(made, name: str) -> list[dict]:
    log = made.root / f"{name}.calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def poll(made, sql: str, until, *, timeout: float = 60.0, what: str = "") -> list[tuple]:
    """Run `sql` read-only until `until(rows)`; a file `serve` holds for a sync is retried."""
    deadline = time.monotonic() + timeout
    rows: list[tuple] = []
    while time.monotonic() < deadline:
        try:
            rows = made.query(sql)
        except duckdb.Error as exc:  # locked by a sync of the serve process, or not made yet
            if "lock" not in str(exc).lower() and made.warehouse_path.exists():
                raise
        else:
            if until(rows):
                return rows
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what or sql}; last rows {rows}")


def wait_until(condition, *, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def all_syncs(made) -> list[dict]:
    """Every sync of every connector, oldest first (retried while `serve` holds the file)."""
    rows = poll(
        made,
        "SELECT connector, sync_id, trigger, status, epoch_us(started_at), epoch_us(finished_at),"
        " pages FROM connector_runtime.syncs ORDER BY started_at",
        lambda rows: True,
    )
    keys = ("connector", "sync_id", "trigger", "status", "started", "finished", "pages")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def served_syncs(made, name: str, trigger: str) -> int:
    """Succeeded syncs of `name` with `trigger`, asked of the running serve (its API);
    0 until serve has written where it listens."""
    server = made.root / ".connector-runtime" / "server.json"
    if not server.exists():
        return 0
    found = json.loads(server.read_text())
    request = urllib.request.Request(
        f"{found['url']}/api/connectors/{name}/syncs?limit=1000",
        headers={"Authorization": f"Bearer {found['token']}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        syncs = json.loads(response.read())["syncs"]
    return sum(s["trigger"] == trigger and s["status"] == "succeeded" for s in syncs)


def assert_never_overlapping(syncs: list[dict]) -> None:
    """A connector never runs twice at once: its [started, finished] intervals are disjoint."""
    for name in {s["connector"] for s in syncs}:
        mine = sorted((s for s in syncs if s["connector"] == name), key=lambda s: s["started"])
        for before, after in zip(mine, mine[1:], strict=False):
            assert before["finished"] is not None and before["finished"] <= after["started"], (
                name,
                before,
                after,
            )


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0):
    """Send `sig`, wait for the exit; (seconds it took, returncode, stderr)."""
    sent = time.monotonic()
    process.send_signal(sig)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        raise AssertionError(f"still running {timeout}s after {sig!r}:\n{stderr[-3000:]}") from None
    return time.monotonic() - sent, process.returncode, stderr


def json_lines(stderr: str) -> list[dict]:
    """Every stderr line of `serve` parsed as JSON (a non-JSON line fails the test)."""
    events = []
    for line in stderr.splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
    return events


# -- serve ------------------------------------------------------------------------------

SERVED = handler_source('''
def tick(request):
    n = request["state"].get("n", 0) + 1
    return {
        "state": {"n": n},
        "insert": {"ticks": [{"id": n}]},
        "schema": {"ticks": {"primary_key": ["id"]}},
    }


def alpha(request):
    record("alpha", request)
    return tick(request)


def beta(request):
    """Ticks; once `paged` exists, 20 pages of 10 rows, each after `delay` seconds."""
    record("beta", request)
    state = request["state"]
    if "page" not in state and not (HERE / "paged").exists():
        return tick(request)
    page = state.get("page", 0)
    delay = HERE / "delay"
    time.sleep(float(delay.read_text()) if delay.exists() else 0)
    rows = [{"id": page * 10 + i, "page": page} for i in range(10)]
    return {
        "state": {"page": page + 1},
        "insert": {"pages": rows},
        "schema": {"pages": {"primary_key": ["id"]}},
        "hasMore": page + 1 < 20,
    }
''')


def beta_pages(made) -> list[tuple]:
    return made.query(
        "SELECT page, count(*), min(id), max(id) FROM beta.pages GROUP BY 1 ORDER BY 1"
    )


@pytest.mark.slow  # serve on a schedule for seconds
def test_serve_schedules_never_overlaps_and_stops_cleanly_on_signals(project):
    made = project(SERVED, name="beta")
    write_connectors(made, {"alpha": {"schedule": "1s"}, "beta": {"schedule": "2s"}})

    # several scheduled syncs of each; a manual run in between never overlaps them
    serving = made.start("serve")
    try:
        # serve owns the DuckDB file while it works: read the syncs through it
        wait_until(
            lambda: (
                served_syncs(made, "alpha", "schedule") >= 4
                and served_syncs(made, "beta", "schedule") >= 2
            ),
            what="4 scheduled syncs of alpha and 2 of beta",
            timeout=90,  # about 8 s unloaded; a busy machine starts workers slowly
        )
        manual = made.connector("run", "alpha", timeout=60)
        assert manual.returncode == 0 or (
            manual.returncode == 1 and manual.said("already in progress")
        ), manual.stderr
        assert manual.said("connector serve (pid"), manual.stderr  # it ran in serve
        assert served_syncs(made, "alpha", "manual") == (1 if manual.returncode == 0 else 0)

        # a slow 20-page sync of beta, stopped by SIGTERM after 8 pages: by then it has
        # outlasted beta's 2 s interval, so a scheduled run found it still running
        (made.root / "delay").write_text("0.3")
        (made.root / "paged").touch()
        wait_until(
            lambda: any(c["state"].get("page") == 8 for c in calls(made, "beta")),
            what="beta asked for its ninth page",
        )
        seconds, code, stderr = stop(serving)
    finally:
        if serving.poll() is None:
            serving.kill()
            serving.communicate()
    assert code == 0, stderr[-3000:]
    assert seconds < 6, seconds

    syncs = all_syncs(made)
    assert_never_overlapping(syncs)
    assert not [s for s in syncs if s["status"] == "running"]
    assert {s["trigger"] for s in syncs if s["connector"] == "beta"} == {"schedule"}
    paged = [s for s in syncs if s["connector"] == "beta"][-1]
    assert paged["status"] == "rescheduled"
    committed = paged["pages"]
    assert 8 <= committed < 20
    # the state is the last committed page's, and exactly those pages' rows are there
    assert made.state() == {"page": committed}
    assert beta_pages(made) == [(p, 10, p * 10, p * 10 + 9) for p in range(committed)]
    # "finish the current page": every committed page asked for once; at most the next
    # one asked for ahead (paging ahead) and dropped when the sync stopped
    asked = [c["state"] for c in calls(made, "beta") if c["sync_id"] == paged["sync_id"]]
    assert asked[1:] in (
        [{"page": p} for p in range(1, committed)],
        [{"page": p} for p in range(1, committed + 1)],
    ), asked

    # logs off a terminal are JSON lines, each sync's start and end naming its connector
    events = json_lines(stderr)
    for name in ("alpha", "beta"):
        for event in ("sync_started", "sync_finished"):
            assert any(e["event"] == event and e.get("connector") == name for e in events), (
                name,
                event,
            )
    assert [e["status"] for e in events if e["event"] == "sync_finished"].count("rescheduled") >= 1

    # a second signal during a slow page exits at once; the next run picks up after it
    (made.root / "delay").write_text("30")
    seen = len(calls(made, "beta"))
    serving = made.start("serve")
    try:
        wait_until(lambda: len(calls(made, "beta")) > seen, what="beta's next page started")
        serving.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert serving.poll() is None  # the first signal waits for the page
        seconds, code, _ = stop(serving, signal.SIGINT)
    finally:
        if serving.poll() is None:
            serving.kill()
            serving.communicate()
    assert code != 0
    assert seconds < 3, seconds
    left = [s for s in all_syncs(made) if s["connector"] == "beta"][-1]
    assert (left["status"], left["finished"]) == ("running", None)

    (made.root / "delay").unlink()
    resumed = made.connector("run", "beta")
    assert resumed.returncode == 0, resumed.stderr
    beta_syncs = [s for s in all_syncs(made) if s["connector"] == "beta"]
    dead = next(s for s in beta_syncs if s["sync_id"] == left["sync_id"])
    assert dead["status"] == "failed" and dead["finished"] is not None
    assert (beta_syncs[-1]["trigger"], beta_syncs[-1]["status"]) == ("manual", "succeeded")
    manual_calls = [c for c in calls(made, "beta") if c["sync_id"] == beta_syncs[-1]["sync_id"]]
    assert manual_calls[0]["state"] == {"page": committed}  # from the saved state
    assert beta_pages(made) == [(p, 10, p * 10, p * 10 + 9) for p in range(20)]
    assert made.state() == {"page": 20}


# -- status, alerts, syncs --------------------------------------------------------------

FLAKY = handler_source("""
def demo(request):
    if (HERE / "fail").exists():
        check_the_token(request)
    return {"state": {"ok": True}, "insert": {"items": [{"id": 1}]}}


def check_the_token(request):
    raise PermissionError("the API refused the token")


def idle(request):
    return {"state": {}}
""")


def status_line(result, name: str) -> str:
    lines = [line for line in result.stdout.splitlines() if line.strip().startswith(name + " ")]
    assert len(lines) == 1, result.stdout + result.stderr
    return " ".join(lines[0].split())


def test_status_alerts_and_syncs_tell_what_happened(project):
    made = project(FLAKY)
    write_connectors(made, {"demo": {"schedule": "15m"}, "idle": {}})
    (made.root / "fail").touch()
    failed = made.run()
    assert failed.returncode == 1

    status = made.connector("status")
    assert status.returncode == 0, status.stderr
    # connector, status, schedule, last sync, rows, next run, open alerts
    assert status_line(status, "demo").split()[:4] == ["demo", "failed", "every", "15m"]
    assert " (serve not running) " in status_line(status, "demo")  # no next run claimed
    assert status_line(status, "demo").endswith(" 1")  # one open alert
    assert status_line(status, "idle").split()[:4] == ["idle", "idle", "manual", "never"]
    assert status_line(status, "idle").endswith(" 0")
    assert status.said("connector serve is not running")

    alerts = made.connector("alerts", "demo")
    assert alerts.returncode == 0, alerts.stderr
    for text in (
        "function_error",
        "(PermissionError)",
        "open",
        "the API refused the token",
        "in check_the_token",
        'raise PermissionError("the API refused the token")',
    ):
        assert alerts.printed(text), (text, alerts.stdout)

    (made.root / "fail").unlink()
    assert made.run().returncode == 0
    assert made.connector("alerts", "demo").said("no open alerts")
    every = made.connector("alerts", "demo", "--all")
    assert every.printed("function_error") and every.printed("resolved"), every.stdout
    assert every.printed("the API refused the token")
    status = made.connector("status")
    assert " succeeded " in status_line(status, "demo")
    assert status_line(status, "demo").endswith(" 0")

    syncs = made.connector("syncs", "demo")
    assert syncs.returncode == 0, syncs.stderr
    rows = [line.split() for line in syncs.stdout.splitlines() if " manual " in line]
    assert [row[3:5] for row in rows] == [["manual", "succeeded"], ["manual", "failed"]]
    assert syncs.printed("function_error: the API refused the token")


# -- state show / set / reset -----------------------------------------------------------

CURSOR = handler_source('''
def demo(request):
    """Records its state; while `hold` exists, waits (after saying `started`)."""
    record("demo", request)
    if (HERE / "hold").exists():
        (HERE / "started").touch()
        while (HERE / "hold").exists():
            time.sleep(0.05)
    cursor = request["state"].get("cursor", 0) + 1
    return {"state": {"cursor": cursor}, "insert": {"items": [{"id": cursor}]}}
''')


def shown_state(made) -> dict:
    shown = made.connector("state", "show", "demo")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)  # JSON alone on stdout


@pytest.mark.slow  # many CLI starts
def test_state_show_set_and_reset(project):
    made = project(CURSOR)
    write_connectors(made, {"demo": {}})
    assert made.run().returncode == 0
    assert shown_state(made) == {"cursor": 1}

    assert made.connector("state", "set", "demo", '{"cursor": 5}').returncode == 0
    assert shown_state(made) == {"cursor": 5}
    assert made.run().returncode == 0
    assert calls(made, "demo")[-1]["state"] == {"cursor": 5}
    assert shown_state(made) == {"cursor": 6}

    assert made.connector("state", "reset", "demo").returncode == 0
    assert shown_state(made) == {}

    for bad in ("{cursor: 5}", "[1, 2]", "5"):
        refused = made.connector("state", "set", "demo", bad)
        assert refused.returncode == 2, (bad, refused.stderr)
    assert shown_state(made) == {}

    # refused while a sync runs; the runtime killed mid-page, the state is what it was
    assert made.connector("state", "set", "demo", '{"cursor": 3}').returncode == 0
    (made.root / "hold").touch()
    running = made.start("run", "demo")
    try:
        wait_until((made.root / "started").exists, what="the held sync started")
        refused = made.connector("state", "set", "demo", '{"cursor": 99}')
        reset = made.connector("state", "reset", "demo")
    finally:
        running.kill()
        running.communicate()
        (made.root / "hold").unlink()  # its worker then notices it is orphaned, and exits
    for result in (refused, reset):
        assert result.returncode == 1, result.stderr
        assert result.said("already in progress"), result.stderr
        assert "Traceback" not in result.stderr, result.stderr
    assert calls(made, "demo")[-1]["state"] == {"cursor": 3}
    assert shown_state(made) == {"cursor": 3}


# -- resync -----------------------------------------------------------------------------

SOURCE = handler_source('''
def demo(request):
    """Sends every id of source.json, and appends one row to a keyless `events` table."""
    record("demo", request)
    ids = json.loads((HERE / "source.json").read_text())
    return {
        "state": {"seen": max(ids)},
        "insert": {
            "items": [{"id": i} for i in ids],
            "events": [{"note": f"sync saw {len(ids)} ids"}],
        },
        "schema": {"items": {"primary_key": ["id"]}},
    }
''')


def test_resync_starts_from_empty_state_and_marks_unsent_rows_deleted(project):
    made = project(SOURCE)
    write_connectors(made, {"demo": {}})
    (made.root / "source.json").write_text(json.dumps(list(range(1, 11))))
    assert made.run().returncode == 0
    assert made.state() == {"seen": 10}

    (made.root / "source.json").write_text(json.dumps(list(range(1, 8))))
    resync = made.connector("resync", "demo")
    assert resync.returncode == 0, resync.stderr
    assert calls(made, "demo")[-1]["state"] == {}
    assert [s["trigger"] for s in made.syncs()] == ["manual", "resync"]

    flags = dict(made.query("SELECT id, _fivetran_deleted FROM demo.items"))
    assert flags == {i: i > 7 for i in range(1, 11)}
    events = made.records("SELECT * FROM demo.events ORDER BY _fivetran_synced")
    assert [e["note"] for e in events] == ["sync saw 10 ids", "sync saw 7 ids"]
    assert not any(e.get("_fivetran_deleted") for e in events)  # keyless: never resync-deleted
    assert events[0]["_fivetran_synced"] < events[1]["_fivetran_synced"]  # the old row untouched


# -- secrets ----------------------------------------------------------------------------

TOKEN = "tok-7f3a9c1e55d2"

LEAKY = handler_source("""
import sys


def demo(request):
    token = request["secrets"]["apiToken"]
    print(f"stdout says {token}")
    print(f"stderr says {token}", file=sys.stderr)
    if (HERE / "raise").exists():
        raise ValueError(f"token {token} was rejected")
    return {
        "errorMessage": f"token {token} was rejected",
        "errorType": "AuthError",
        "stackTrace": [f"at login({token})"],
    }
""")


def runtime_tables_as_text(made) -> str:
    with made.warehouse() as con:
        tables = con.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'connector_runtime' ORDER BY 1"
        ).fetchall()
        dump = [
            repr(con.execute(f'SELECT * FROM connector_runtime."{t}"').fetchall())
            for (t,) in tables
        ]
    assert {"alerts", "syncs", "state"} <= {t for (t,) in tables}
    return "\n".join(dump)


def test_secrets_never_leak_to_output_tables_or_alerts(project, monkeypatch):
    monkeypatch.setenv("TEST_TOKEN", TOKEN)
    made = project(LEAKY)
    write_connectors(made, {"demo": {"secrets": {"apiToken": "${env:TEST_TOKEN}"}}})

    answered = made.connector("-v", "run", "demo")
    (made.root / "raise").touch()
    raised = made.connector("-v", "run", "demo")
    for result in (answered, raised):
        assert result.returncode == 1
        assert "stdout says ***" in result.stderr  # the function's output was logged, masked
        assert TOKEN not in result.stdout + result.stderr

    assert TOKEN not in runtime_tables_as_text(made)
    alerts = made.alerts()
    assert [a["message"] for a in alerts] == ["token *** was rejected"] * 2
    assert alerts[0]["stack_trace"] == ["at login(***)"]

    shown = made.connector("alerts", "demo")
    assert shown.returncode == 0
    assert TOKEN not in shown.stdout + shown.stderr
    assert shown.printed("token *** was rejected") and shown.printed("at login(***)")
