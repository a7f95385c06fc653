"""Sync through cloud storage: functions write each page's rows to the S3 object the
request names, against moto's real S3 server on loopback (the real AWS SDKs on both
sides, Python's boto3 and JavaScript's @aws-sdk/client-s3, never a mock of either).

The functions are in `tests/s3_functions/`. Syncs run through the CLI as a user types
it, into DuckDB files, except where a scripted function in-process is clearer.

The JavaScript test installs @aws-sdk/client-s3 with npm once (kept in pytest's cache
folder); without node or the npm registry it skips, or fails when CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import boto3
import pytest
import yaml
from conftest import Project
from moto.server import ThreadedMotoServer

from connector_runtime.config import load_config
from connector_runtime.errors import ConfigError, InvalidResponse
from connector_runtime.jobs import build_job
from connector_runtime.storage import S3PageStore, merge_page
from connector_runtime.sync import SyncJob, run_sync
from connector_runtime.testing import ScriptedInvoker

pytestmark = pytest.mark.slow  # a moto S3 server and npm's AWS SDK: about a minute

FUNCTIONS = Path(__file__).resolve().parent / "s3_functions"
AWS_SDK = {"@aws-sdk/client-s3": "3.1178.0"}  # pinned: later ones may need a newer node
PREFIX = "cr/"
FAST_RETRY = {"attempts": 3, "base": "10ms", "cap": "20ms"}


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """moto's S3 server on a free loopback port, for the whole session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


class Bucket:
    """A fresh bucket on the S3 server, and a client to look into it."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.name = f"pages-{uuid.uuid4().hex[:12]}"
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        self.client.create_bucket(Bucket=self.name)

    def keys(self) -> list[str]:
        listed = self.client.list_objects_v2(Bucket=self.name)
        return [item["Key"] for item in listed.get("Contents", [])]

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=body)


@pytest.fixture
def bucket(s3_endpoint, monkeypatch, tmp_path) -> Bucket:
    """Dummy credentials and no user AWS config for the runtime and its functions; the S3
    endpoint deliberately NOT in the environment: functions get it from the runtime."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDUMMYTESTKEY00000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dummy-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")  # the JavaScript SDK wants one
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    return Bucket(s3_endpoint)


def storage_project(
    tmp_path: Path, function: str, store: Bucket, **s3: str
) -> tuple[Project, Path]:
    """A project calling `s3_functions/<function>` with storage in `store`; `s3` overrides
    the storage settings. Returns the project and the function's requests log."""
    shutil.copy(FUNCTIONS / function, tmp_path / function)
    settings = {
        "bucket": store.name,
        "prefix": PREFIX,
        "region": "us-east-1",
        "endpoint_url": store.endpoint,
        **s3,
    }
    document = {
        "warehouse": "duckdb:///warehouse.duckdb",
        "connectors": {
            "demo": {
                "function": {"local": function, "timeout": "60s", "retry": FAST_RETRY},
                "storage": {"s3": settings},
            }
        },
    }
    made = Project(tmp_path, "demo")
    made.config.write_text(yaml.safe_dump(document, sort_keys=False))
    return made, tmp_path / "requests.jsonl"


def logged(requests_log: Path) -> list[dict]:
    return [json.loads(line) for line in requests_log.read_text().splitlines()]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def aws_sdk_for_node(request) -> Path:
    """node_modules with @aws-sdk/client-s3, installed by npm once and cached."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("node and npm are not on PATH; install Node.js 18+ to run this test")
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    folder = (
        cache.mkdir("node_aws_sdk")
        if cache is not None
        else request.getfixturevalue("tmp_path_factory").mktemp("node_aws_sdk")
    )
    installed = folder / "node_modules" / "@aws-sdk" / "client-s3" / "package.json"
    wanted = AWS_SDK["@aws-sdk/client-s3"]
    if not installed.exists() or json.loads(installed.read_text())["version"] != wanted:
        package = {"private": True, "dependencies": AWS_SDK}
        (folder / "package.json").write_text(json.dumps(package))
        try:
            done = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--no-package-lock"],
                cwd=folder,
                capture_output=True,
                text=True,
                timeout=600,
            )
        except subprocess.TimeoutExpired:
            unavailable("npm install @aws-sdk/client-s3 took over 10 minutes (no network?)")
        if done.returncode != 0:
            unavailable(
                f"npm could not install @aws-sdk/client-s3 (no network?): {done.stderr[-800:]}"
            )
    return folder / "node_modules"


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


# -- whole syncs through the CLI ------------------------------------------------------


def assert_orders_synced(made: Project, requests_log: Path, bucket: Bucket) -> None:
    """What orders.py and orders.mjs sync: three pages of rows read from the bucket."""
    (sync,) = made.syncs()
    assert (sync["status"], sync["pages"], sync["rows_upserted"], sync["rows_deleted"]) == (
        "succeeded",
        3,
        6,
        1,
    )
    rows = made.query("SELECT id, amount, _fivetran_deleted FROM demo.orders ORDER BY id")
    assert rows == [
        (1, 2.5, True),
        (2, 5.0, False),
        (11, 2.5, False),
        (12, 5.0, False),
        (21, 2.5, False),
        (22, 5.0, False),
    ]
    assert made.state() == {"cursor": "2024-01-04T00:00:00Z"}
    expected = [
        {"bucket": bucket.name, "file": f"{PREFIX}demo/{sync['sync_id']}/{n}.json"}
        for n in (1, 2, 3)
    ]
    assert [{"bucket": r["bucket"], "file": r["file"]} for r in logged(requests_log)] == expected
    assert bucket.keys() == []  # every page's object deleted once applied


def test_a_python_lambda_function_pages_through_s3(tmp_path, bucket):
    made, requests_log = storage_project(tmp_path, "orders.py", bucket)
    result = made.run()
    assert result.returncode == 0, result.stderr
    assert_orders_synced(made, requests_log, bucket)


def test_a_javascript_function_pages_through_s3(tmp_path, bucket, aws_sdk_for_node):
    (tmp_path / "node_modules").symlink_to(aws_sdk_for_node, target_is_directory=True)
    made, requests_log = storage_project(tmp_path, "orders.mjs", bucket)
    result = made.run()
    assert result.returncode == 0, result.stderr
    assert_orders_synced(made, requests_log, bucket)


def test_no_object_is_an_empty_page_and_the_state_advances(tmp_path, bucket):
    made, requests_log = storage_project(tmp_path, "writes_body.py", bucket)
    result = made.run()
    assert result.returncode == 0, result.stderr
    (sync,) = made.syncs()
    assert (sync["status"], sync["pages"], sync["rows_upserted"]) == ("succeeded", 1, 0)
    assert made.state() == {"cursor": "2024-01-02T00:00:00Z"}
    assert logged(requests_log) == [
        {"file": f"{PREFIX}demo/{sync['sync_id']}/1.json", "written": False}
    ]


@pytest.mark.parametrize(
    ("body", "said"),
    [
        pytest.param(b'{"insert": {"t": [', "is not JSON", id="not-json"),
        pytest.param(b"[1, 2]", "holds an array, not a JSON object", id="array"),
        pytest.param(b"", "is not JSON", id="empty"),
        pytest.param(
            b'{"insert": [{"id": 1}]}', "insert must be an object of tables", id="insert-array"
        ),
        pytest.param(
            b'{"insert": {"t": {"id": 1}}}', "table 't' must be an array of rows", id="rows-object"
        ),
        pytest.param(b'{"inserts": {"t": [{"id": 1}]}}', "unknown key 'inserts'", id="typo"),
        pytest.param(
            b'{"insert": {"t": [{"id": 1}]}, "hasMore": true}',
            "hasMore is true in the object but false in the answer",
            id="hasMore-only-in-object",
        ),
        pytest.param(
            b'{"insert": {"t": [{"id": 1}]}, "state": {"cursor": "2025-01-01T00:00:00Z"}}',
            "state in the object differs from the answer's",
            id="other-state",
        ),
        pytest.param(b'{"insert": {"t": ["one"]}}', "row 0", id="row-not-object"),
    ],
)
def test_an_object_of_the_wrong_shape_is_an_invalid_response(tmp_path, bucket, body, said):
    made, requests_log = storage_project(tmp_path, "writes_body.py", bucket)
    (tmp_path / "body.txt").write_bytes(body)
    result = made.run()
    assert result.returncode == 1
    (sync,) = made.syncs()
    (alert,) = made.alerts()
    where = f"s3://{bucket.name}/{PREFIX}demo/{sync['sync_id']}/1.json"
    assert (sync["status"], alert["kind"]) == ("failed", "invalid_response")
    assert where in alert["message"] and said in alert["message"], alert["message"]
    assert logged(requests_log)[0]["written"] is True
    assert made.state() == {}  # not advanced
    assert made.tables() == []  # nothing of the page written
    assert bucket.keys() == []  # and the object deleted all the same


def test_a_function_error_after_writing_deletes_the_object(tmp_path, bucket):
    made, requests_log = storage_project(tmp_path, "writes_body.py", bucket)
    (tmp_path / "body.txt").write_text('{"insert": {"t": [{"id": 1}]}}')
    (tmp_path / "fail.txt").write_text("the upstream API said no")
    result = made.run()
    assert result.returncode == 1
    (alert,) = made.alerts()
    assert alert["kind"] == "function_error"
    assert "the upstream API said no" in alert["message"]
    assert logged(requests_log)[0]["written"] is True
    assert bucket.keys() == []
    assert made.state() == {} and made.tables() == []


BROKEN_FIRST_PAGE = """\
import json
import pathlib

import boto3

LOG = pathlib.Path(__file__).with_name("requests.jsonl")


def lambda_handler(request, context):
    n = request["state"].get("n", 1)
    rows = [{"id": None if n == 1 else n, "n": n}]  # page 1: a row without its key
    boto3.client("s3").put_object(
        Bucket=request["bucket"],
        Key=request["file"],
        Body=json.dumps({"insert": {"t": rows}}).encode(),
    )
    with LOG.open("a") as log:
        log.write(json.dumps({"file": request["file"], "n": n}) + "\\n")
    return {"state": {"n": n + 1}, "schema": {"t": {"primary_key": ["id"]}}, "hasMore": n < 5}
"""


def test_a_failed_page_leaves_no_object_of_the_pages_asked_for_ahead(tmp_path, bucket):
    (tmp_path / "broken_first.py").write_text(BROKEN_FIRST_PAGE)
    made, requests_log = storage_project(tmp_path, "writes_body.py", bucket)
    config = yaml.safe_load(made.config.read_text())
    config["connectors"]["demo"]["function"]["local"] = "broken_first.py"
    made.config.write_text(yaml.safe_dump(config, sort_keys=False))

    result = made.run()

    assert result.returncode == 1
    (alert,) = made.alerts()
    assert alert["kind"] == "invalid_response" and "primary-key column 'id'" in alert["message"]
    # page 2 is asked for before page 1 is written, page 3 while page 2 is read: how many
    # were asked depends on timing; none of their objects may stay
    assert [a["n"] for a in logged(requests_log)][:1] == [1]
    assert bucket.keys() == []
    assert made.state() == {} and made.tables() == []


def missing_bucket() -> tuple[dict, list[str]]:
    missing = f"missing-{uuid.uuid4().hex[:12]}"
    return {"bucket": missing}, [f"the bucket '{missing}' does not exist"]


def unreachable_endpoint() -> tuple[dict, list[str]]:
    unreachable = f"http://127.0.0.1:{closed_port()}"
    return {"endpoint_url": unreachable}, [unreachable, "after 3 attempts"]  # retried first


@pytest.mark.parametrize("broken", [missing_bucket, unreachable_endpoint])
def test_a_store_that_cannot_be_read_fails_the_page(tmp_path, bucket, broken):
    settings, said = broken()
    made, _ = storage_project(tmp_path, "writes_body.py", bucket, **settings)
    result = made.run()
    assert result.returncode == 1
    (sync,) = made.syncs()
    (alert,) = made.alerts()
    assert (sync["status"], sync["pages"]) == ("failed", 0)  # never an empty page
    assert (alert["kind"], alert["error_type"]) == ("destination_error", "StorageError")
    assert all(text in alert["message"] for text in said), alert["message"]
    assert made.state() == {}


def test_connector_test_reads_the_page_from_storage(tmp_path, bucket):
    made, requests_log = storage_project(tmp_path, "orders.py", bucket)
    result = made.connector("test", "demo")
    assert result.returncode == 0, result.stderr
    assert result.said("valid response") and result.said("2 rows")
    (request,) = logged(requests_log)
    assert request["bucket"] == bucket.name
    assert request["file"] == f"{PREFIX}demo/{request['sync_id']}/test.json"
    assert bucket.keys() == []
    assert not made.warehouse_path.exists()


def test_connector_test_names_the_object_of_an_invalid_page(tmp_path, bucket):
    made, requests_log = storage_project(tmp_path, "writes_body.py", bucket)
    (tmp_path / "body.txt").write_text("[]")
    result = made.connector("test", "demo")
    assert result.returncode == 1
    (request,) = logged(requests_log)
    assert result.said("invalid_response") and result.said(f"s3://{bucket.name}/{request['file']}")
    assert bucket.keys() == []


# -- the answer and the object, merged (in-process) -------------------------------------


def test_object_rows_follow_the_answer_rows_so_the_object_wins_a_key(tmp_path, bucket):
    store = S3PageStore(bucket.name, PREFIX, region="us-east-1", endpoint_url=bucket.endpoint)

    def page(request):
        # the answer inlines one version of id 1, the object carries a later one and id 2
        body = {"insert": {"t": [{"id": 1, "v": "from the object"}, {"id": 2, "v": "two"}]}}
        bucket.put(request["file"], json.dumps(body).encode())
        return {
            "state": {"cursor": "2024-01-02T00:00:00Z"},
            "insert": {"t": [{"id": 1, "v": "from the answer"}]},
            "schema": {"t": {"primary_key": ["id"]}},
        }

    url = f"duckdb:///{tmp_path}/warehouse.duckdb"
    invoker = ScriptedInvoker([page])
    outcome = run_sync(SyncJob("demo", "demo", url, lambda: invoker, storage=store))
    assert outcome.record.status == "succeeded", outcome.alert
    assert outcome.tables["t"]["upserted"] == 2  # one per key: the later id 1 replaced the first
    made = Project(tmp_path, "demo")
    assert made.query("SELECT id, v FROM demo.t ORDER BY id") == [
        (1, "from the object"),
        (2, "two"),
    ]
    assert bucket.keys() == []


ANSWER = {
    "state": {"cursor": "c2"},
    "insert": {"a": [{"id": 1}]},
    "schema": {"a": {"primary_key": ["id"]}},
    "softDelete": ["a"],
    "hasMore": "TRUE",
}


@pytest.mark.parametrize(
    ("stored", "merged"),
    [
        pytest.param({}, ANSWER, id="empty-object"),
        pytest.param(
            {"insert": {"a": [{"id": 2}], "b": [{"x": 1}]}},
            {**ANSWER, "insert": {"a": [{"id": 1}, {"id": 2}], "b": [{"x": 1}]}},
            id="rows-appended-by-table",
        ),
        pytest.param(
            {"delete": {"a": [{"id": 9}]}},
            {**ANSWER, "delete": {"a": [{"id": 9}]}},
            id="delete-only-in-object",
        ),
        pytest.param(
            {"schema": {"b": {"primary_key": []}, "a": {"primary_key": ["id"]}}},
            {**ANSWER, "schema": {"a": {"primary_key": ["id"]}, "b": {"primary_key": []}}},
            id="schema-joined-same-table-same-declaration",
        ),
        pytest.param(
            {"softDelete": ["b", "a"]}, {**ANSWER, "softDelete": ["a", "b"]}, id="softDelete-union"
        ),
        pytest.param(
            {"state": {"cursor": "c2"}, "hasMore": True}, ANSWER, id="state-and-hasMore-agreeing"
        ),
    ],
)
def test_merge_page(stored, merged):
    assert merge_page(ANSWER, stored, "s3://b/k") == merged


@pytest.mark.parametrize(
    ("answer", "stored", "said"),
    [
        pytest.param(
            ANSWER,
            {"schema": {"a": {"primary_key": ["other"]}}},
            "schema of table 'a' differs from the answer's",
            id="schema-conflict",
        ),
        pytest.param(
            ANSWER,
            {"hasMore": "false"},
            "hasMore is false in the object but true in the answer",
            id="hasMore-disagrees",
        ),
        pytest.param(
            {"insert": {}},
            {"state": {"cursor": "c3"}},
            "state is in the object but not in the answer",
            id="state-only-in-object",
        ),
        pytest.param(ANSWER, {"softDelete": "a"}, "softDelete must be an array", id="softDelete"),
        pytest.param(ANSWER, {"schema": []}, "schema must be an object", id="schema"),
        pytest.param(ANSWER, None, "holds null, not a JSON object", id="null"),
    ],
)
def test_merge_page_refuses(answer, stored, said):
    with pytest.raises(InvalidResponse, match="^s3://b/k") as caught:
        merge_page(answer, stored, "s3://b/k")
    assert said in caught.value.message


# -- configuration ----------------------------------------------------------------------


def write_config(tmp_path: Path, storage: dict, **function: str) -> Path:
    (tmp_path / "handler.py").write_text("def handler(request):\n    return {'state': {}}\n")
    document = {
        "connectors": {
            "demo": {"function": {"local": "handler.py", **function}, "storage": storage}
        }
    }
    path = tmp_path / "connectors.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_storage_settings_may_use_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGES_BUCKET", "pages-prod")
    monkeypatch.setenv("PAGES_ENDPOINT", "http://127.0.0.1:9000")
    storage = {"s3": {"bucket": "${env:PAGES_BUCKET}", "endpoint_url": "${env:PAGES_ENDPOINT}"}}
    job = build_job(load_config(write_config(tmp_path, storage)), "demo")
    assert (job.storage.bucket, job.storage.prefix) == ("pages-prod", "")
    assert job.storage.worker_env() == {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000"}
    location = job.page_object("s-1", 4)
    assert location == {"bucket": "pages-prod", "file": "demo/s-1/4.json"}
    request = job.request({}, "s-1", location=location)
    assert (request["bucket"], request["file"]) == ("pages-prod", "demo/s-1/4.json")


def test_an_unset_environment_variable_names_the_field(tmp_path, monkeypatch):
    monkeypatch.delenv("PAGES_BUCKET", raising=False)
    config = load_config(write_config(tmp_path, {"s3": {"bucket": "${env:PAGES_BUCKET}"}}))
    with pytest.raises(
        ConfigError, match=r"storage\.s3\.bucket: environment variable PAGES_BUCKET"
    ):
        build_job(config, "demo")


@pytest.mark.parametrize(
    ("storage", "said"),
    [
        pytest.param(
            {"s3": {"bucket": "s3://pages/cr"}}, "invalid bucket name", id="url-as-bucket"
        ),
        pytest.param(
            {"s3": {"bucket": "pages", "endpoint_url": "localhost:9000"}},
            "is not an http(s) URL",
            id="endpoint-without-scheme",
        ),
        pytest.param({"s3": {"bucket": "pages", "acl": "private"}}, "acl", id="unknown-key"),
        pytest.param({"s3": {"prefix": "cr/"}}, "bucket", id="no-bucket"),
        pytest.param({"gcs": {"bucket": "pages"}}, "gcs", id="unknown-store"),
    ],
)
def test_a_wrong_storage_setting_names_the_line_and_field(tmp_path, storage, said):
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, storage))
    assert "connectors.yaml:" in str(caught.value) and "storage" in str(caught.value)
    assert said in str(caught.value)


def test_an_inline_function_cannot_get_the_endpoint(tmp_path):
    storage = {"s3": {"bucket": "pages", "endpoint_url": "http://127.0.0.1:9000"}}
    config = load_config(write_config(tmp_path, storage, isolation="inline"))
    with pytest.raises(ConfigError, match="remove `isolation: inline`"):
        build_job(config, "demo")
    # without an endpoint, inline functions and the runtime both use the default S3
    config = load_config(write_config(tmp_path, {"s3": {"bucket": "pages"}}, isolation="inline"))
    assert build_job(config, "demo").storage.worker_env() == {}
