"""Secrets are any JSON value: strings, numbers, booleans, null, lists and objects, nested.

Each string inside, at any depth, may be an `enc:v1:` token (bound to its dotted path) or
hold `${env:VAR}`; it is masked wherever a function echoes it. Numbers are passed as
numbers and not masked. The plaintext-secret warning is logged once per connector.
Through the real CLI into a real DuckDB warehouse, and the config loader on real files.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import cli_env
from structlog.testing import capture_logs

from connector_runtime import masking
from connector_runtime.config import load_config, plaintext_secret_keys, resolve_secrets
from connector_runtime.errors import ConfigError
from connector_runtime.jobs import build_job
from connector_runtime.secrets import encrypt, make_decrypter

PASSWORD = "pw-from-the-environment-71"
TOKEN = "nested-token-encrypted-38"


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh key in $CONNECTOR_RUNTIME_KEY, seen by the CLI's subprocesses too."""
    key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("CONNECTOR_RUNTIME_KEY", key)
    return key


@pytest.fixture
def password_in_env(key, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key for tokens, and PASSWORD in $SHOP_PASSWORD."""
    monkeypatch.setenv("SHOP_PASSWORD", PASSWORD)


@pytest.fixture(autouse=True)
def restore_masking():
    """`masking.register` is process-wide: put back what was registered before."""
    with masking._lock:
        before = masking._secrets
    yield
    with masking._lock:
        masking._secrets = before


def encrypt_with_cli(connector: str, key_name: str, value: str) -> str:
    """`connector secrets encrypt CONNECTOR KEY`, the value on stdin: its last line."""
    done = subprocess.run(
        [sys.executable, "-m", "connector_runtime.cli", "secrets", "encrypt", connector, key_name],
        input=value,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    return done.stdout.splitlines()[-1]


# --- the function gets them with their types ------------------------------------------

ECHO = """
import json
from pathlib import Path


def handler(request):
    secrets = request["secrets"]
    Path(__file__).with_name("secrets_seen.json").write_text(json.dumps(secrets))
    return {
        "state": {"limit": secrets["limit"], "debug": secrets["debug"],
                  "ratio": secrets["ratio"], "nothing": secrets["nothing"]},
        "insert": {"settings": [{"id": 1, "page_size": secrets["limit"],
                                 "debug": secrets["debug"],
                                 "port": secrets["hosts"][1]["port"]}]},
        "schema": {"settings": {"primary_key": ["id"]}},
    }
"""


def test_typed_and_nested_secrets_reach_the_function_as_configured(
    project, password_in_env
) -> None:
    token = encrypt_with_cli("demo", "auth.token", TOKEN)
    demo = project(
        ECHO,
        secrets={
            "limit": 100,
            "debug": True,
            "ratio": 0.25,
            "nothing": None,
            "auth": {"user": "u", "password": "${env:SHOP_PASSWORD}", "token": token},
            "hosts": ["db.example", {"port": 5432}],
        },
    )
    result = demo.run()
    assert result.returncode == 0, result.stderr

    seen = json.loads((demo.root / "secrets_seen.json").read_text())
    assert seen == {
        "limit": 100,
        "debug": True,
        "ratio": 0.25,
        "nothing": None,
        "auth": {"user": "u", "password": PASSWORD, "token": TOKEN},
        "hosts": ["db.example", {"port": 5432}],
    }
    assert [type(seen[k]) for k in ("limit", "debug", "ratio")] == [int, bool, float]
    assert demo.state() == {"limit": 100, "debug": True, "ratio": 0.25, "nothing": None}
    assert demo.query("SELECT id, page_size, debug, port FROM demo.settings") == [
        (1, 100, True, 5432)
    ]


def test_a_nested_token_is_bound_to_its_path(project, key) -> None:
    token = encrypt_with_cli("demo", "auth.token", TOKEN)
    demo = project(ECHO, secrets={"auth": {"user": token}})  # moved to a sibling
    result = demo.run()
    assert result.returncode == 2
    assert result.said("the enc:v1 token of 'auth.user' in connector 'demo' does not belong")
    assert TOKEN not in result.stdout + result.stderr


# --- masked wherever the function echoes them -------------------------------------------

LEAKY = """
import sys


def handler(request):
    auth = request["secrets"]["auth"]
    print(f"logging in as {auth['user']} with {auth['password']}")
    print(f"tokens: {request['secrets']['hosts'][0]['tokens']}", file=sys.stderr)
    raise PermissionError(
        f"login refused for {auth['password']} (token {auth['nested']['token']}, pin {auth['pin']})"
    )
"""


def test_nested_secret_strings_are_masked_in_alerts_and_function_output(
    project, password_in_env
) -> None:
    token = encrypt_with_cli("demo", "auth.nested.token", TOKEN)
    demo = project(
        LEAKY,
        secrets={
            "auth": {
                "user": "service-user",
                "password": "${env:SHOP_PASSWORD}",
                "nested": {"token": token},
                "pin": 4321,
            },
            "hosts": [{"tokens": ["list-token-one", "list-token-two"]}],
        },
    )
    result = demo.run()
    assert result.returncode == 1

    (alert,) = demo.alerts()
    assert alert["kind"] == "function_error" and alert["error_type"] == "PermissionError"
    assert alert["message"] == "login refused for *** (token ***, pin 4321)"
    listing = demo.connector("syncs", "demo", "--logs", "--json")
    output = json.loads(listing.stdout)["function_output"]
    assert "logging in as *** with ***" in output
    assert "tokens: ['***', '***']" in output

    everything = "\n".join(
        [result.stdout, result.stderr, listing.stdout, json.dumps(alert, default=str)]
    )
    everything += json.dumps(demo.syncs(), default=str)
    for secret in (PASSWORD, TOKEN, "service-user", "list-token-one", "list-token-two"):
        assert secret not in everything


def test_masking_covers_strings_at_any_depth_but_not_numbers() -> None:
    masking.register({"a": [{"b": {"c": "deep-secret-value"}}], "pin": 4321, "on": True})
    text = "deep-secret-value, 4321, True"
    assert masking.mask(text) == "***, 4321, True"
    masker = masking.Masker({"x": ["one-place-only", {"y": 987654}]})
    assert masker.mask("one-place-only 987654 deep-secret-value") == "*** 987654 ***"


# --- the config: validation, expansion and plain text --------------------------------


def shop_config(tmp_path: Path, secrets: str) -> Path:
    """connectors.yaml with connector `shop` and `secrets` (YAML text) from line 5 on."""
    (tmp_path / "handler.py").write_text("def handler(request):\n    return {'state': {}}\n")
    header = "connectors:\n  shop:\n    function: {local: handler.py}\n    secrets:\n"
    path = tmp_path / "connectors.yaml"
    path.write_text(header + textwrap.indent(textwrap.dedent(secrets), " " * 6))
    return path


def test_an_unset_variable_deep_inside_names_the_path_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ABSENT_PASSWORD", raising=False)
    path = shop_config(
        tmp_path,
        """\
        auth:
          user: u
          password: "${env:ABSENT_PASSWORD}"
        """,
    )
    config = load_config(path)
    with pytest.raises(ConfigError) as caught:
        resolve_secrets(config.connector("shop"), "shop", None, config.where)
    assert str(caught.value) == (
        f"{path}:7: connectors.shop.secrets.auth.password: "
        "environment variable ABSENT_PASSWORD is not set"
    )


@pytest.mark.parametrize(
    ("secrets", "line", "field", "problem"),
    [
        pytest.param(
            "auth: {password: '${env:'}\n",
            5,
            "auth.password",
            "malformed ${env:NAME} reference",
            id="malformed-env-nested",
        ),
        pytest.param(
            "hosts: [a, [b, '${env:X']]\n",
            5,
            "hosts.1.1",
            "malformed ${env:NAME} reference",
            id="malformed-env-in-lists",
        ),
        pytest.param(
            "auth:\n  since: 2024-01-01\n",
            6,
            "auth.since",
            "expected a string, number, true/false, null, list or mapping",
            id="date",
        ),
        pytest.param("ratio: .inf\n", 5, "ratio", "expected a finite number", id="infinity"),
    ],
)
def test_a_bad_value_deep_inside_names_the_path_and_line(
    tmp_path: Path, secrets: str, line: int, field: str, problem: str
) -> None:
    path = shop_config(tmp_path, secrets)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(
        f"{path}:{line}: connectors.shop.secrets.{field}: {problem}"
    )


def test_secrets_resolve_at_any_depth_each_token_as_its_path(
    tmp_path: Path, key, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOST_B", "b.example")
    path = shop_config(
        tmp_path,
        f"""\
        limit: 100
        auth: {{password: "{encrypt("p4ss", "shop", "auth.password")}"}}
        hosts: ["a.example", "${{env:HOST_B}}", {{token: "{encrypt("t0k", "shop", "hosts.2.token")}"}}]
        """,
    )
    config = load_config(path)
    resolved = resolve_secrets(config.connector("shop"), "shop", make_decrypter(), config.where)
    assert resolved == {
        "limit": 100,
        "auth": {"password": "p4ss"},
        "hosts": ["a.example", "b.example", {"token": "t0k"}],
    }


def test_plaintext_strings_are_found_at_any_depth(tmp_path: Path) -> None:
    path = shop_config(
        tmp_path,
        """\
        apiToken: "${env:API_TOKEN}"
        limit: 100
        debug: true
        auth: {user: someone, password: "enc:v1:00000000:AAAA", empty: ""}
        hosts: [{dsn: "postgres://u:${env:PW}@db"}, "plain-host"]
        """,
    )
    keys = plaintext_secret_keys(load_config(path).connector("shop"))
    assert keys == ["auth.user", "hosts.1"]


# --- the plaintext warning: once per connector -----------------------------------------


def test_plaintext_warning_is_logged_once_per_connector_listing_every_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_TOKEN", "from-the-environment")
    path = shop_config(
        tmp_path,
        """\
        apiToken: "${env:API_TOKEN}"
        region: eu-west-1
        auth: {user: someone, pin: 4321}
        """,
    )
    config = load_config(path)
    with capture_logs() as logs:
        for _ in range(3):  # `connector serve` builds a job for every sync
            build_job(config, "shop")
        build_job(load_config(path), "shop")  # the same file read again
    warnings = [entry for entry in logs if entry["event"] == "plaintext_secret"]
    assert warnings == [
        {
            "event": "plaintext_secret",
            "log_level": "warning",
            "connector": "shop",
            "secrets": ["region", "auth.user"],
            "hint": "encrypt each: connector secrets encrypt shop region; "
            "connector secrets encrypt shop auth.user",
        }
    ]


def test_plaintext_warning_comes_again_when_the_list_changes(tmp_path: Path) -> None:
    path = shop_config(tmp_path, "region: eu-west-1\n")
    with capture_logs() as logs:
        build_job(load_config(path), "shop")
        data = yaml.safe_load(path.read_text())
        data["connectors"]["shop"]["secrets"]["auth"] = {"user": "someone"}
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        build_job(load_config(path), "shop")
        build_job(load_config(path), "shop")
    listed = [entry["secrets"] for entry in logs if entry["event"] == "plaintext_secret"]
    assert listed == [["region"], ["region", "auth.user"]]


def test_no_warning_without_plaintext_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOME_TOKEN", "from-the-environment")
    path = shop_config(tmp_path, "limit: 100\ntoken: '${env:SOME_TOKEN}'\n")
    with capture_logs() as logs:
        build_job(load_config(path), "shop")
    assert [entry for entry in logs if entry["event"] == "plaintext_secret"] == []
