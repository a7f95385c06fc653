"""Handler shapes of local Python functions (design §13): what a handler written for
another host receives, and how its answer becomes a page.

- `fivetran`: the request in, the page out (`handler(request)`, or Lambda's
  `(event, context)`); the runtime's own shape.
- `netlify`: `handler(event, context)` gets a Netlify `HandlerEvent` (API Gateway's proxy
  event, as AWS Lambda behind API Gateway gets it too) whose `body` is the request as a
  JSON string, and returns `{"statusCode": 200, "body": "<the page as JSON>"}`.
- `azure`: Azure Functions' `main(req)` (or `main(req, context)`) gets an `HttpRequest`
  (`azure.functions.HttpRequest` when that package is installed, else one with the same
  `method`, `url`, `headers`, `params`, `route_params`, `get_body()` and `get_json()`)
  and returns an `HttpResponse` (anything with `status_code` and `get_body()`) or a
  `{"status": 200, "body": ...}` dict.

Without `shape:`, a handler named `main`, or whose first parameter is annotated
`HttpRequest`, is `azure`; any other is `fivetran` or `netlify`, told apart by its
answer: a dict with an integer `statusCode` and no `state` is Netlify's. Until then the
handler gets the request with the `HandlerEvent`'s fields readable on top of it
(`event["body"]`, `event.get("httpMethod")`) but not listed, so a Fivetran function sees
exactly the request.

A body that is not a string is taken as the page itself (JSON-encoded).
"""

from __future__ import annotations

import base64
import inspect
import json
import uuid
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, NamedTuple

from connector_runtime.jsonio import encode_json

INVALID_ANSWER = "Runtime.InvalidResponse"  # the shape's answer is not of that shape


class Shaped(NamedTuple):
    """An answer that came as an HTTP response: its status and its body (the page)."""

    shape: str
    status: int
    body: bytes

    def header(self) -> bytes:
        """The `SHAPED` frame's payload: this header line, then the body."""
        return json.dumps({"shape": self.shape, "status": self.status}).encode() + b"\n"


class WrongAnswer(Exception):
    """The handler answered, but not in its shape's way."""


def status_line(status: int) -> str:
    """`500 Internal Server Error`, or the bare number for a status without a phrase."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def shape_by_signature(name: str, handler: Callable[..., Any]) -> str | None:
    """`azure` for `main` or a handler taking an `HttpRequest`, else None (told by the answer)."""
    if name == "main":
        return "azure"
    try:
        parameters = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return None
    annotation = parameters[0].annotation if parameters else inspect.Parameter.empty
    named = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return "azure" if named.rpartition(".")[2] == "HttpRequest" else None


# -- what the handler gets --------------------------------------------------------------


def request_headers(request: dict[str, Any], body: bytes) -> dict[str, str]:
    """The headers of the POST a host would pass on (lower-case names)."""
    agent = "/".join(str(request.get("agent", "connector-runtime")).split("/")[:2])
    return {
        "accept": "application/json",
        "content-length": str(len(body)),
        "content-type": "application/json",
        "host": "localhost",
        "user-agent": agent,
    }


def netlify_event(request: dict[str, Any], function_name: str) -> dict[str, Any]:
    """Netlify's `HandlerEvent` for a POST of `request` to the function."""
    body = json.dumps(request)
    headers = request_headers(request, body.encode())
    path = f"/.netlify/functions/{function_name}"
    return {
        "rawUrl": f"http://localhost{path}",
        "rawQuery": "",
        "path": path,
        "httpMethod": "POST",
        "headers": headers,
        "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "queryStringParameters": {},
        "multiValueQueryStringParameters": {},
        "body": body,
        "isBase64Encoded": False,
    }


class RequestEvent(dict):
    """The request, with a `HandlerEvent`'s fields readable but not listed: iterating,
    printing or serialising it shows the request only."""

    def __init__(self, request: dict[str, Any], event: dict[str, Any]) -> None:
        super().__init__(request)
        self._event = event

    def __missing__(self, key: Any) -> Any:
        return self._event[key]

    def get(self, key: Any, default: Any = None) -> Any:
        return super().get(key, self._event.get(key, default))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or key in self._event


class HttpRequest:
    """What `azure.functions.HttpRequest` offers a handler, for when it is not installed."""

    def __init__(
        self, method: str, url: str, headers: dict[str, str], params: dict, body: bytes
    ) -> None:
        self.method, self.url, self.headers, self.params = method, url, headers, params
        self.route_params: dict[str, str] = {}
        self._body = body

    def get_body(self) -> bytes:
        return self._body

    def get_json(self) -> Any:
        return json.loads(self._body)


class AzureContext:
    """The `context` an Azure handler may take as its second parameter."""

    def __init__(self, function_name: str) -> None:
        self.invocation_id = str(uuid.uuid4())
        self.function_name = function_name
        self.function_directory = ""


def azure_request(request: dict[str, Any], function_name: str) -> Any:
    """Azure's `HttpRequest` for a POST of `request` to `/api/<function_name>`."""
    body = json.dumps(request).encode()
    arguments = {
        "method": "POST",
        "url": f"http://localhost/api/{function_name}",
        "headers": request_headers(request, body),
        "params": {},
        "body": body,
    }
    try:
        import azure.functions as func  # the user's own Azure types, when installed
    except ImportError:
        return HttpRequest(**arguments)
    return func.HttpRequest(**arguments, route_params={})


# -- what it answers --------------------------------------------------------------------


def is_netlify_answer(answer: Any) -> bool:
    status = answer.get("statusCode") if isinstance(answer, dict) else None
    return isinstance(status, int) and not isinstance(status, bool) and "state" not in answer


def netlify_answer(answer: Any) -> Shaped:
    """`{statusCode, body, isBase64Encoded}` as a `Shaped`; WrongAnswer if it is not one."""
    if not is_netlify_answer(answer):
        raise WrongAnswer(
            "a netlify handler returns {statusCode, body}; this one returned " + _described(answer)
        )
    body = answer.get("body")
    if answer.get("isBase64Encoded") and isinstance(body, str):
        return Shaped("netlify", answer["statusCode"], base64.b64decode(body))
    return Shaped("netlify", answer["statusCode"], body_bytes(body))


def azure_answer(answer: Any) -> Shaped:
    """An `HttpResponse` or `{status, body}` as a `Shaped`; WrongAnswer if it is neither."""
    if hasattr(answer, "status_code") and callable(getattr(answer, "get_body", None)):
        return Shaped("azure", int(answer.status_code), body_bytes(answer.get_body()))
    if isinstance(answer, dict) and ("status" in answer or "body" in answer):
        return Shaped("azure", int(answer.get("status", 200)), body_bytes(answer.get("body")))
    raise WrongAnswer(
        "an azure handler returns an HttpResponse or {status, body}; this one returned "
        + _described(answer)
    )


def body_bytes(body: Any) -> bytes:
    """A response body as bytes: text as UTF-8, nothing as empty, anything else as JSON."""
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8", "replace")
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    return encode_json(body)


def _described(answer: Any) -> str:
    if isinstance(answer, dict):
        keys = ", ".join(map(str, list(answer)[:6])) or "no keys"
        return f"a dict ({keys})"
    return "None" if answer is None else f"a {type(answer).__name__}"
