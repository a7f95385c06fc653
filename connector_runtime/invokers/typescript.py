"""TypeScript functions (design §13): esbuild strips the types, node runs the result.

`find_esbuild(source)` looks where node looks for packages: `node_modules/.bin/esbuild`
in the function's folder or any folder above it, then `esbuild` on PATH.

`build(source, esbuild)` bundles the function with the local files it imports into one
JavaScript file, as Netlify's and AWS CDK's esbuild bundling do: types are stripped, so
`import type { Handler } from "@netlify/functions"` needs nothing installed, and packages
stay imports that node loads from `node_modules` at run time. `.ts` and `.mts` become an
ES module (where `require()` still works, through `createRequire`), `.cts` a CommonJS
one. An inline source map lets node (`--enable-source-maps`) report errors at the lines
of the `.ts` files.

The build is cached, one per source file, and used while the content of every file it
was built from (the function and each local file it imports, by SHA-256) and esbuild are
unchanged. It is written into the nearest `node_modules/.cache/connector-runtime` above
the function, so that node finds the function's packages from the build as it would from
the source; a function with no `node_modules` above it imports no packages, and its build
goes to the user's cache folder (`$XDG_CACHE_HOME`, else `~/.cache`). `__dirname` and
`import.meta.url` name the build, not the source, as on Netlify.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from connector_runtime import errors

SUFFIXES = (".ts", ".mts", ".cts")
INSTALL_HINT = "install it next to the function: npm install --save-dev esbuild"
BUILD_TIMEOUT_SECONDS = 120.0
BUILD_FORMAT = "1"  # bump when the options below change: old builds are then rebuilt
# An ES module build may still call require() (CommonJS code in a .ts file; esbuild turns
# each call into one that uses a `require` in scope, and never names its own symbols so).
ESM_BANNER = (
    'import { createRequire as __connectorRuntimeCreateRequire } from "node:module"; '
    "const require = __connectorRuntimeCreateRequire(import.meta.url);"
)


def is_typescript(path: Path) -> bool:
    return path.suffix in SUFFIXES


def find_esbuild(source: Path) -> str | None:
    """esbuild in a `node_modules/.bin` at or above the function's folder, else on PATH."""
    for folder in Path(source).resolve().parents:
        candidate = folder / "node_modules" / ".bin" / "esbuild"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("esbuild")


def missing_esbuild(source: Path) -> str:
    """Why `source` cannot run, and how to fix it, when there is no esbuild."""
    return (
        f"{Path(source).name} is TypeScript, which esbuild turns into JavaScript, and no "
        f"esbuild was found in node_modules/.bin at or above {Path(source).resolve().parent} "
        f"or on PATH; {INSTALL_HINT}"
    )


def build(source: Path, esbuild: str) -> Path:
    """The JavaScript file to run for `source`: the cached build while its inputs are
    unchanged, else a new one (in the same place: one build per source file).

    Raises `FunctionError` `Runtime.UserCodeSyntaxError` with esbuild's messages (file,
    line and column of the `.ts` source) when the code does not build.
    """
    source = Path(source).resolve()
    cache = cache_folder(source)
    slot = hashlib.sha256(str(source).encode()).hexdigest()[:16]
    output = cache / f"{source.stem}-{slot}{'.cjs' if source.suffix == '.cts' else '.mjs'}"
    record = output.with_suffix(".inputs.json")
    made_by = _toolchain(esbuild)
    if _still_current(output, record, made_by):
        return output
    cache.mkdir(parents=True, exist_ok=True)
    _run_esbuild(source, esbuild, output, record, made_by)
    return output


def cache_folder(source: Path) -> Path:
    """`node_modules/.cache/connector-runtime` in the nearest `node_modules` above
    `source`, else the user's cache folder."""
    for folder in Path(source).resolve().parents:
        if (folder / "node_modules").is_dir():  # resolved: node runs the build from there
            return (folder / "node_modules").resolve() / ".cache" / "connector-runtime"
    home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(home) / "connector-runtime" / "typescript"


def _toolchain(esbuild: str) -> str:
    """What else a build depends on: these options and the esbuild it was made with."""
    tool = Path(esbuild).resolve()
    facts = tool.stat()
    return f"{BUILD_FORMAT}:{tool}:{facts.st_size}:{facts.st_mtime_ns}"


def _still_current(output: Path, record: Path, made_by: str) -> bool:
    """Whether the build exists, by the same toolchain, and every file it was built from
    (the function and each local file it imports) has the content it had then."""
    try:
        recorded = json.loads(record.read_text())
        inputs = recorded["inputs"].items()
        current = recorded["made_by"] == made_by and output.is_file()
        return current and all(_digest(Path(path)) == digest for path, digest in inputs)
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return False


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _run_esbuild(source: Path, esbuild: str, output: Path, record: Path, made_by: str) -> None:
    """Build into temporary files beside `output` (the source map's paths are relative to
    the build's folder), then move them into place: a worker that started from the
    previous build keeps it; a build racing this one writes the same bytes."""
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".meta-") as scratch:
        built = output.with_name(f".{os.getpid()}-{output.name}")
        meta, recorded = Path(scratch) / "meta.json", Path(scratch) / "inputs.json"
        command = [esbuild, str(source), *_options(source), f"--outfile={built}"]
        command.append(f"--metafile={meta}")
        try:
            done = subprocess.run(
                command,
                cwd=source.parent,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_SECONDS,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise errors.InvokeFailed(f"esbuild could not build {source.name}: {exc}") from exc
        if done.returncode != 0:
            built.unlink(missing_ok=True)
            raise _build_failure(source, done.stderr)
        read = [source.parent / path for path in json.loads(meta.read_text())["inputs"]]
        inputs = {str(path.resolve()): _digest(path) for path in read}
        recorded.write_text(json.dumps({"made_by": made_by, "inputs": inputs}))
        os.replace(built, output)
        os.replace(recorded, record)


def _options(source: Path) -> list[str]:
    common = ["--bundle", "--packages=external", "--platform=node", "--sourcemap=inline"]
    common += ["--log-level=error", "--color=false"]
    if source.suffix == ".cts":
        return [*common, "--format=cjs"]
    return [*common, "--format=esm", f"--banner:js={ESM_BANNER}"]


def _build_failure(source: Path, stderr: str) -> errors.FunctionError:
    """esbuild's messages as Lambda names a module that does not parse."""
    lines = [line.rstrip() for line in stderr.splitlines() if line.strip()]
    first = next((line for line in lines if "[ERROR]" in line), lines[0] if lines else "")
    headline = first.replace("✘ [ERROR]", "").strip() or "esbuild failed"
    where = next((line.strip().rstrip(":") for line in lines if _is_location(line)), None)
    message = f"Syntax error in module '{source.stem}': {headline}"
    if where:
        message += f" ({where})"
    return errors.FunctionError(
        message, error_type="Runtime.UserCodeSyntaxError", stack_trace=lines
    )


def _is_location(line: str) -> bool:
    """esbuild's `    handler.ts:3:10:` line under an error."""
    text = line.strip()
    return text.endswith(":") and any(f"{s}:" in text for s in SUFFIXES)
