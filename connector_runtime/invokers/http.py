"""Call a function over HTTP (Netlify, Azure Functions, Google Cloud Functions, ...).

Standard library only: `urllib.request` with the default SSL context (TLS verified).
`timeout` bounds the connection and each wait for bytes, not the whole exchange.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

from connector_runtime import __version__, errors, masking
from connector_runtime.invokers import Invoker, Stream, ndjson_lines
from connector_runtime.masking import MIN_LENGTH

EXCERPT_CHARS = 200
MAX_REDIRECTS = 5
LENIENT_TYPES = ("", "text/plain")  # absent, or a Fetch `new Response(string)` default
STREAMED_TYPE = "application/x-ndjson"  # a 2xx answer of this type streams (design §13)
STREAM_READ_BYTES = 256 * 1024
TOO_LARGE_HINT = (
    " - the request or response is too large for the function host: "
    "return fewer rows per page and set hasMore"
)
REDIRECT_HINT = (
    " - only 307/308 redirects within the same origin are followed: set `http:` to the final URL"
)


class HttpInvoker(Invoker):
    """POSTs each request as JSON to `url` and classifies the answer.

    - 2xx with a JSON content type (`application/json`, `*/*+json`): its body is returned.
      No content type or `text/plain` is accepted when the body parses as JSON; any
      other content type (a proxy's HTML page) is `InvokeFailed`.
    - 2xx with `application/x-ndjson`: a `Stream` of the body's lines, read as the caller
      asks for them (`timeout` bounds each wait for bytes); a connection that breaks
      mid-stream raises `TransientInvokeError` from the stream.
    - 4xx/5xx whose body is a JSON object with `errorMessage` is the function's own
      error: returned (the sync loop makes it a `function_error`), never retried.
      Except 429, which is always throttling.
    - 429, 408 and 5xx: `TransientInvokeError`, with `Retry-After` (seconds or a date).
    - other statuses: `InvokeFailed` at once (413 says to page with `hasMore`).
    - Connection refused/reset, DNS failures and timeouts: `TransientInvokeError`;
      a TLS certificate failure: `InvokeFailed`.
    - Redirects: 307/308 within the same origin are followed with the same POST; any
      other (a GET, or the headers sent to another host) is `InvokeFailed`.

    Header values and the URL's query values (Azure's `?code=`) may be secrets: messages
    name the URL without its query and mask them in any body excerpt they quote.

    `output` stays empty: what an HTTP function prints stays in its host's logs, and no
    HTTP answer carries it.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 900.0,
        verify_tls: bool = True,
        status_answers: bool = False,
    ) -> None:
        parts = urlsplit(url)
        self.where = _without_query(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise errors.InvokeFailed(f"not an http(s) URL: {self.where!r}")
        self.url, self.timeout = url, timeout
        # A destination function's 2xx is its answer whatever the body (design §12): it
        # is returned as {"statusCode", "message"} unless the body is one already.
        self.status_answers = status_answers
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"connector-runtime/{__version__}",
            **(headers or {}),
        }
        query_values = [value for _, value in parse_qsl(parts.query)]
        self._masker = masking.Masker(_secret_parts([*(headers or {}).values(), *query_values]))
        context = ssl.create_default_context()
        if not verify_tls:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        self._context = context
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), _SameOriginRedirects()
        )
        # One connection kept open across calls (each concurrent sender has its own
        # invoker: together a pool), unless a proxy is configured for the URL: then
        # urllib, which knows proxies, opens one per call.
        proxy = urllib.request.getproxies().get(parts.scheme)
        self._proxied = bool(proxy) and not urllib.request.proxy_bypass(parts.hostname)
        self._connection: http.client.HTTPConnection | None = None

    def invoke(self, request: dict[str, Any]) -> bytes | Stream:
        body = json.dumps(request, allow_nan=False).encode()
        post = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
        try:
            answer = self._exchange(post)
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from exc
        return self._judge(answer)

    def close(self) -> None:
        self._drop_connection()

    def _exchange(self, post: urllib.request.Request) -> _Answer:
        if not self._proxied:
            return self._exchange_kept(post.data)
        try:
            response = self._opener.open(post, timeout=self.timeout)
        except urllib.error.HTTPError as exc:  # a non-2xx answer: judged like any other
            response = exc
        if self._streams(response):
            return self._streamed(response, response.close)
        with response:
            return _Answer(response.status, response.reason, response.headers, response.read())

    def _exchange_kept(self, body: bytes) -> _Answer:
        """POST over the kept connection, following 307/308 within the same origin."""
        url = self.url
        for _ in range(MAX_REDIRECTS):
            answer = self._post(url, body)
            location = answer.headers.get("Location")
            if answer.status not in (307, 308) or not location:
                return answer
            target = urljoin(url, location)
            if _origin(target) != _origin(url):
                return answer  # judged: a redirect elsewhere is not followed
            url = target
        return answer

    def _post(self, url: str, body: bytes) -> _Answer:
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        for attempt in range(2):
            reused = self._connection is not None
            connection = self._connection or self._connect(parts)
            try:
                connection.request("POST", target, body=body, headers=self._headers)
                response = connection.getresponse()
                if self._streams(response):
                    return self._streamed(response, self._drop_connection)
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._drop_connection()
                if reused and attempt == 0:
                    continue  # the host closed the idle connection: once more on a new one
                raise
            except BaseException:
                self._drop_connection()
                raise
            if response.will_close:
                self._drop_connection()
            return _Answer(response.status, response.reason, response.headers, data)
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _connect(self, parts) -> http.client.HTTPConnection:
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=self.timeout, context=self._context
            )
        else:
            connection = http.client.HTTPConnection(
                parts.hostname, parts.port, timeout=self.timeout
            )
        self._connection = connection
        return connection

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _streams(self, response: Any) -> bool:
        """Whether `response` is a streamed answer: 2xx NDJSON, to a source's request."""
        media_type = response.headers.get_content_type() if response.headers else ""
        streamed = 200 <= response.status < 300 and media_type == STREAMED_TYPE
        return streamed and not self.status_answers

    def _streamed(self, response: Any, drop: Any) -> _Answer:
        """The answer whose body is read part by part: each line of NDJSON, one part.
        Read to its end, the connection stays for the next call; closed before, `drop`
        closes it (its unread rest cannot be skipped cheaply)."""

        def chunks() -> Any:
            while True:
                try:
                    chunk = response.read1(STREAM_READ_BYTES)
                except (OSError, http.client.HTTPException) as exc:
                    drop()
                    raise self._unreachable(exc, streaming=True) from exc
                if not chunk:
                    if response.will_close:
                        drop()
                    return
                yield chunk

        lines = ndjson_lines(chunks(), self.where)
        stream = Stream(lines, self.where, close=lambda: None if stream.ended else drop())
        return _Answer(response.status, response.reason, response.headers, b"", stream)

    def _judge(self, answer: _Answer) -> bytes | Stream:
        if answer.stream is not None:
            return answer.stream
        status = answer.status
        if 200 <= status < 300 and self.status_answers:
            parsed = answer.parsed()
            if isinstance(parsed, dict) and "statusCode" in parsed:
                return answer.body
            text = self._mask(answer.body.decode("utf-8", "replace"))
            said = masking.excerpt(text, EXCERPT_CHARS, one_line=True)
            return json.dumps({"statusCode": status, "message": said}).encode()
        if 200 <= status < 300:
            if answer.is_json():
                return answer.body
            raise errors.InvokeFailed(self._describe(answer, ", not JSON"))
        if status >= 400 and status != 429 and answer.is_error_shaped():
            return answer.body
        if status in (408, 429) or status >= 500:
            retry_after = _retry_after(answer.headers.get("Retry-After"))
            head, rest = self._describe_parts(answer)
            raise errors.TransientInvokeError(
                head + rest, retry_after=retry_after, answered=(head, rest)
            )
        if 300 <= status < 400:
            raise errors.InvokeFailed(self._describe(answer, REDIRECT_HINT))
        raise errors.InvokeFailed(self._describe(answer, TOO_LARGE_HINT if status == 413 else ""))

    def _describe(self, answer: _Answer, note: str = "") -> str:
        """Status, reason, content type and the first characters of the body, masked."""
        return "".join(self._describe_parts(answer, note))

    def _describe_parts(self, answer: _Answer, note: str = "") -> tuple[str, str]:
        """`_describe` as "<url> answered <status> <reason>" and the rest."""
        content_type = answer.headers.get("Content-Type") or "no content type"
        # the whole body masked before it is cut: a cut through a secret leaves a prefix
        body = self._mask(answer.body.decode("utf-8", "replace"))
        excerpt = masking.excerpt(body, EXCERPT_CHARS, one_line=True) or "(empty body)"
        if 300 <= answer.status < 400 and (location := answer.headers.get("Location")):
            note = f" to {_without_query(location)}{note}"
        return (
            f"{self.where} answered {answer.status} {answer.reason}",
            f" ({content_type}){note}: {excerpt}",
        )

    def _unreachable(
        self, reason: object, *, streaming: bool = False
    ) -> errors.ConnectorRuntimeError:
        if streaming:  # the page is asked for again: nothing of it was written
            detail = self._mask(str(reason)) or "connection closed"
            return errors.TransientInvokeError(
                f"{self.where}: the streamed answer broke off: {type(reason).__name__}: {detail}"
            )
        if isinstance(reason, ssl.SSLCertVerificationError):
            return errors.InvokeFailed(
                f"TLS verification failed for {self.where}: {reason.verify_message}; "
                "fix the server's certificate or trust its CA (SSL_CERT_FILE)"
            )
        if isinstance(reason, TimeoutError):
            return errors.TransientInvokeError(f"{self.where}: no answer within {self.timeout} s")
        if isinstance(reason, OSError | http.client.HTTPException):
            detail = self._mask(str(reason)) or "connection closed"
            return errors.TransientInvokeError(
                f"{self.where} could not be reached: {type(reason).__name__}: {detail}"
            )
        return errors.InvokeFailed(f"{self.where} could not be reached: {self._mask(str(reason))}")

    def _mask(self, text: str) -> str:
        """`text` with the connector's secrets, header values (and their words) and query
        values masked, in every rendering `masking` knows."""
        return self._masker.mask(text)


@dataclass(frozen=True)
class _Answer:
    status: int
    reason: str
    headers: Message
    body: bytes
    stream: Stream | None = None  # a streamed answer's parts, not yet read

    def media_type(self) -> str:
        return self.headers.get_content_type() if self.headers.get("Content-Type") else ""

    def is_json(self) -> bool:
        media_type = self.media_type()
        if media_type == "application/json" or media_type.endswith("+json"):
            return True
        return media_type in LENIENT_TYPES and self.parsed() is not None

    def is_error_shaped(self) -> bool:
        parsed = self.parsed()
        return isinstance(parsed, dict) and "errorMessage" in parsed

    def parsed(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:  # also UnicodeDecodeError
            return None


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Re-sends the POST on 307/308 within one origin; other redirects reach `_judge`."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if code in (307, 308) and _origin(newurl) == _origin(req.full_url):
            return urllib.request.Request(newurl, data=req.data, headers=req.headers, method="POST")
        return None


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.hostname, parts.port


def _without_query(url: str) -> str:
    """The URL to show in a message: no credentials, query or fragment (Azure's `?code=`)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}" if host else parts.path


def _retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time()) if moment.tzinfo else None


def _secret_parts(values: list[str]) -> list[str]:
    """Values and their words ("Bearer <token>" → the token), longest first, to mask."""
    parts = {p for v in values for p in (v, *v.split()) if len(p) >= MIN_LENGTH}
    return sorted(parts, key=len, reverse=True)
