"""Who may call the API: a token per start, as Jupyter does it.

- Scripts send `Authorization: Bearer <token>`.
- A browser opens `/login?token=<token>` once and then holds an HttpOnly,
  SameSite=Strict cookie (an HMAC of the token, never the token itself).
- Everything but `/healthz`, `/login` and background functions' callbacks (each
  authorized by its own token, `callbacks`) answers 401 without one of them.
- A POST (every request that changes something) must also come from this origin: an
  `Origin` header naming another site is refused with 403, and a cookie-authenticated
  POST without an `Origin` is refused too, so a form on another site cannot act.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import secrets
from http.cookies import SimpleCookie

from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..callbacks import PATH_PREFIX as CALLBACKS

COOKIE = "connector_runtime_session"
OPEN_PATHS = frozenset({"/healthz", "/login"})


def new_token() -> str:
    return secrets.token_urlsafe(32)


class TokenAuth:
    """ASGI middleware: 401 without the token, 403 for a cross-site POST."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token
        self.session = hmac.new(token.encode(), b"browser session", hashlib.sha256).hexdigest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] == "/healthz"
            or scope["path"].startswith(CALLBACKS)
        ):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["path"] == "/login":
            await self._login(scope, receive, send)
            return
        by_header = self._bearer_ok(headers.get("authorization", ""))
        by_cookie = not by_header and self._cookie_ok(headers.get("cookie", ""))
        if not (by_header or by_cookie):
            response = _unauthenticated(headers)
        elif scope["method"] not in ("GET", "HEAD") and not _same_origin(headers, by_cookie):
            response = JSONResponse(
                {
                    "error": "cross-site request refused: POSTs must come from this origin",
                    "code": "cross_site",
                },
                status_code=403,
            )
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = dict(
            part.split("=", 1) for part in scope["query_string"].decode().split("&") if "=" in part
        )
        if not hmac.compare_digest(query.get("token", ""), self.token):
            response = JSONResponse(
                {"error": "wrong or missing token", "code": "unauthenticated"}, status_code=401
            )
        else:
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, self.session, httponly=True, samesite="strict", path="/")
        await response(scope, receive, send)

    def _bearer_ok(self, authorization: str) -> bool:
        scheme, _, value = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), self.token)

    def _cookie_ok(self, header: str) -> bool:
        cookie = SimpleCookie()
        try:
            cookie.load(header)
        except Exception:  # a malformed Cookie header is no session
            return False
        morsel = cookie.get(COOKIE)
        return morsel is not None and hmac.compare_digest(morsel.value, self.session)


LOGIN_HELP = (
    "not logged in: open the login URL that `connector serve` printed (…/login?token=…), "
    "or send Authorization: Bearer <token> (the token is in .connector-runtime/server.json)"
)


def _unauthenticated(headers: dict[str, str]) -> Response:
    """401, as a page for a browser and as JSON for everything else."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if "text/html" in headers.get("accept", ""):
        page = (
            "<!doctype html><meta charset=utf-8><title>Log in · connector-runtime</title>"
            f"<h1>connector-runtime</h1><p>{html.escape(LOGIN_HELP)}</p>"
        )
        return HTMLResponse(page, status_code=401, headers=challenge)
    return JSONResponse(
        {"error": LOGIN_HELP, "code": "unauthenticated"}, status_code=401, headers=challenge
    )


def _same_origin(headers: dict[str, str], by_cookie: bool) -> bool:
    """An `Origin` naming this host passes; none passes only for token-header callers."""
    origin = headers.get("origin")
    if origin is None or origin == "null":
        return not by_cookie and origin is None
    host = headers.get("host", "")
    return origin.split("://", 1)[-1] == host
