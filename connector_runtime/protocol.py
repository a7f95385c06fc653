"""The function protocol (design §2): the request we send and the response we accept.

`parse_response` turns a function's raw answer into a validated `Response`, or raises
`FunctionError` (an error-shaped answer) or `InvalidResponse` (anything else that
breaks the contract), naming the table, row and field at fault.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StrictBool

from . import masking
from .columns import ColumnarAnswer, ColumnRows, decode_columnar
from .errors import FunctionError, InvalidResponse
from .jsonio import (
    NotUnicode,
    TooDeep,
    decode_json,
    describe_path,
    encode_json,
    non_finite_path,
    token,
)
from .types import LogicalType

# How much of a non-string `errorMessage` an alert shows as JSON text.
SHOWN_MESSAGE_CHARS = 200


class Callback(BaseModel):
    """Where a background function POSTs its page instead of answering."""

    model_config = ConfigDict(frozen=True)

    url: str = Field(description="POST the page here, as the JSON a function answers with.")
    token: str = Field(
        description="Send it as Authorization: Bearer <token>; it is good for this call only."
    )


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
    bucket: str | None = Field(
        default=None,
        description="With cloud storage: the bucket the function may write its rows to.",
    )
    file: str | None = Field(
        default=None,
        description="With cloud storage: the object key for this page's insert and delete.",
    )
    callback: Callback | None = Field(
        default=None,
        description="For a background function: where to POST the page instead of answering.",
    )

    def payload(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class TableSchema(BaseModel):
    """A table's primary key and, as our extension, declared column types."""

    model_config = ConfigDict(frozen=True)

    primary_key: list[str] = Field(
        default_factory=list, description="Source columns that identify a row; [] to append."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description='Declared logical types, e.g. {"amount": "DECIMAL(18,2)"}; they win over inference.',
    )

    def declared(self) -> dict[str, LogicalType]:
        return {column: LogicalType.parse(text) for column, text in self.columns.items()}


# Built by `validate_response`, which checks an answer in the protocol's own words, never
# by pydantic's validation: the fields document the shape (`make schemas`).
class Response(BaseModel):
    """One page of a sync, as the function returns it."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    state: dict[str, Any] = Field(
        description="Cursor to send back next time, once this page commits."
    )
    insert: dict[str, list[dict[str, Any]]] = Field(
        default_factory=dict,
        description="Rows to upsert (or append), by table; each a JSON object.",
    )
    delete: dict[str, list[dict[str, Any]]] = Field(
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
    has_more: (
        StrictBool | Annotated[str, Field(pattern="^[Tt][Rr][Uu][Ee]$|^[Ff][Aa][Ll][Ss][Ee]$")]
    ) = Field(
        default=False,
        alias="hasMore",
        description='True (or "true" in any case): call again at once with the new state.',
    )

    # Top-level keys the protocol does not know (and that are no typo): ignored.
    _ignored: tuple[str, ...] = PrivateAttr(default=())
    # In a streamed answer: whether this part carries the state (`validate_part`).
    _last: bool = PrivateAttr(default=False)
    # Each table's rows as columns, made before planning (`page.prepare`); by
    # ("insert" or "delete", table).
    _columns: dict[tuple[str, str], Any] = PrivateAttr(default_factory=dict)

    @property
    def row_count(self) -> int:
        return sum(map(len, self.insert.values())) + sum(map(len, self.delete.values()))

    @property
    def ignored_keys(self) -> tuple[str, ...]:
        return self._ignored

    @property
    def is_last(self) -> bool:
        """A streamed answer's part that carries `state` and `hasMore`."""
        return self._last


# The answer's top-level keys, and those of a table's entry in `schema`.
PROTOCOL_KEYS = ("state", "insert", "delete", "schema", "softDelete", "hasMore")
TABLE_SCHEMA_KEYS = ("primary_key", "columns")
# Keys of the error shape and of cloud storage, which a function may echo: not unknown.
KNOWN_OTHER_KEYS = frozenset({"errorType", "stackTrace", "bucket", "file"})
TYPO_EDITS = 2  # a key this close to a protocol key is taken for a misspelling of it
SHOWN_VALUE_CHARS = 80


def parse_response(raw: bytes) -> Response:
    """Validate a function's answer; raise FunctionError or InvalidResponse."""
    return validate_response(decode_answer(raw))


def decode_answer(raw: bytes | ColumnarAnswer) -> dict[str, Any]:
    """The answer as a JSON object; InvalidResponse if it is not one, FunctionError if it
    is the error shape (`errorMessage`)."""
    try:
        # exact: integers beyond 64 bits stay integers, NaN and Infinity are seen as such
        if isinstance(raw, ColumnarAnswer):
            columnar, raw = raw, raw.answer  # the answer alone: enough to find an error in
            answer = decode_columnar(columnar)
        else:
            answer = decode_json(raw)
    except TooDeep as exc:
        raise InvalidResponse(f"the function's answer is {exc}") from None
    except NotUnicode as exc:
        error = _error_with_lone_surrogates(raw)
        if error is not None:  # the function's own error still says what went wrong
            raise error from None
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
    """A decoded answer (an object without `errorMessage`) checked against the protocol.

    Every violation is an `InvalidResponse` in the protocol's words, naming the field,
    table and row and showing the offending value (masked, cut). Unknown keys that look
    like a misspelt protocol key are violations too (`misspelt_key`); other unknown keys
    are left to the caller to warn about (`unknown_keys`)."""
    misspelt = misspelt_key(answer, PROTOCOL_KEYS)
    if misspelt is not None:
        raise InvalidResponse(misspelt)
    if "state" not in answer:
        raise InvalidResponse(
            "state is missing: every answer carries the state to send next time ({} for none)"
        )
    state = answer["state"]
    if type(state) is not dict:
        raise InvalidResponse(f"state must be an object, got {shown(state)}")
    found = non_finite_path(state)
    if found is not None:
        # the state goes back to the function as JSON: NaN or ±Infinity would come back
        # as null (or not parse at all), and the cursor would be lost
        path, number = found
        raise InvalidResponse(
            f"{describe_path(('state', *path))} is {token(number)}, which JSON cannot carry"
        )
    return _response(answer, state, _has_more(answer.get("hasMore", False)))


def validate_part(answer: dict[str, Any], requested_state: dict[str, Any]) -> Response:
    """One part of a streamed answer (design §13), decoded, checked against the protocol.

    A part with `state` is the last: it is a whole answer (`validate_response`). Any other
    part is a partial page: `insert`, `delete`, `schema` and `softDelete` only, returned
    with `requested_state` and `hasMore` true, so that applying it changes no state. Its
    `Response.is_last` says which. Messages are the caller's to locate (the part's number)."""
    if "state" in answer:
        response = validate_response(answer)
        response._last = True
        return response
    misspelt = misspelt_key(answer, PROTOCOL_KEYS)
    if misspelt is not None:
        raise InvalidResponse(misspelt)
    if "hasMore" in answer:
        raise InvalidResponse(
            "hasMore without state: the last part of a streamed answer carries both, "
            "and the parts before it neither"
        )
    return _response(answer, requested_state, True)


def _response(answer: dict[str, Any], state: dict[str, Any], has_more: bool) -> Response:
    """The answer's pages, checked, with `state` and `has_more` already checked."""
    response = Response.model_construct(
        state=state,
        insert=_rows(answer, "insert"),
        delete=_rows(answer, "delete"),
        schema_=_schemas(answer.get("schema")),
        soft_delete=_soft_delete(answer.get("softDelete")),
        has_more=has_more,
    )
    response._ignored = tuple(unknown_keys(answer))
    return response


def unknown_keys(answer: dict[str, Any]) -> list[str]:
    """Top-level keys of an answer that the protocol does not know (and are no typo)."""
    return [
        key
        for key in answer
        if key not in PROTOCOL_KEYS and key not in KNOWN_OTHER_KEYS and key != "errorMessage"
    ]


def misspelt_key(fields: dict[str, Any], known: tuple[str, ...], where: str = "") -> str | None:
    """What is wrong when a key of `fields` looks like a misspelling of one of `known`.

    A key is taken for a misspelling of a known key when it is that key in another case
    (`hasmore`) or one edit from it (`inserts`, `delte`): rows under it would be lost even
    beside the real key. Two edits away (`has_More`), it is taken for one only while the
    known key itself is absent: a function answering both `state` and `status` means both."""
    for key in fields:
        if key in known or not isinstance(key, str):
            continue
        for meant in known:
            edits = _edits(key.casefold(), meant.casefold())
            if edits <= 1 or (edits <= TYPO_EDITS and meant not in fields):
                name = masking.excerpt(json.dumps(key, ensure_ascii=False), SHOWN_VALUE_CHARS)
                return (
                    f'{where}unknown key {name}: did you mean "{meant}"? (keys are '
                    "case-sensitive; a misspelt key would be ignored and could cut the "
                    "sync short or lose rows)"
                )
    return None


def _edits(a: str, b: str) -> int:
    """Levenshtein distance, giving up (returning a large number) past `TYPO_EDITS`."""
    if abs(len(a) - len(b)) > TYPO_EDITS:
        return TYPO_EDITS + 1
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _rows(answer: dict[str, Any], field: str) -> dict[str, list[Any]]:
    """`insert` or `delete`: an object of tables, each an array of row objects."""
    tables = answer.get(field)
    if tables is None:  # absent, or null as Python's None: nothing to write
        return {}
    if type(tables) is not dict:
        raise InvalidResponse(
            f"{field} must be an object of tables, each an array of rows, got {shown(tables)}"
        )
    for table, rows in tables.items():
        if type(rows) is ColumnRows:  # rows of one shape, from our own worker
            continue
        if type(rows) is not list:
            raise InvalidResponse(
                f"{field}: table {table!r} must be an array of rows, got {shown(rows)}"
            )
        # `all(...)` first: the usual page has only objects, found at C speed
        if not all(type(row) is dict for row in rows):
            index = next(i for i, row in enumerate(rows) if type(row) is not dict)
            raise InvalidResponse(
                f"{field}: table {table!r}, row {index}: a row must be an object, "
                f"got {shown(rows[index])}"
            )
    return tables


def _schemas(schemas: Any) -> dict[str, TableSchema]:
    if schemas is None:
        return {}
    if type(schemas) is not dict:
        raise InvalidResponse(
            f'schema must be an object of tables (e.g. {{"orders": {{"primary_key": '
            f'["id"]}}}}), got {shown(schemas)}'
        )
    return {table: _table_schema(table, entry) for table, entry in schemas.items()}


def _table_schema(table: str, entry: Any) -> TableSchema:
    where = f"schema: table {table!r}"
    if type(entry) is not dict:
        raise InvalidResponse(
            f'{where} must be an object such as {{"primary_key": ["id"]}}, got {shown(entry)}'
        )
    misspelt = misspelt_key(entry, TABLE_SCHEMA_KEYS, f"{where}: ")
    if misspelt is not None:
        raise InvalidResponse(misspelt)
    key = entry.get("primary_key")
    if key is None:
        key = []
    elif type(key) is not list or not all(isinstance(column, str) for column in key):
        raise InvalidResponse(
            f"{where}: primary_key must be an array of column names, got {shown(key)}"
        )
    columns = entry.get("columns")
    if columns is None:
        columns = {}
    elif type(columns) is not dict:
        raise InvalidResponse(
            f'{where}: columns must be an object of column types (e.g. {{"amount": '
            f'"DOUBLE"}}), got {shown(columns)}'
        )
    for column, text in columns.items():
        if not isinstance(text, str):
            raise InvalidResponse(
                f'{where}: column {column!r}: a type must be a string such as "LONG", '
                f"got {shown(text)}"
            )
        try:
            LogicalType.parse(text)
        except ValueError as exc:
            raise InvalidResponse(f"{where}: column {column!r}: {exc}") from None
    return TableSchema.model_construct(primary_key=key, columns=columns)


def _soft_delete(tables: Any) -> list[str]:
    if tables is None:
        return []
    if type(tables) is not list or not all(isinstance(table, str) for table in tables):
        raise InvalidResponse(f"softDelete must be an array of table names, got {shown(tables)}")
    return tables


def _has_more(value: Any) -> bool:
    """A JSON boolean, or the string "true"/"false" in any case, as Fivetran accepts."""
    if type(value) is bool:
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidResponse(
        'hasMore must be true or false (a boolean, or the string "true" or "false"), '
        f"got {shown(value)}"
    )


def shown(value: Any) -> str:
    """A JSON value as an error message shows it: `the string "2024-01-01"`, `null`,
    `the number 5`, `the array [1,2]`, masked and cut to `SHOWN_VALUE_CHARS`."""
    if value is None:
        return "null"
    text = encode_json(masking.mask(value)).decode("utf-8", "replace")
    text = masking.excerpt(text, SHOWN_VALUE_CHARS, note="…")
    return f"the {_json_kind(value)} {text}"


def _error_with_lone_surrogates(raw: bytes) -> FunctionError | None:
    """An error answer whose texts hold lone surrogate escapes, each made U+FFFD: the
    error is only reported, never stored as data, so a stray escape must not hide it."""
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(answer, dict) or "errorMessage" not in answer:
        return None
    try:
        return function_error(_without_surrogates(answer))
    except RecursionError:  # nested too deep to walk: refused as not Unicode
        return None


def _without_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_surrogates(item) for item in value]
    return value


def function_error(answer: dict[str, Any]) -> FunctionError:
    """The Lambda error shape (`errorMessage`, `errorType`, `stackTrace`) as an exception."""
    frames = answer.get("stackTrace")
    if isinstance(frames, str):  # one text, as Python's traceback.format_exc() gives it
        frames = frames.rstrip().splitlines()
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


def _json_kind(value: object) -> str:
    kinds = {list: "array", dict: "object", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")
