"""Call a function deployed to AWS Lambda, synchronously, through boto3.

Each request is one `Invoke` (`RequestResponse`, `LogType=Tail`). What comes back:

- the function's answer, as Lambda returned it;
- a function error (`X-Amz-Function-Error` set, or an error-shaped body) with the
  `errorMessage` shape: returned, with the decoded log tail (Lambda's last 4 KB of the
  function's output) added under `logTail`, a list of lines; a timeout without
  `errorType` gets `Sandbox.Timedout`. A function error whose body is not that shape
  raises `FunctionError` (`Function.Unhandled`/`Function.Handled`, the tail as
  `stack_trace` and `log_tail`);
- over Lambda's 6 MB payload limit either way: `InvokeFailed`, saying to page smaller;
- the log tail of each Invoke that answered, even with an error, is logged as
  `function_output` and appended to the invoker's `output`. That tail is Lambda's, not
  the function's alone: its `START`, `END` and `REPORT` lines are kept, and a call that
  printed more than 4 KB shows only its end, its first line possibly cut;
- throttling, 5xx, timeouts and connection errors: `TransientInvokeError` (with
  `retry_after` when Lambda sends one); anything else `InvokeFailed`, naming the function.

The SDK never retries an `Invoke` itself: a slow function must not run twice because a
socket timed out; the sync loop decides (design §3). With `role_arn`, the credentials
are those of the role, assumed through STS from the standard credential chain and
refreshed before they expire.

The Runtime Interface Emulator, which tests and local development run, answers a few
function errors differently from Lambda; those are mapped to what Lambda would answer
(`_keep_emulator_error`, `_EMULATOR_TIMEOUT`).
"""

from __future__ import annotations

import base64
import json
import re
from functools import cached_property
from typing import Any

import boto3
import botocore.session
import structlog
from botocore.config import Config
from botocore.credentials import (
    CredentialProvider,
    CredentialResolver,
    DeferredRefreshableCredentials,
)
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as SdkConnectionError

from connector_runtime import __version__, errors, masking
from connector_runtime.invokers import Invoker
from connector_runtime.jsonio import encode_json

PAYLOAD_LIMIT = 6 * 1024 * 1024  # bytes, each way, for a synchronous invocation
READ_TIMEOUT_MARGIN = 30.0  # seconds beyond the function's own timeout
CONNECT_TIMEOUT = 10.0
ROLE_SESSION_NAME = "connector-runtime"
ROLE_SESSION_SECONDS = 3600  # botocore refreshes 15 min (advisory) / 10 min (mandatory) early

_ARN_REGION = re.compile(r"^arn:[^:]+:lambda:([^:]+):")
_TIMED_OUT = re.compile(r"Task timed out after")
_EMULATOR_TIMEOUT = re.compile(rb"^Task timed out after [\d.]+ seconds\s*$")
_EMULATOR_ERROR = "EmulatorFunctionError"  # key of the body `_keep_emulator_error` saves
_TOO_LARGE_TYPE = "Function.ResponseSizeTooLarge"
_TOO_LARGE_TEXT = re.compile(r"payload size exceeded", re.IGNORECASE)

# Codes that say "try again later", whatever their HTTP status; and 5xx codes that
# describe the function's configuration, which no retry repairs.
_TRANSIENT_CODES = frozenset(
    {
        "TooManyRequestsException",
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "ServiceException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "EC2ThrottledException",
        "EC2UnexpectedException",
        "ENILimitReachedException",
        "ENINotReadyException",
        "SubnetIPAddressLimitReachedException",
        "ResourceNotReadyException",
        "ResourceConflictException",  # an update of the function is in progress
        "SnapStartNotReadyException",
        "SnapStartTimeoutException",
        "EFSMountTimeoutException",
        "EFSMountConnectivityException",
    }
)
_PERMANENT_CODES = frozenset(
    {
        "KMSAccessDeniedException",
        "KMSDisabledException",
        "KMSInvalidStateException",
        "KMSNotFoundException",
        "InvalidZipFileException",
        "InvalidRuntimeException",
        "InvalidSecurityGroupIDException",
        "InvalidSubnetIDException",
        "EC2AccessDeniedException",
    }
)
_TOO_LARGE_CODES = frozenset(
    {
        "RequestEntityTooLargeException",
        "RequestTooLargeException",
        "SerializedRequestEntityTooLargeException",
    }
)


class LambdaInvoker(Invoker):
    """Invokes one Lambda function (a name, `name:alias` or an ARN) per request."""

    def __init__(
        self,
        function: str,
        *,
        region: str | None = None,
        qualifier: str | None = None,
        endpoint_url: str | None = None,
        role_arn: str | None = None,
        external_id: str | None = None,
        timeout: float = 900.0,
        session: boto3.Session | None = None,
    ) -> None:
        arn_region = _ARN_REGION.match(function)
        self.function = function
        self.region = region or (arn_region[1] if arn_region else None)
        self.qualifier = qualifier
        self.endpoint_url = endpoint_url
        self.role_arn = role_arn
        self._external_id = external_id
        self.timeout = timeout
        self._session = session
        self._log = structlog.get_logger().bind(function=function)

    @cached_property
    def client(self) -> Any:
        """The Lambda client, made on first use: no SDK retries, reads outlast the function."""
        session = self._session or boto3.Session(region_name=self.region)
        if self.role_arn:
            session = self._assumed_role_session(session)
        config = Config(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=self.timeout + READ_TIMEOUT_MARGIN,
            retries={"mode": "standard", "total_max_attempts": 1},
            tcp_keepalive=True,  # an idle 15-minute call must survive NAT idle timeouts
            user_agent_extra=f"connector-runtime/{__version__}",
        )
        client = session.client(
            "lambda",
            region_name=self.region or session.region_name,
            endpoint_url=self.endpoint_url,
            config=config,
        )
        client.meta.events.register("after-call.lambda.Invoke", _keep_emulator_error)
        return client

    def invoke(self, request: dict[str, Any]) -> bytes:
        payload = encode_json(request)
        if len(payload) > PAYLOAD_LIMIT:
            raise errors.InvokeFailed(
                f"the request to Lambda function {self.function!r} is {len(payload)} bytes, "
                f"over Lambda's 6 MB payload limit: keep the function's state small (it is "
                f"sent with every request)"
            )
        body, function_error, tail = self._call(payload)
        for line in tail:
            self._log.info("function_output", line=line)
            self.output.append(line)
        return self._answer(body, function_error, tail)

    def close(self) -> None:
        if "client" in self.__dict__:
            self.__dict__.pop("client").close()

    # --- layers of `invoke` -----------------------------------------------------------

    def _call(self, payload: bytes) -> tuple[bytes, str | None, list[str]]:
        """One `Invoke`: the body, the `FunctionError` field and the log tail."""
        qualifier = {"Qualifier": self.qualifier} if self.qualifier else {}
        try:
            response = self.client.invoke(
                FunctionName=self.function,
                InvocationType="RequestResponse",
                LogType="Tail",
                Payload=payload,
                **qualifier,
            )
            body = response["Payload"].read()
        except _RoleNotAssumed as exc:
            raise self._failure(exc.error, "AssumeRole") from exc.error
        except ClientError as exc:
            if _EMULATOR_ERROR in exc.response:
                return exc.response[_EMULATOR_ERROR], "Unhandled", []
            raise self._failure(exc, "Invoke") from exc
        except BotoCoreError as exc:
            raise self._failure(exc, "Invoke") from exc
        tail = _log_tail(response.get("LogResult"))
        if _EMULATOR_TIMEOUT.match(body):  # the emulator's timeout: bare text, no FunctionError
            return _timeout_answer(body), "Unhandled", tail
        return body, response.get("FunctionError"), tail

    def _answer(self, body: bytes, function_error: str | None, tail: list[str]) -> bytes:
        """The body to hand the sync loop, or the error its shape calls for."""
        # A page may well mention "errorMessage" in a row; only then is parsing worth it.
        answer = _json_object(body) if function_error or b"errorMessage" in body else None
        if answer is not None and "errorMessage" in answer:
            return self._error_answer(answer, tail)
        if function_error:
            text = masking.excerpt(body.decode(errors="replace"), 2000)  # masked, then cut
            failure = errors.FunctionError(
                f"Lambda function {self.function!r} failed: {text}",
                error_type=f"Function.{function_error}",
                stack_trace=tail or None,
            )
            failure.log_tail = tail
            raise failure
        return body

    def _error_answer(self, answer: dict[str, Any], tail: list[str]) -> bytes:
        message = str(answer["errorMessage"])
        if answer.get("errorType") == _TOO_LARGE_TYPE or _TOO_LARGE_TEXT.search(message):
            raise errors.InvokeFailed(
                f"Lambda function {self.function!r} answered with more than Lambda's 6 MB "
                f"response limit: return fewer rows per page and set hasMore: true to send "
                f"the rest in the next call"
            )
        if not answer.get("errorType") and _TIMED_OUT.search(message):
            answer["errorType"] = "Sandbox.Timedout"  # older runtimes send only the message
        if tail:
            answer["logTail"] = tail
        return encode_json(answer)

    # --- translating botocore's errors -----------------------------------------------

    def _failure(
        self, exc: ClientError | BotoCoreError, operation: str
    ) -> errors.ConnectorRuntimeError:
        what = self._what(operation)
        if isinstance(exc, ClientError):
            return self._service_failure(exc, what)
        # HTTPClientError: read timeouts, dropped connections; SdkConnectionError: connecting.
        if isinstance(exc, HTTPClientError | SdkConnectionError):
            return errors.TransientInvokeError(f"{what}: {exc}")
        # Credentials, region, parameter validation: the configuration is wrong.
        return errors.InvokeFailed(f"{what}: {exc}")

    def _service_failure(self, exc: ClientError, what: str) -> errors.ConnectorRuntimeError:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        description = f"{code}: {error.get('Message') or 'no message'}"
        if code in _TOO_LARGE_CODES or status == 413:
            return errors.InvokeFailed(
                f"{what}: the request is over Lambda's 6 MB payload limit ({description}); "
                f"keep the function's state small and page with hasMore"
            )
        if code in _TRANSIENT_CODES or (
            code not in _PERMANENT_CODES and (status == 429 or status >= 500)
        ):
            head = f"{what}: Lambda answered {' '.join(filter(None, (str(status or ''), code)))}"
            rest = f": {error.get('Message') or 'no message'}"
            return errors.TransientInvokeError(
                f"{what}: {description}", _retry_after(exc), answered=(head, rest)
            )
        return errors.InvokeFailed(f"{what}: {description}")

    def _what(self, operation: str) -> str:
        target = f"Lambda function {self.function!r}"
        if operation == "AssumeRole":
            return f"cannot assume role {self.role_arn} to invoke {target}"
        return f"cannot invoke {target}"

    # --- credentials -------------------------------------------------------------------

    def _assumed_role_session(self, source: boto3.Session) -> boto3.Session:
        """A session whose credentials are the role's, assumed when first needed."""
        sts = source.client("sts", region_name=self.region or source.region_name)
        params = {"RoleArn": self.role_arn, "RoleSessionName": ROLE_SESSION_NAME}
        if self._external_id:
            params["ExternalId"] = self._external_id

        def assume() -> dict[str, str]:
            try:
                answer = sts.assume_role(DurationSeconds=ROLE_SESSION_SECONDS, **params)
            except (ClientError, BotoCoreError) as exc:
                raise _RoleNotAssumed(exc) from exc
            credentials = answer["Credentials"]
            return {
                "access_key": credentials["AccessKeyId"],
                "secret_key": credentials["SecretAccessKey"],
                "token": credentials["SessionToken"],
                "expiry_time": credentials["Expiration"].isoformat(),
            }

        core = botocore.session.Session()
        provider = _AssumedRole(DeferredRefreshableCredentials(assume, "assume-role"))
        core.register_component("credential_provider", CredentialResolver([provider]))
        return boto3.Session(botocore_session=core, region_name=source.region_name)


class _RoleNotAssumed(Exception):
    """AssumeRole failed; raised through botocore's credential refresh to `_call`."""

    def __init__(self, error: ClientError | BotoCoreError) -> None:
        super().__init__(str(error))
        self.error = error


class _AssumedRole(CredentialProvider):
    METHOD = "assume-role"

    def __init__(self, credentials: DeferredRefreshableCredentials) -> None:
        super().__init__()
        self._credentials = credentials

    def load(self) -> DeferredRefreshableCredentials:
        return self._credentials


def _keep_emulator_error(http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
    """botocore hook: keep the body of the emulator's 502 for a crashed function.

    Lambda answers a crash or an oversized response with 200, `X-Amz-Function-Error` and
    an `errorType`/`errorMessage` body; the Runtime Interface Emulator sends that body
    with a bare 502, which botocore would otherwise reduce to an empty error. A real
    service error has `x-amzn-ErrorType` and a `Type`/`message` body instead.
    """
    if http_response.status_code < 500 or "x-amzn-errortype" in http_response.headers:
        return
    answer = _json_object(http_response.content)
    if answer is not None and "errorType" in answer and "errorMessage" in answer:
        parsed[_EMULATOR_ERROR] = http_response.content


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        answer = json.loads(body)  # the stdlib keeps integers beyond 64 bits exact
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


def _timeout_answer(text: bytes) -> bytes:
    """The emulator's bare timeout text as the error Lambda itself answers with."""
    return encode_json({"errorType": "Sandbox.Timedout", "errorMessage": text.decode().strip()})


def _log_tail(log_result: str | None) -> list[str]:
    """Lambda's `LogResult`: base64 of the last 4 KB of the invocation's log."""
    if not log_result:
        return []
    text = base64.b64decode(log_result).decode(errors="replace")
    return [line for line in text.splitlines() if line.strip()]


def _retry_after(exc: ClientError) -> float | None:
    """Lambda's `retryAfterSeconds` (the Retry-After header), if it sent one."""
    headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    value = exc.response.get("retryAfterSeconds") or headers.get("retry-after")
    try:
        return float(value) if value else None
    except ValueError:
        return None
