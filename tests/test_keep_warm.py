"""A local Python function's worker kept warm between syncs (`keep_warm`), as a Lambda
instance is: reused by the next sync of the same function, with its module's globals,
unless a file it loaded changed, its configuration changed, or it died."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import duckdb
import pytest

from connector_runtime.config import ConfigError, load_config
from connector_runtime.invokers._kept_workers import KEPT, KeptWorkers
from connector_runtime.jobs import build_job
from connector_runtime.sync import run_sync

HANDLER = """
import os
import helper

CALLS = []

def handler(request):
    CALLS.append(1)
    sync = request["state"].get("sync", 0) + 1
    print(f"sync {sync} in {os.getpid()}")
    row = {"sync": sync, "pid": os.getpid(), "calls": len(CALLS), "version": helper.VERSION}
    return {
        "state": {"sync": sync},
        "insert": {"runs": [row]},
        "schema": {"runs": {"primary_key": ["sync"]}},
        "hasMore": False,
    }
"""


@pytest.fixture(autouse=True)
def no_kept_workers():
    KEPT.stop_all()
    yield
    KEPT.stop_all()


def project(tmp_path: Path, function: str = "", connectors: tuple[str, ...] = ("demo",)) -> Path:
    (tmp_path / "handler.py").write_text(textwrap.dedent(HANDLER))
    (tmp_path / "helper.py").write_text('VERSION = "one"\n')
    config = "warehouse: duckdb:///warehouse.duckdb\nconnectors:\n"
    for name in connectors:
        config += f"  {name}:\n    function:\n      local: handler.py\n"
        config += textwrap.indent(textwrap.dedent(function), "      ")
    (tmp_path / "connectors.yaml").write_text(config)
    return tmp_path / "connectors.yaml"


def sync(config: Path, connector: str = "demo"):
    outcome = run_sync(build_job(load_config(config), connector))
    assert outcome.record.status == "succeeded", outcome.record.error
    return outcome


def runs(config: Path, connector: str = "demo") -> list[tuple]:
    con = duckdb.connect(str(config.parent / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(
            f"SELECT sync, pid, calls, version FROM {connector}.runs ORDER BY sync"
        ).fetchall()
    finally:
        con.close()


def rewrite(path: Path, text: str) -> None:
    """Write `text` and move the file's time on by a second, whatever the clock's grain."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def test_the_next_sync_reuses_the_worker_with_its_module_globals(tmp_path):
    config = project(tmp_path)
    sync(config)
    assert len(KEPT) == 1
    second = sync(config)
    (_, pid, calls, _), (_, pid_again, calls_again, _) = runs(config)
    assert pid_again == pid
    assert (calls, calls_again) == (1, 2)  # as in a warm Lambda instance
    # what the worker printed in the second sync is the second sync's output, only
    assert second.function_output == f"sync 2 in {pid}"


def test_a_changed_handler_file_gets_a_fresh_worker(tmp_path):
    config = project(tmp_path)
    sync(config)
    handler = tmp_path / "handler.py"
    rewrite(handler, handler.read_text().replace('"calls": len(CALLS)', '"calls": -len(CALLS)'))
    sync(config)
    (_, pid, _, _), (_, fresh_pid, calls, _) = runs(config)
    assert fresh_pid != pid
    assert calls == -1  # the new code, in a fresh module


def test_a_changed_module_the_handler_imports_gets_a_fresh_worker(tmp_path):
    config = project(tmp_path)
    sync(config)
    rewrite(tmp_path / "helper.py", 'VERSION = "two"\n')
    sync(config)
    (_, pid, _, version), (_, fresh_pid, _, new_version) = runs(config)
    assert (version, new_version) == ("one", "two")
    assert fresh_pid != pid


def test_a_changed_configuration_gets_a_fresh_worker(tmp_path):
    config = project(tmp_path)
    sync(config)
    config.write_text(config.read_text() + "      timeout: 5m\n")
    sync(config)
    (_, pid, _, _), (_, fresh_pid, calls, _) = runs(config)
    assert fresh_pid != pid and calls == 1


def test_keep_warm_false_starts_a_worker_every_sync(tmp_path):
    config = project(tmp_path, "keep_warm: false\n")
    sync(config)
    assert len(KEPT) == 0
    sync(config)
    (_, pid, _, _), (_, fresh_pid, calls, _) = runs(config)
    assert fresh_pid != pid and calls == 1


def test_a_kept_worker_that_died_is_replaced(tmp_path):
    config = project(tmp_path)
    sync(config)
    (_, pid, _, _) = runs(config)[0]
    os.kill(pid, signal.SIGKILL)
    sync(config)
    (_, fresh_pid, calls, _) = runs(config)[1]
    assert fresh_pid != pid and calls == 1


def test_a_worker_that_crashed_is_not_kept(tmp_path):
    config = project(tmp_path)
    handler = tmp_path / "handler.py"
    crash = 'import pathlib, os\nif pathlib.Path(__file__).with_name("crash").exists():\n    os._exit(3)\n'
    handler.write_text(
        handler.read_text().replace(
            "    CALLS.append(1)\n", "    CALLS.append(1)\n" + textwrap.indent(crash, "    ")
        )
    )
    (tmp_path / "crash").touch()
    outcome = run_sync(build_job(load_config(config), "demo"))
    assert outcome.record.status == "failed"
    assert "exit status 3" in outcome.record.error
    assert len(KEPT) == 0
    (tmp_path / "crash").unlink()
    sync(config)
    assert runs(config)[0][2] == 1  # a fresh module


def test_two_connectors_of_one_handler_keep_a_worker_each(tmp_path):
    config = project(tmp_path, connectors=("first", "second"))
    sync(config, "first")
    sync(config, "second")
    assert len(KEPT) == 2
    sync(config, "first")
    first, second = runs(config, "first"), runs(config, "second")
    assert first[1][1] == first[0][1] != second[0][1]
    assert (first[1][2], second[0][2]) == (2, 1)  # nothing shared between the two


def test_keep_warm_is_for_python_workers_only(tmp_path):
    (tmp_path / "handler.js").write_text("exports.handler = async () => ({hasMore: false});\n")
    config = tmp_path / "connectors.yaml"
    for function in (
        "local: handler.js\n      keep_warm: 5m",
        "local: handler.py\n      isolation: inline\n      keep_warm: 5m",
        "http: https://example.net/sync\n      keep_warm: 5m",
    ):
        config.write_text(f"connectors:\n  demo:\n    function:\n      {function}\n")
        with pytest.raises(ConfigError, match="keep_warm keeps a local Python function's worker"):
            load_config(config)


@pytest.mark.parametrize(("written", "seconds"), [("30s", 30.0), ("false", False), (None, 600.0)])
def test_keep_warm_reads_a_duration_or_false(tmp_path, written, seconds):
    (tmp_path / "handler.py").write_text("def handler(request):\n    return {}\n")
    config = tmp_path / "connectors.yaml"
    extra = f"\n      keep_warm: {written}" if written is not None else ""
    config.write_text(f"connectors:\n  demo:\n    function:\n      local: handler.py{extra}\n")
    assert load_config(config).connector("demo").function.keep_warm == seconds


def test_keep_warm_true_is_refused(tmp_path):
    config = tmp_path / "connectors.yaml"
    config.write_text(
        "connectors:\n  demo:\n    function:\n      local: h.py\n      keep_warm: true\n"
    )
    with pytest.raises(ConfigError, match="keep_warm"):
        load_config(config)


class _Worker:
    """Stands in for a `WorkerProcess` in the registry's own bookkeeping."""

    def __init__(self) -> None:
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


def test_a_kept_worker_is_stopped_once_its_time_is_up():
    now = [100.0]
    kept = KeptWorkers(clock=lambda: now[0])
    early, late = _Worker(), _Worker()
    kept.keep("early", early, 10.0)
    kept.keep("late", late, 60.0)
    now[0] = 111.0
    kept.reap()
    assert early.stopped and not late.stopped
    assert kept.take("early") is None
    assert kept.take("late") is late and len(kept) == 0


def test_a_worker_taken_after_its_time_is_stopped_not_used():
    now = [0.0]
    kept = KeptWorkers(clock=lambda: now[0])
    worker = _Worker()
    kept.keep("key", worker, 5.0)
    now[0] = 5.0
    assert kept.take("key") is None and worker.stopped


def test_past_the_limit_the_longest_idle_worker_is_stopped():
    kept = KeptWorkers(limit=2)
    workers = [_Worker() for _ in range(3)]
    for number, worker in enumerate(workers):
        kept.keep(number, worker, 600.0)
    assert [worker.stopped for worker in workers] == [True, False, False]
    replaced = _Worker()
    kept.keep(2, replaced, 600.0)
    assert workers[2].stopped and not replaced.stopped
    kept.stop_all()
    assert workers[1].stopped and replaced.stopped and len(kept) == 0


def test_a_forked_process_keeps_none_of_its_parents_workers(tmp_path):
    config = project(tmp_path)
    sync(config)
    assert len(KEPT) == 1
    child = os.fork()
    if child == 0:  # Celery's prefork pool starts its processes this way
        os._exit(0 if len(KEPT) == 0 else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(KEPT) == 1
