"""The HTTP API of `connector serve`: thin handlers over `control.Control`, the same
functions the CLI calls when no server runs.

Reads are plain functions (Starlette runs them in its thread pool, since they touch the
warehouse); the event stream is the only coroutine that waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import callbacks
from ..control import Control, NotFound
from ..errors import ConfigError, ConnectorRuntimeError, SyncInProgress
from ..events import EventBus
from ..jsonio import decode_json, encode_json
from . import dashboard
from .auth import TokenAuth

KEEPALIVE_SECONDS = 15.0
MAX_LIMIT = 1000
EVENT_QUEUE = 1000  # events a slow client may fall behind by before the oldest are dropped


class SyncStarter(Protocol):
    """What starts syncs in the serving process (`scheduler.Server`)."""

    def start(self, name: str, trigger: str) -> str:
        """Start a sync now, return its id; SyncInProgress if one runs."""

    def healthy(self) -> bool:
        """True while the scheduler runs."""


class JSON(JSONResponse):
    """JSON as the runtime writes it everywhere: integers of any size stay exact."""

    def render(self, content: Any) -> bytes:
        return encode_json(content)


def create_app(
    control: Control, syncs: SyncStarter, bus: EventBus, registry, token: str
) -> TokenAuth:
    """The API as an ASGI app behind token auth."""
    api = _Api(control, syncs, bus, registry)
    routes = [
        Route("/healthz", api.healthz),
        Route("/metrics", api.metrics),
        Route("/api/connectors", api.connectors),
        Route("/api/connectors/{name}", api.connector),
        Route("/api/connectors/{name}/syncs", api.syncs),
        Route("/api/connectors/{name}/schema_changes", api.schema_changes),
        Route("/api/connectors/{name}/run", api.run, methods=["POST"]),
        Route("/api/connectors/{name}/resync", api.resync, methods=["POST"]),
        Route("/api/connectors/{name}/pause", api.pause, methods=["POST"]),
        Route("/api/connectors/{name}/resume", api.resume, methods=["POST"]),
        Route("/api/connectors/{name}/state", api.set_state, methods=["POST"]),
        Route("/api/syncs/{sync_id}", api.sync),
        Route("/api/alerts", api.alerts),
        Route("/api/alerts/{alert_id}/resolve", api.resolve, methods=["POST"]),
        Route("/api/events", api.events),
        callbacks.route(),  # background functions' pages; their own token authorizes them
        *dashboard.routes(control, syncs, JSON),
    ]
    expected = (ConfigError, NotFound, SyncInProgress, ValueError, ConnectorRuntimeError)
    app = Starlette(routes=routes, exception_handlers=dict.fromkeys(expected, _error))
    return TokenAuth(app, token)


async def _error(request: Request, exc: Exception) -> Response:
    """Expected failures as JSON with the status a client can act on; never a traceback."""
    if isinstance(exc, ConfigError):  # an unknown connector name
        return JSON({"error": str(exc), "code": "config_error"}, status_code=404)
    if isinstance(exc, NotFound):
        return JSON({"error": str(exc), "code": "not_found"}, status_code=404)
    if isinstance(exc, SyncInProgress):
        return JSON({"error": str(exc), "code": "in_progress"}, status_code=409)
    if isinstance(exc, ValueError):
        return JSON({"error": str(exc), "code": "bad_request"}, status_code=400)
    return JSON({"error": str(exc), "code": "unavailable"}, status_code=503)  # the warehouse


class _Api:
    def __init__(self, control: Control, syncs: SyncStarter, bus: EventBus, registry) -> None:
        # not `self.syncs`: that name is the history route's handler below
        self.control, self.starter, self.bus, self.registry = control, syncs, bus, registry

    def healthz(self, request: Request) -> Response:
        healthy = self.starter.healthy()
        return JSON({"ok": healthy}, status_code=200 if healthy else 503)

    def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def connectors(self, request: Request) -> Response:
        return JSON({"connectors": self.control.connectors()})

    def connector(self, request: Request) -> Response:
        return JSON(self.control.connector(request.path_params["name"]))

    def syncs(self, request: Request) -> Response:
        limit, before = _paging(request, 20)
        found = self.control.syncs(request.path_params["name"], limit=limit, before=before)
        return JSON({"syncs": found})

    def schema_changes(self, request: Request) -> Response:
        limit, before = _paging(request, 50)
        found = self.control.schema_changes(request.path_params["name"], limit=limit, before=before)
        return JSON({"schema_changes": found})

    def sync(self, request: Request) -> Response:
        logs = request.query_params.get("logs") in ("1", "true")
        return JSON(self.control.sync(request.path_params["sync_id"], logs=logs))

    def alerts(self, request: Request) -> Response:
        status = request.query_params.get("status", "open")
        if status not in ("open", "all"):
            raise ValueError(f"status must be open or all, not {status!r}")
        found = self.control.alerts(
            request.query_params.get("connector") or None,
            include_resolved=status == "all",
            limit=_int(request.query_params.get("limit"), 200),
        )
        return JSON({"alerts": found})

    def run(self, request: Request) -> Response:
        return self._start(request.path_params["name"], "manual")

    def resync(self, request: Request) -> Response:
        return self._start(request.path_params["name"], "resync")

    def _start(self, name: str, trigger: str) -> Response:
        self.control.config.connector(name)  # 404 for an unknown name
        return JSON({"sync_id": self.starter.start(name, trigger)}, status_code=202)

    def pause(self, request: Request) -> Response:
        return self._paused(request.path_params["name"], True)

    def resume(self, request: Request) -> Response:
        return self._paused(request.path_params["name"], False)

    def _paused(self, name: str, paused: bool) -> Response:
        self.control.config.connector(name)
        self.control.set_paused(name, paused)
        return Response(status_code=204)

    async def set_state(self, request: Request) -> Response:
        try:
            body = decode_json(await request.body())
        except ValueError as exc:
            raise ValueError(f"the body is not JSON: {exc}") from None
        state = body.get("state") if isinstance(body, dict) else None
        if not isinstance(state, dict):
            raise ValueError('send {"state": {...}}: the state must be a JSON object')
        name = request.path_params["name"]
        self.control.config.connector(name)
        await asyncio.to_thread(self.control.set_state, name, state)
        return Response(status_code=204)

    def resolve(self, request: Request) -> Response:
        self.control.resolve_alert(request.path_params["alert_id"])
        return Response(status_code=204)

    async def events(self, request: Request) -> Response:
        return StreamingResponse(
            self._stream(request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _stream(self, request: Request) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, dict]] = asyncio.Queue(EVENT_QUEUE)
        unsubscribe = self.bus.subscribe(
            lambda event, data: loop.call_soon_threadsafe(_offer, queue, (event, data))
        )
        try:
            yield b": connected\n\n"
            while not await request.is_disconnected():
                try:
                    event, data = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                yield b"event: " + event.encode() + b"\ndata: " + encode_json(data) + b"\n\n"
        finally:
            unsubscribe()


def _offer(queue: asyncio.Queue, item: Any) -> None:
    """Queue an event for one client; a client that fell far behind loses the oldest."""
    if queue.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
    queue.put_nowait(item)


def _paging(request: Request, default_limit: int) -> tuple[int, datetime | None]:
    """`?limit=&before=`: how many, and only those before an ISO 8601 time."""
    before = request.query_params.get("before")
    return _int(request.query_params.get("limit"), default_limit), _time(before) if before else None


def _int(text: str | None, default: int) -> int:
    if text is None:
        return default
    if not text.isdigit() or not 0 < int(text) <= MAX_LIMIT:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {text!r}")
    return int(text)


def _time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"before must be an ISO 8601 time, not {text!r}") from None
