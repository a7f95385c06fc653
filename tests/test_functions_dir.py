"""The functions directory (DESIGN.md §13): `function: {netlify: NAME}` finds the file as
Netlify does, through the CLI as a user types it: each layout synced by a real node
worker, Netlify's precedence as `connector validate` lists it, and the errors that name
the field and what was looked for.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# A function that says which file it is: its rows carry its path inside the directory.
WHICH_FILE_CJS = """\
exports.handler = async () => ({
  state: { done: true },
  insert: { ran: [{ id: 1, file: %r }] },
  schema: { ran: { primary_key: ["id"] } },
});
"""
WHICH_FILE_ESM = WHICH_FILE_CJS.replace("exports.handler =", "export const handler =")


def write_function(directory: Path, relative: str, source: str | None = None) -> None:
    path = directory / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if source is None:
        template = WHICH_FILE_ESM if path.suffix in (".mjs", ".mts") else WHICH_FILE_CJS
        source = template % relative
    path.write_text(source)


def write_config(root: Path, connectors: dict, **top: object) -> Path:
    config = root / "connectors.yaml"
    document = {"warehouse": "duckdb:///warehouse.duckdb", **top, "connectors": connectors}
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    return config


@pytest.mark.parametrize(
    "layout",
    ["hello.js", "hello.mjs", "hello.cjs", "hello/hello.js", "hello/index.mjs"],
)
def test_each_layout_is_found_and_synced(tmp_path, node, connector, warehouse, layout):
    write_function(tmp_path / "netlify" / "functions", layout)
    config = write_config(tmp_path, {"hello": {"function": {"netlify": "hello"}}})

    result = connector("run", config=config, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    with warehouse(tmp_path / "warehouse.duckdb") as con:
        assert con.execute("SELECT file FROM hello.ran").fetchall() == [(layout,)]


def test_validate_lists_what_it_found_in_netlify_order(tmp_path, node, connector):
    functions = tmp_path / "netlify" / "functions"
    files = [
        "a.js", "a.mjs", "a.ts",  # .js wins among files
        "b.cts", "b.mjs", "b.ts",  # then .mjs, .cjs, .ts, .mts, .cts
        "c.js", "c/index.js",  # a folder wins over a file
        "d/index.ts", "d/d.ts", "d/index.mjs",  # in a folder: .js, .ts, ...; NAME before index
        "e.mjs", "e/notes.txt",  # a folder without a function file is not one
        "f-background/index.cjs",
        "node_modules/g.js", "types.d.ts", "README.md", "h.py",  # none is a function
    ]  # fmt: skip
    for file in files:
        write_function(functions, file)
    config = write_config(
        tmp_path,
        {
            "alpha": {"function": {"netlify": "a"}},
            "feed": {"function": {"netlify": "f-background"}},
            "also_feed": {"function": {"netlify": "e", "background": True}},
        },
    )

    result = connector("validate", config=config, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.printed(f"functions in {functions}: 6")
    lines = result.stdout.splitlines()
    header = next(
        i for i, line in enumerate(lines) if line.split() == ["function", "file", "connectors"]
    )
    rows = itertools.takewhile(lambda line: line.startswith(" "), lines[header + 1 :])
    listed = [row.split() for row in rows]
    assert listed == [
        ["a", "a.js", "alpha"],
        ["b", "b.mjs"],
        ["c", "c/index.js"],
        ["d", "d/d.ts"],
        ["e", "e.mjs", "also_feed", "(background)"],
        ["f-background", "f-background/index.cjs", "feed", "(background)"],
    ]


def test_a_missing_function_is_a_config_error_saying_where_it_looked(tmp_path, connector):
    write_function(tmp_path / "netlify" / "functions", "hello.js")
    write_function(tmp_path / "netlify" / "functions", "sync/index.mjs")
    config = write_config(tmp_path, {"demo": {"function": {"netlify": "helo"}}})

    for command in ("validate", "run"):
        result = connector(command, config=config, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.said(
            "connectors.yaml:5: connectors.demo.function.netlify: no function 'helo'"
        )
        assert result.said("looked for helo/helo.* and helo/index.* (.js, .ts, .mjs")
        assert result.said("functions there: hello, sync)")
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "warehouse.duckdb").exists()


def test_functions_dir_is_relative_to_the_config_file(tmp_path, node, connector, warehouse):
    project = tmp_path / "project"
    write_function(project / "site" / "fns", "hello/index.js")
    config = write_config(
        project, {"hello": {"function": {"netlify": "hello"}}}, functions_dir="site/fns"
    )

    result = connector("run", config=config, cwd=tmp_path)  # run from elsewhere

    assert result.returncode == 0, result.stderr
    with warehouse(project / "warehouse.duckdb") as con:
        assert con.execute("SELECT file FROM hello.ran").fetchall() == [("hello/index.js",)]

    config.write_text(config.read_text().replace("site/fns", "site/functions"))
    result = connector("validate", config=config, cwd=tmp_path)
    assert result.returncode == 2
    assert result.said(f"no functions directory {project / 'site' / 'functions'}")


@pytest.mark.parametrize(
    ("function", "field", "said"),
    [
        ({"netlify": "../secrets"}, ".netlify", "'../secrets' is not a function name"),
        ({"netlify": "a/b"}, ".netlify", "'a/b' is not a function name"),
        ({"netlify": "a", "local": "a.js"}, "", "set only one of local, netlify, lambda or http"),
    ],
    ids=["parent", "path", "two-sources"],
)
def test_a_bad_netlify_name_is_refused(tmp_path, connector, function, field, said):
    config = write_config(tmp_path, {"demo": {"function": function}})
    result = connector("validate", config=config, cwd=tmp_path)
    assert result.returncode == 2
    assert result.said("connectors.yaml:")
    assert result.said(f": connectors.demo.function{field}: {said}")


# -- examples/netlify_ts ------------------------------------------------------------------


def test_example_netlify_ts(tmp_path, node, connector, warehouse):
    """The example's TypeScript functions, one of them in the background, as its header says:
    `connector run` from its folder, with esbuild installed beside it."""
    from typescript_toolchain import link_esbuild

    folder = tmp_path / "netlify_ts"
    shutil.copytree(
        EXAMPLES / "netlify_ts",
        folder,
        ignore=shutil.ignore_patterns("node_modules", "warehouse.duckdb*", "*.lock"),
    )
    link_esbuild(folder)  # what its `npm install` does

    validated = connector("validate", cwd=folder)
    assert validated.returncode == 0, validated.stderr
    assert validated.printed("downloads-background downloads-background.ts downloads (background)")
    assert validated.printed("releases releases.ts releases")

    result = connector("run", cwd=folder)

    assert result.returncode == 0, result.stderr
    with warehouse(folder / "warehouse.duckdb") as con:
        releases = con.execute(
            "SELECT version, yanked FROM releases.releases ORDER BY published_at"
        ).fetchall()
        downloads = con.execute(
            "SELECT version, sum(downloads) FROM downloads.downloads GROUP BY 1 ORDER BY 1"
        ).fetchall()
        states = con.execute(
            "SELECT connector, CAST(state AS VARCHAR) FROM connector_runtime.state ORDER BY 1"
        ).fetchall()
    assert [version for version, _ in releases] == ["1.0.0", "1.1.0", "1.1.1", "1.1.2", "1.2.0"]
    assert [version for version, yanked in releases if yanked] == ["1.1.1"]
    assert downloads == [("1.1.2", 2500), ("1.2.0", 2550)]
    assert [(name, json.loads(state)) for name, state in states] == [
        ("downloads", {"day": "2025-03-21"}),
        ("releases", {"after": "2025-03-20T16:45:00Z"}),
    ]
    assert not (folder / "node_modules" / "@netlify").exists()  # types only: nothing installed
