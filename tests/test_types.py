"""Type inference and widening (DESIGN.md §4): a table of cases plus lattice properties."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector_runtime import types as T
from connector_runtime.types import LogicalType, infer_column, infer_value, widen

D18_2 = T.decimal(18, 2)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, None, id="null->nothing"),
        pytest.param(True, T.BOOLEAN, id="bool"),
        pytest.param(42, T.LONG, id="int"),
        pytest.param(2**63 - 1, T.LONG, id="int64-max"),
        pytest.param(-(2**63), T.LONG, id="int64-min"),
        pytest.param(2**63, T.BIG_INTEGER, id="beyond-int64->decimal38"),
        pytest.param(10**37, T.BIG_INTEGER, id="38-digits->decimal38"),
        pytest.param(10**38, T.STRING, id="39-digits->string"),
        pytest.param(1.5, T.DOUBLE, id="float"),
        pytest.param({"a": 1}, T.JSON, id="object->json"),
        pytest.param([1, 2], T.JSON, id="array->json"),
        pytest.param("hello", T.STRING, id="text"),
        pytest.param("00501", T.STRING, id="zip-code-stays-string"),
        pytest.param("12.5", T.STRING, id="numeric-text-stays-string"),
        pytest.param("2024-02-29", T.NAIVE_DATE, id="date"),
        pytest.param("2023-02-29", T.STRING, id="impossible-date->string"),
        pytest.param("2024-01-01T10:00:00", T.NAIVE_DATETIME, id="naive-datetime"),
        pytest.param("2024-01-01 10:00", T.NAIVE_DATETIME, id="space-separator"),
        pytest.param("2024-01-01T10:00:00.123456789", T.NAIVE_DATETIME, id="nanoseconds"),
        pytest.param("2024-01-01T10:00:00Z", T.UTC_DATETIME, id="zulu"),
        pytest.param("2024-01-01T10:00:00+05:30", T.UTC_DATETIME, id="offset"),
        pytest.param("2024-01-01T10:00:00-0800", T.UTC_DATETIME, id="offset-no-colon"),
        pytest.param("2024-01-01T25:00:00", T.STRING, id="impossible-hour->string"),
        pytest.param("2024-01-01T", T.STRING, id="truncated->string"),
    ],
)
def test_infer_value(value, expected):
    assert infer_value(value) == expected


LATTICE = [
    (T.LONG, T.BIG_INTEGER, T.BIG_INTEGER, "long+decimal->decimal"),
    (T.LONG, D18_2, T.decimal(21, 2), "long+decimal(18,2)->decimal(21,2)"),
    (T.LONG, T.DOUBLE, T.DOUBLE, "long+double->double"),
    (D18_2, T.DOUBLE, T.DOUBLE, "decimal+double->double"),
    (T.BIG_INTEGER, D18_2, T.DOUBLE, "decimals-beyond-38-digits->double"),
    (T.NAIVE_DATE, T.NAIVE_DATETIME, T.NAIVE_DATETIME, "date+datetime->datetime"),
    (T.NAIVE_DATE, T.UTC_DATETIME, T.UTC_DATETIME, "date+utc->utc"),
    (T.NAIVE_DATETIME, T.UTC_DATETIME, T.UTC_DATETIME, "naive+utc->utc"),
    (T.JSON, T.LONG, T.JSON, "json+long->json"),
    (T.JSON, T.BOOLEAN, T.JSON, "json+bool->json"),
    (T.JSON, T.DOUBLE, T.JSON, "json+double->json"),
    (T.BOOLEAN, T.LONG, T.JSON, "bool+long->json"),
    (T.JSON, T.STRING, T.STRING, "json+string->string"),
    (T.JSON, T.NAIVE_DATE, T.STRING, "json+date->string"),
    (T.BOOLEAN, T.STRING, T.STRING, "bool+string->string"),
    (T.LONG, T.STRING, T.STRING, "long+string->string"),
    (T.LONG, T.NAIVE_DATE, T.STRING, "long+date->string"),
    (T.BOOLEAN, T.UTC_DATETIME, T.STRING, "bool+utc->string"),
    (T.STRING, T.STRING, T.STRING, "string+string->string"),
    (None, T.LONG, T.LONG, "nothing+long->long"),
]


@pytest.mark.parametrize(
    ("a", "b", "expected"), [pytest.param(*case[:3], id=case[3]) for case in LATTICE]
)
def test_widen(a, b, expected):
    assert widen(a, b) == expected
    assert widen(b, a) == expected


ALL_TYPES = [
    T.BOOLEAN,
    T.LONG,
    T.DOUBLE,
    T.NAIVE_DATE,
    T.NAIVE_DATETIME,
    T.UTC_DATETIME,
    T.STRING,
    T.JSON,
    T.BIG_INTEGER,
    D18_2,
    T.decimal(10, 0),
    T.decimal(38, 10),
    None,
]
types = st.sampled_from(ALL_TYPES)


@given(types, types)
def test_widen_is_commutative(a, b):
    assert widen(a, b) == widen(b, a)


@given(types, types, types)
def test_widen_is_associative(a, b, c):
    assert widen(widen(a, b), c) == widen(a, widen(b, c))


@given(types)
def test_widen_is_idempotent(a):
    assert widen(a, a) == a


@given(types, types)
def test_widen_never_narrows(a, b):
    joined = widen(a, b)
    assert widen(joined, a) == joined and widen(joined, b) == joined


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(["2024-01-01", "2024-01-01T10:00:00", "2024-01-01T10:00:00Z", "00501"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=5,
)


@given(st.lists(json_values, max_size=20))
def test_column_inference_equals_folding_values(values):
    """The grouped fast path agrees with widening value by value."""
    expected = None
    for value in values:
        expected = widen(expected, infer_value(value))
    assert infer_column(values) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("LONG", T.LONG),
        ("decimal(18, 2)", D18_2),
        ("DECIMAL(10)", T.decimal(10, 0)),
        ("utc_datetime", T.UTC_DATETIME),
    ],
)
def test_parse_declared_types(text, expected):
    assert LogicalType.parse(text) == expected
    assert LogicalType.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["INTEGER", "DECIMAL(40,2)", "DECIMAL(5,6)", ""])
def test_parse_rejects_unknown_types(text):
    with pytest.raises(ValueError):
        LogicalType.parse(text)


temporal_texts = st.sampled_from(
    [
        "2024-01-01",
        "2024-02-29",
        "2023-02-29",
        "2024-01-01T10:00:00",
        "2024-01-01 10:00",
        "2024-01-01T10:00:00.1234567",
        "2024-01-01T10:00:00Z",
        "2024-01-01T10:00:00+05:30",
        "2024-01-01T10:00:00-0800",
        "2024-01-01T10:00:00+05",
        "2024-01-01T24:00:00",
        "2024-13-01",
        "2024-01-01T10:00:60",
        "2024-01-01Tfoo",
        "plain",
    ]
)


@given(st.lists(temporal_texts, min_size=64, max_size=200))
def test_bulk_text_inference_equals_folding_values(values):
    """Columns long enough for the Arrow path classify exactly like value by value."""
    expected = None
    for value in values:
        expected = widen(expected, infer_value(value))
    assert infer_column(values) == expected
