"""The JSON Schemas in `schemas/`, generated from the pydantic models (`make schemas`).

A test regenerates them and fails when a committed file has drifted from its model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from .config import Config
from .protocol import Request, Response

SCHEMAS = {
    "request.schema.json": (Request, "validation"),
    "response.schema.json": (Response, "validation"),
    "connectors.schema.json": (Config, "validation"),
}


def render(filename: str) -> bytes:
    model, mode = SCHEMAS[filename]
    schema = model.model_json_schema(by_alias=True, mode=mode)
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename in SCHEMAS:
        path = directory / filename
        path.write_bytes(render(filename))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "schemas")):
        print(path)
