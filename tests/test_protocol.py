"""Response parsing: the contract violations of DESIGN.md §2 name what is wrong."""

import orjson
import pytest

from connector_runtime.errors import FunctionError, InvalidResponse
from connector_runtime.protocol import parse_response


def parse(answer):
    return parse_response(answer if isinstance(answer, bytes) else orjson.dumps(answer))


def test_a_full_page():
    page = parse(
        {
            "state": {"c": 1},
            "insert": {"t": [{"id": 1}]},
            "delete": {"t": [{"id": 2}]},
            "schema": {"t": {"primary_key": ["id"], "columns": {"id": "LONG"}}},
            "softDelete": ["t"],
            "hasMore": True,
        }
    )
    assert page.state == {"c": 1} and page.has_more and page.soft_delete == ["t"]
    assert page.row_count == 2 and page.schema_["t"].primary_key == ["id"]


def test_big_integers_stay_exact():
    page = parse(b'{"state": {}, "insert": {"t": [{"n": 123456789012345678901234567890}]}}')
    assert page.insert["t"][0]["n"] == 123456789012345678901234567890


def test_error_shape_is_a_function_error():
    with pytest.raises(FunctionError) as caught:
        parse({"errorMessage": "boom", "errorType": "ValueError", "stackTrace": ["a", "b"]})
    assert caught.value.message == "boom" and caught.value.error_type == "ValueError"
    assert caught.value.stack_trace == ["a", "b"]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param(b"not json", "not JSON", id="not-json"),
        pytest.param([1, 2], "JSON array, not an object", id="not-object"),
        pytest.param({"insert": {}}, "state: required field is missing", id="missing-state"),
        pytest.param({"state": []}, "state:", id="state-not-object"),
        pytest.param(
            {"state": {}, "insert": {"users": [{"id": 1}, 5]}},
            "insert: table 'users', row 1",
            id="row-not-object",
        ),
        pytest.param({"state": {}, "hasMore": "yes"}, "hasMore", id="hasMore-not-bool"),
        pytest.param(
            {"state": {}, "schema": {"t": {"columns": {"a": "INTEGER"}}}},
            "unknown type 'INTEGER'",
            id="unknown-declared-type",
        ),
    ],
)
def test_contract_violations(answer, expected):
    with pytest.raises(InvalidResponse) as caught:
        parse(answer)
    assert expected in str(caught.value)
