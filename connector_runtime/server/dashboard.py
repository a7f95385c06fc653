"""The dashboard: three server-rendered pages over the same `Control` calls as the API.

`/` (overview), `/connectors/{name}` and `/alerts`; each also answers as JSON at the same
path with `Accept: application/json`, or with `.json` appended (`/index.json`,
`/connectors/{name}.json`, `/alerts.json`), as Datasette does. Buttons are plain POST
forms (the auth layer refuses a cross-site one), each answered with a redirect back to
the page, so the dashboard works without JavaScript; `static/dashboard.js` only adds
live updates from `/api/events` and keeps "3 min ago" fresh.

Everything a function sent is rendered by Jinja2 with autoescaping, as text.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..control import (
    SCHEMA_CHANGES_SHOWN,
    Control,
    NotFound,
    delivery_text,
    frame_text,
    parse_time,
    schema_change_text,
    sync_seconds,
)
from ..errors import SyncInProgress

HERE = Path(__file__).parent
PAGE_SIZE = 50
CHART_SYNCS = 50
STUB_BAR = 6.0  # SVG units: the least height of a failed or running sync's bar
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def routes(control: Control, syncs, json_response) -> list:
    """The dashboard's routes; `syncs` starts syncs (`scheduler.Server`)."""
    pages = _Pages(control, syncs, json_response)
    return [
        Route("/", pages.overview),
        Route("/index.json", pages.overview),
        Route("/alerts", pages.alerts),
        Route("/alerts.json", pages.alerts),
        Route("/alerts/{alert_id}/resolve", pages.resolve, methods=["POST"]),
        Route("/connectors/{name}.json", pages.connector),
        Route("/connectors/{name}", pages.connector),
        Route("/connectors/{name}/{action}", pages.act, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ago"] = ago
    env.filters["utc"] = utc_text
    env.filters["duration"] = duration_text
    env.filters["frame"] = lambda frame: frame_text(frame, "\n    ")
    env.filters["url"] = lambda text: quote(str(text), safe="")
    env.filters["sync_seconds"] = sync_seconds
    env.filters["delivery"] = delivery_text
    env.filters["schema_change"] = schema_change_text
    env.globals["schema_changes_shown"] = SCHEMA_CHANGES_SHOWN
    env.filters["pretty_json"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False)
    return env


class _Pages:
    def __init__(self, control: Control, syncs, json_response) -> None:
        self.control, self.syncs, self.json = control, syncs, json_response
        self.templates = _environment()

    def overview(self, request: Request) -> Response:
        connectors = self.control.connectors()
        if _wants_json(request):
            return self.json({"connectors": connectors})
        return self._page("overview.html", request, connectors=connectors)

    def connector(self, request: Request) -> Response:
        name = request.path_params["name"]
        connector = self.control.connector(name)
        before = _before(request)
        history = self.control.syncs(name, limit=PAGE_SIZE, before=before)
        recent = history if before is None else self.control.syncs(name, limit=CHART_SYNCS)
        alerts = self.control.alerts(name, limit=PAGE_SIZE)
        failed = next((s for s in recent if s["status"] == "failed"), None)
        output = self.control.sync(failed["sync_id"], logs=True) if failed else None
        document = {
            **connector,
            "syncs": history,
            "alerts": alerts,
            "last_failure_output": output and output.get("function_output"),
        }
        if _wants_json(request):
            return self.json(document)
        return self._page(
            "connector.html",
            request,
            connector=document,
            chart=sync_chart(list(reversed(recent[:CHART_SYNCS]))),
            older=history[-1]["started_at"] if len(history) == PAGE_SIZE else None,
            confirm=request.query_params.get("confirm") == "resync",
        )

    def alerts(self, request: Request) -> Response:
        show_all = request.query_params.get("status", "all") == "all"
        alerts = self.control.alerts(include_resolved=show_all, limit=PAGE_SIZE * 4)
        if _wants_json(request):
            return self.json({"alerts": alerts})
        return self._page(
            "alerts.html",
            request,
            open_alerts=[a for a in alerts if a["resolved_at"] is None],
            resolved=[a for a in alerts if a["resolved_at"] is not None],
            show_all=show_all,
        )

    def act(self, request: Request) -> Response:
        """Run now, Re-sync, Pause, Resume: then back to the connector's page."""
        name, action = request.path_params["name"], request.path_params["action"]
        self.control.config.connector(name)
        page = f"/connectors/{quote(name, safe='')}"
        try:
            if action in ("run", "resync"):
                self.syncs.start(name, "manual" if action == "run" else "resync")
            elif action in ("pause", "resume"):
                self.control.set_paused(name, action == "pause")
            else:
                raise NotFound(f"no action {action!r}")
        except SyncInProgress:
            return RedirectResponse(f"{page}?busy=1", status_code=303)
        return RedirectResponse(page, status_code=303)

    def resolve(self, request: Request) -> Response:
        # NotFound: resolved meanwhile (by a sync, or another tab); the page shows it
        with contextlib.suppress(NotFound):
            self.control.resolve_alert(request.path_params["alert_id"])
        return RedirectResponse("/alerts", status_code=303)

    def _page(self, template: str, request: Request, **context: Any) -> Response:
        html = self.templates.get_template(template).render(
            request=request, now=datetime.now(UTC), **context
        )
        return HTMLResponse(html, headers={"Content-Security-Policy": CSP})


def _wants_json(request: Request) -> bool:
    return request.url.path.endswith(".json") or "application/json" in request.headers.get(
        "accept", ""
    )


def _before(request: Request) -> datetime | None:
    text = request.query_params.get("before")
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"before must be an ISO 8601 time, not {text!r}") from None


# -- what the templates show ----------------------------------------------------------


def sync_chart(syncs: list[dict[str, Any]], width: int = 600, height: int = 120) -> dict:
    """Bars of rows and a line of duration for syncs, oldest first, in SVG user units."""
    if not syncs:
        return {"bars": [], "line": "", "width": width, "height": height}
    rows = [s["rows_upserted"] + s["rows_deleted"] for s in syncs]
    seconds = [sync_seconds(s) or 0.0 for s in syncs]
    slot = width / max(len(syncs), 12)  # a few syncs stay narrow bars, not a wall
    top_rows, top_seconds = max(rows), max(seconds)
    bars = []
    for i, (sync, count) in enumerate(zip(syncs, rows, strict=True)):
        tall = round(count / (top_rows or 1) * (height - 10), 1)
        if sync["status"] in ("failed", "running"):
            tall = max(tall, STUB_BAR)  # a failure with no rows still shows, in its colour
        bars.append(
            {
                "x": round(i * slot + slot * 0.15, 1),
                "y": round(height - tall, 1),
                "width": round(slot * 0.7, 1),
                "height": tall,
                "status": sync["status"],
                "title": f"{utc_text(sync['started_at'])}: {sync['status']}, {count:,} rows, "
                f"{duration_text(sync_seconds(sync))}",
            }
        )
    points = " ".join(
        f"{round(i * slot + slot / 2, 1)},"
        f"{round(height - s / (top_seconds or 1.0) * (height - 10), 1)}"
        for i, s in enumerate(seconds)
    )
    return {
        "bars": bars,
        "line": points,
        "width": width,
        "height": height,
        "top_rows": top_rows,
        "top_seconds": top_seconds,
    }


def ago(moment: str | datetime | None, now: datetime | None = None) -> str:
    """`just now`, `3 min ago`, `2 h ago`, `in 5 min`: how people read recent times."""
    if moment is None:
        return ""
    delta = ((now or datetime.now(UTC)) - parse_time(moment)).total_seconds()
    future, seconds = delta < 0, abs(delta)
    if seconds < 45:
        text = "just now" if not future else "in a moment"
        return text
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            amount = round(seconds / size)
            return f"in {amount} {unit}" if future else f"{amount} {unit} ago"
    return "just now"


def utc_text(moment: str | datetime | None) -> str:
    return (
        ""
        if moment is None
        else parse_time(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    )


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"
