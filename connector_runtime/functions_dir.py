"""The functions directory (design §13): the file `function: {netlify: NAME}` names.

Netlify's rules for the JavaScript and TypeScript functions of a site's functions
directory, followed here:

- a folder `NAME/` is the function `NAME` when it holds `NAME.<ext>` or `index.<ext>`,
  and then wins over a file `NAME.<ext>` beside it;
- in the folder, extensions count in the order .js, .ts, .mjs, .cjs, .mts, .cts, and for
  each `NAME.<ext>` before `index.<ext>`;
- among files `NAME.<ext>`, .js wins, then .mjs, .cjs, .ts, .mts, .cts;
- `node_modules` is never a function.

Not followed: `.zip` archives and `.tsx` files, which Netlify also accepts, and Go or
Rust binaries (its other runtimes); a name whose function is one of those is not found.
"""

from __future__ import annotations

import re
from pathlib import Path

DEFAULT = "netlify/functions"
FOLDER_ORDER = (".js", ".ts", ".mjs", ".cjs", ".mts", ".cts")
FILE_ORDER = (".js", ".mjs", ".cjs", ".ts", ".mts", ".cts")
NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"  # Netlify's: letters, digits, - and _
BACKGROUND_SUFFIX = "-background"


def candidates(directory: Path, name: str) -> list[Path]:
    """Where function `name` may be, the winner first."""
    in_folder = [
        directory / name / f"{stem}{ext}" for ext in FOLDER_ORDER for stem in (name, "index")
    ]
    return [*in_folder, *(directory / f"{name}{ext}" for ext in FILE_ORDER)]


def find(directory: Path, name: str) -> Path | None:
    """The file of function `name` in `directory`, or None."""
    return next((path for path in candidates(directory, name) if path.is_file()), None)


def discover(directory: Path) -> dict[str, Path]:
    """Every function in `directory`, by name in name order; {} if there is no directory."""
    if not directory.is_dir():
        return {}
    names = {name for entry in directory.iterdir() if (name := _function_name(entry))}
    found = {name: find(directory, name) for name in sorted(names)}
    return {name: path for name, path in found.items() if path is not None}


def looked_for(name: str) -> str:
    """The places `candidates` tries, in a few words for an error message."""
    return (
        f"{name}/{name}.* and {name}/index.* ({', '.join(FOLDER_ORDER)}), "
        f"then {name}.* ({', '.join(FILE_ORDER)})"
    )


def is_background(name: str) -> bool:
    """A function named `*-background` runs in the background, as on Netlify."""
    return name.endswith(BACKGROUND_SUFFIX)


def _function_name(entry: Path) -> str | None:
    """The function an entry of the directory may be: a folder, or a file of a known type."""
    if entry.name == "node_modules":
        return None
    name = entry.name if entry.is_dir() else entry.stem if entry.suffix in FILE_ORDER else ""
    return name if re.match(NAME, name) else None
