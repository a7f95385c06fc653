"""Secrets at rest: `enc:v1:` tokens, AES-256-GCM under one key (design §7).

    enc:v1:<key id>:<base64url(nonce || ciphertext || tag)>

- key id: the first 8 hex digits of SHA-256 of the key, so a token made under another
  key is reported as "encrypted with a different key", not as a corrupt token;
- nonce: 12 random bytes, fresh for every token;
- associated data: the JSON array `["connector-runtime/enc:v1", connector, key name]`.
  A token copied to another connector does not decrypt, and neither does one moved to
  another key of the same connector: whoever can edit connectors.yaml cannot route
  `apiToken`'s value into a field the function logs or syncs to the warehouse. The
  price: renaming a key in connectors.yaml means encrypting its value again.

A token holds a string and decrypts to a string. A secret may be any JSON value (a
number, an object, a list); each string inside one can be a token of its own, whose key
name is its dotted path under `secrets:` (`auth.password`, `hosts.0`), so it too cannot
be moved to a sibling. Numbers, booleans and null are not encrypted: a token would turn
them into text. (A top-level key that itself contains a dot shares its name with a path.)

The key is $CONNECTOR_RUNTIME_KEY (base64 of 32 bytes) if set, else the key file:
$CONNECTOR_RUNTIME_KEY_FILE, else $XDG_CONFIG_HOME/connector-runtime/key, else
~/.config/connector-runtime/key. The file holds the same base64 text and must be mode
0600. `init_key` (`connector secrets init`) creates it.

No message or exception raised here carries a plaintext or the key: the errors that
could are raised outside `except` blocks, so none has a chained cause or context.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from connector_runtime.errors import ConfigError

KEY_ENV = "CONNECTOR_RUNTIME_KEY"
KEY_FILE_ENV = "CONNECTOR_RUNTIME_KEY_FILE"
TOKEN_PREFIX = "enc:v1:"

_KEY_BYTES = 32  # AES-256
_NONCE_BYTES = 12  # GCM's standard 96-bit nonce
_TAG_BYTES = 16
_KEY_ID = re.compile(r"^[0-9a-f]{8}$")
_BASE64URL = re.compile(r"^[A-Za-z0-9_-]+$")
_CONNECTOR_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_HOW_TO_GET_A_KEY = f"run `connector secrets init`, or set {KEY_ENV}"


@dataclass(frozen=True)
class _Key:
    material: bytes = field(repr=False)
    source: str  # for messages: "$CONNECTOR_RUNTIME_KEY" or "key file PATH"

    @property
    def id(self) -> str:
        return hashlib.sha256(self.material).hexdigest()[:8]


# --- the key -------------------------------------------------------------------------


def key_file_path() -> Path:
    """Where the key file is: $CONNECTOR_RUNTIME_KEY_FILE, else the XDG config directory."""
    override = os.environ.get(KEY_FILE_ENV)
    if override:
        return Path(override).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says to ignore a relative XDG_CONFIG_HOME.
    base = Path(config_home) if os.path.isabs(config_home) else Path.home() / ".config"
    return base / "connector-runtime" / "key"


def init_key(path: str | Path | None = None) -> tuple[Path | None, bool]:
    """Make a key file unless there is a key already: (where the key is, created?).

    `(None, False)`: $CONNECTOR_RUNTIME_KEY holds a valid key; nothing was created.
    `(path, False)`: a usable key file is there already; nothing was created.
    `(path, True)`: a new random key was written to `path` (mode 0600; missing parent
    directories made 0700). `path` defaults to `key_file_path()`. ConfigError if the
    existing key is invalid or its file is open to other users.
    """
    if KEY_ENV in os.environ:
        _key_from_env()
        return None, False
    path = Path(path).expanduser() if path is not None else key_file_path()
    _make_private_directories(path.parent)
    if _create_key_file(path):
        return path, True
    _key_from_file(path)
    return path, False


def _load_key() -> _Key:
    if KEY_ENV in os.environ:
        return _key_from_env()
    return _key_from_file(key_file_path())


def _key_from_env() -> _Key:
    source = f"${KEY_ENV}"
    return _Key(_decode_key(os.environ[KEY_ENV], source), source)


def _key_from_file(path: Path) -> _Key:
    source = f"key file {path}"
    try:
        with open(path, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode  # of what was opened: no check-then-use race
            text = file.read(1024).decode("ascii", "replace")
    except FileNotFoundError:
        raise ConfigError(f"no key for secrets: {_HOW_TO_GET_A_KEY} (no {source})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {source}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{source} is not a regular file")
    if mode & 0o077:
        raise ConfigError(
            f"{source} is open to other users (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {path}`"
        )
    return _Key(_decode_key(text, source), source)


def _decode_key(text: str, source: str) -> bytes:
    """Base64 of 32 bytes; the standard or URL-safe alphabet, padded or not."""
    if not text.strip():
        raise ConfigError(f"{source} is empty: {_HOW_TO_GET_A_KEY} (base64 of 32 random bytes)")
    material = _b64decode(text.strip().replace("-", "+").replace("_", "/"))
    if material is None or len(material) != _KEY_BYTES:
        found = "is not base64" if material is None else f"decodes to {len(material)} bytes"
        raise ConfigError(
            f"{source} is not a valid key: it {found}; expected the base64 of "
            f"{_KEY_BYTES} random bytes, as `connector secrets init` writes"
        )
    return material


def _make_private_directories(directory: Path) -> None:
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    try:
        for created in reversed(missing):
            created.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {exc.filename}: {exc.strerror}") from None


def _create_key_file(path: Path) -> bool:
    """Write a new random key to `path`; False if a file is there (O_EXCL settles races)."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except OSError as exc:
        raise ConfigError(f"cannot create key file {path}: {exc.strerror}") from None
    try:
        os.fchmod(descriptor, 0o600)  # the umask can only have narrowed it; make it exact
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(base64.b64encode(AESGCM.generate_key(bit_length=256)).decode() + "\n")
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)  # a half-written key file would block the next init
        raise ConfigError(f"cannot write key file {path}: {exc.strerror}") from None
    return True


# --- tokens --------------------------------------------------------------------------


def encrypt(value: str, connector: str, key_name: str) -> str:
    """The `enc:v1:` token of `value`, decryptable only as `key_name` of `connector`."""
    if not _CONNECTOR_NAME.match(connector):
        raise ConfigError(
            f"invalid connector name {connector!r}: use a-z, 0-9 and _, starting with a letter"
        )
    if not key_name:
        raise ConfigError("the secret's key name must not be empty")
    if not _is_encodable(value):
        raise ConfigError("the value is not valid text (it holds a lone surrogate character)")
    key = _load_key()
    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(key.material).encrypt(
        nonce, value.encode("utf-8"), _associated_data(connector, key_name)
    )
    return f"{TOKEN_PREFIX}{key.id}:{_b64url(nonce + sealed)}"


def decrypt(token: str, connector: str, key_name: str) -> str:
    """The value of `token`, the `enc:v1:` token of `key_name` in `connector`'s config."""
    return _decrypt(token, connector, key_name, _load_key)


def make_decrypter() -> Callable[[str, str, str], str]:
    """`decrypt` for config's resolve hook: reads the key on its first token, then reuses it.

    A config without `enc:v1:` tokens never needs a key.
    """
    load_key_once = functools.cache(_load_key)

    def decrypt_token(token: str, connector: str, key_name: str) -> str:
        return _decrypt(token, connector, key_name, load_key_once)

    return decrypt_token


def _decrypt(token: str, connector: str, key_name: str, load_key: Callable[[], _Key]) -> str:
    where = f"the enc:v1 token of {key_name!r} in connector {connector!r}"
    again = f"encrypt the value again with `connector secrets encrypt {connector} {key_name}`"
    key_id, sealed = _parse(token, where)
    key = load_key()
    if key_id != key.id:
        raise ConfigError(
            f"{where} was encrypted with a different key (key id {key_id}; the {key.source} "
            f"has key id {key.id}): configure that key, or {again}"
        )
    value = _open(key, sealed, _associated_data(connector, key_name))
    if value is None:
        raise ConfigError(
            f"{where} does not belong to connector {connector!r} as {key_name!r} "
            f"or was altered: {again}"
        )
    return value


def _parse(token: str, where: str) -> tuple[str, bytes]:
    """(key id, nonce || ciphertext || tag) of a well-formed token; ConfigError otherwise."""
    parts = token.strip().split(":")
    sealed = None
    if len(parts) == 4 and parts[:2] == ["enc", "v1"] and _KEY_ID.match(parts[2]):
        sealed = _b64decode(parts[3], url=True) if _BASE64URL.match(parts[3]) else None
    if sealed is None or len(sealed) < _NONCE_BYTES + _TAG_BYTES:
        raise ConfigError(
            f"{where} is malformed: expected enc:v1:<key id>:<base64url data>, "
            "whole, as `connector secrets encrypt` prints it"
        )
    return parts[2], sealed


def _open(key: _Key, sealed: bytes, associated_data: bytes) -> str | None:
    """The plaintext, or None if the tag does not verify (returned, not raised: no context)."""
    nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
    try:
        return AESGCM(key.material).decrypt(nonce, ciphertext, associated_data).decode("utf-8")
    except (InvalidTag, UnicodeDecodeError):
        return None


def _associated_data(connector: str, key_name: str) -> bytes:
    # JSON: unambiguous for any key name, and easy to reproduce elsewhere.
    return json.dumps(["connector-runtime/enc:v1", connector, key_name]).encode("utf-8")


def _is_encodable(value: str) -> bool:
    try:
        value.encode("utf-8")  # the exception would hold the whole value: never let it out
    except UnicodeEncodeError:
        return False
    return True


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str, *, url: bool = False) -> bytes | None:
    """Decoded bytes, padding optional; None if `text` is not base64."""
    padded = text + "=" * (-len(text) % 4)
    try:
        return base64.urlsafe_b64decode(padded) if url else base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None
