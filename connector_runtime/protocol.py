"""The function protocol (design §2): the request we send and the response we accept.

`parse_response` turns a function's raw answer into a validated `Response`, or raises
`FunctionError` (an error-shaped answer) or `InvalidResponse` (anything else that
breaks the contract), naming the table, row and field at fault.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from . import masking
from .errors import FunctionError, InvalidResponse
from .jsonio import NotUnicode, TooDeep, decode_json, describe_path, non_finite_path, token
from .types import LogicalType

# How much of a non-string `errorMessage` an alert shows as JSON text.
SHOWN_MESSAGE_CHARS = 200


class Request(BaseModel):
    """What the runtime sends the function on every call."""

    model_config = ConfigDict(frozen=True)

    agent: str = Field(description="connector-runtime/<version>/<connector>/<schema>")
    state: dict[str, Any] = Field(description="State of the last committed page; {} at first.")
    secrets: dict[str, Any] = Field(description="The connector's decrypted secrets.")
    sync_id: str = Field(description="UUID of this sync, the same for every page.")
    setup_test: bool | None = Field(
        default=None, description="True only for `connector test`; absent otherwise."
    )

    def payload(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class TableSchema(BaseModel):
    """A table's primary key and, as our extension, declared column types."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    primary_key: list[str] = Field(
        default_factory=list, description="Source columns that identify a row; [] to append."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description='Declared logical types, e.g. {"amount": "DECIMAL(18,2)"}; they win over inference.',
    )

    @field_validator("columns")
    @classmethod
    def _known_types(cls, columns: dict[str, str]) -> dict[str, str]:
        for column, text in columns.items():
            try:
                LogicalType.parse(text)
            except ValueError as exc:
                raise ValueError(f"column {column!r}: {exc}") from None
        return columns

    def declared(self) -> dict[str, LogicalType]:
        return {column: LogicalType.parse(text) for column, text in self.columns.items()}


class Response(BaseModel):
    """One page of a sync, as the function returns it."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    state: dict[str, Any] = Field(
        description="Cursor to send back next time, once this page commits."
    )
    # Rows are `list[Any]` here and checked by `_rows_are_objects`: letting pydantic
    # validate every row dict would copy each one, a third of a page's parse time.
    insert: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Rows to upsert (or append), by table; each a JSON object.",
    )
    delete: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Rows to mark deleted, by table; each an object with the primary key.",
    )
    schema_: dict[str, TableSchema] = Field(
        default_factory=dict,
        alias="schema",
        description="Primary keys and declared types, by table.",
    )
    soft_delete: list[str] = Field(
        default_factory=list,
        alias="softDelete",
        description="Tables whose rows not re-sent by the end of this sync are marked deleted.",
    )
    has_more: StrictBool = Field(
        default=False, alias="hasMore", description="True: call again at once with the new state."
    )

    @model_validator(mode="after")
    def _rows_are_objects(self) -> Response:
        for field_name, tables in (("insert", self.insert), ("delete", self.delete)):
            for table, rows in tables.items():
                if not all(type(row) is dict for row in rows):
                    index = next(i for i, row in enumerate(rows) if type(row) is not dict)
                    raise ValueError(
                        f"{field_name}: table {table!r}, row {index}: "
                        f"a row must be a JSON object, not {_json_kind(rows[index])}"
                    )
        return self

    @model_validator(mode="after")
    def _state_round_trips(self) -> Response:
        """The state goes back to the function as JSON: a NaN or ±Infinity in it would
        come back as null (or not parse at all), and the cursor would be lost."""
        found = non_finite_path(self.state)
        if found is not None:
            path, number = found
            raise ValueError(
                f"{describe_path(('state', *path))} is {token(number)}, which JSON cannot carry"
            )
        return self

    @property
    def row_count(self) -> int:
        return sum(map(len, self.insert.values())) + sum(map(len, self.delete.values()))


def parse_response(raw: bytes) -> Response:
    """Validate a function's answer; raise FunctionError or InvalidResponse."""
    return validate_response(decode_answer(raw))


def decode_answer(raw: bytes) -> dict[str, Any]:
    """The answer as a JSON object; InvalidResponse if it is not one, FunctionError if it
    is the error shape (`errorMessage`)."""
    try:
        # exact: integers beyond 64 bits stay integers, NaN and Infinity are seen as such
        answer = decode_json(raw)
    except TooDeep as exc:
        raise InvalidResponse(f"the function's answer is {exc}") from None
    except NotUnicode as exc:
        raise InvalidResponse(f"the function's answer: {exc}") from None
    except ValueError as exc:
        raise InvalidResponse(f"the function's answer is not JSON: {exc}") from None
    if not isinstance(answer, dict):
        raise InvalidResponse(
            f"the function's answer is a JSON {_json_kind(answer)}, not an object"
        )
    if "errorMessage" in answer:
        raise function_error(answer)
    return answer


def validate_response(answer: dict[str, Any]) -> Response:
    """A decoded answer (an object without `errorMessage`) checked against the protocol."""
    try:
        return Response.model_validate(answer)
    except ValidationError as exc:
        raise InvalidResponse(describe_validation_error(exc)) from None


def function_error(answer: dict[str, Any]) -> FunctionError:
    """The Lambda error shape (`errorMessage`, `errorType`, `stackTrace`) as an exception."""
    frames = answer.get("stackTrace")
    frames = frames if isinstance(frames, list) else []
    # `logTail`: the function's last log lines, added by invokers that have them (Lambda)
    tail = answer.get("logTail")
    tail = [line for line in tail if isinstance(line, str)] if isinstance(tail, list) else []
    error_type = answer.get("errorType")
    if not isinstance(error_type, str) or not error_type.strip():
        error_type = "FunctionError"
    failure = FunctionError(
        error_message(answer.get("errorMessage"), error_type),
        error_type=error_type,
        stack_trace=(frames + tail) or None,
    )
    failure.log_tail = tail
    return failure


def error_message(message: Any, error_type: str) -> str:
    """What an alert says for the function's `errorMessage`.

    - a string with text in it: that string, as it is;
    - nothing to read (an empty or blank string, `null`, `{}`, `[]`): the error type and
      that the function gave no message, e.g. `MemoryError (the function gave no message)`
      (Python's `raise MemoryError()` has an empty message);
    - any other value (a number, a boolean, an object or array with something in it) is
      not a message but may still tell something: it is shown as its JSON text, e.g.
      `errorMessage was 0, not a message` or `errorMessage was {"code":7}, not a message`
      (cut to `SHOWN_MESSAGE_CHARS`).
    """
    if isinstance(message, str):
        if message.strip():
            return message
    elif message is not None and message not in ({}, []):
        # masked before its texts are escaped once more, and again before it is cut
        shown = json.dumps(
            masking.mask(message), ensure_ascii=False, separators=(",", ":"), default=repr
        )
        shown = masking.excerpt(shown, SHOWN_MESSAGE_CHARS, note="...")
        return f"errorMessage was {shown}, not a message"
    return f"{error_type} (the function gave no message)"


def describe_validation_error(exc: ValidationError) -> str:
    return "; ".join(_describe(error) for error in exc.errors(include_url=False))


def _describe(error: dict) -> str:
    """('insert', 'users', 3) → 'insert: table users, row 3: Input should be ...'."""
    if not error["loc"] and error["type"] == "value_error":
        return error["ctx"]["error"].args[0]  # our own check already names where
    loc = [str(part) for part in error["loc"]]
    field, rest = (loc[0], loc[1:]) if loc else ("response", [])
    where = field
    if field in ("insert", "delete") and rest:
        where += f": table {rest[0]!r}" + (f", row {rest[1]}" if len(rest) > 1 else "")
    elif field == "schema" and rest:
        where += f": table {rest[0]!r}" + (f", {'.'.join(rest[1:])}" if len(rest) > 1 else "")
    elif rest:
        where += "." + ".".join(rest)
    message = error["msg"]
    if error["type"] == "missing":
        message = "required field is missing"
    return f"{where}: {message}"


def _json_kind(value: object) -> str:
    kinds = {list: "array", dict: "object", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")
