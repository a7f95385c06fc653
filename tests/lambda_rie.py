"""A real AWS Lambda Python runtime on loopback, for tests (`pytest_plugins = ["lambda_rie"]`).

- `rie_binary` (session): the AWS Lambda Runtime Interface Emulator. `$AWS_LAMBDA_RIE`
  if set; else the binary that ships inside the `aws-sam-cli` wheel, fetched once with
  `pip download --no-deps` and kept in pytest's cache (`.pytest_cache`).
- `lambda_function(handler, timeout=30.0, directory=HANDLERS)`: starts one emulator
  running `python -m awslambdaric HANDLER` from `directory` (`tests/lambda_handlers/`
  unless given) on a free 127.0.0.1 port, waits until it accepts connections and returns
  its URL: a Lambda API endpoint whose function is named `function`. Stopped at teardown.

The emulator runs one invocation at a time. When it cannot be had (no network to PyPI,
not Linux), its tests are skipped, or fail under `CI=true`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

HANDLERS = Path(__file__).parent / "lambda_handlers"
SAM_CLI = "aws-sam-cli==1.170.0"  # any release ships the emulator; pinned for repeatable runs
RIE_IN_WHEEL = "samcli/local/rapid/aws-lambda-rie-{arch}"
START_SECONDS = 10.0
STOP_SECONDS = 5.0


def unavailable(reason: str) -> None:
    """Skip the test, or fail it under CI=true, where every test must really run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: not skipping)", pytrace=False)
    pytest.skip(reason)


def require(module: str) -> None:
    """`unavailable` unless `module` can be imported; for a test module's top."""
    if importlib.util.find_spec(module) is None:
        reason = f"{module} is not installed (pip install -e '.[dev,lambda]')"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: not skipping)", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="session")
def rie_binary(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The emulator's executable."""
    if override := os.environ.get("AWS_LAMBDA_RIE"):
        return Path(override)
    arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower()
    )
    if not sys.platform.startswith("linux") or arch is None:
        unavailable(f"the Lambda emulator runs on Linux x86_64/arm64, not {sys.platform} {arch}")
    cache = getattr(request.config, "cache", None)  # None under `-p no:cacheprovider`
    folder = cache.mkdir("aws-lambda-rie") if cache else tmp_path_factory.mktemp("rie")
    binary = folder / f"aws-lambda-rie-{arch}"
    if not binary.exists():
        _extract_from_wheel(RIE_IN_WHEEL.format(arch=arch), binary)
    return binary


def _extract_from_wheel(member: str, binary: Path) -> None:
    with tempfile.TemporaryDirectory() as download:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        done = subprocess.run(
            [*command, "--dest", download, SAM_CLI], capture_output=True, text=True, timeout=300
        )
        wheels = list(Path(download).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            unavailable(
                f"cannot download {SAM_CLI} for the Lambda emulator (set AWS_LAMBDA_RIE to an "
                f"aws-lambda-rie binary instead): {done.stderr.strip()[-500:]}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            partial = binary.with_suffix(".partial")
            partial.write_bytes(wheel.read(member))
    partial.chmod(0o755)
    partial.replace(binary)  # atomic: a concurrent run sees the whole file or none


@pytest.fixture
def lambda_function(rie_binary: Path, tmp_path: Path) -> Iterator:
    """`lambda_function("module.handler", timeout=30.0, directory=HANDLERS)` -> the endpoint URL."""
    emulators: list[subprocess.Popen] = []

    def start(handler: str, timeout: float = 30.0, directory: Path = HANDLERS) -> str:
        port, runtime_port = _free_port(), _free_port()
        log = (tmp_path / f"rie-{port}.log").open("wb")
        emulator = subprocess.Popen(
            [
                str(rie_binary),
                "--runtime-interface-emulator-address",
                f"127.0.0.1:{port}",
                "--runtime-api-address",  # default 127.0.0.1:9001: one emulator per host
                f"127.0.0.1:{runtime_port}",
                sys.executable,
                "-m",
                "awslambdaric",
                handler,
            ],
            cwd=directory,
            env=_function_environment(timeout, directory),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        emulators.append(emulator)
        _wait_until_listening(emulator, port, tmp_path / f"rie-{port}.log")
        return f"http://127.0.0.1:{port}"

    yield start
    for emulator in emulators:
        _stop(emulator)


def _function_environment(timeout: float, directory: Path) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    return {
        **environment,
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(int(timeout)),
        "AWS_LAMBDA_FUNCTION_NAME": "function",
        "AWS_REGION": "us-east-1",
        "PYTHONPATH": str(directory),
        "PYTHONUNBUFFERED": "1",
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_listening(emulator: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if emulator.poll() is not None:
            pytest.fail(f"the Lambda emulator exited ({emulator.returncode}):\n{log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    pytest.fail(
        f"the Lambda emulator did not listen within {START_SECONDS:g} s:\n{log.read_text()}"
    )


def _stop(emulator: subprocess.Popen) -> None:
    """SIGTERM: the emulator stops its runtime process, then itself."""
    if emulator.poll() is None:
        emulator.send_signal(signal.SIGTERM)
    try:
        emulator.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(emulator.pid, signal.SIGKILL)
        emulator.wait()
