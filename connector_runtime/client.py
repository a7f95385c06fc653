"""The other commands' way into a running `connector serve`: the same calls as
`control.Control`, answered by the server's API instead of by the warehouse.

`connect(config)` returns an `ApiClient` when `.connector-runtime/server.json` points at
a live server for this config, else None (the command then opens the warehouse itself).
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from typing import Any

from .config import Config
from .control import NotFound
from .errors import ConfigError, ConnectorRuntimeError, SyncInProgress
from .jsonio import decode_json, encode_json
from .server import discovery

TIMEOUT = 30.0


class ApiError(ConnectorRuntimeError):
    """The server answered with an error, or could not be reached."""


def connect(config: Config) -> ApiClient | None:
    info = discovery.find(config.path)
    return None if info is None else ApiClient(info.url, info.token, pid=info.pid)


class ApiClient:
    """`Control`'s reads and commands, through the API of a running server."""

    def __init__(self, url: str, token: str, *, pid: int | None = None) -> None:
        self.url, self.token, self.pid = url.rstrip("/"), token, pid

    def connectors(self) -> list[dict[str, Any]]:
        return self._get("/api/connectors")["connectors"]

    def connector(self, name: str) -> dict[str, Any]:
        return self._get(f"/api/connectors/{_part(name)}")

    def syncs(
        self, name: str, *, limit: int = 20, before: datetime | None = None
    ) -> list[dict[str, Any]]:
        query = {"limit": limit, **({"before": before.isoformat()} if before else {})}
        return self._get(f"/api/connectors/{_part(name)}/syncs", query)["syncs"]

    def sync(self, sync_id: str, *, logs: bool = False) -> dict[str, Any]:
        return self._get(f"/api/syncs/{_part(sync_id)}", {"logs": 1} if logs else {})

    def alerts(
        self, name: str | None = None, *, include_resolved: bool = False, limit: int = 200
    ) -> list[dict[str, Any]]:
        query = {"status": "all" if include_resolved else "open", "limit": limit}
        if name:
            query["connector"] = name
        return self._get("/api/alerts", query)["alerts"]

    def state(self, name: str) -> dict[str, Any]:
        return self.connector(name)["state"]

    def set_state(self, name: str, state: dict[str, Any]) -> None:
        self._post(f"/api/connectors/{_part(name)}/state", {"state": state})

    def set_paused(self, name: str, paused: bool) -> None:
        self._post(f"/api/connectors/{_part(name)}/{'pause' if paused else 'resume'}")

    def resolve_alert(self, alert_id: str) -> None:
        self._post(f"/api/alerts/{_part(alert_id)}/resolve")

    def start(self, name: str, trigger: str) -> str:
        """Start a sync in the server; its id."""
        action = "resync" if trigger == "resync" else "run"
        return self._post(f"/api/connectors/{_part(name)}/{action}")["sync_id"]

    # -- HTTP -------------------------------------------------------------------------

    def _get(self, path: str, query: dict | None = None) -> Any:
        suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
        return self._call(urllib.request.Request(self.url + path + suffix))

    def _post(self, path: str, body: dict | None = None) -> Any:
        data = encode_json(body) if body is not None else b""
        request = urllib.request.Request(self.url + path, data=data, method="POST")
        request.add_header("Content-Type", "application/json")
        return self._call(request)

    def _call(self, request: urllib.request.Request) -> Any:
        request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise _error(exc) from None
        except OSError as exc:
            raise ApiError(
                f"connector serve at {self.url} did not answer: {getattr(exc, 'reason', exc)}"
            ) from None
        return decode_json(body) if body else None


def _error(exc: urllib.error.HTTPError) -> ConnectorRuntimeError:
    try:
        body = decode_json(exc.read())
        message, code = body["error"], body.get("code")
    except (ValueError, KeyError, TypeError):
        message, code = f"HTTP {exc.code}", None
    kind = {"config_error": ConfigError, "not_found": NotFound, "in_progress": SyncInProgress}
    if code in kind:
        return kind[code](message)
    return ApiError(f"connector serve answered {exc.code}: {message}")


def _part(text: str) -> str:
    return urllib.parse.quote(text, safe="")
