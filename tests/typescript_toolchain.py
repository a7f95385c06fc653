"""esbuild for the TypeScript tests: the version pinned by tests/typescript/package.json and
its package-lock.json, installed there with `npm ci` when it is not yet (.ci/run does it
before the tests). Without node, npm or the npm registry the tests skip, or fail under
CI=true.

A test gives its project folder a `node_modules` of its own, linking esbuild into it: the
runtime finds esbuild there as after a user's `npm install --save-dev esbuild`, and keeps
its builds in that folder's `node_modules/.cache`, which goes with the test's tmp_path.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

FOLDER = Path(__file__).resolve().parent / "typescript"
ESBUILD = FOLDER / "node_modules" / ".bin" / "esbuild"


def unavailable(reason: str) -> None:
    """Skip the test, or fail it under CI=true, where every test must really run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: not skipping)", pytrace=False)
    pytest.skip(reason)


@functools.cache
def _install() -> str | None:
    """Why esbuild could not be installed, or None once it is there."""
    if ESBUILD.exists():
        return None
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        return "node and npm are not on PATH; install Node.js 18+ to run the TypeScript tests"
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=FOLDER,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        return "npm ci in tests/typescript took over 10 minutes (no network?)"
    if done.returncode != 0 or not ESBUILD.exists():
        return f"npm could not install esbuild (no network?): {done.stderr[-800:]}"
    return None


def node_modules() -> Path:
    """tests/typescript/node_modules, with esbuild in its .bin (installed if need be)."""
    problem = _install()
    if problem is not None:
        unavailable(problem)
    return FOLDER / "node_modules"


def link_esbuild(folder: Path) -> Path:
    """`folder/node_modules` holding the esbuild package and `.bin/esbuild` (links)."""
    installed = node_modules()
    modules = folder / "node_modules"
    (modules / ".bin").mkdir(parents=True, exist_ok=True)
    (modules / "esbuild").symlink_to(installed / "esbuild", target_is_directory=True)
    (modules / ".bin" / "esbuild").symlink_to(installed / "esbuild" / "bin" / "esbuild")
    return modules
