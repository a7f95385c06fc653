"""Call a local JavaScript handler file the way AWS Lambda's Node.js runtime would.

The file is loaded with `import()`: CommonJS (`.cjs`, or `.js`: `exports.handler = ...`)
and ES modules (`.mjs`, or `.js` under a package.json saying `"type": "module"`:
`export const handler = ...`). The handler is `handler` (default: `handler`, else
`lambda_handler`), called as `handler(event, context, callback)` with a context shaped
like Lambda's (`awsRequestId`, `functionName`, `getRemainingTimeInMillis()`, ...). Its
answer is the first of: the promise it returns, `callback(err, result)` (or the legacy
`context.succeed`, `fail`, `done`), or, if it declares fewer than three parameters, a
return value other than `undefined`. An answer by callback waits for the event loop to
empty unless `context.callbackWaitsForEmptyEventLoop = false`; if the loop empties
before any answer, the answer is a `Runtime.NoAnswer` error shape.

A thrown error or `callback(err)` becomes `{errorMessage, errorType, stackTrace}`,
`errorType` the error's `name` and `stackTrace` its stack lines (Lambda's Node.js
runtime calls that list `trace`). The worker, its timeout, crash and exit handling and
output logging are those of the Python worker (`_worker_process.WorkerProcess`): a crash, an unhandled
rejection or `process.exit(n)` raises `FunctionError` `Runtime.ExitError`, a call
longer than `timeout` `Sandbox.Timedout`, and every output line, `console.log` and
`console.error` included, is logged as `function_output` and kept in the invoker's
`output` (before each reply the worker waits for `process.stdout` and `process.stderr`
to be written out, then marks the end of the call, as `_worker.py` does). `memory_mb`
caps V8's heap (`--max-old-space-size`); a blow-up ends the worker, never the runtime.
Buffers and other memory outside the heap are not capped.

TypeScript (`.ts`, `.mts`, `.cts`) is built by esbuild first (`typescript.py`) and runs
with `--enable-source-maps`, so stack traces name the `.ts` lines. Handlers written for
Netlify, Google Cloud Functions or Azure Functions are called as those hosts call them
(`node_shapes.mjs`); a non-2xx status they answer with raises `InvokeFailed` quoting the
body, and `shape` says which shape the last answer came in.

A handler whose answer is an async iterator, a generator or a `ReadableStream` (a netlify
or azure body that is one, or a web `Response` of `Content-Type: application/x-ndjson`)
streams (design §13): `invoke` returns a `Stream` of its parts, as `local.py` does for
Python; objects are parts, strings and bytes NDJSON text. A throw mid-stream is one last
part, its error shape; the worker writes each part as it is yielded and waits while the
parent has not read the last one.

Numbers: the request is parsed with `JSON.parse`, so integers beyond 2**53 (a cursor,
say) arrive rounded: send them as strings. An answer may hold `BigInt`s; they are
written as exact JSON integers.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import structlog

from connector_runtime import errors
from connector_runtime.invokers import Invoker, Stream, typescript
from connector_runtime.invokers._worker import FunctionSpec
from connector_runtime.invokers.local import WarmWorker

NODE_WORKER = Path(__file__).with_name("node_worker.mjs")
NODE_MISSING = "`node` was not found on PATH; install Node.js 18 or later to run .js functions"
# `WorkerProcess` speaks on the child's stdin and stdout. Node cannot move file descriptors
# itself, so /bin/sh puts the protocol on fds 3 and 4 and fd 1 onto fd 2 (whatever the
# function prints, its child processes included, is logged and never read as a frame),
# then `exec` becomes node: same pid, same process group, so a kill reaches it.
_PROTOCOL_ON_FDS_3_AND_4 = 'exec "$0" "$@" 3<&0 4>&1 </dev/null >&2'


class NodeInvoker(Invoker):
    """Calls a handler in a local `.js`, `.mjs`, `.cjs` or TypeScript file, in a warm node
    worker; `env` is added to the worker's environment. `shape` (design §13) is how the
    handler is called and answers; None detects it (a source function without `shape:`);
    the default, fivetran, is request in, answer out."""

    def __init__(
        self,
        path: Path,
        *,
        handler: str | None = None,
        timeout: float = 900.0,
        memory_mb: int | None = 4096,
        function_name: str = "connector",
        log: Any = None,
        env: dict[str, str] | None = None,
        shape: str | None = "fivetran",
    ) -> None:
        self.spec = FunctionSpec(
            path=str(Path(path).resolve()),
            handler=handler,
            function_name=function_name,
            timeout=timeout,
            memory_mb=memory_mb,
            shape=shape,
            source=str(Path(path).resolve()),
        )
        self.node = shutil.which("node")
        log = log if log is not None else structlog.get_logger()
        self._worker = WarmWorker(self._command, self.spec, log, self.output, env=env)

    def invoke(self, request: dict[str, Any]) -> bytes | Stream:
        return self._worker.call(request)

    @property
    def shape(self) -> str | None:
        return self._worker.shape

    def describe(self) -> dict[str, Any]:
        """The handler's export name and its shape by that export (None: told by the
        answer), loaded as a sync would load it; `InvokeFailed` if it does not load."""
        return self._worker.describe()

    def start(self) -> None:
        self._worker.start()

    def close(self) -> None:
        self._worker.close()

    def _command(self) -> list[str]:
        if self.node is None:
            raise errors.InvokeFailed(NODE_MISSING)
        options = [f"--max-old-space-size={self.spec.memory_mb}"] if self.spec.memory_mb else []
        spec = self.spec
        if typescript.is_typescript(Path(spec.source)):
            options.append("--enable-source-maps")
            spec = replace(spec, path=str(self._build()))
        worker = [self.node, *options, str(NODE_WORKER), json.dumps(asdict(spec))]
        return ["/bin/sh", "-c", _PROTOCOL_ON_FDS_3_AND_4, *worker]

    def _build(self) -> Path:
        """The TypeScript function's JavaScript build (cached by content)."""
        source = Path(self.spec.source)
        esbuild = typescript.find_esbuild(source)
        if esbuild is None:
            raise errors.InvokeFailed(typescript.missing_esbuild(source))
        return typescript.build(source, esbuild)
