"""From a validated config to runnable `SyncJob`s: paths, URLs, secrets, invokers."""

from __future__ import annotations

import os
import shutil
import threading
from functools import partial

import structlog

from . import masking
from .config import (
    Config,
    ConnectorConfig,
    FunctionConfig,
    expand_env,
    plaintext_secret_keys,
    resolve_headers,
    resolve_secrets,
)
from .delivery import DeliverySettings
from .errors import ConfigError
from .page import TableSettings
from .retry import RetryPolicy
from .secrets import make_decrypter
from .storage import S3PageStore
from .sync import SyncJob


def build_job(config: Config, name: str) -> SyncJob:
    """The `SyncJob` of connector `name`; ConfigError if it cannot run as configured."""
    connector = config.connector(name)
    _warn_of_plaintext_secrets(config, name, connector)
    retry = connector.function.retry
    decrypt = make_decrypter()
    storage = _page_store(config, name, connector)
    return SyncJob(
        connector=name,
        schema=config.schema_name(name),
        destination_url=config.destination_url(name),
        invoker=_invoker_factory(config, name, connector, decrypt, storage),
        secrets=resolve_secrets(connector, name, decrypt, config.where),
        naming=connector.naming,
        settings=_table_settings(config, name, connector),
        retry=RetryPolicy(retry.attempts, retry.base, retry.cap),
        max_sync_duration=connector.max_sync_duration,
        prefetch=connector.function.prefetch,
        storage=storage,
        delivery=_delivery(config, name, connector, decrypt),
    )


_plaintext_warned: set[tuple[str, str, tuple[str, ...]]] = set()
_plaintext_warned_lock = threading.Lock()


def _warn_of_plaintext_secrets(config: Config, name: str, connector: ConnectorConfig) -> None:
    """One warning per connector per process (`serve` builds a job per sync) naming all of
    its plaintext secrets; again only if the config file or that list changes."""
    keys = tuple(plaintext_secret_keys(connector))
    seen = (str(config.path), name, keys)
    with _plaintext_warned_lock:
        if not keys or seen in _plaintext_warned:
            return
        _plaintext_warned.add(seen)
    structlog.get_logger().warning(
        "plaintext_secret",
        connector=name,
        secrets=list(keys),
        hint="encrypt each: "
        + "; ".join(f"connector secrets encrypt {name} {key}" for key in keys),
    )


def _invoker_factory(
    config: Config, name: str, connector: ConnectorConfig, decrypt, storage: S3PageStore | None
):
    """A callable making the connector's invoker; backends are imported only when used.
    A background function (design §13) is wrapped to get its page by callback."""
    env = storage.worker_env() if storage is not None else {}
    function = connector.function
    runner = _function_factory(config, name, connector, function, ("function",), decrypt, env)
    if not function.runs_in_background:
        return runner
    from .invokers.background import BackgroundInvoker

    # a local or Lambda call lasts as long as the function runs; an HTTP host answers first
    ends_with_return = function.kind != "http"
    return partial(
        BackgroundInvoker, runner, timeout=function.timeout, ends_with_return=ends_with_return
    )


def _function_factory(
    config: Config,
    name: str,
    connector: ConnectorConfig,
    function: FunctionConfig,
    at: tuple[str, ...],
    decrypt,
    env: dict[str, str],
):
    """A callable making an invoker for `function`, found at `at` in the connector's
    config (its source `function`, or its `destination.function`)."""
    if function.kind == "http":
        from .invokers.http import HttpInvoker

        headers = resolve_headers(connector, name, decrypt, config.where, function=function, at=at)
        masking.register(headers)
        return partial(
            HttpInvoker,
            function.http,
            headers=headers,
            timeout=function.timeout,
            # a background function's 2xx (Netlify: 202, no body) only says it started
            status_answers=at != ("function",) or function.runs_in_background,
        )
    if function.kind == "lambda":
        return _lambda_factory(config, name, function, at)
    return _local_factory(config, name, function, at, env)


def _delivery(config: Config, name: str, connector: ConnectorConfig, decrypt):
    """How the connector's records reach its destination function, if it has one."""
    destination = config.function_destination(name)
    if destination is None:
        return None
    function = destination.function
    if function.runs_in_background:
        raise ConfigError(
            f"{config.where('connectors', name, 'destination', 'function')}: a destination "
            "function answers each call itself; only a source function can run in the "
            "background (remove `background: true` or the -background ending of its name)"
        )
    retry = function.retry
    return DeliverySettings(
        invoker=_function_factory(
            config, name, connector, function, ("destination", "function"), decrypt, {}
        ),
        batch_size=destination.batch_size,
        concurrency=destination.concurrency,
        retry=RetryPolicy(retry.attempts, retry.base, retry.cap),
    )


def _page_store(config: Config, name: str, connector: ConnectorConfig) -> S3PageStore | None:
    """The connector's cloud storage (design §2), its ${env:VAR} references expanded."""
    if connector.storage is None:
        return None
    s3 = connector.storage.s3

    def value(field: str) -> str | None:
        text = getattr(s3, field)
        where = config.where("connectors", name, "storage", "s3", field)
        return None if text is None else expand_env(text, where)

    function = connector.function
    if s3.endpoint_url and function.kind == "local" and function.isolation == "inline":
        # A worker gets AWS_ENDPOINT_URL_S3; setting it in this process would reach every
        # connector. Without it the function would write elsewhere, unseen: empty pages.
        raise ConfigError(
            f"{config.where('connectors', name, 'function', 'isolation')}: storage.s3."
            "endpoint_url reaches a local function as AWS_ENDPOINT_URL_S3 in its worker "
            "process, which an inline function does not have; remove `isolation: inline`"
        )
    return S3PageStore(
        value("bucket"),
        value("prefix"),
        region=value("region"),
        endpoint_url=value("endpoint_url"),
    )


def _lambda_factory(config: Config, name: str, function: FunctionConfig, at: tuple[str, ...]):
    try:
        from .invokers.aws_lambda import LambdaInvoker
    except ImportError as exc:
        raise ConfigError(
            f"{config.where('connectors', name, *at, 'lambda')}: AWS Lambda needs boto3: "
            "pip install 'connector-runtime[lambda]'"
        ) from exc
    return partial(
        LambdaInvoker,
        function.lambda_,
        region=function.region,
        qualifier=function.qualifier,
        endpoint_url=function.endpoint_url,
        role_arn=function.role_arn,
        external_id=function.external_id,
        timeout=function.timeout,
    )


def _local_factory(
    config: Config, name: str, function: FunctionConfig, at: tuple[str, ...], env: dict[str, str]
):
    path = config.function_file(name, function, at)
    if not path.is_file():
        raise ConfigError(f"{config.where('connectors', name, *at, 'local')}: no such file {path}")
    if function.runtime is not None:
        return _runtime_api_factory(config, name, function, at, env)
    if path.suffix in (".js", ".mjs", ".cjs", ".ts", ".mts", ".cts"):
        return _node_factory(config, name, function, at, env)
    if function.shape in ("web", "gcf"):
        raise ConfigError(
            f"{config.where('connectors', name, *at, 'shape')}: {function.shape} is a "
            f"JavaScript handler's shape; a Python handler is fivetran, netlify or azure"
        )
    from .invokers.local import LocalPythonInvoker

    return partial(
        LocalPythonInvoker,
        path,
        handler=function.handler,
        isolation=function.isolation,
        timeout=function.timeout,
        memory_mb=function.memory_mb,
        function_name=name,
        env=env,
        shape=_shape(config, name, function, at),
        keep_warm=function.keep_warm or 0.0,
    )


def _shape(config: Config, name: str, function: FunctionConfig, at: tuple[str, ...]) -> str | None:
    """The source function's `shape` (None: detected); a destination function (design §12)
    answers {statusCode, message} of its own, so it is always called request in, answer out."""
    if at == ("function",):
        return function.shape
    if function.shape is not None:
        raise ConfigError(
            f"{config.where('connectors', name, *at, 'shape')}: a destination function gets "
            "each record's event and answers {statusCode, message}; shape is for a source "
            "function: remove it"
        )
    return "fivetran"


def _node_factory(
    config: Config, name: str, function: FunctionConfig, at: tuple[str, ...], env: dict[str, str]
):
    path = config.function_file(name, function, at)
    if function.isolation == "inline":
        raise ConfigError(
            f"{config.where('connectors', name, *at, 'isolation')}: inline runs "
            f"Python handlers only; {path.name} always runs in a node worker process, so "
            "remove `isolation: inline`"
        )
    if shutil.which("node") is None:
        raise ConfigError(
            f"{config.where('connectors', name, *at, 'local')}: {path.name} is "
            "JavaScript, run by Node.js, and there is no `node` on PATH; install Node.js 18 "
            "or later"
        )
    from .invokers import typescript

    if typescript.is_typescript(path) and typescript.find_esbuild(path) is None:
        field = "local" if function.local is not None else "netlify"
        raise ConfigError(
            f"{config.where('connectors', name, *at, field)}: {typescript.missing_esbuild(path)}"
        )
    from .invokers.node import NodeInvoker

    return partial(
        NodeInvoker,
        path,
        handler=function.handler,
        timeout=function.timeout,
        memory_mb=function.memory_mb,
        function_name=name,
        env=env,
        shape=_shape(config, name, function, at),
    )


def _runtime_api_factory(
    config: Config, name: str, function: FunctionConfig, at: tuple[str, ...], env: dict[str, str]
):
    """`runtime: provided`: an executable speaking the Lambda Runtime API (design §13)."""
    path = config.local_path(function.local)
    if function.isolation == "inline":
        raise ConfigError(
            f"{config.where('connectors', name, *at, 'isolation')}: runtime: "
            f"{function.runtime} runs {path.name} as a process of its own; remove "
            "`isolation: inline`"
        )
    if not os.access(path, os.X_OK):
        raise ConfigError(
            f"{config.where('connectors', name, *at, 'local')}: {path} is not executable, "
            f"as runtime: {function.runtime} needs (chmod +x {path.name})"
        )
    from .invokers.runtime_api import RuntimeApiInvoker

    return partial(
        RuntimeApiInvoker,
        path,
        handler=function.handler,
        timeout=function.timeout,
        memory_mb=function.memory_mb,
        function_name=name,
        env=env,
    )


def _table_settings(config: Config, name: str, connector: ConnectorConfig) -> TableSettings:
    """`tables:` options, keyed by warehouse names (a source name is normalised first)."""
    from .naming import normalize

    def key(table: str) -> str:
        return table if connector.naming == "source" else normalize(table, table=True)

    def column(col: str) -> str:
        return col if connector.naming == "source" else normalize(col)

    tables = connector.tables.items()
    return TableSettings(
        skip=frozenset(key(t) for t, o in tables if not o.sync),
        blocked={
            key(t): frozenset(column(c) for c, m in o.columns.items() if m == "block")
            for t, o in tables
        },
        hashed={
            key(t): frozenset(column(c) for c, m in o.columns.items() if m == "hash")
            for t, o in tables
        },
        history=frozenset(key(t) for t, o in tables if o.history),
    )
