"""`.connector-runtime/server.json` beside the config: how the other `connector` commands
find a running `connector serve` for the same config (its pid, URL and token; mode 0600,
removed when serve exits)."""

from __future__ import annotations

import contextlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson

HEALTH_TIMEOUT = 2.0


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    url: str
    token: str


def server_file(config_path: Path) -> Path:
    return config_path.absolute().parent / ".connector-runtime" / "server.json"


def write(config_path: Path, info: ServerInfo) -> Path:
    """Write the file readable by its owner only (it holds the token)."""
    path = server_file(config_path)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    draft = path.with_name(f".server.{os.getpid()}.json")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(orjson.dumps({"pid": info.pid, "url": info.url, "token": info.token}))
    os.replace(draft, path)  # readers never see half a file
    return path


def remove(config_path: Path) -> None:
    """Remove the file if this process wrote it."""
    info = read(config_path)
    if info is not None and info.pid == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            server_file(config_path).unlink()


def read(config_path: Path) -> ServerInfo | None:
    try:
        document = orjson.loads(server_file(config_path).read_bytes())
        return ServerInfo(int(document["pid"]), str(document["url"]), str(document["token"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find(config_path: Path) -> ServerInfo | None:
    """The live server for this config: its process exists and `/healthz` answers."""
    info = read(config_path)
    if info is None or not _alive(info.pid):
        return None
    try:
        with urllib.request.urlopen(f"{info.url}/healthz", timeout=HEALTH_TIMEOUT):
            return info
    except OSError:  # refused, timed out, or 503 while it shuts down
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
