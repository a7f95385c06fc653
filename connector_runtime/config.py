"""`connectors.yaml`: the models that validate it and the loader that reports where it is wrong.

`load_config` turns every problem into one line of a `ConfigError`, compiler style:

    connectors.yaml:7: connectors.transactions.function.timeout: invalid duration '15 minutes' ...

The line comes from the YAML node tree, walked along pydantic's error location
(`yaml_locations`). Secrets
and headers stay unexpanded in the models; `resolve_secrets` and `resolve_headers` expand
them when a sync needs them, so a missing variable fails only the connector that uses it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError
from typing_extensions import TypeAliasType

from connector_runtime.errors import ConfigError
from connector_runtime.yaml_locations import describe, line_of, parse_yaml, read_file

_DEFAULT_CONFIG_FILE = "connectors.yaml"
_ENCRYPTED_PREFIX = "enc:v1:"
_ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
_LOCAL_SUFFIXES = (".py", ".js", ".mjs", ".cjs", ".ts", ".mts", ".cts")
_CONNECTOR_NAME = r"^[a-z][a-z0-9_]*$"

# --- value types -------------------------------------------------------------------


def _problem(template: str, **context: object) -> PydanticCustomError:
    """A validation error whose message pydantic keeps as written; values shown as repr."""
    return PydanticCustomError("config", template, {k: repr(v) for k, v in context.items()})


_DURATION_TEXT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|[smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_duration(value: object) -> float:
    """`250ms`, `30s`, `15m`, `6h`, `1d` or a bare number of seconds -> seconds (> 0)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_TEXT.match(value)):
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    else:
        raise _problem("invalid duration {value} (use 30s, 15m, 6h or 1d)", value=value)
    if not 0 < seconds < math.inf:
        raise _problem("invalid duration {value} (must be more than zero)", value=value)
    return seconds


Duration = Annotated[
    float,
    BeforeValidator(_parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|[smhd])?\s*$"},
                {"type": "number", "exclusiveMinimum": 0},
            ]
        }
    ),
]


def _check_connector_name(name: str) -> str:
    if not re.match(_CONNECTOR_NAME, name):
        message = "invalid connector name {name}: use a-z, 0-9 and _, starting with a letter"
        raise _problem(message, name=name)
    return name


ConnectorName = Annotated[
    str,
    AfterValidator(_check_connector_name),
    WithJsonSchema({"type": "string", "pattern": _CONNECTOR_NAME}),
]


def _check_warehouse_url(url: str | None) -> str | None:
    from connector_runtime.destination import check_url

    if url is not None and not _ENV_REFERENCE.search(url):
        try:
            check_url(url)
        except ValueError as exc:
            raise _problem(str(exc).replace("{", "(").replace("}", ")")) from None
    return url


_WarehouseUrl = Annotated[str, AfterValidator(_check_warehouse_url)]


def _check_env_references(value: str) -> str:
    # A `${env:` that is not a well-formed reference would silently stay literal text.
    if value.count("${env:") != len(_ENV_REFERENCE.findall(value)):
        raise _problem("malformed ${env:NAME} reference (NAME: letters, digits and _)")
    return value


_Expandable = Annotated[str, AfterValidator(_check_env_references)]


_SECRET_KINDS = (  # bool before int: a bool is an int too
    (bool, "boolean"),
    (str, "string"),
    (int, "integer"),
    (float, "number"),
    (type(None), "null"),
    (list, "list"),
    (dict, "object"),
)


def _secret_kind(value: object) -> str | None:
    """The JSON kind of a secret value; None for what JSON has no word for (a YAML date)."""
    return next((kind for type_, kind in _SECRET_KINDS if isinstance(value, type_)), None)


# Any JSON value, as Fivetran's secrets are (design §2); each string may be an enc:v1: token
# or hold ${env:VAR}. The tags appear in pydantic's error locations; `yaml_locations`
# drops them. Integers stay out of the JSON Schema's `oneOf`: they match "number" already.
SecretValue = TypeAliasType(
    "SecretValue",
    Annotated[
        Annotated[_Expandable, Tag("string")]
        | Annotated[bool, Tag("boolean")]
        | Annotated[int, Tag("integer"), SkipJsonSchema()]  # a "number" to JSON Schema
        | Annotated[float, Field(allow_inf_nan=False), Tag("number")]
        | Annotated[None, Tag("null")]
        | Annotated[list["SecretValue"], Tag("list")]
        | Annotated[dict[str, "SecretValue"], Tag("object")],
        Discriminator(
            _secret_kind,
            custom_error_type="config",
            custom_error_message="expected a string, number, true/false, null, list or "
            "mapping (quote a date or other text)",
        ),
    ],
)


# --- models --------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_alias=True, validate_by_name=True
    )


class RetryConfig(_Model):
    """Backoff with full jitter for transient invocation failures (429, 5xx, timeouts)."""

    attempts: int = Field(
        5, ge=1, strict=True, description="Invocations in all, the first included."
    )
    base: Duration = Field(
        "1s",
        validate_default=True,
        description="Backoff before the first retry; doubles per attempt.",
    )
    cap: Duration = Field(
        "60s", validate_default=True, description="Longest wait between two attempts."
    )

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> RetryConfig:
        if self.cap < self.base:
            raise _problem("cap must not be shorter than base")
        return self


class FunctionConfig(_Model):
    """The connector's function: exactly one of `local`, `lambda` or `http`."""

    # before `local`, whose file-type check it turns off (design §13)
    runtime: Literal["provided", "provided.al2023", "provided.al2"] | None = Field(
        None,
        description="provided (or Lambda's provided.al2023, provided.al2): `local` is an "
        "executable speaking AWS Lambda's Runtime API (Go, Rust, Java, .NET, a bash bootstrap).",
    )
    local: str | None = Field(
        None,
        description="Path to a .py, .js, .mjs or .cjs file, or TypeScript (.ts, .mts, .cts), "
        "relative to the config file.",
    )
    netlify: str | None = Field(
        None,
        description="A function in `functions_dir`, by name (hello: hello.ts, hello/index.ts, "
        "...), found as Netlify finds it.",
    )
    handler: str | None = Field(
        None, description="Name of the local handler; default `handler`, else `lambda_handler`."
    )
    shape: Literal["fivetran", "netlify", "web", "gcf", "azure"] | None = Field(
        None,
        description="How a local handler is called and answers: fivetran (request in, page "
        "out), netlify (handler(event, context) returns {statusCode, body}), web ((Request, "
        "context) returns a Response), gcf ((req, res)), azure ((context, req); Python: "
        "main(req)). Default: detected from its exports and its answer.",
    )
    isolation: Literal["process", "inline"] = Field(
        "process",
        description="Run a local function in a worker subprocess (process) or in the runtime (inline).",
    )
    lambda_: str | None = Field(
        None,
        alias="lambda",
        min_length=1,
        description="AWS Lambda function: name, name:alias or ARN.",
    )
    region: str | None = Field(
        None, description="AWS region of the Lambda function; default from the AWS environment."
    )
    qualifier: str | None = Field(None, description="Lambda version or alias to invoke.")
    endpoint_url: str | None = Field(
        None, description="Lambda API endpoint, for a local emulator or a private endpoint."
    )
    role_arn: str | None = Field(
        None, description="IAM role to assume before invoking the Lambda function."
    )
    external_id: str | None = Field(
        None, description="External ID to pass when assuming `role_arn`."
    )
    http: str | None = Field(
        None,
        description="URL to POST each request to (Netlify, Azure, Google Cloud Functions, ...).",
    )
    headers: dict[str, _Expandable] = Field(
        {}, repr=False, description="HTTP headers for `http`; values may use ${env:VAR}."
    )
    timeout: Duration = Field(
        "15m", validate_default=True, description="Longest one invocation may take."
    )
    memory_mb: int | None = Field(
        4096,
        ge=1,
        strict=True,
        description="Memory limit of a local worker process in MiB; null for none.",
    )
    keep_warm: Literal[False] | Duration = Field(
        "10m",
        validate_default=True,
        description="How long a local Python function's worker stays loaded after a sync, "
        "for the next sync to use, as a warm Lambda instance is; false: a fresh worker "
        "every sync. A worker whose files changed is never reused.",
    )
    retry: RetryConfig = Field(
        RetryConfig(), description="Retries of transient invocation failures."
    )
    prefetch: bool = Field(
        True,
        description="Ask for the next page while this one is written, and the first while "
        "the warehouse opens; false for a function whose calls have side effects (a page "
        "that fails to commit is asked for again).",
    )
    background: bool | None = Field(
        None,
        description="Start the function without waiting for its answer; it POSTs its page to "
        "the request's `callback` within `timeout`. Default: true when the function's "
        "name (netlify, file or URL) ends in -background.",
    )

    @property
    def kind(self) -> Literal["local", "lambda", "http"]:
        """Which of the three ways this function is called (a `netlify` one is local)."""
        if self.local is not None or self.netlify is not None:
            return "local"
        return "lambda" if self.lambda_ is not None else "http"

    @field_validator("local")
    @classmethod
    def _known_file_type(cls, local: str | None, info: ValidationInfo) -> str | None:
        # any executable runs with a runtime; a wrong `runtime` (absent here) is error enough
        if info.data.get("runtime", "wrong") is not None:
            return local
        if local is not None and PurePath(local).suffix not in _LOCAL_SUFFIXES:
            raise _problem(
                "{local} is not a .py, .js, .mjs, .cjs, .ts, .mts or .cts file", local=local
            )
        return local

    @field_validator("netlify")
    @classmethod
    def _function_name(cls, netlify: str | None) -> str | None:
        from connector_runtime.functions_dir import NAME

        if netlify is not None and not re.match(NAME, netlify):
            message = "{netlify} is not a function name: letters, digits, - and _, no path"
            raise _problem(message, netlify=netlify)
        return netlify

    @field_validator("http")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise _problem("{url} is not an http(s) URL", url=url)
        return url

    @model_validator(mode="after")
    def _runtime_runs_a_local_file(self) -> FunctionConfig:
        if self.runtime is not None and self.local is None:
            raise _problem(f"runtime: {self.runtime} runs an executable: set local (./bootstrap)")
        return self

    @model_validator(mode="after")
    def _exactly_one_function(self) -> FunctionConfig:
        chosen = [key for key, value in self._sources().items() if value is not None]
        if not chosen:
            raise _problem("no function: set one of local, netlify, lambda or http")
        if len(chosen) > 1:
            raise _problem(
                f"set only one of local, netlify, lambda or http, not {' and '.join(chosen)}"
            )
        return self

    @model_validator(mode="after")
    def _shape_of_a_local_handler(self) -> FunctionConfig:
        if self.shape is not None and (self.kind != "local" or self.runtime is not None):
            raise _problem(
                "shape says how a local handler file is called; a Lambda, an HTTP URL or a "
                "Runtime API executable is called as its host calls it: remove shape"
            )
        return self

    @model_validator(mode="after")
    def _keep_warm_of_a_python_worker(self) -> FunctionConfig:
        python_worker = (
            self.local is not None
            and self.runtime is None
            and PurePath(self.local).suffix == ".py"
            and self.isolation == "process"
        )
        if "keep_warm" in self.model_fields_set and not python_worker:
            raise _problem(
                "keep_warm keeps a local Python function's worker process between syncs; "
                "this function has none (a Lambda, a URL, a node or Runtime API process, "
                "or isolation: inline): remove keep_warm"
            )
        return self

    def _sources(self) -> dict[str, str | None]:
        return {
            "local": self.local,
            "netlify": self.netlify,
            "lambda": self.lambda_,
            "http": self.http,
        }

    @property
    def runs_in_background(self) -> bool:
        """`background`, else whether the function's name ends in -background (design §13)."""
        from connector_runtime.functions_dir import is_background

        if self.background is not None:
            return self.background
        if self.netlify is not None:
            return is_background(self.netlify)
        if self.local is not None:
            path = PurePath(self.local)
            return is_background(path.parent.name if path.stem == "index" else path.stem)
        return self.http is not None and is_background(urlsplit(self.http).path.rstrip("/"))


class CronSchedule(_Model):
    """A crontab schedule, e.g. `{cron: "*/15 * * * *"}`."""

    cron: str = Field(
        description="Five-field crontab expression: minute hour day-of-month month day-of-week."
    )

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, cron: str) -> str:
        from connector_runtime.schedules import cron_trigger

        try:
            cron_trigger(cron)
        except ValueError as exc:
            reason = str(exc).replace("{", "(").replace("}", ")")
            raise _problem("invalid cron {cron}: " + reason, cron=cron) from None
        return cron


def _schedule_kind(value: object) -> str:
    return "cron" if isinstance(value, dict | CronSchedule) else "every"


# The tags appear in pydantic's error locations; `yaml_locations._display_loc` drops them.
_Schedule = Annotated[
    Annotated[Duration, Tag("every")] | Annotated[CronSchedule, Tag("cron")],
    Discriminator(_schedule_kind),
]


class TableConfig(_Model):
    """Per-table options, keyed by the table's name as the function sends it."""

    sync: bool = Field(True, description="false: drop this table's rows instead of writing them.")
    columns: dict[str, Literal["hash", "block"]] = Field(
        {}, description="Column protection: hash stores a hash of the value, block never writes it."
    )
    history: bool = Field(
        False, description="Keep every version of a row (history mode), not only the latest."
    )


class NotifyConfig(_Model):
    """Where alert notifications go: a webhook that gets a JSON POST per alert event."""

    webhook: _Expandable = Field(
        repr=False,
        description="URL POSTed on alert.opened and alert.resolved (Slack, Teams, ...); "
        "may use ${env:VAR}.",
    )

    @field_validator("webhook")
    @classmethod
    def _webhook_url(cls, url: str) -> str:
        if not _ENV_REFERENCE.search(url):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise _problem("the webhook is not an http(s) URL")
        return url


def _check_listen(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise _problem("listen {listen} is not host:port (e.g. 127.0.0.1:8765)", listen=listen)
    return listen


class ServerConfig(_Model):
    """`connector serve`'s HTTP API and dashboard."""

    listen: Annotated[str, AfterValidator(_check_listen)] = Field(
        "127.0.0.1:8765", description="host:port to listen on; port 0 picks a free port."
    )
    # the lambda: `_check_http_url` is defined further down
    public_url: Annotated[_Expandable, AfterValidator(lambda url: _check_http_url(url))] | None = (
        Field(
            None,
            description="The URL functions elsewhere reach this server at (a proxy, a tunnel); "
            "background functions POST their pages under it. Default: the listen address. "
            "May use ${env:VAR}.",
        )
    )


def _check_http_url(url: str | None) -> str | None:
    if url is not None and not _ENV_REFERENCE.search(url):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise _problem("{url} is not an http(s) URL", url=url)
    return url


def _check_bucket(bucket: str) -> str:
    if not _ENV_REFERENCE.search(bucket) and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", bucket):
        raise _problem(
            "invalid bucket name {bucket}: a bucket's name alone (no s3://, no /), "
            "the folder goes in prefix",
            bucket=bucket,
        )
    return bucket


class S3StorageConfig(_Model):
    """An S3 bucket (or any S3 API) where the function may write each page's rows."""

    bucket: Annotated[_Expandable, AfterValidator(_check_bucket)] = Field(
        description="Bucket name; may use ${env:VAR}."
    )
    prefix: _Expandable = Field(
        "",
        description="Start of every object key (<prefix><connector>/<sync_id>/<page>.json); "
        "end it with / for a folder.",
    )
    region: _Expandable | None = Field(
        None, description="The bucket's AWS region; default from the AWS environment."
    )
    endpoint_url: Annotated[_Expandable, AfterValidator(_check_http_url)] | None = Field(
        None,
        description="S3 API endpoint (MinIO, a local emulator); local function workers get "
        "it as AWS_ENDPOINT_URL_S3.",
    )


class StorageConfig(_Model):
    """Cloud storage for pages above what an answer can carry (AWS Lambda: 6 MB)."""

    s3: S3StorageConfig = Field(description="The S3 bucket requests name in `bucket` and `file`.")


class FunctionDestinationConfig(_Model):
    """Records sent to a function instead of written to warehouse tables."""

    function: FunctionConfig = Field(
        description="The function each record goes to: local, lambda or http, as a source's."
    )
    batch_size: int = Field(
        1,
        ge=1,
        le=10_000,
        strict=True,
        description='Records per call; above 1 the function gets {"events": [...]}.',
    )
    concurrency: int = Field(
        4,
        ge=1,
        le=64,
        strict=True,
        description="Calls at once (records of one key always go in order, one at a time).",
    )


def _destination_kind(value: object) -> str:
    if isinstance(value, FunctionDestinationConfig | dict):
        return "function"
    return "warehouse"


_Destination = Annotated[
    Annotated[_WarehouseUrl, Tag("warehouse")]
    | Annotated[FunctionDestinationConfig, Tag("function")],
    Discriminator(_destination_kind),
]


class ConnectorConfig(_Model):
    """One connector: its function, where its tables go and when it runs."""

    function: FunctionConfig = Field(description="The function to call.")
    schema_: str | None = Field(
        None,
        alias="schema",
        description="Warehouse schema for the tables; default the connector's name.",
    )
    destination: _Destination | None = Field(
        None,
        description="Warehouse URL for this connector (default `warehouse`), or "
        "{function: ...} to send each record to a function; the runtime's own tables then "
        "stay in `warehouse`.",
    )
    schedule: _Schedule | None = Field(
        None, description="Interval (30s, 15m, 6h, 1d) or {cron: ...}; absent: manual syncs only."
    )
    secrets: dict[str, SecretValue] = Field(
        {},
        repr=False,
        description="Values passed as `secrets`, any JSON value; each string in them "
        "(nested too) an enc:v1:... token, text with ${env:VAR}, or plain text.",
    )
    tables: dict[str, TableConfig] = Field(
        {}, description="Per-table options, keyed by source table name."
    )
    naming: Literal["fivetran", "source"] = Field(
        "fivetran",
        description="fivetran: normalise names to snake_case; source: keep them as sent.",
    )
    max_sync_duration: Duration = Field(
        "6h",
        validate_default=True,
        description="Longest a sync runs; it then stops after a page and resumes next time.",
    )
    notify: list[NotifyConfig] = Field(
        [], description="Webhooks for this connector's alerts, besides the top-level ones."
    )
    storage: StorageConfig | None = Field(
        None,
        description="Pages through cloud storage: each request names an object the function "
        "may write its rows to.",
    )


_BROKER_SCHEMES = ("amqp", "amqps", "pyamqp", "redis", "rediss")


def _check_broker(url: str) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if not _ENV_REFERENCE.search(scheme) and scheme not in _BROKER_SCHEMES:
        raise _problem(
            "the broker is not an amqp:// (RabbitMQ) or redis:// URL, e.g. "
            "amqp://guest:guest@127.0.0.1:5672//"
        )
    return url


class CeleryConfig(_Model):
    """Syncs run on Celery workers (`connector worker`); `connector serve` sends them."""

    broker: Annotated[_Expandable, AfterValidator(_check_broker)] = Field(
        repr=False,
        description="Broker URL: amqp://user:password@host:5672/vhost (RabbitMQ) or "
        "redis://host:6379/0; may use ${env:VAR}.",
    )
    queue: str = Field(
        "connector-runtime",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="The queue syncs are sent to; deployments sharing a broker need one each.",
    )


class ExecutorConfig(_Model):
    """Where the syncs that `connector serve` starts run, when not in its own threads."""

    celery: CeleryConfig = Field(description="On Celery workers over a message broker.")


def _executor_kind(value: object) -> str:
    return "local" if isinstance(value, str) else "celery"


_Executor = Annotated[
    Annotated[Literal["local"], Tag("local")] | Annotated[ExecutorConfig, Tag("celery")],
    Discriminator(_executor_kind),
]
# Warehouses that are files on one machine: workers elsewhere cannot reach them (design §15)
_MACHINE_LOCAL_WAREHOUSES = {"duckdb": "a DuckDB file", "sqlite": "a SQLite file"}


def _machine_local(url: object) -> str | None:
    """What a warehouse URL is when no other machine can share it ("a DuckDB file")."""
    if not isinstance(url, str) or _ENV_REFERENCE.search(url.split(":", 1)[0]):
        return None
    return _MACHINE_LOCAL_WAREHOUSES.get(url.split(":", 1)[0].split("+", 1)[0].lower())


class Config(_Model):
    """The whole `connectors.yaml`."""

    warehouse: _WarehouseUrl = Field(
        "duckdb:///warehouse.duckdb",
        description="Default destination URL; file paths are relative to the config file.",
    )
    connectors: dict[ConnectorName, ConnectorConfig] = Field(
        description="Connectors by name ([a-z][a-z0-9_]*)."
    )
    max_concurrent_syncs: int = Field(
        4, ge=1, strict=True, description="Most syncs `connector serve` runs at once."
    )
    server: ServerConfig = Field(
        ServerConfig(), description="Where `connector serve` answers its API and dashboard."
    )
    notify: list[NotifyConfig] = Field(
        [], description="Webhooks for every connector's alerts (alert.opened, alert.resolved)."
    )
    functions_dir: str = Field(
        "netlify/functions",
        description="Where `function: {netlify: NAME}` finds its functions, relative to the "
        "config file.",
    )

    executor: _Executor = Field(
        "local",
        description="local: `connector serve` runs syncs in its own threads; "
        "{celery: {broker: URL}}: on Celery workers (`connector worker`) on any machine.",
    )

    @field_validator("executor")
    @classmethod
    def _shared_warehouses(cls, executor: object, info: ValidationInfo) -> object:
        """Workers on other machines must reach every warehouse: no DuckDB or SQLite file."""
        if executor == "local":
            return executor
        places = [("warehouse", info.data.get("warehouse"))]
        for name, connector in (info.data.get("connectors") or {}).items():
            places.append((f"connectors.{name}.destination", connector.destination))
        for field, url in places:
            if kind := _machine_local(url):
                raise _problem(
                    f"celery runs syncs on several machines, which cannot share {kind} "
                    f"({field}); use a PostgreSQL or MySQL/MariaDB warehouse"
                )
        return executor

    _path: Path = PrivateAttr(default_factory=lambda: Path(_DEFAULT_CONFIG_FILE))
    _root: Any = PrivateAttr(default=None)  # the YAML node tree, for `where`

    @property
    def path(self) -> Path:
        """The config file; relative paths inside it are resolved against its directory."""
        return self._path

    def where(self, *loc: str | int) -> str:
        """`file:line: dotted.field` for a problem found after loading (a missing file, say)."""
        line = line_of(self._root, loc) if self._root is not None else 1
        return f"{self.path}:{line}: {_dotted(*loc)}"

    def destination_url(self, name: str) -> str:
        """The connector's warehouse URL, a relative DuckDB/SQLite file made absolute; for
        a connector with a function destination, where its state, syncs and alerts go."""
        destination = self.connector(name).destination
        url = destination if isinstance(destination, str) else self.warehouse
        return _resolve_file_url(url, self._directory())

    def function_destination(self, name: str) -> FunctionDestinationConfig | None:
        """The connector's destination function, if its records go to one."""
        destination = self.connector(name).destination
        return destination if isinstance(destination, FunctionDestinationConfig) else None

    def function_path(self, name: str) -> Path:
        """The connector's `local` (or `netlify`) function file, resolved against the
        config's directory."""
        function = self.connector(name).function
        if function.kind != "local":
            raise ConfigError(f"{self.path}: connectors.{name}.function: not a local function")
        return self.function_file(name, function)

    def function_file(
        self, name: str, function: FunctionConfig, at: tuple[str, ...] = ("function",)
    ) -> Path:
        """The file of a `local` or `netlify` function at `at` in connector `name`; for
        `netlify`, ConfigError saying where it was looked for if it is in none of them."""
        if function.netlify is None:
            return self.local_path(function.local)
        from connector_runtime import functions_dir

        directory = self.functions_directory()
        found = functions_dir.find(directory, function.netlify)
        if found is None:
            there = ", ".join(functions_dir.discover(directory)) or "none"
            raise ConfigError(
                f"{self.where('connectors', name, *at, 'netlify')}: no function "
                f"{function.netlify!r} in {directory} (looked for "
                f"{functions_dir.looked_for(function.netlify)}; functions there: {there})"
                if directory.is_dir()
                else f"{self.where('connectors', name, *at, 'netlify')}: no functions "
                f"directory {directory} (functions_dir: {self.functions_dir!r}, relative to "
                "the config file)"
            )
        return found

    def functions_directory(self) -> Path:
        """`functions_dir`, resolved against the config's directory."""
        return self._directory() / Path(self.functions_dir).expanduser()

    def local_path(self, local: str) -> Path:
        """A `local:` function file, resolved against the config's directory."""
        return self._directory() / Path(local).expanduser()

    def schema_name(self, name: str) -> str:
        """The warehouse schema of the connector's tables."""
        return self.connector(name).schema_ or name

    def connector(self, name: str) -> ConnectorConfig:
        """The connector called `name`; ConfigError naming the configured ones if none is."""
        if name not in self.connectors:
            known = ", ".join(sorted(self.connectors)) or "none"
            raise ConfigError(f"{self.path}: no connector named {name!r} (configured: {known})")
        return self.connectors[name]

    def _directory(self) -> Path:
        return self.path.absolute().parent


# A path after `scheme:///`; absolute (`/...`), `:memory:` and `md:`-style names are not files.
_FILE_URL = re.compile(r"^(?P<scheme>duckdb|sqlite(?:\+\w+)?):///(?P<path>[^?]*)(?P<query>\?.*)?$")
_NOT_A_RELATIVE_FILE = re.compile(r"^(/|[\w+.-]*:)")


def _resolve_file_url(url: str, directory: Path) -> str:
    match = _FILE_URL.match(url)
    if not match or not match["path"] or _NOT_A_RELATIVE_FILE.match(match["path"]):
        return url
    return f"{match['scheme']}:///{directory / match['path']}{match['query'] or ''}"


# --- loading -------------------------------------------------------------------------


def load_config(path: str | Path | None = None) -> Config:
    """Read and validate the config: `path`, else $CONNECTOR_CONFIG, else ./connectors.yaml."""
    path = Path(
        path if path is not None else os.environ.get("CONNECTOR_CONFIG") or _DEFAULT_CONFIG_FILE
    )
    root, document = parse_yaml(read_file(path), path)
    if not isinstance(root, yaml.MappingNode):
        line = root.start_mark.line + 1 if root is not None else 1
        raise ConfigError(f"{path}:{line}: expected a mapping with `connectors:` at the top level")
    try:
        config = Config.model_validate(document, by_alias=True, by_name=False)
    except ValidationError as exc:
        # `from None`: pydantic's own message echoes input values, which may be secrets.
        raise ConfigError(describe(exc, root, path, Config)) from None
    config._path = path.absolute()
    config._root = root
    return config


# --- secrets and headers -------------------------------------------------------------


def resolve_secrets(
    connector: ConnectorConfig,
    name: str,
    decrypt: Callable[[str, str, str], str] | None = None,
    where: Callable[..., str] | None = None,
) -> dict[str, Any]:
    """The connector's secrets with ${env:VAR} expanded and, given `decrypt`, tokens
    decrypted, in every string at any depth; numbers, booleans and null stay as they are.

    `decrypt(token, connector_name, key)`: a token is bound to its connector and its key,
    the dotted path of the string (`apiToken`, `auth.password`, `hosts.0`).
    `where(*loc)` names a field in errors (`Config.where`: file, line and field).
    """
    where = where or _dotted

    def resolve(value: str, path: tuple[str | int, ...]) -> str:
        field = where("connectors", name, "secrets", *path)
        return _resolve(value, field, name, _dotted(*path), decrypt)

    return _map_strings(connector.secrets, resolve)


def resolve_headers(
    connector: ConnectorConfig,
    name: str,
    decrypt: Callable[[str, str, str], str] | None = None,
    where: Callable[..., str] | None = None,
    *,
    function: FunctionConfig | None = None,
    at: tuple[str, ...] = ("function",),
) -> dict[str, str]:
    """The function's HTTP headers, expanded like `resolve_secrets` (the header name is the
    key); `function` at `at` in the connector (default its source function)."""
    where = where or _dotted
    function = function or connector.function
    return {
        key: _resolve(value, where("connectors", name, *at, "headers", key), name, key, decrypt)
        for key, value in function.headers.items()
    }


def expand_env(value: str, field: str) -> str:
    """`value` with each ${env:VAR} replaced; ConfigError naming `field` if VAR is unset."""
    return _ENV_REFERENCE.sub(lambda match: _environment_value(match[1], field), value)


def _dotted(*loc: str | int) -> str:
    return ".".join(str(part) for part in loc)


def plaintext_secret_keys(connector: ConnectorConfig) -> list[str]:
    """Dotted paths (`apiToken`, `auth.password`) of the secret strings, at any depth,
    written in plain text: neither an enc:v1: token nor holding ${env:...}. Numbers,
    booleans and null are settings more than secrets (a page size, a flag): not listed."""
    found: list[str] = []

    def note(value: str, path: tuple[str | int, ...]) -> str:
        if value and not value.startswith(_ENCRYPTED_PREFIX) and not _ENV_REFERENCE.search(value):
            found.append(_dotted(*path))
        return value

    _map_strings(connector.secrets, note)
    return found


def _map_strings(
    value: Any, change: Callable[[str, tuple[str | int, ...]], Any], path: tuple = ()
) -> Any:
    """`value` with each string inside, at any depth, replaced by `change(string, path)`."""
    if isinstance(value, str):
        return change(value, path)
    if isinstance(value, dict):
        return {key: _map_strings(item, change, (*path, key)) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_strings(item, change, (*path, index)) for index, item in enumerate(value)]
    return value


def _resolve(
    value: str,
    field: str,
    connector_name: str,
    key: str,
    decrypt: Callable[[str, str, str], str] | None,
) -> str:
    if value.startswith(_ENCRYPTED_PREFIX):
        return decrypt(value, connector_name, key) if decrypt else value
    return expand_env(value, field)


def _environment_value(variable: str, field: str) -> str:
    if variable not in os.environ:
        raise ConfigError(f"{field}: environment variable {variable} is not set")
    return os.environ[variable]
