"""Every runnable example of the docs, and every Fivetran-shaped sample, run for real.

**The docs.** A fenced code block in README.md or docs/*.md is runnable when the line
just before its fence is a comment naming the file it is:

    <!-- test: EXAMPLE/PATH -->          one or more EXAMPLE/PATH, separated by spaces

The blocks of one EXAMPLE are written into a fresh folder, each at its PATH, and
`SCENARIOS[EXAMPLE]` says what must land: `connector validate` passes on the config as
written, then `connector run` (the real CLI, in a subprocess) syncs into the DuckDB file
the config names, and each listed table holds its rows. The function runs where the
config says:

- `local:` as it is (a Python worker, or node);
- `lambda:` in AWS's own Lambda runtime on loopback (the Runtime Interface Emulator of
  `lambda_rie.py`), the config's `lambda:` pointed there through `endpoint_url`;
- `http:` behind a small HTTP server in this process that calls the scenario's entry
  point as Google Cloud Functions does (a Flask-like request; a dict, or a
  `(dict, status)` pair, as the answer), the config's URL pointed there.

A block that looks like a whole function or config (a handler, or `connectors:` with a
`function:`) must carry a mark, or `<!-- untested: why -->` instead.

**The samples.** Each folder of examples/fivetran_samples/ is run as its header says,
and what it demonstrates is asserted: rows, soft deletes, the alert of a failed sync.
The S3 samples use the moto S3 server and npm fixtures of `test_cloud_storage.py`.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

pytest.register_assert_rewrite("lambda_rie")  # a plugin (below), imported here first
import test_cloud_storage as cloud_storage  # noqa: E402
from conftest import open_warehouse, run_connector  # noqa: E402
from lambda_rie import require, unavailable  # noqa: E402
from test_e2e_cli import copy_example  # noqa: E402

pytest_plugins = ["lambda_rie"]
# test_cloud_storage's moto S3 server, its buckets and its npm install, as fixtures here too
s3_endpoint = cloud_storage.s3_endpoint
bucket = cloud_storage.bucket
aws_sdk_for_node = cloud_storage.aws_sdk_for_node

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
MARK = re.compile(r"^<!-- (test|untested): *(.*?) *-->$")
# the start of a whole handler, in Python or JavaScript; or a config with a function
HANDLER = re.compile(
    r"^(async )?def (lambda_)?handler\(|^exports\.handler|^export (const|async function|function) handler",
    re.M,
)


# -- the blocks of the docs ----------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its code, and the comment before it, if any."""

    where: str
    code: str
    mark: tuple[str, str] | None  # ("test", "python/orders.py ...") or ("untested", why)

    @property
    def looks_complete(self) -> bool:
        config = re.search(r"^connectors:", self.code, re.M) and "function:" in self.code
        return bool(HANDLER.search(self.code) or config)


def doc_blocks(path: Path) -> list[Block]:
    text = path.read_text()
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].removesuffix("\n").rpartition("\n")[2].strip()
        mark = MARK.match(before)
        found.append(
            Block(f"{path.relative_to(ROOT)}:{line}", match[2], mark.groups() if mark else None)
        )
    return found


BLOCKS = [block for path in DOCS for block in doc_blocks(path)]


def marked_examples() -> dict[str, dict[str, str]]:
    """EXAMPLE -> {PATH: code} from every `<!-- test: ... -->` block."""
    examples: dict[str, dict[str, str]] = {}
    for block in BLOCKS:
        if block.mark is None or block.mark[0] != "test":
            continue
        for target in block.mark[1].split():
            example, _, path = target.partition("/")
            assert path, f"{block.where}: mark {target!r} is not EXAMPLE/PATH"
            examples.setdefault(example, {})[path] = block.code
    return examples


EXAMPLES = marked_examples()


# -- what each example must land -------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    rows: dict[str, int]  # "schema.table" -> rows after one sync
    env: dict[str, str] = field(default_factory=dict)
    entry: str = ""  # lambda: "module.function"; http: "file.py:function"
    check: Callable[[Path], None] | None = None  # more, on the synced folder


def readme_customers_are_protected(folder: Path) -> None:
    """`columns: {email: hash, notes: block}` and the declared type, from the README."""
    with open_warehouse(folder / "warehouse.duckdb") as con:
        types = dict(
            con.execute("SELECT column_name, column_type FROM (DESCRIBE crm.customers)").fetchall()
        )
        emails = [email for (email,) in con.execute("SELECT email FROM crm.customers").fetchall()]
    assert "notes" not in types
    assert types["balance"] == "DECIMAL(18,2)"
    assert len(set(emails)) == 2500
    assert not any("@" in email for email in emails)


SCENARIOS = {
    "readme": Scenario(
        {"crm.customers": 2500},
        env={"CRM_API_TOKEN": "readme-token-123"},
        check=readme_customers_are_protected,
    ),
    "python": Scenario({"shop.orders": 120}, env={"SHOP_API_KEY": "docs-shop-key-123"}),
    "javascript": Scenario({"helpdesk.tickets": 60}),
    "streamed": Scenario({"shop.orders": 3}),
    "lambda": Scenario({"finance.rates": 15}, entry="lambda_function.lambda_handler"),
    "http": Scenario(
        {"weather.readings": 24},
        env={"WEATHER_SYNC_KEY": "docs-sync-key-123", "SYNC_KEY": "docs-sync-key-123"},
        entry="main.py:sync",
    ),
    "moving-local": Scenario({"crm.companies": 12}, env={"CRM_API_KEY": "docs-crm-key-123"}),
    "moving-lambda": Scenario(
        {"crm.companies": 12},
        env={"CRM_API_KEY": "docs-crm-key-123"},
        entry="lambda_function.lambda_handler",
    ),
}


def test_every_marked_example_has_a_scenario_and_the_other_way_round():
    assert sorted(EXAMPLES) == sorted(SCENARIOS)


def test_every_complete_function_or_config_in_the_docs_is_marked():
    unmarked = [block.where for block in BLOCKS if block.mark is None and block.looks_complete]
    assert unmarked == [], "mark these <!-- test: EXAMPLE/PATH --> (or <!-- untested: why -->)"


def test_every_example_has_a_config_and_the_files_it_names():
    for name, files in EXAMPLES.items():
        config = yaml.safe_load(files.get("connectors.yaml", "{}")) or {}
        assert config.get("connectors"), f"{name}: no connectors.yaml with connectors"
        for connector in config["connectors"].values():
            local = connector["function"].get("local")
            assert local is None or local in files, f"{name}: {local} is not among {list(files)}"


def write_example(name: str, tmp_path: Path) -> Path:
    """The files of example `name`, each at its path in a fresh folder."""
    folder = tmp_path / name
    for path, code in EXAMPLES[name].items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(code)
    return folder


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_doc_example_syncs(name, tmp_path, monkeypatch, request):
    scenario = SCENARIOS[name]
    folder = write_example(name, tmp_path)
    if any(path.endswith((".js", ".mjs", ".cjs")) for path in EXAMPLES[name]):
        need_node()
    for variable, value in scenario.env.items():
        monkeypatch.setenv(variable, value)
    checked = run_connector("validate", cwd=folder)  # the config as the docs show it
    assert checked.returncode == 0, checked.stderr

    config_path = folder / "connectors.yaml"
    config = yaml.safe_load(config_path.read_text())
    assert config["warehouse"] == "duckdb:///warehouse.duckdb"
    for connector in config["connectors"].values():
        function = connector["function"]
        if "lambda" in function:
            function.update(deployed_on_loopback(folder, scenario.entry, request, monkeypatch))
        elif "http" in function:
            function["http"] = request.getfixturevalue("cloud_function")(folder, scenario.entry)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    result = run_connector("run", cwd=folder)
    assert result.returncode == 0, result.stderr
    with open_warehouse(folder / "warehouse.duckdb") as con:
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in scenario.rows}
        statuses = con.execute("SELECT status FROM connector_runtime.syncs").fetchall()
    assert counts == scenario.rows
    assert statuses == [("succeeded",)] * len(config["connectors"])
    if scenario.check is not None:
        scenario.check(folder)


def deployed_on_loopback(folder: Path, entry: str, request, monkeypatch) -> dict[str, str]:
    """The function file running in AWS's Lambda runtime on loopback; the `function:`
    settings that reach it (the emulator's function is always named `function`)."""
    require("awslambdaric")
    for variable, value in {
        "AWS_ACCESS_KEY_ID": "AKIDUMMYTESTKEY00000",
        "AWS_SECRET_ACCESS_KEY": "dummy-secret",
        "AWS_CONFIG_FILE": str(folder / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(folder / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    url = request.getfixturevalue("lambda_function")(entry, directory=folder)
    return {"lambda": "function", "endpoint_url": url}


class FlaskLikeRequest:
    """What a Google Cloud Function (Python) gets, as far as the docs use it."""

    def __init__(self, headers, body: bytes) -> None:
        self.headers = headers  # case-insensitive `.get`, as Flask's
        self._body = body

    def get_json(self):
        return json.loads(self._body)


@pytest.fixture
def cloud_function() -> Iterator[Callable[[Path, str], str]]:
    """`cloud_function(folder, "main.py:sync")` -> the URL of that function, served on
    loopback until the test ends."""
    servers: list[ThreadingHTTPServer] = []

    def serve(folder: Path, entry: str) -> str:
        file, _, name = entry.partition(":")
        spec = importlib.util.spec_from_file_location(f"docs_{uuid.uuid4().hex}", folder / file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        function = getattr(module, name)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                answer = function(FlaskLikeRequest(self.headers, body))
                answer, status = answer if isinstance(answer, tuple) else (answer, 200)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/function"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_the_http_example_refuses_a_call_without_its_key(tmp_path, monkeypatch, cloud_function):
    """The header in the docs' config is what lets the call through."""
    folder = write_example("http", tmp_path)
    monkeypatch.setenv("SYNC_KEY", "the-function-key")
    monkeypatch.setenv("WEATHER_SYNC_KEY", "another-key")
    config = yaml.safe_load((folder / "connectors.yaml").read_text())
    config["connectors"]["weather"]["function"]["http"] = cloud_function(folder, "main.py:sync")
    (folder / "connectors.yaml").write_text(yaml.safe_dump(config))

    result = run_connector("run", cwd=folder)
    assert result.returncode == 1
    with open_warehouse(folder / "warehouse.duckdb") as con:
        alerts = con.execute(
            "SELECT kind, error_type, message FROM connector_runtime.alerts"
        ).fetchall()
    assert alerts == [("function_error", "Forbidden", "wrong or missing X-Sync-Key")]


# -- examples/fivetran_samples -------------------------------------------------------------


def sample(name: str, tmp_path: Path) -> Path:
    return copy_example(f"fivetran_samples/{name}", tmp_path)


def records(folder: Path, sql: str) -> list[dict]:
    with open_warehouse(folder / "warehouse.duckdb") as con:
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def test_sample_soft_delete_marks_the_rows_a_later_snapshot_left_out(tmp_path):
    folder = sample("soft_delete", tmp_path)
    first = run_connector("run", cwd=folder)
    assert first.returncode == 0, first.stderr  # hasMore "true" / "false", as strings
    directory = folder / "employees.json"
    employees = json.loads(directory.read_text())
    directory.write_text(json.dumps([e for e in employees if e["employee_id"] != "E-003"]))

    second = run_connector("run", cwd=folder)
    assert second.returncode == 0, second.stderr
    rows = records(
        folder, "SELECT employee_id, start_date, _fivetran_deleted FROM hr.employees ORDER BY 1"
    )
    assert [(r["employee_id"], r["_fivetran_deleted"]) for r in rows] == [
        ("E-001", False),
        ("E-002", False),
        ("E-003", True),
        ("E-004", False),
        ("E-005", False),
    ]
    assert str(rows[0]["start_date"]) == "2019-03-01"  # a DATE: "YYYY-MM-DD" inferred
    syncs = records(
        folder,
        "SELECT status, pages, rows_deleted FROM connector_runtime.syncs ORDER BY started_at",
    )
    assert syncs == [
        {"status": "succeeded", "pages": 3, "rows_deleted": 0},
        {"status": "succeeded", "pages": 2, "rows_deleted": 1},
    ]


def test_sample_errors_and_secrets_syncs_then_reports_its_error_with_the_traceback(tmp_path):
    folder = sample("errors_and_secrets", tmp_path)
    first = run_connector("run", cwd=folder)
    assert first.returncode == 0, first.stderr
    rows = records(
        folder, "SELECT number, amount, account_id, currency FROM billing.invoices ORDER BY 1"
    )
    assert len(rows) == 10
    assert (rows[0]["account_id"], rows[0]["currency"], str(rows[0]["amount"])) == (
        "acme-trading",  # from an object among the secrets
        "EUR",
        "40.00",
    )
    # pageSize: 4 arrived as the number 4: three pages of 4, 4 and 2
    syncs = records(folder, "SELECT status, pages FROM connector_runtime.syncs")
    assert syncs == [{"status": "succeeded", "pages": 3}]
    state = run_connector("state", "show", "errors_and_secrets", cwd=folder)
    assert json.loads(state.stdout) == {"cursor": "2025-02-10T10:00:00Z"}  # a string cursor

    config = folder / "connectors.yaml"
    config.write_text(config.read_text().replace("pageSize: 4 ", "pageSize: 0 "))
    failed = run_connector("run", cwd=folder)
    assert failed.returncode == 1
    alerts = records(
        folder,
        "SELECT kind, error_type, message, CAST(stack_trace AS VARCHAR) AS trace"
        " FROM connector_runtime.alerts",
    )
    assert len(alerts) == 1
    alert = alerts[0]
    message = "secrets.pageSize must be a whole number above 0, got 0"
    assert (alert["kind"], alert["error_type"], alert["message"]) == (
        "function_error",
        "ValueError",
        message,
    )
    trace = json.loads(alert["trace"])  # traceback.format_exc(), one line per entry
    assert trace[0] == "Traceback (most recent call last):"
    assert trace[-1] == f"ValueError: {message}"
    assert any("in sync_page" in line for line in trace)
    assert all("\n" not in line for line in trace)
    state = run_connector("state", "show", "errors_and_secrets", cwd=folder)
    assert json.loads(state.stdout) == {"cursor": "2025-02-10T10:00:00Z"}  # kept


def test_sample_node_cursor_upserts_changes_and_keeps_its_string_cursor(tmp_path):
    need_node()
    folder = sample("node_cursor", tmp_path)
    for _ in range(2):  # the second sync finds nothing new
        result = run_connector("run", cwd=folder)
        assert result.returncode == 0, result.stderr
    rows = records(folder, "SELECT id, email FROM crm.contacts ORDER BY id")
    assert [(r["id"], r["email"]) for r in rows] == [
        (1, "ada@example.com"),
        (2, "ben@example.org"),  # changed twice: the later change wins
        (3, "cleo@example.com"),
        (4, "dev@example.com"),
    ]
    syncs = records(
        folder, "SELECT pages, rows_upserted FROM connector_runtime.syncs ORDER BY started_at"
    )
    assert syncs == [{"pages": 2, "rows_upserted": 5}, {"pages": 1, "rows_upserted": 0}]
    state = run_connector("state", "show", "node_cursor", cwd=folder)
    assert json.loads(state.stdout) == {"since": "2025-04-04T07:05:00.000Z"}


def need_node() -> None:
    if shutil.which("node") is None:
        unavailable("node is not on PATH; install Node.js 18+ to run the JavaScript examples")


def sync_through_s3(folder: Path, bucket: cloud_storage.Bucket) -> None:
    """The sample's config pointed at the test bucket; one sync, then what landed."""
    config_path = folder / "connectors.yaml"
    config = yaml.safe_load(config_path.read_text())
    (connector,) = config["connectors"].values()
    connector["storage"]["s3"].update(bucket=bucket.name, endpoint_url=bucket.endpoint)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_connector("run", cwd=folder)
    assert result.returncode == 0, result.stderr
    rows = records(
        folder,
        "SELECT count(*) AS n, count(DISTINCT id) AS ids, min(id) AS low, max(id) AS high,"
        " count(*) FILTER (WHERE kind = 'click') AS clicks FROM clicks.events",
    )
    assert rows == [{"n": 2500, "ids": 2500, "low": 1, "high": 2500, "clicks": 833}]
    syncs = records(folder, "SELECT status, pages FROM connector_runtime.syncs")
    assert syncs == [{"status": "succeeded", "pages": 3}]
    assert bucket.keys() == []  # each page's object deleted once its rows were written


def test_sample_s3_python_pages_through_the_bucket(tmp_path, bucket):
    sync_through_s3(sample("s3_python", tmp_path), bucket)


def test_sample_s3_node_pages_through_the_bucket(tmp_path, bucket, aws_sdk_for_node):
    folder = sample("s3_node", tmp_path)
    (folder / "node_modules").symlink_to(aws_sdk_for_node, target_is_directory=True)
    sync_through_s3(folder, bucket)
