"""LambdaInvoker: the real AWS client against a real Lambda runtime on loopback.

Syncs run through `run_sync` against the Runtime Interface Emulator running handlers
from `tests/lambda_handlers/` (fixtures in `lambda_rie.py`). Answers the emulator never
gives (throttling, service errors, log tails, `X-Amz-Function-Error`) come from a
loopback HTTP server speaking Lambda's Invoke API; STS is moto's, or that server's
refusal.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import pytest

pytest.register_assert_rewrite("lambda_rie")  # a plugin (below), imported here first
from lambda_rie import require  # noqa: E402

require("boto3")
require("moto")
require("awslambdaric")

import boto3  # noqa: E402
from moto import mock_aws  # noqa: E402

from connector_runtime import errors  # noqa: E402
from connector_runtime.invokers import aws_lambda  # noqa: E402
from connector_runtime.invokers.aws_lambda import LambdaInvoker  # noqa: E402
from connector_runtime.retry import RetryPolicy  # noqa: E402
from connector_runtime.sync import SyncJob, run_sync  # noqa: E402

pytest_plugins = ["lambda_rie"]

REQUEST = {"agent": "connector-runtime/test", "state": {}, "secrets": {}, "sync_id": "s-1"}
ROLE = "arn:aws:iam::123456789012:role/connector-sync"
STS_ACCESS_DENIED = (
    b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
    b"<Code>AccessDenied</Code><Message>User: arn:aws:iam::123456789012:user/sync is not "
    b"authorized to perform: sts:AssumeRole on resource: " + ROLE.encode() + b"</Message>"
    b"</Error><RequestId>1</RequestId></ErrorResponse>"
)


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch, tmp_path):
    """Dummy credentials and no user AWS config: nothing here reaches real AWS."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDUMMYTESTKEY00000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dummy-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def invoker_at(url: str, **options: Any) -> LambdaInvoker:
    return LambdaInvoker("function", endpoint_url=url, region="us-east-1", **options)


def sync(tmp_path: Path, url: str, **options: Any):
    job = SyncJob(
        "demo",
        "demo",
        f"duckdb:///{tmp_path}/w.duckdb",
        invoker=lambda: invoker_at(url, **options),
        secrets={"apiToken": "t0ken"},
        retry=RetryPolicy(attempts=2, base=0.01, cap=0.01),
    )
    return run_sync(job)


def query(tmp_path: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(f"{tmp_path}/w.duckdb", read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(sql).fetchall()
    finally:
        con.close()


def saved_state(tmp_path: Path) -> dict:
    (state,) = query(tmp_path, "SELECT CAST(state AS VARCHAR) FROM connector_runtime.state")[0]
    return json.loads(state)


def only_alert(tmp_path: Path) -> dict:
    rows = query(
        tmp_path,
        "SELECT kind, error_type, message, CAST(stack_trace AS VARCHAR)"
        " FROM connector_runtime.alerts",
    )
    assert len(rows) == 1, rows
    kind, error_type, message, trace = rows[0]
    return {
        "kind": kind,
        "error_type": error_type,
        "message": message,
        "stack_trace": json.loads(trace) if trace else None,
    }


# --- syncs against the emulator ------------------------------------------------------


def test_a_multi_page_sync_writes_every_row_once_and_saves_the_last_state(
    lambda_function, tmp_path
):
    outcome = sync(tmp_path, lambda_function("pages.handler"))

    assert outcome.record.status == "succeeded", outcome.alert
    assert outcome.record.pages == 3
    rows = query(tmp_path, "SELECT id, amount, placed_at, sync_id FROM demo.orders ORDER BY id")
    assert [(row[0], row[1], row[2]) for row in rows] == [
        (n, n * 1.25, datetime(2024, 3, n, 10, tzinfo=UTC)) for n in range(1, 8)
    ]
    assert {row[3] for row in rows} == {outcome.record.sync_id}  # one sync, every page
    assert saved_state(tmp_path) == {"cursor": 7}


def test_a_handled_error_fails_the_sync_with_the_functions_message(lambda_function, tmp_path):
    outcome = sync(tmp_path, lambda_function("failures.handled"))

    assert outcome.record.status == "failed"
    alert = only_alert(tmp_path)
    assert (alert["kind"], alert["error_type"]) == ("function_error", "AuthError")
    assert alert["message"] == "the API token was refused"
    assert saved_state(tmp_path) == {}


def test_an_unhandled_exception_is_a_function_error_with_its_class_and_stack_trace(
    lambda_function, tmp_path
):
    outcome = sync(tmp_path, lambda_function("failures.unhandled"))

    assert outcome.record.status == "failed"
    alert = only_alert(tmp_path)
    assert (alert["kind"], alert["error_type"]) == ("function_error", "ConnectionRefusedError")
    assert alert["message"] == "orders API is down"
    assert any("failures.py" in str(frame) for frame in alert["stack_trace"])


def test_a_timed_out_function_fails_the_sync_as_sandbox_timedout(lambda_function, tmp_path):
    outcome = sync(tmp_path, lambda_function("failures.sleeps", timeout=1))

    assert outcome.record.status == "failed"
    alert = only_alert(tmp_path)
    assert (alert["kind"], alert["error_type"]) == ("function_error", "Sandbox.Timedout")
    assert "timed out after 1" in alert["message"]


def test_a_runtime_that_exits_is_a_runtime_exit_error_not_retried(lambda_function, tmp_path):
    outcome = sync(tmp_path, lambda_function("failures.exits"))

    alert = only_alert(tmp_path)
    assert (alert["kind"], alert["error_type"]) == ("function_error", "Runtime.ExitError")
    assert "exit status 3" in alert["message"]
    assert outcome.record.status == "failed"


def test_an_answer_over_six_megabytes_says_to_page_with_has_more(lambda_function, tmp_path):
    sync(tmp_path, lambda_function("failures.oversized"))

    alert = only_alert(tmp_path)
    assert alert["kind"] == "invoke_failed"
    assert "6 MB" in alert["message"] and "hasMore" in alert["message"]


# --- credentials ---------------------------------------------------------------------


def test_with_role_arn_the_invoke_is_signed_with_the_assumed_roles_credentials(lambda_function):
    url = lambda_function("pages.handler")
    with mock_aws():
        source = boto3.Session(region_name="us-east-1")
        assumed: list[dict] = []
        source.events.register(
            "after-call.sts.AssumeRole", lambda parsed, **_: assumed.append(parsed["Credentials"])
        )
        asked: list[dict] = []
        source.events.register(
            "provide-client-params.sts.AssumeRole", lambda params, **_: asked.append(params)
        )
        invoker = invoker_at(url, role_arn=ROLE, external_id="ext-4711", session=source)
        signed: list[dict] = []
        invoker.client.meta.events.register_first(
            "before-send.lambda.Invoke", lambda request, **_: signed.append(request.headers)
        )
        with invoker:
            answer = json.loads(invoker.invoke({**REQUEST, "secrets": {"apiToken": "t0ken"}}))

    assert answer["state"] == {"cursor": 3}
    assert asked == [
        {
            "RoleArn": ROLE,
            "RoleSessionName": "connector-runtime",
            "ExternalId": "ext-4711",
            "DurationSeconds": 3600,
        }
    ]
    (credentials,) = assumed
    assert credentials["AccessKeyId"] != "AKIDUMMYTESTKEY00000"
    authorization = signed[0]["Authorization"].decode()
    assert f"Credential={credentials['AccessKeyId']}/" in authorization
    assert signed[0]["X-Amz-Security-Token"].decode() == credentials["SessionToken"]


def test_assumed_credentials_are_refreshed_before_they_expire(lambda_function, monkeypatch):
    # 15-minute credentials are inside botocore's refresh window at once: each call renews.
    monkeypatch.setattr(aws_lambda, "ROLE_SESSION_SECONDS", 900)
    url = lambda_function("pages.handler")
    with mock_aws():
        source = boto3.Session(region_name="us-east-1")
        calls: list[str] = []
        source.events.register("after-call.sts.AssumeRole", lambda **_: calls.append("assume"))
        with invoker_at(url, role_arn=ROLE, session=source) as invoker:
            for _ in range(2):
                invoker.invoke({**REQUEST, "secrets": {"apiToken": "t0ken"}})
    assert len(calls) == 2


def test_a_role_sts_refuses_is_invoke_failed_naming_the_role(fake_lambda, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", fake_lambda.url)  # STS on loopback too
    fake_lambda.reply(403, STS_ACCESS_DENIED)
    invoker = invoker_at(fake_lambda.url, role_arn=ROLE, external_id="ext-4711")
    with invoker, pytest.raises(errors.InvokeFailed) as failure:
        invoker.invoke(REQUEST)
    assert f"cannot assume role {ROLE}" in failure.value.message
    assert "AccessDenied" in failure.value.message and "ext-4711" not in failure.value.message
    (assume_role,) = fake_lambda.requests  # and no Invoke
    assert (
        b"Action=AssumeRole" in assume_role["body"]
        and b"ExternalId=ext-4711" in assume_role["body"]
    )


def test_no_credentials_is_invoke_failed_naming_the_function(fake_lambda, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with invoker_at(fake_lambda.url) as invoker, pytest.raises(errors.InvokeFailed) as failure:
        invoker.invoke(REQUEST)
    assert "'function'" in failure.value.message and "credentials" in failure.value.message


def test_no_region_is_invoke_failed(monkeypatch):
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with LambdaInvoker("sync") as invoker, pytest.raises(errors.InvokeFailed) as failure:
        invoker.invoke(REQUEST)
    assert "'sync'" in failure.value.message and "region" in failure.value.message


# --- the client's configuration ------------------------------------------------------


def test_the_sdk_never_retries_and_reads_outlast_the_function():
    with LambdaInvoker("sync", region="eu-west-1", timeout=600) as invoker:
        config = invoker.client.meta.config
        assert config.retries["total_max_attempts"] == 1
        assert config.read_timeout == 630 and config.read_timeout > invoker.timeout
        assert config.connect_timeout == 10


def test_the_region_comes_from_an_arn():
    arn = "arn:aws:lambda:ap-southeast-2:123456789012:function:sync:live"
    with LambdaInvoker(arn) as invoker:
        assert invoker.client.meta.region_name == "ap-southeast-2"


# --- answers only real Lambda gives, from a loopback Invoke API ----------------------


class FakeLambda:
    """Lambda's Invoke API on loopback: scripted replies, every request kept."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, dict[str, str], bytes, float]] = []
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fake.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                status, headers, answer, delay = fake.replies.pop(0)
                time.sleep(delay)
                with contextlib.suppress(ConnectionError):  # the client gave up waiting
                    self.send_response(status)
                    for name, value in {**headers, "Content-Length": str(len(answer))}.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def reply(self, status: int, body: Any, delay: float = 0.0, **headers: str) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {name.replace("_", "-"): value for name, value in headers.items()}
        self.replies.append((status, headers, raw, delay))

    def service_error(self, status: int, code: str, message: str, **headers: str) -> None:
        self.reply(status, {"Type": "User", "message": message}, x_amzn_ErrorType=code, **headers)


@pytest.fixture
def fake_lambda() -> Iterator[FakeLambda]:
    fake = FakeLambda()
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def tail_of(*lines: str) -> str:
    return base64.b64encode("\n".join(lines).encode()).decode()


def test_the_request_is_a_synchronous_invoke_with_the_log_tail_and_the_qualifier(fake_lambda):
    fake_lambda.reply(200, {"state": {"cursor": 1}})
    with invoker_at(fake_lambda.url, qualifier="live") as invoker:
        assert json.loads(invoker.invoke(REQUEST)) == {"state": {"cursor": 1}}
    (request,) = fake_lambda.requests
    assert request["path"] == "/2015-03-31/functions/function/invocations?Qualifier=live"
    assert request["headers"]["X-Amz-Invocation-Type"] == "RequestResponse"
    assert request["headers"]["X-Amz-Log-Type"] == "Tail"
    assert json.loads(request["body"]) == REQUEST


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        pytest.param(429, "TooManyRequestsException", errors.TransientInvokeError, id="throttled"),
        pytest.param(500, "ServiceException", errors.TransientInvokeError, id="service-5xx"),
        pytest.param(502, "EC2ThrottledException", errors.TransientInvokeError, id="ec2-throttled"),
        pytest.param(502, "ENILimitReachedException", errors.TransientInvokeError, id="eni-limit"),
        pytest.param(503, "SomethingNew", errors.TransientInvokeError, id="unknown-5xx"),
        pytest.param(502, "KMSAccessDeniedException", errors.InvokeFailed, id="kms-denied"),
        pytest.param(404, "ResourceNotFoundException", errors.InvokeFailed, id="not-found"),
        pytest.param(403, "AccessDeniedException", errors.InvokeFailed, id="access-denied"),
        pytest.param(400, "InvalidParameterValueException", errors.InvokeFailed, id="bad-param"),
        pytest.param(403, "UnrecognizedClientException", errors.InvokeFailed, id="bad-key"),
    ],
)
def test_service_errors_are_classified_and_sent_once(fake_lambda, status, code, expected):
    fake_lambda.service_error(status, code, "Function said no")
    with invoker_at(fake_lambda.url) as invoker, pytest.raises(expected) as failure:
        invoker.invoke(REQUEST)
    assert len(fake_lambda.requests) == 1  # the SDK did not retry
    assert "'function'" in str(failure.value) and code in str(failure.value)
    assert isinstance(failure.value.__cause__, Exception)


def test_throttling_carries_lambdas_retry_after(fake_lambda):
    fake_lambda.service_error(429, "TooManyRequestsException", "Rate exceeded", Retry_After="7")
    with invoker_at(fake_lambda.url) as invoker, pytest.raises(errors.TransientInvokeError) as e:
        invoker.invoke(REQUEST)
    assert e.value.retry_after == 7.0


def test_a_function_slower_than_the_read_timeout_is_transient_and_not_sent_twice(
    fake_lambda, monkeypatch
):
    monkeypatch.setattr(aws_lambda, "READ_TIMEOUT_MARGIN", 0.0)
    fake_lambda.reply(200, {"state": {}}, delay=1.0)
    fake_lambda.reply(200, {"state": {}})  # what an SDK retry would have been answered
    invoker = invoker_at(fake_lambda.url, timeout=0.3)
    with invoker, pytest.raises(errors.TransientInvokeError) as failure:
        invoker.invoke(REQUEST)
    assert "timeout" in str(failure.value).lower()
    assert len(fake_lambda.requests) == 1


def test_a_refused_connection_is_transient(fake_lambda):
    url = fake_lambda.url
    fake_lambda.server.server_close()  # nothing listens there any more
    with invoker_at(url) as invoker, pytest.raises(errors.TransientInvokeError):
        invoker.invoke(REQUEST)


def test_a_request_over_six_megabytes_is_refused_before_sending(fake_lambda):
    with invoker_at(fake_lambda.url) as invoker, pytest.raises(errors.InvokeFailed) as failure:
        invoker.invoke({**REQUEST, "state": {"seen": "x" * (6 * 1024 * 1024)}})
    assert "6 MB" in failure.value.message and "state" in failure.value.message
    assert fake_lambda.requests == []


def test_a_request_lambda_finds_too_large_is_invoke_failed(fake_lambda):
    fake_lambda.service_error(413, "RequestTooLargeException", "Request must be smaller")
    with invoker_at(fake_lambda.url) as invoker, pytest.raises(errors.InvokeFailed) as failure:
        invoker.invoke(REQUEST)
    assert "6 MB" in failure.value.message and "hasMore" in failure.value.message


def test_an_unhandled_error_is_returned_with_the_decoded_log_tail(fake_lambda):
    error = {"errorMessage": "boom", "errorType": "KeyError", "stackTrace": ["  File x"]}
    log = tail_of("START RequestId: 1", "fetching page 2", "END RequestId: 1", "")
    fake_lambda.reply(200, error, X_Amz_Function_Error="Unhandled", X_Amz_Log_Result=log)
    with invoker_at(fake_lambda.url) as invoker:
        answer = json.loads(invoker.invoke(REQUEST))
    assert answer == {
        **error,
        "logTail": ["START RequestId: 1", "fetching page 2", "END RequestId: 1"],
    }


def test_a_function_error_without_the_error_shape_raises_function_error(fake_lambda):
    log = tail_of("about to fail")
    fake_lambda.reply(200, "not an error", X_Amz_Function_Error="Handled", X_Amz_Log_Result=log)
    with invoker_at(fake_lambda.url) as invoker, pytest.raises(errors.FunctionError) as failure:
        invoker.invoke(REQUEST)
    assert failure.value.error_type == "Function.Handled"
    assert '"not an error"' in failure.value.message
    assert failure.value.stack_trace == failure.value.log_tail == ["about to fail"]


def test_lambdas_timeout_message_becomes_sandbox_timedout(fake_lambda):
    message = "2024-03-01T10:00:00.000Z 1f2e Task timed out after 3.00 seconds"
    fake_lambda.reply(200, {"errorMessage": message}, X_Amz_Function_Error="Unhandled")
    with invoker_at(fake_lambda.url) as invoker:
        answer = json.loads(invoker.invoke(REQUEST))
    assert answer == {"errorMessage": message, "errorType": "Sandbox.Timedout"}


def test_lambdas_response_size_error_says_to_page_with_has_more(fake_lambda):
    too_large = {
        "errorMessage": "Response payload size exceeded maximum allowed payload size (6291556 bytes).",
        "errorType": "Function.ResponseSizeTooLarge",
    }
    fake_lambda.reply(200, too_large, X_Amz_Function_Error="Unhandled")
    with invoker_at(fake_lambda.url) as invoker, pytest.raises(errors.InvokeFailed) as failure:
        invoker.invoke(REQUEST)
    assert "hasMore" in failure.value.message


def test_a_page_that_mentions_error_message_in_a_row_is_passed_through(fake_lambda):
    page = b'{"state":{},"insert":{"t":[{"id":1,"errorMessage":"x","big":123456789012345678901234567890}]}}'
    fake_lambda.reply(200, page)
    with invoker_at(fake_lambda.url) as invoker:
        assert invoker.invoke(REQUEST) == page


def test_the_log_tail_reaches_the_alerts_stack_trace(fake_lambda, tmp_path):
    error = {"errorMessage": "boom", "errorType": "KeyError", "stackTrace": ["  File x"]}
    log = tail_of("START RequestId: 1", "fetched 20 orders", "END RequestId: 1")
    fake_lambda.reply(200, error, X_Amz_Function_Error="Unhandled", X_Amz_Log_Result=log)

    sync(tmp_path, fake_lambda.url)

    alert = only_alert(tmp_path)
    assert (alert["kind"], alert["error_type"]) == ("function_error", "KeyError")
    assert "fetched 20 orders" in json.dumps(alert["stack_trace"])
