"""Response parsing: the contract violations of design §2 name what is wrong, in the
protocol's words, and show the offending value."""

import orjson
import pytest

from connector_runtime import masking
from connector_runtime.errors import FunctionError, InvalidResponse
from connector_runtime.protocol import parse_response, unknown_keys


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
        pytest.param(
            {"insert": {}},
            "state is missing: every answer carries the state to send next time",
            id="missing-state",
        ),
        pytest.param(
            {"state": "2024-01-01"},
            'state must be an object, got the string "2024-01-01"',
            id="state-a-string",
        ),
        pytest.param({"state": None}, "state must be an object, got null", id="state-null"),
        pytest.param(
            {"state": [1, 2]}, "state must be an object, got the array [1,2]", id="state-array"
        ),
        pytest.param(
            {"state": {}, "insert": [{"id": 1}]},
            'insert must be an object of tables, each an array of rows, got the array [{"id":1}]',
            id="insert-an-array",
        ),
        pytest.param(
            {"state": {}, "insert": {"users": {"id": 1}}},
            """insert: table 'users' must be an array of rows, got the object {"id":1}""",
            id="table-not-array",
        ),
        pytest.param(
            {"state": {}, "insert": {"users": [{"id": 1}, 5]}},
            "insert: table 'users', row 1: a row must be an object, got the number 5",
            id="row-not-object",
        ),
        pytest.param(
            {"state": {}, "delete": {"users": ["7"]}},
            "delete: table 'users', row 0: a row must be an object, got the string \"7\"",
            id="delete-row-not-object",
        ),
        pytest.param(
            {"state": {}, "hasMore": "yes"},
            'hasMore must be true or false (a boolean, or the string "true" or "false"), '
            'got the string "yes"',
            id="hasMore-yes",
        ),
        pytest.param({"state": {}, "hasMore": 1}, "got the number 1", id="hasMore-one"),
        pytest.param(
            {"state": {}, "hasMore": None}, "hasMore must be true or false", id="hasMore-null"
        ),
        pytest.param(
            {"state": {}, "softDelete": "users"},
            'softDelete must be an array of table names, got the string "users"',
            id="softDelete-a-string",
        ),
        pytest.param(
            {"state": {}, "schema": ["users"]},
            'schema must be an object of tables (e.g. {"orders": {"primary_key": ["id"]}}), '
            'got the array ["users"]',
            id="schema-an-array",
        ),
        pytest.param(
            {"state": {}, "schema": {"users": "id"}},
            'schema: table \'users\' must be an object such as {"primary_key": ["id"]}, '
            'got the string "id"',
            id="table-schema-a-string",
        ),
        pytest.param(
            {"state": {}, "schema": {"users": {"primary_key": "id"}}},
            "schema: table 'users': primary_key must be an array of column names, "
            'got the string "id"',
            id="primary-key-a-string",
        ),
        pytest.param(
            {"state": {}, "schema": {"t": {"columns": {"a": "INTEGER"}}}},
            "schema: table 't': column 'a': unknown type 'INTEGER'",
            id="unknown-declared-type",
        ),
        pytest.param(
            {"state": {}, "schema": {"t": {"columns": {"a": 5}}}},
            "schema: table 't': column 'a': a type must be a string",
            id="declared-type-not-a-string",
        ),
    ],
)
def test_contract_violations_say_what_and_show_the_value(answer, expected):
    with pytest.raises(InvalidResponse) as caught:
        parse(answer)
    assert expected in str(caught.value)
    assert "Input should" not in str(caught.value)  # never the validation library's words


def test_a_shown_value_is_cut_and_masked(monkeypatch):
    monkeypatch.setattr(masking, "_secrets", masking._secrets)  # registered for this test only
    masking.register({"key": "s3cr3t-value-123"})
    long_state = "x" * 500 + " s3cr3t-value-123"
    with pytest.raises(InvalidResponse) as caught:
        parse({"state": long_state})
    assert len(str(caught.value)) < 200
    with pytest.raises(InvalidResponse) as caught:
        parse({"state": "s3cr3t-value-123"})
    assert "s3cr3t-value-123" not in str(caught.value)


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("TRUE", True),
        ("False", False),
        ("fAlSe", False),
    ],
)
def test_hasMore_is_a_boolean_or_its_string_in_any_case(sent, expected):
    assert parse({"state": {}, "hasMore": sent}).has_more is expected


@pytest.mark.parametrize("sent", [" true", "yes", "1", "", "truee"])
def test_hasMore_strings_other_than_true_and_false_are_refused(sent):
    with pytest.raises(InvalidResponse, match="hasMore must be true or false"):
        parse({"state": {}, "hasMore": sent})


@pytest.mark.parametrize("field", ["insert", "delete", "schema", "softDelete"])
def test_null_optional_fields_mean_none(field):
    page = parse({"state": {}, field: None})
    assert page.row_count == 0 and page.schema_ == {} and page.soft_delete == []


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("hasmore", "hasMore"),
        ("HasMore", "hasMore"),
        ("has_more", "hasMore"),
        ("Delete", "delete"),
        ("inserts", "insert"),
        ("insrt", "insert"),
        ("softdelete", "softDelete"),
        ("soft_delete", "softDelete"),
        ("schemas", "schema"),
        ("STATE", "state"),
    ],
)
def test_a_misspelt_protocol_key_names_the_key_meant(key, meant):
    answer = {"state": {}, key: True} if key != "STATE" else {"state": {}, "STATE": {}}
    with pytest.raises(InvalidResponse) as caught:
        parse(answer)
    assert f'unknown key "{key}": did you mean "{meant}"?' in str(caught.value)


def test_a_key_one_edit_away_is_a_typo_even_beside_the_key_itself():
    with pytest.raises(InvalidResponse, match='unknown key "inserts": did you mean "insert"'):
        parse({"state": {}, "insert": {"t": [{"id": 1}]}, "inserts": {"t": [{"id": 2}]}})


def test_status_without_state_is_taken_for_a_typo_of_state():
    with pytest.raises(InvalidResponse, match='unknown key "status": did you mean "state"'):
        parse({"status": {"cursor": 1}})


def test_a_key_two_edits_away_is_no_typo_beside_the_key_itself():
    """`status` is two edits from `state`; beside a real `state`, it means something else."""
    page = parse({"state": {"c": 1}, "status": "ok", "count": 3, "hasMore": False})
    assert page.state == {"c": 1}
    assert unknown_keys({"state": {}, "status": "ok", "count": 3, "bucket": "b"}) == [
        "status",
        "count",
    ]


def test_a_misspelt_key_in_a_table_schema_is_refused():
    with pytest.raises(InvalidResponse) as caught:
        parse({"state": {}, "schema": {"users": {"primaryKey": ["id"]}}})
    assert (
        """schema: table 'users': unknown key "primaryKey": did you mean "primary_key"?"""
        in str(caught.value)
    )


def test_a_stack_trace_as_one_string_is_kept_as_its_lines():
    trace = 'Traceback (most recent call last):\n  File "f.py", line 3, in h\n    x()\nValueError: bad\n'
    with pytest.raises(FunctionError) as caught:
        parse({"errorMessage": "bad", "errorType": "ValueError", "stackTrace": trace})
    assert caught.value.stack_trace == [
        "Traceback (most recent call last):",
        '  File "f.py", line 3, in h',
        "    x()",
        "ValueError: bad",
    ]
