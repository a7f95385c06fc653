"""`enc:v1:` tokens and the key they are made with (DESIGN.md §7)."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import traceback
from pathlib import Path

import pytest

from connector_runtime.errors import ConfigError
from connector_runtime.secrets import (
    decrypt,
    encrypt,
    init_key,
    key_file_path,
    make_decrypter,
)

VALUE = "correct-horse-battery-staple"


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def key_id(key_b64: str) -> str:
    return hashlib.sha256(base64.b64decode(key_b64)).hexdigest()[:8]


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No key from the developer's machine: HOME and XDG_CONFIG_HOME point into tmp_path."""
    monkeypatch.delenv("CONNECTOR_RUNTIME_KEY", raising=False)
    monkeypatch.delenv("CONNECTOR_RUNTIME_KEY_FILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def env_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = new_key()
    monkeypatch.setenv("CONNECTOR_RUNTIME_KEY", key)
    return key


def payload(token: str) -> bytes:
    data = token.split(":")[3]
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def with_payload(token: str, data: bytes) -> str:
    head = token.rsplit(":", 1)[0]
    return f"{head}:{base64.urlsafe_b64encode(data).rstrip(b'=').decode()}"


# --- tokens --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(VALUE, id="ascii"),
        pytest.param("pässwörd ✓ 秘密", id="unicode"),
        pytest.param("line one\nline two\n", id="newlines"),
        pytest.param("", id="empty"),
    ],
)
def test_round_trip(env_key: str, value: str) -> None:
    token = encrypt(value, "orders", "apiToken")
    assert decrypt(token, "orders", "apiToken") == value


def test_token_format(env_key: str) -> None:
    token = encrypt(VALUE, "orders", "apiToken")
    prefix, version, kid, _ = token.split(":")
    assert (prefix, version, kid) == ("enc", "v1", key_id(env_key))
    # nonce (12) + ciphertext (as long as the UTF-8 value) + tag (16)
    assert len(payload(token)) == 12 + len(VALUE.encode()) + 16
    assert VALUE not in token


def test_every_token_has_a_fresh_nonce(env_key: str) -> None:
    first, second = (encrypt(VALUE, "orders", "apiToken") for _ in range(2))
    assert first != second
    assert payload(first)[:12] != payload(second)[:12]


def test_make_decrypter_decrypts_and_reads_the_key_only_when_needed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decrypter = make_decrypter()  # no key anywhere yet: fine until a token needs one
    key = new_key()
    monkeypatch.setenv("CONNECTOR_RUNTIME_KEY", key)
    token = encrypt(VALUE, "orders", "apiToken")
    assert decrypter(token, "orders", "apiToken") == VALUE
    monkeypatch.delenv("CONNECTOR_RUNTIME_KEY")
    assert decrypter(token, "orders", "apiToken") == VALUE  # the key was read once


def test_make_decrypter_without_a_key_fails_on_first_token(env_key: str, monkeypatch) -> None:
    token = encrypt(VALUE, "orders", "apiToken")
    monkeypatch.delenv("CONNECTOR_RUNTIME_KEY")
    with pytest.raises(ConfigError, match="connector secrets init"):
        make_decrypter()(token, "orders", "apiToken")


def test_a_token_made_with_another_key_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = new_key(), new_key()
    monkeypatch.setenv("CONNECTOR_RUNTIME_KEY", old)
    token = encrypt(VALUE, "orders", "apiToken")
    monkeypatch.setenv("CONNECTOR_RUNTIME_KEY", new)
    with pytest.raises(ConfigError) as caught:
        decrypt(token, "orders", "apiToken")
    message = str(caught.value)
    assert "encrypted with a different key" in message
    assert key_id(old) in message and key_id(new) in message
    assert "$CONNECTOR_RUNTIME_KEY" in message


@pytest.mark.parametrize(
    ("connector", "key_name"),
    [
        pytest.param("customers", "apiToken", id="another-connector"),
        pytest.param("orders", "webhookSecret", id="another-key-same-connector"),
    ],
)
def test_a_moved_token_does_not_decrypt(env_key: str, connector: str, key_name: str) -> None:
    token = encrypt(VALUE, "orders", "apiToken")
    with pytest.raises(ConfigError) as caught:
        decrypt(token, connector, key_name)
    message = str(caught.value)
    assert f"does not belong to connector {connector!r} as {key_name!r}" in message
    assert "or was altered" in message
    assert f"connector secrets encrypt {connector} {key_name}" in message


@pytest.mark.parametrize(
    "position",
    [
        pytest.param(0, id="nonce"),
        pytest.param(12, id="ciphertext"),
        pytest.param(-1, id="tag"),
    ],
)
def test_a_tampered_token_does_not_decrypt(env_key: str, position: int) -> None:
    token = encrypt(VALUE, "orders", "apiToken")
    data = bytearray(payload(token))
    data[position] ^= 0x01
    with pytest.raises(ConfigError, match="or was altered"):
        decrypt(with_payload(token, bytes(data)), "orders", "apiToken")


def test_a_truncated_ciphertext_does_not_decrypt(env_key: str) -> None:
    token = encrypt(VALUE, "orders", "apiToken")
    with pytest.raises(ConfigError, match="or was altered"):
        decrypt(with_payload(token, payload(token)[:-1]), "orders", "apiToken")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("enc:v1:", id="empty"),
        pytest.param("enc:v1:{kid}", id="no-data"),
        pytest.param("enc:v1:{kid}:", id="empty-data"),
        pytest.param("enc:v1:XYZ:{data}", id="bad-key-id"),
        pytest.param("enc:v1:{kid}:{data}:extra", id="extra-part"),
        pytest.param("enc:v2:{kid}:{data}", id="other-version"),
        pytest.param("enc:v1:{kid}:not base64!", id="not-base64"),
        pytest.param("enc:v1:{kid}:{one_too_many}", id="impossible-length"),
        pytest.param("enc:v1:{kid}:" + "A" * 36, id="shorter-than-nonce-and-tag"),
    ],
)
def test_a_malformed_token_is_reported_as_malformed(env_key: str, token: str) -> None:
    good = encrypt(VALUE, "orders", "apiToken")
    data = good.split(":")[3]
    one_too_many = data + "A" * ((1 - len(data)) % 4)  # 4n+1 characters: no bytes fit
    assert len(one_too_many) % 4 == 1
    token = token.format(kid=key_id(env_key), data=data, one_too_many=one_too_many)
    with pytest.raises(ConfigError, match="is malformed: expected enc:v1:<key id>:"):
        decrypt(token, "orders", "apiToken")


@pytest.mark.parametrize(
    ("connector", "key_name", "problem"),
    [
        pytest.param("Orders", "apiToken", "invalid connector name 'Orders'", id="bad-name"),
        pytest.param("orders", "", "must not be empty", id="empty-key-name"),
    ],
)
def test_encrypt_refuses_a_binding_no_config_can_use(
    env_key: str, connector: str, key_name: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        encrypt(VALUE, connector, key_name)


# --- the key -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, "xdg/connector-runtime/key", id="xdg"),
        pytest.param({"XDG_CONFIG_HOME": None}, "home/.config/connector-runtime/key", id="home"),
        pytest.param(
            {"XDG_CONFIG_HOME": "relative"}, "home/.config/connector-runtime/key", id="xdg-relative"
        ),
        pytest.param({"CONNECTOR_RUNTIME_KEY_FILE": "{tmp}/elsewhere/k"}, "elsewhere/k", id="env"),
    ],
)
def test_key_file_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict, expected: str
) -> None:
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name)
        else:
            monkeypatch.setenv(name, value.format(tmp=tmp_path))
    assert key_file_path() == tmp_path / expected


def test_init_creates_a_private_key_file_once(tmp_path: Path) -> None:
    path, created = init_key()
    assert (path, created) == (tmp_path / "xdg/connector-runtime/key", True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for directory in (path.parent, path.parent.parent):  # both were missing
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert len(base64.b64decode(path.read_text().strip(), validate=True)) == 32
    first_key = path.read_bytes()

    assert init_key() == (path, False)
    assert path.read_bytes() == first_key


def test_init_respects_the_key_file_variable(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONNECTOR_RUNTIME_KEY_FILE", str(tmp_path / "keys" / "runtime.key"))
    path, created = init_key()
    assert (path, created) == (tmp_path / "keys" / "runtime.key", True)
    assert path.is_file()
    assert not (tmp_path / "xdg").exists()


def test_init_with_an_explicit_path(tmp_path: Path) -> None:
    assert init_key(tmp_path / "k") == (tmp_path / "k", True)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_a_key_made_by_init_encrypts_and_decrypts() -> None:
    init_key()
    token = encrypt(VALUE, "orders", "apiToken")
    assert decrypt(token, "orders", "apiToken") == VALUE


def test_init_creates_nothing_when_the_key_is_in_the_environment(
    env_key: str, tmp_path: Path
) -> None:
    assert init_key() == (None, False)
    assert not key_file_path().exists()
    assert not (tmp_path / "xdg").exists()


def test_init_reports_an_invalid_environment_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_RUNTIME_KEY", "too-short")
    with pytest.raises(ConfigError, match=r"\$CONNECTOR_RUNTIME_KEY is not a valid key"):
        init_key()
    assert not key_file_path().exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_a_key_file_open_to_others_is_refused(mode: int) -> None:
    path, _ = init_key()
    path.chmod(mode)
    for attempt in (
        lambda: encrypt(VALUE, "orders", "apiToken"),
        init_key,  # an existing but unusable key is not "a key already exists"
    ):
        with pytest.raises(ConfigError) as caught:
            attempt()
        assert f"run `chmod 600 {path}`" in str(caught.value)
        assert f"mode {mode:04o}" in str(caught.value)


def test_an_invalid_key_file_is_refused() -> None:
    path, _ = init_key()
    path.write_text(base64.b64encode(os.urandom(16)).decode())
    with pytest.raises(ConfigError, match=f"key file {path} is not a valid key: it decodes to 16"):
        encrypt(VALUE, "orders", "apiToken")


def test_the_environment_key_wins_over_the_key_file(monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = init_key()
    file_key = path.read_text().strip()
    env_key = new_key()
    monkeypatch.setenv("CONNECTOR_RUNTIME_KEY", env_key)
    token = encrypt(VALUE, "orders", "apiToken")
    assert token.split(":")[2] == key_id(env_key) != key_id(file_key)

    monkeypatch.delenv("CONNECTOR_RUNTIME_KEY")
    with pytest.raises(ConfigError, match=f"different key .*the key file {path}"):
        decrypt(token, "orders", "apiToken")


def test_a_url_safe_unpadded_environment_key_is_accepted(monkeypatch) -> None:
    raw = os.urandom(32)
    monkeypatch.setenv("CONNECTOR_RUNTIME_KEY", base64.b64encode(raw).decode())
    token = encrypt(VALUE, "orders", "apiToken")
    monkeypatch.setenv("CONNECTOR_RUNTIME_KEY", base64.urlsafe_b64encode(raw).decode().rstrip("="))
    assert decrypt(token, "orders", "apiToken") == VALUE


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param("", "is empty", id="empty"),
        pytest.param("   ", "is empty", id="blank"),
        pytest.param("not base64 at all!", "is not base64", id="not-base64"),
        pytest.param("clé-secrète", "is not base64", id="not-ascii"),
        pytest.param(base64.b64encode(b"k" * 16).decode(), "decodes to 16 bytes", id="16-bytes"),
        pytest.param(base64.b64encode(b"k" * 33).decode(), "decodes to 33 bytes", id="33-bytes"),
        pytest.param(b"k".hex() * 32, "decodes to 48 bytes", id="hex-not-base64"),
    ],
)
def test_an_invalid_environment_key_is_rejected(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("CONNECTOR_RUNTIME_KEY", value)
    with pytest.raises(ConfigError) as caught:
        encrypt(VALUE, "orders", "apiToken")
    message = str(caught.value)
    assert message.startswith("$CONNECTOR_RUNTIME_KEY ")
    assert problem in message
    if value.strip():
        assert value not in message


def test_no_key_at_all_says_how_to_make_one(tmp_path: Path) -> None:
    for attempt in (
        lambda: encrypt(VALUE, "orders", "apiToken"),
        lambda: decrypt("enc:v1:0123abcd:" + "A" * 40, "orders", "apiToken"),
    ):
        with pytest.raises(ConfigError) as caught:
            attempt()
        message = str(caught.value)
        assert "`connector secrets init`" in message
        assert "CONNECTOR_RUNTIME_KEY" in message
        assert str(tmp_path / "xdg/connector-runtime/key") in message


# --- nothing leaks -------------------------------------------------------------------


def _everything_said_about(error: BaseException) -> str:
    """str, repr and the formatted traceback, which includes any chained cause or context."""
    texts = []
    while error is not None:
        texts += [str(error), repr(error), *map(str, getattr(error, "args", ()))]
        error = error.__cause__ or error.__context__
    return "\n".join(texts)


def test_no_error_carries_the_value_or_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    key = new_key()
    monkeypatch.setenv("CONNECTOR_RUNTIME_KEY", key)
    token = encrypt(VALUE, "orders", "apiToken")
    tampered = with_payload(token, payload(token)[:-1] + bytes([payload(token)[-1] ^ 1]))

    def wrong_key():
        monkeypatch.setenv("CONNECTOR_RUNTIME_KEY", new_key())
        decrypt(token, "orders", "apiToken")

    def invalid_key():
        monkeypatch.setenv("CONNECTOR_RUNTIME_KEY", key[:-4])
        encrypt(VALUE, "orders", "apiToken")

    attempts = {
        "moved": lambda: decrypt(token, "customers", "apiToken"),
        "swapped": lambda: decrypt(token, "orders", "otherKey"),
        "tampered": lambda: decrypt(tampered, "orders", "apiToken"),
        "malformed": lambda: decrypt(token[:-30], "orders", "apiToken"),
        "unencodable": lambda: encrypt(VALUE + "\udcff", "orders", "apiToken"),
        "wrong key": wrong_key,
        "invalid key": invalid_key,
    }
    for name, attempt in attempts.items():
        with pytest.raises(ConfigError) as caught:
            attempt()
        said = _everything_said_about(caught.value)
        said += "".join(traceback.format_exception(caught.value))
        assert VALUE not in said, name
        assert key not in said and key[:-4] not in said, name
        assert caught.value.__cause__ is None, name
