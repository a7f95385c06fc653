"""The committed JSON Schemas match the pydantic models they are generated from."""

from pathlib import Path

import jsonschema
import orjson
import pytest
import yaml

from connector_runtime.schemas import SCHEMAS, render

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("filename", sorted(SCHEMAS))
def test_committed_schema_matches_its_model(filename):
    committed = (ROOT / "schemas" / filename).read_bytes()
    assert committed == render(filename), f"schemas/{filename} drifted: run `make schemas`"


@pytest.mark.parametrize("filename", sorted(SCHEMAS))
def test_every_field_has_a_description(filename):
    schema = orjson.loads(render(filename))
    missing = []
    for owner, definition in [(filename, schema), *schema.get("$defs", {}).items()]:
        for name, prop in definition.get("properties", {}).items():
            if not prop.get("description"):
                missing.append(f"{owner}.{name}")
    assert not missing


@pytest.mark.parametrize(
    "example", sorted(ROOT.glob("examples/*/connectors.yaml")), ids=lambda p: p.parent.name
)
def test_examples_validate_against_the_config_schema(example):
    schema = orjson.loads(render("connectors.schema.json"))
    jsonschema.validate(yaml.safe_load(example.read_text()), schema)
