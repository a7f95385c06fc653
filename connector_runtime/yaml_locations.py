"""Where `connectors.yaml` is wrong: reading it, and pydantic errors as `file:line: field: problem`.

The line of each problem comes from the YAML node tree, walked along pydantic's error
location. `config.load_config` is the caller; the root model is passed in, so this module
never imports the models.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from connector_runtime.errors import ConfigError

# --- reading -------------------------------------------------------------------------


def read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (give -c PATH or set CONNECTOR_CONFIG)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None


def parse_yaml(text: str, path: Path) -> tuple[yaml.Node | None, Any]:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _reject_duplicate_keys(root, path)  # before constructing, which flattens merges
        return root, loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{path}:{_yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML syntax error: {exc}") from None
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    """`line: YAML syntax error: problem (context at line N)`, lines 1-based."""
    mark = exc.problem_mark or exc.context_mark
    text = f"{mark.line + 1 if mark else 1}: YAML syntax error: {exc.problem or exc.context}"
    if exc.problem and exc.context and exc.context_mark:
        text += f" ({exc.context} at line {exc.context_mark.line + 1})"
    return text


def _reject_duplicate_keys(node: yaml.Node, path: Path, at: tuple = ()) -> None:
    # PyYAML keeps the last of two equal keys; a second connector of one name is a mistake.
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _reject_duplicate_keys(item, path, (*at, index))
    if not isinstance(node, yaml.MappingNode):
        return
    first_lines: dict[str, int] = {}
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line = key.start_mark.line + 1
        if key.value in first_lines:
            field = ".".join(str(part) for part in (*at, key.value))
            raise ConfigError(
                f"{path}:{line}: {field}: duplicate key (first at line {first_lines[key.value]})"
            )
        first_lines[key.value] = line
        _reject_duplicate_keys(value, path, (*at, key.value))


# --- error reports -------------------------------------------------------------------

_MESSAGES = {
    "missing": "required",
    "model_type": "expected a mapping",
    "dict_type": "expected a mapping",
    "string_type": "expected a string",
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "finite_number": "expected a finite number",
}


def describe(exc: ValidationError, root: yaml.Node, path: Path, model: type[BaseModel]) -> str:
    """One `file:line: field: problem` line per error, in file order."""
    problems = []
    for error in exc.errors():
        loc = _display_loc(error["loc"])
        field = ".".join(str(part) for part in loc)
        prefix = f"{field}: " if field else ""
        problems.append((line_of(root, loc), f"{prefix}{_message(error, loc, model)}"))
    return "\n".join(f"{path}:{line}: {text}" for line, text in sorted(dict.fromkeys(problems)))


def _display_loc(loc: tuple) -> tuple:
    """The location as written in YAML: without dict-key markers and union tags."""
    parts = [part for part in loc if part != "[key]"]
    if len(parts) > 3 and parts[0] == "connectors" and parts[2] in ("schedule", "destination"):
        del parts[3]  # the union's tag: every/cron, warehouse/function
    if len(parts) > 4 and parts[0] == "connectors" and parts[2] == "secrets":
        del parts[4::2]  # a secret value's kind tag follows each key or index below it
    if len(parts) > 1 and parts[0] == "executor":
        del parts[1]  # the union's tag: local/celery
    return tuple(parts)


def line_of(root: yaml.Node, loc: tuple) -> int:
    """1-based line of the deepest key along `loc` that exists in the YAML."""
    node, line = root, root.start_mark.line + 1
    for part in loc:
        entry = _child(node, part)
        if entry is None:
            break
        key, node = entry
        line = key.start_mark.line + 1
    return line


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        return next(((key, value) for key, value in node.value if key.value == part), None)
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part], node.value[part]
    return None


def _message(error: Any, loc: tuple, model: type[BaseModel]) -> str:
    if error["type"] == "extra_forbidden":
        return _unknown_key(loc, model)
    if error["type"] == "literal_error":  # enum-like settings, never secrets
        return f"{error['msg']}, not {error['input']!r}"
    return _MESSAGES.get(error["type"], error["msg"])


def _unknown_key(loc: tuple, model: type[BaseModel]) -> str:
    allowed = _keys_at(loc[:-1], model)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "allowed: " + ", ".join(allowed)
    return f"unknown key {loc[-1]!r} ({hint})"


def _keys_at(loc: tuple, root_model: type[BaseModel]) -> list[str]:
    """The keys the model at `loc` (from `root_model`) accepts, as written in YAML."""
    annotation: Any = root_model
    for part in loc:
        annotation = _child_type(annotation, part)
    model = _model_in(annotation)
    return [field.alias or name for name, field in model.model_fields.items()] if model else []


def _child_type(annotation: Any, part: str | int) -> Any:
    if get_origin(annotation) is dict:
        return get_args(annotation)[1]
    model = _model_in(annotation)
    fields = model.model_fields.items() if model else ()
    return next((field.annotation for name, field in fields if part in (name, field.alias)), None)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model inside `X | None`, `Annotated[X, ...]` or a union of a model and a scalar."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is dict:
        return None
    return next(filter(None, (_model_in(arg) for arg in get_args(annotation))), None)
