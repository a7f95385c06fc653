"""TypeScript functions through the CLI: real esbuild (tests/typescript's pinned version),
real node workers, real DuckDB files.

Without node, npm or the npm registry these tests skip, or fail when CI=true.
"""

from __future__ import annotations

import os
import shutil
import textwrap

import pytest
import yaml
from conftest import Project
from typescript_toolchain import link_esbuild, unavailable

# A Netlify function as Netlify's docs write it: the types come from a package this
# project never installs, which `import type` lets esbuild drop.
NETLIFY_TS = """\
import type { Handler, HandlerEvent } from "@netlify/functions";
import { rowsAfter } from "./rows";

interface SyncRequest {
  state: { cursor?: number };
  secrets: Record<string, string>;
}

export const handler: Handler = async (event: HandlerEvent) => {
  const request = JSON.parse(event.body ?? "{}") as SyncRequest;
  const cursor: number = request.state.cursor ?? 0;
  if (cursor >= 100) {
    throw new Error(`cursor ${cursor} is past the end`);
  }
  const page = { state: { cursor: cursor + 2 }, insert: { items: rowsAfter(cursor) } };
  return { statusCode: 200, body: JSON.stringify(page) };
};
"""
ROWS_TS = """\
export interface Item { id: number; label: string }

export function rowsAfter(cursor: number): Item[] {
  return [cursor + 1, cursor + 2].map((id) => ({ id, label: `item ${id}` }));
}
"""
THROW_LINE = (
    NETLIFY_TS.splitlines().index("    throw new Error(`cursor ${cursor} is past the end`);") + 1
)
CURSOR_LINE = THROW_LINE - 2  # `const cursor: number = ...`


@pytest.fixture
def ts_project(tmp_path):
    """`ts_project(files, **function)`: the files, node_modules with esbuild, a config."""
    if shutil.which("node") is None:
        unavailable("node is not on PATH; install Node.js 18+ to run the TypeScript tests")

    def make(files: dict[str, str], *, esbuild: bool = True, **function) -> Project:
        for name, text in files.items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(textwrap.dedent(text))
        if esbuild:
            link_esbuild(tmp_path)
        made = Project(tmp_path, "demo")
        made.handler = tmp_path / function.get("local", "handler.ts")
        made.write_config(function={"local": made.handler.name, "timeout": "30s", **function})
        return made

    return make


def test_a_netlify_typescript_function_with_a_type_only_import_syncs(ts_project):
    demo = ts_project({"handler.ts": NETLIFY_TS, "rows.ts": ROWS_TS})

    validated = demo.connector("validate")
    assert validated.returncode == 0, validated.stderr
    assert validated.printed("demo: handler.ts, handler 'handler', shape fivetran or netlify")

    tested = demo.connector("test", "demo")
    assert tested.returncode == 0, tested.stderr
    assert tested.said("netlify handler; 2 rows")

    result = demo.run()
    assert result.returncode == 0, result.stderr
    assert demo.query("SELECT id, label FROM demo.items ORDER BY id") == [
        (1, "item 1"),
        (2, "item 2"),
    ]
    assert demo.state() == {"cursor": 2}
    assert not (demo.root / "node_modules" / "@netlify").exists()  # nothing was installed


def test_an_error_names_the_typescript_line(ts_project):
    demo = ts_project({"handler.ts": NETLIFY_TS, "rows.ts": ROWS_TS})
    result = demo.connector("state", "set", "demo", '{"cursor": 100}')
    assert result.returncode == 0, result.stderr

    result = demo.run()
    assert result.returncode == 1
    (alert,) = demo.alerts()
    assert (alert["kind"], alert["error_type"]) == ("function_error", "Error")
    assert alert["message"] == "cursor 100 is past the end"
    frames = [frame for frame in alert["stack_trace"] if "handler.ts" in frame]
    assert frames and f"{demo.handler}:{THROW_LINE}:" in frames[0], alert["stack_trace"]
    assert demo.state() == {"cursor": 100}


def test_code_that_does_not_build_is_a_syntax_error_at_its_line(ts_project):
    broken = NETLIFY_TS.replace("const cursor: number =", "const cursor: number ==")
    demo = ts_project({"handler.ts": broken, "rows.ts": ROWS_TS})

    result = demo.run()
    assert result.returncode == 1
    (alert,) = demo.alerts()
    assert (alert["kind"], alert["error_type"]) == (
        "function_error",
        "Runtime.UserCodeSyntaxError",
    )
    assert alert["message"].startswith("Syntax error in module 'handler': ")
    assert f"handler.ts:{CURSOR_LINE}:" in alert["message"], alert["message"]
    assert demo.tables() == []

    validated = demo.connector("validate")
    assert validated.returncode == 1
    assert validated.said("demo: handler.ts did not load")
    assert validated.said(f"handler.ts:{CURSOR_LINE}:")


def test_the_build_is_cached_until_a_file_it_imports_changes(ts_project):
    demo = ts_project({"handler.ts": NETLIFY_TS, "rows.ts": ROWS_TS})
    assert demo.run().returncode == 0
    cache = demo.root / "node_modules" / ".cache" / "connector-runtime"
    (build,) = cache.glob("handler-*.mjs")
    os.utime(build, (1_000_000_000, 1_000_000_000))  # an old build, unless made again

    assert demo.run().returncode == 0
    assert build.stat().st_mtime == 1_000_000_000  # used as it was

    (demo.root / "rows.ts").write_text(ROWS_TS.replace("`item ${id}`", "`row ${id}`"))
    assert demo.run().returncode == 0
    assert build.stat().st_mtime != 1_000_000_000
    assert list(cache.glob("handler-*.mjs")) == [build]  # one build per source file
    assert demo.query("SELECT label FROM demo.items WHERE id = 5") == [("row 5",)]


@pytest.mark.parametrize(
    ("file", "source"),
    [
        pytest.param(
            "handler.mts",
            """\
            import { version } from "esbuild";
            type Page = { state: Record<string, unknown>; insert: { runs: object[] } };
            export async function handler(request: { sync_id: string }): Promise<Page> {
              return { state: { done: true }, insert: { runs: [{ id: 1, esbuild: version }] } };
            }
            """,
            id="mts-importing-a-package",
        ),
        pytest.param(
            "handler.cts",
            """\
            const os = require("node:os");
            module.exports.handler = async (request: { state: object }) => ({
              state: { done: true },
              insert: { runs: [{ id: 1, esbuild: typeof os.hostname() }] },
            });
            """,
            id="cts-commonjs",
        ),
        pytest.param(
            "handler.ts",
            """\
            const { hostname } = require("node:os");
            exports.handler = async (): Promise<object> => ({
              state: { done: true },
              insert: { runs: [{ id: 1, esbuild: typeof hostname() }] },
            });
            """,
            id="ts-calling-require",
        ),
    ],
)
def test_module_kinds(ts_project, file, source):
    demo = ts_project({file: source}, local=file)
    result = demo.run()
    assert result.returncode == 0, result.stderr
    (esbuild,) = demo.query("SELECT esbuild FROM demo.runs")[0]
    version = "0.28.2" if file.endswith(".mts") else "string"
    assert esbuild == version
    assert demo.state() == {"done": True}


def test_without_esbuild_the_config_error_says_how_to_install_it(ts_project, monkeypatch):
    node = shutil.which("node")
    if shutil.which("esbuild", path=os.path.dirname(node)):
        pytest.skip("esbuild is installed beside node; this test needs a PATH without it")
    monkeypatch.setenv("PATH", os.path.dirname(node))
    demo = ts_project({"handler.ts": NETLIFY_TS, "rows.ts": ROWS_TS}, esbuild=False)
    line = demo.config.read_text().splitlines().index("      local: handler.ts") + 1
    for command in (["validate"], ["run", "demo"]):
        result = demo.connector(*command)
        assert result.returncode == 2, result.stderr
        assert result.said(f"{demo.config}:{line}: connectors.demo.function.local: handler.ts is")
        assert result.said("npm install --save-dev esbuild")
    assert not demo.warehouse_path.exists()


def test_esbuild_is_found_in_a_node_modules_above_the_function(ts_project):
    demo = ts_project({"functions/sync.ts": NETLIFY_TS, "functions/rows.ts": ROWS_TS})
    document = yaml.safe_load(demo.config.read_text())
    document["connectors"]["demo"]["function"]["local"] = "functions/sync.ts"
    demo.config.write_text(yaml.safe_dump(document))
    result = demo.run()
    assert result.returncode == 0, result.stderr
    assert demo.query("SELECT count(*) FROM demo.items") == [(2,)]
    assert (demo.root / "node_modules" / ".cache" / "connector-runtime").is_dir()


def test_without_node_modules_the_build_goes_to_the_user_cache(ts_project, monkeypatch, tmp_path):
    esbuild = link_esbuild(tmp_path / "tools") / ".bin"
    monkeypatch.setenv("PATH", f"{esbuild}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    demo = ts_project({"project/handler.ts": NETLIFY_TS, "project/rows.ts": ROWS_TS}, esbuild=False)
    document = yaml.safe_load(demo.config.read_text())
    document["connectors"]["demo"]["function"]["local"] = "project/handler.ts"
    demo.config.write_text(yaml.safe_dump(document))
    result = demo.run()
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "cache" / "connector-runtime" / "typescript").glob("handler-*.mjs"))
