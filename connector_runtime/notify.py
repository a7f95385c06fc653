"""Alert notifications: a JSON POST to each configured webhook when an alert opens or resolves.

Contract:

- `Notifier(config).attach(bus)` listens to `alert.opened` and `alert.resolved` (nothing
  else). An alert goes to the top-level `notify` webhooks plus its connector's own; an
  alert of a connector the config does not know goes to the top-level ones only. A URL
  listed twice for one alert is POSTed once.
- Each POST (`Content-Type: application/json`, timeout 10 s) carries

      {"event": "alert.opened" | "alert.resolved",
       "connector": "demo",
       "alert": <alert document>,
       "dashboard_url": "<dashboard_url>/alerts" | null,
       "text": "connector-runtime: demo failed: function_error (ValueError): boom"}

  `text` is one line that Slack and Teams incoming webhooks show as is: the message's
  whitespace folded to single spaces and cut to `MESSAGE_CHARS`. The whole body is masked
  (`masking.mask`) when it is sent, so a secret registered after the alert still never
  leaves the process.
- Delivery runs on one daemon thread fed by a queue: the publishing thread (a sync's)
  only enqueues. 429, 5xx, connection errors and timeouts are retried with the retry
  policy (a `Retry-After` is a floor, bounded by the policy's cap so one throttling
  webhook cannot hold the queue for long); any other answer but 2xx gives up at once
  (redirects are not followed: a POST turned into a GET would only look delivered).
  A notification that fails is logged once as `notification_failed` and raises nothing.
- Webhook URLs are secret-like (a Slack hook URL is its own credential): `${env:VAR}` is
  expanded when the Notifier is built (a variable that is not set is a `ConfigError`
  naming the field), each URL is registered with `masking`, and logs name a webhook
  only as `scheme://host/***`.
- `close()` stops accepting alerts, waits (bounded) for queued notifications, and
  unsubscribes; it is idempotent, and a Notifier is a context manager that closes.
- `start(config)` is the CLI's entry: a Notifier on `events.bus` if any webhook is
  configured, else None.
"""

from __future__ import annotations

import http.client
import json
import queue
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import structlog

from connector_runtime import __version__, events, masking
from connector_runtime.config import Config, expand_env
from connector_runtime.invokers.http import _retry_after
from connector_runtime.retry import RetryPolicy, with_retries

ALERT_EVENTS = ("alert.opened", "alert.resolved")
WEBHOOK_TIMEOUT = 10.0
MESSAGE_CHARS = 300
DEFAULT_RETRY = RetryPolicy(attempts=5, base=1.0, cap=30.0)
_HEADERS = {
    "Content-Type": "application/json",
    "User-Agent": f"connector-runtime/{__version__}",
}
_STOP = object()  # the queue's last item: the worker ends when it gets there


class Notifier:
    """Sends alert notifications to the configured webhooks from a thread of its own."""

    def __init__(
        self,
        config: Config,
        dashboard_url: str | None = None,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self._top_level = webhooks_for(config, None)
        self._by_connector = {name: webhooks_for(config, name) for name in config.connectors}
        masking.register([self._top_level, list(self._by_connector.values())])
        self._alerts_url = f"{dashboard_url.rstrip('/')}/alerts" if dashboard_url else None
        self._retry = retry
        self._queue: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._unsubscribe: Callable[[], None] | None = None
        self._worker = threading.Thread(target=self._work, name="notifier", daemon=True)
        self._opener = urllib.request.build_opener(_NoRedirects())

    def attach(self, bus: events.EventBus) -> Notifier:
        """Listen to `bus`'s alert events; returns self. A Notifier attaches once."""
        with self._lock:
            if self._unsubscribe is not None or self._closed:
                raise RuntimeError("a Notifier attaches to one bus, once, before close()")
            self._unsubscribe = bus.subscribe(self._on_event)
            self._worker.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting alerts, wait up to `timeout` s for queued ones, unsubscribe."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._worker.is_alive():
            self._worker.join(timeout)
        if self._worker.is_alive():
            structlog.get_logger().warning(
                "notifications_abandoned", pending=self._queue.qsize(), waited_s=timeout
            )

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the publishing thread: enqueue only ----------------------------------------------

    def _on_event(self, event: str, data: dict[str, Any]) -> None:
        alert = data.get("alert")
        if event not in ALERT_EVENTS or not isinstance(alert, dict):
            return
        with self._lock:  # held while enqueuing, so nothing lands after _STOP
            if not self._closed:
                self._queue.put((event, alert))

    # -- the worker thread ----------------------------------------------------------------

    def _work(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            event, alert = item
            for webhook in self._webhooks(alert.get("connector")):
                self._notify(webhook, event, alert)

    def _webhooks(self, connector: str | None) -> list[str]:
        return self._by_connector.get(connector, self._top_level) if connector else self._top_level

    def _notify(self, webhook: str, event: str, alert: dict[str, Any]) -> None:
        """POST one notification, with retries; log a failure once, never raise."""
        try:
            body = json.dumps(masking.mask(self._notification(event, alert))).encode()
            with_retries(
                lambda: self._post(webhook, body),
                self._retry,
                _TryAgain,
                what=f"notification to {masked_webhook(webhook)}",
            )
        except Exception as exc:  # a notification must never fail anything
            structlog.get_logger().error(
                "notification_failed",
                webhook=masked_webhook(webhook),
                notification=event,
                connector=alert.get("connector"),
                alert_id=alert.get("alert_id"),
                status=getattr(exc, "status", None),
                error=masking.mask(str(exc) if isinstance(exc, _Undelivered) else repr(exc)),
            )

    def _notification(self, event: str, alert: dict[str, Any]) -> dict[str, Any]:
        return {
            "event": event,
            "connector": alert.get("connector"),
            "alert": alert,
            "dashboard_url": self._alerts_url,
            "text": alert_text(event, alert),
        }

    def _post(self, webhook: str, body: bytes) -> None:
        """One POST; `_TryAgain` when a retry may help, `_Undelivered` when it cannot."""
        if urlsplit(webhook).scheme not in ("http", "https"):
            raise _Undelivered("the webhook is not an http(s) URL")
        request = urllib.request.Request(webhook, data=body, headers=_HEADERS, method="POST")
        try:
            with self._opener.open(request, timeout=WEBHOOK_TIMEOUT) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                raise self._refusal(exc.code, exc.reason, exc.headers) from None
        except urllib.error.URLError as exc:
            raise _unreachable(exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:  # a timeout or reset mid-answer
            raise _unreachable(exc) from None
        except ValueError:  # urllib's message would quote the URL
            raise _Undelivered("the webhook is not a valid URL") from None

    def _refusal(self, status: int, reason: Any, headers: Any) -> _Undelivered:
        error = f"HTTP {status} {reason}".strip()
        if status == 429 or status >= 500:
            retry_after = _retry_after(headers.get("Retry-After") if headers else None)
            if retry_after is not None:
                retry_after = min(retry_after, self._retry.cap)
            return _TryAgain(error, status=status, retry_after=retry_after)
        return _Undelivered(error, status=status)


def alert_text(event: str, alert: dict[str, Any]) -> str:
    """The notification's one readable line, e.g. `connector-runtime: demo failed: ...`."""
    connector, kind = alert.get("connector"), alert.get("kind")
    if event == "alert.resolved":
        return f"connector-runtime: {connector} recovered: alert {kind} resolved"
    cause = f"{kind} ({alert['error_type']})" if alert.get("error_type") else f"{kind}"
    return f"connector-runtime: {connector} failed: {cause}: {_one_line(alert.get('message'))}"


def _one_line(message: Any) -> str:
    """Masked first, then cut: a cut through a secret would leave a prefix `mask` misses."""
    return masking.excerpt(message or "", MESSAGE_CHARS, one_line=True)


def webhooks_for(config: Config, connector: str | None) -> list[str]:
    """The expanded webhook URLs for `connector`'s alerts: top-level first, then its own.

    None or an unknown connector: the top-level ones. A `${env:VAR}` that is not set is a
    `ConfigError` naming the field, as for secrets.
    """
    fields = [(("notify", i, "webhook"), n.webhook) for i, n in enumerate(config.notify)]
    if connector in config.connectors:
        own = config.connectors[connector].notify
        fields += [
            (("connectors", connector, "notify", i, "webhook"), n.webhook)
            for i, n in enumerate(own)
        ]
    urls = [expand_env(url, config.where(*loc)) for loc, url in fields]
    return list(dict.fromkeys(urls))


def masked_webhook(url: str) -> str:
    """How logs name a webhook: `https://hooks.slack.com/***` (path and query are the key)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # user:password@ would be a credential too
    return f"{parts.scheme}://{host}/{masking.MASK}" if parts.scheme and host else masking.MASK


def start(config: Config, dashboard_url: str | None = None) -> Notifier | None:
    """A Notifier on `events.bus` if any webhook is configured anywhere, else None."""
    configured = config.notify or any(c.notify for c in config.connectors.values())
    return Notifier(config, dashboard_url).attach(events.bus) if configured else None


class _Undelivered(Exception):
    """The webhook did not take the notification; `status` is its HTTP answer, if any."""

    def __init__(
        self, error: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(error)
        self.status, self.retry_after = status, retry_after


class _TryAgain(_Undelivered):
    """429, 5xx, a connection error or a timeout: worth another attempt."""


def _unreachable(reason: Any) -> _Undelivered:
    if isinstance(reason, ssl.SSLCertVerificationError):  # will not fix itself
        return _Undelivered(f"TLS certificate not trusted: {reason.verify_message}")
    return _TryAgain(f"unreachable: {reason}")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx: given up, not retried
