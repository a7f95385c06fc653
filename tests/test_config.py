"""connectors.yaml: the models, the loader's `file:line: field: problem` reports, secrets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from connector_runtime.config import (
    Config,
    ConnectorConfig,
    CronSchedule,
    FunctionConfig,
    RetryConfig,
    TableConfig,
    load_config,
    plaintext_secret_keys,
    resolve_headers,
    resolve_secrets,
)
from connector_runtime.errors import ConfigError

# DESIGN.md §7, every field filled in.
FULL = """\
warehouse: duckdb:///warehouse.duckdb
max_concurrent_syncs: 2
connectors:
  transactions:
    function:
      local: examples/transactions/handler.py
      handler: handler
      isolation: inline
      timeout: 15m
      memory_mb: 512
      retry: {attempts: 3, base: 2s, cap: 1m}
    schema: txn
    destination: postgresql://user@localhost/warehouse
    schedule: 15m
    secrets:
      apiToken: enc:v1:abc
      region: ${env:REGION}
    tables:
      customers: {columns: {email: hash, notes: block}}
      orders: {history: true}
      audit: {sync: false}
    naming: source
    max_sync_duration: 2h
  billing:
    function:
      lambda: arn:aws:lambda:eu-west-1:123456789012:function:billing
      region: eu-west-1
      qualifier: live
      endpoint_url: http://127.0.0.1:9001
      role_arn: arn:aws:iam::123456789012:role/invoker
      external_id: ext-1
    schedule: {cron: "*/15 * * * *"}
  webhook:
    function:
      http: https://example.net/.netlify/functions/sync
      headers: {Authorization: "Bearer ${env:WEBHOOK_TOKEN}"}
    schedule: 1d
"""

MINIMAL = """\
connectors:
  orders:
    function:
      local: handler.py
"""


def write(directory: Path, text: str, name: str = "connectors.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return str(caught.value)


# --- valid configs -------------------------------------------------------------------


def test_full_example_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))

    assert config.max_concurrent_syncs == 2
    assert list(config.connectors) == ["transactions", "billing", "webhook"]
    transactions = config.connectors["transactions"]
    function = transactions.function
    assert (function.kind, function.handler, function.isolation) == ("local", "handler", "inline")
    assert (function.timeout, function.memory_mb) == (900.0, 512)
    assert function.retry == RetryConfig(attempts=3, base=2.0, cap=60.0)
    assert transactions.schema_ == "txn"
    assert transactions.destination == "postgresql://user@localhost/warehouse"
    assert transactions.schedule == 900.0
    assert transactions.secrets == {"apiToken": "enc:v1:abc", "region": "${env:REGION}"}
    assert transactions.tables == {
        "customers": TableConfig(columns={"email": "hash", "notes": "block"}),
        "orders": TableConfig(history=True),
        "audit": TableConfig(sync=False),
    }
    assert (transactions.naming, transactions.max_sync_duration) == ("source", 7200.0)


def test_lambda_and_http_functions(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))

    billing = config.connectors["billing"].function
    assert billing.kind == "lambda"
    assert billing.lambda_ == "arn:aws:lambda:eu-west-1:123456789012:function:billing"
    assert (billing.region, billing.qualifier) == ("eu-west-1", "live")
    assert (billing.endpoint_url, billing.external_id) == ("http://127.0.0.1:9001", "ext-1")
    assert billing.role_arn == "arn:aws:iam::123456789012:role/invoker"
    assert config.connectors["billing"].schedule == CronSchedule(cron="*/15 * * * *")
    webhook = config.connectors["webhook"]
    assert webhook.function.kind == "http"
    assert webhook.function.headers == {"Authorization": "Bearer ${env:WEBHOOK_TOKEN}"}
    assert webhook.schedule == 86400.0


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))

    assert config.warehouse == "duckdb:///warehouse.duckdb"
    assert config.max_concurrent_syncs == 4
    connector = config.connectors["orders"]
    assert (connector.schema_, connector.destination, connector.schedule) == (None, None, None)
    assert (connector.secrets, connector.tables) == ({}, {})
    assert (connector.naming, connector.max_sync_duration) == ("fivetran", 6 * 3600.0)
    function = connector.function
    assert (function.handler, function.isolation) == (None, "process")
    assert (function.timeout, function.memory_mb, function.headers) == (900.0, 4096, {})
    assert function.retry == RetryConfig(attempts=5, base=1.0, cap=60.0)
    assert TableConfig() == TableConfig(sync=True, columns={}, history=False)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("30s", 30.0, id="seconds"),
        pytest.param("15m", 900.0, id="minutes"),
        pytest.param("6h", 21600.0, id="hours"),
        pytest.param("1d", 86400.0, id="days"),
        pytest.param("2.5m", 150.0, id="fraction"),
        pytest.param(45, 45.0, id="bare-number"),
        pytest.param("90", 90.0, id="bare-number-as-text"),
    ],
)
def test_duration_forms(text: str | int, seconds: float) -> None:
    assert FunctionConfig(local="h.py", timeout=text).timeout == seconds


@pytest.mark.parametrize("text", ["0s", "-1s", "1w", "15 minutes", "", True])
def test_duration_rejects(text: object) -> None:
    with pytest.raises(ValidationError, match="invalid duration"):
        FunctionConfig(local="h.py", timeout=text)


def test_models_are_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(ValidationError, match="frozen"):
        config.connectors["orders"].function.isolation = "inline"


def test_secret_and_header_values_stay_out_of_repr() -> None:
    connector = ConnectorConfig(
        function=FunctionConfig(http="https://x.test/f", headers={"Authorization": "s3cr3t-h"}),
        secrets={"apiToken": "s3cr3t-v"},
    )
    assert "s3cr3t" not in repr(connector)


def test_every_field_has_a_description() -> None:
    schema = Config.model_json_schema()
    models = [schema, *schema["$defs"].values()]
    undescribed = [
        name
        for model in models
        for name, field in model.get("properties", {}).items()  # SecretValue has none
        if not field.get("description")
    ]
    assert undescribed == []
    assert "lambda" in schema["$defs"]["FunctionConfig"]["properties"]


# --- errors: file, line, field ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            """\
            connectors:
              orders:
                function:
                  local: handler.py
                  timeout: 15 minutes
            """,
            "connectors.yaml:5: connectors.orders.function.timeout: "
            "invalid duration '15 minutes' (use 30s, 15m, 6h or 1d)",
            id="bad-duration",
        ),
        pytest.param(
            """\
            connectors:
              orders:
                function: {local: handler.py}
              Bad-Name:
                function: {local: handler.py}
            """,
            "connectors.yaml:4: connectors.Bad-Name: invalid connector name 'Bad-Name'",
            id="bad-connector-name",
        ),
        pytest.param(
            """\
            connectors:
              orders:
                schedule: 1h
                function:
                  local: handler.py
                  http: https://example.net/sync
            """,
            "connectors.yaml:4: connectors.orders.function: "
            "set only one of local, netlify, lambda or http, not local and http",
            id="two-functions",
        ),
        pytest.param(
            """\
            connectors:
              orders:
                function:
                  handler: handler
            """,
            "connectors.yaml:3: connectors.orders.function: "
            "no function: set one of local, netlify, lambda or http",
            id="no-function",
        ),
        pytest.param(
            """\
            connectors:
              orders:
                schedule: 1h
            """,
            "connectors.yaml:2: connectors.orders.function: required",
            id="function-key-missing",
        ),
        pytest.param(
            """\
            connectors:
              orders:
                function:
                  local: handler.py
                  timout: 15m
            """,
            "connectors.yaml:5: connectors.orders.function.timout: "
            "unknown key 'timout' (did you mean 'timeout'?)",
            id="typo",
        ),
        pytest.param(
            """\
            warehouse: duckdb:///w.duckdb
            connectors:
              orders:
                function: {local: handler.py}
                shedule: 1h
            """,
            "connectors.yaml:5: connectors.orders.shedule: "
            "unknown key 'shedule' (did you mean 'schedule'?)",
            id="typo-in-connector",
        ),
        pytest.param(
            """\
            connectors:
              orders:
                function:
                  local: handler.py
                  lambda_: my-function
            """,
            "connectors.yaml:5: connectors.orders.function.lambda_: "
            "unknown key 'lambda_' (did you mean 'lambda'?)",
            id="python-name-instead-of-alias",
        ),
        pytest.param(
            """\
            connectors:
              orders:
                function:
                  local: handler.py
                  isolation: thread
            """,
            "connectors.yaml:5: connectors.orders.function.isolation: "
            "Input should be 'process' or 'inline', not 'thread'",
            id="bad-isolation",
        ),
        pytest.param(
            """\
            connectors:
              orders:
                function:
                  local: handler.rb
            """,
            "connectors.yaml:4: connectors.orders.function.local: "
            "'handler.rb' is not a .py, .js, .mjs, .cjs, .ts, .mts or .cts file",
            id="wrong-extension",
        ),
        pytest.param(
            """\
            connectors:
              orders:
                function: {local: handler.py}
                schedule: {cron: "*/15 * *"}
            """,
            "connectors.yaml:4: connectors.orders.schedule.cron: invalid cron '*/15 * *'",
            id="bad-cron",
        ),
        pytest.param(
            """\
            connectors:
              orders:
                function:
                  http: ftp://example.net/sync
            """,
            "connectors.yaml:4: connectors.orders.function.http: "
            "'ftp://example.net/sync' is not an http(s) URL",
            id="bad-http-url",
        ),
        pytest.param(
            """\
            max_concurrent_syncs: 0
            connectors: {}
            """,
            "connectors.yaml:1: max_concurrent_syncs: Input should be greater than or equal to 1",
            id="concurrency-zero",
        ),
        pytest.param(
            """\
            connectors:
              orders:
                function: {local: handler.py}
                secrets:
                  apiToken: ${env:API-TOKEN}
            """,
            "connectors.yaml:5: connectors.orders.secrets.apiToken: malformed ${env:NAME} reference",
            id="malformed-env-reference",
        ),
        pytest.param(
            """\
            connectors:
              orders:
                function: {local: handler.py}
              orders:
                function: {local: other.py}
            """,
            "connectors.yaml:4: connectors.orders: duplicate key (first at line 2)",
            id="duplicate-connector",
        ),
        pytest.param(
            """\
            connectors:
              orders:
                function: {local: handler.py
            """,
            "connectors.yaml:4: YAML syntax error: expected ',' or '}', but got '<stream end>' "
            "(while parsing a flow mapping at line 3)",
            id="yaml-syntax-error",
        ),
        pytest.param(
            """\
            - orders
            - billing
            """,
            "connectors.yaml:1: expected a mapping with `connectors:` at the top level",
            id="top-level-list",
        ),
        pytest.param("", "connectors.yaml:1: expected a mapping", id="empty-file"),
    ],
)
def test_config_errors_name_file_line_and_field(tmp_path: Path, text: str, expected: str) -> None:
    message = config_error(tmp_path, text)
    assert message.startswith(f"{tmp_path}/connectors.yaml:")
    assert expected in message


def test_yaml_syntax_error_line_is_where_the_parser_stopped(tmp_path: Path) -> None:
    message = config_error(tmp_path, "connectors:\n  orders:\n    function: x: y\n")
    assert message.endswith(
        "connectors.yaml:3: YAML syntax error: mapping values are not allowed here"
    )


def test_several_problems_one_line_each_in_file_order(tmp_path: Path) -> None:
    message = config_error(
        tmp_path,
        """\
        connectors:
          orders:
            function: {local: handler.py, isolation: thread}
            max_sync_duration: forever
          Billing:
            function: {local: billing.py}
        """,
    )
    lines = message.splitlines()
    assert [line.split(": ")[0].rsplit(":", 1)[1] for line in lines] == ["3", "4", "5"]
    assert "connectors.orders.function.isolation" in lines[0]
    assert "connectors.orders.max_sync_duration: invalid duration 'forever'" in lines[1]
    assert "connectors.Billing: invalid connector name" in lines[2]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: no such file"):
        load_config(tmp_path / "nowhere.yaml")


def test_wrongly_typed_secret_is_not_echoed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            write(
                tmp_path,
                """\
                connectors:
                  orders:
                    function: {local: handler.py}
                    secrets: {auth: {since: 1987-06-05}}
                """,
            )
        )
    assert str(caught.value).endswith(
        "connectors.yaml:4: connectors.orders.secrets.auth.since: expected a string, number, "
        "true/false, null, list or mapping (quote a date or other text)"
    )
    assert "1987" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


# --- where the config is, and paths relative to it --------------------------------------


def test_connector_config_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, MINIMAL, name="elsewhere.yaml")
    monkeypatch.setenv("CONNECTOR_CONFIG", str(path))
    monkeypatch.chdir(tmp_path)
    assert load_config().path == path


def test_explicit_path_wins_over_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_CONFIG", str(tmp_path / "missing.yaml"))
    path = write(tmp_path, MINIMAL, name="chosen.yaml")
    assert load_config(path).path == path


def test_default_is_connectors_yaml_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONNECTOR_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    write(tmp_path, MINIMAL)
    assert load_config().path == tmp_path / "connectors.yaml"


@pytest.mark.parametrize(
    ("url", "resolved"),
    [
        pytest.param(
            "duckdb:///warehouse.duckdb", "duckdb:///{dir}/warehouse.duckdb", id="duckdb-relative"
        ),
        pytest.param(
            "duckdb:///data/w.duckdb", "duckdb:///{dir}/data/w.duckdb", id="duckdb-subdir"
        ),
        pytest.param("sqlite:///local.db", "sqlite:///{dir}/local.db", id="sqlite-relative"),
        pytest.param(
            "sqlite+pysqlite:///a.db?timeout=5",
            "sqlite+pysqlite:///{dir}/a.db?timeout=5",
            id="sqlite-driver-query",
        ),
        pytest.param("duckdb:////abs/w.duckdb", "duckdb:////abs/w.duckdb", id="duckdb-absolute"),
        pytest.param("sqlite:////abs/w.db", "sqlite:////abs/w.db", id="sqlite-absolute"),
        pytest.param("duckdb:///:memory:", "duckdb:///:memory:", id="duckdb-memory"),
        pytest.param("postgresql://u@h/db", "postgresql://u@h/db", id="server"),
    ],
)
def test_destination_url_resolves_relative_files(tmp_path: Path, url: str, resolved: str) -> None:
    config = load_config(write(tmp_path, f"warehouse: {url!r}\n" + MINIMAL))
    assert config.destination_url("orders") == resolved.format(dir=tmp_path)


def test_destination_overrides_warehouse(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    assert config.destination_url("transactions") == "postgresql://user@localhost/warehouse"
    assert config.destination_url("billing") == f"duckdb:///{tmp_path}/warehouse.duckdb"


def test_relative_paths_follow_the_config_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", MINIMAL)
    monkeypatch.chdir(tmp_path)
    config = load_config("conf/connectors.yaml")
    assert config.path == tmp_path / "conf" / "connectors.yaml"
    assert config.function_path("orders") == tmp_path / "conf" / "handler.py"
    assert config.destination_url("orders") == f"duckdb:///{tmp_path}/conf/warehouse.duckdb"


def test_function_path_and_schema_name(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    assert config.function_path("transactions") == tmp_path / "examples/transactions/handler.py"
    assert config.schema_name("transactions") == "txn"
    assert config.schema_name("billing") == "billing"
    with pytest.raises(ConfigError, match="connectors.billing.function: not a local function"):
        config.function_path("billing")
    with pytest.raises(ConfigError, match="no connector named 'nope'"):
        config.schema_name("nope")


# --- secrets and headers ---------------------------------------------------------------


def connector_with(
    secrets: dict[str, str], headers: dict[str, str] | None = None
) -> ConnectorConfig:
    function = FunctionConfig(http="https://example.net/f", headers=headers or {})
    return ConnectorConfig(function=function, secrets=secrets)


def test_env_secrets_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", "t0ken")
    monkeypatch.setenv("HOST", "db.internal")
    connector = connector_with(
        {"apiToken": "${env:API_TOKEN}", "dsn": "postgres://${env:HOST}:5432", "key": "enc:v1:abc"}
    )
    assert resolve_secrets(connector, "orders") == {
        "apiToken": "t0ken",
        "dsn": "postgres://db.internal:5432",
        "key": "enc:v1:abc",
    }


def test_decrypt_hook_gets_token_connector_name_and_key() -> None:
    calls = []

    def decrypt(token: str, connector: str, key: str) -> str:
        calls.append((token, connector, key))
        return "plain"

    connector = connector_with({"key": "enc:v1:abc", "other": "literal"})
    assert resolve_secrets(connector, "orders", decrypt=decrypt) == {
        "key": "plain",
        "other": "literal",
    }
    assert calls == [("enc:v1:abc", "orders", "key")]


def test_missing_env_var_names_the_key_not_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRESENT", "visible-value")
    monkeypatch.delenv("ABSENT_TOKEN", raising=False)
    connector = connector_with({"apiToken": "${env:PRESENT}-${env:ABSENT_TOKEN}"})
    with pytest.raises(ConfigError) as caught:
        resolve_secrets(connector, "orders")
    message = str(caught.value)
    assert (
        message
        == "connectors.orders.secrets.apiToken: environment variable ABSENT_TOKEN is not set"
    )
    assert "visible-value" not in message


def test_plaintext_secret_keys() -> None:
    connector = connector_with(
        {"a": "enc:v1:abc", "b": "${env:B}", "c": "Bearer ${env:C}", "d": "hunter2"}
    )
    assert plaintext_secret_keys(connector) == ["d"]


def test_headers_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_TOKEN", "w-tok")
    connector = connector_with(
        {}, headers={"Authorization": "Bearer ${env:WEBHOOK_TOKEN}", "X-A": "1"}
    )
    assert resolve_headers(connector, "hook") == {"Authorization": "Bearer w-tok", "X-A": "1"}
    monkeypatch.delenv("WEBHOOK_TOKEN")
    with pytest.raises(
        ConfigError, match="connectors.hook.function.headers.Authorization: .*WEBHOOK_TOKEN"
    ):
        resolve_headers(connector, "hook")
