"""Fivetran naming (DESIGN.md §5) and stable collision suffixes."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector_runtime.naming import NameEntry, NameMap, UnusableName, fold, normalize


@pytest.mark.parametrize(
    ("source", "column", "table"),
    [
        pytest.param("userId", "user_id", "user_id", id="camelCase"),
        pytest.param("HTTPServerURL", "http_server_url", "http_server_url", id="acronyms"),
        pytest.param("Straße Größe", "strasse_grosse", "strasse_grosse", id="transliterate"),
        pytest.param("café crème", "cafe_creme", "cafe_creme", id="accents"),
        pytest.param("2fa_enabled", "_2fa_enabled", "_2fa_enabled", id="leading-digit"),
        pytest.param("__private", "_private", "private", id="leading-underscores"),
        pytest.param("a  b--c", "a_b_c", "a_b_c", id="collapse"),
        pytest.param(
            'x"; DROP TABLE t;--', "x_drop_table_t_", "x_drop_table_t_", id="sql-is-harmless"
        ),
        pytest.param("select", "select", "select", id="reserved-word-kept"),
        pytest.param("", "_", "_", id="empty"),
    ],
)
def test_normalize(source, column, table):
    assert normalize(source) == column
    assert normalize(source, table=True) == table


@given(st.text(max_size=30))
def test_normalized_names_are_safe_identifiers(source):
    name = normalize(source)
    assert name and all(c.isascii() and (c.isalnum() or c == "_") for c in name)
    assert name == name.lower() and not name[0].isdigit() and "__" not in name


def test_collisions_get_suffixes_in_arrival_order():
    names = NameMap()
    assert [names.column("t", c) for c in ("Email", "email", "EMAIL")] == [
        "email",
        "email_2",
        "email_3",
    ]
    assert names.column("t", "email") == "email_2"  # asked again: the same answer


def test_a_column_never_takes_a_system_column():
    assert NameMap().column("t", "_fivetran_synced") == "_fivetran_synced_2"


def test_stored_decisions_never_move():
    stored = [NameEntry("t", "email", "email"), NameEntry("t", "Email", "email_2")]
    names = NameMap.load("fivetran", stored)
    assert names.column("t", "Email") == "email_2"
    assert names.column("t", "EMAIL") == "email_3"
    assert names.added == [NameEntry("t", "EMAIL", "email_3")]


def test_source_naming_keeps_names():
    names = NameMap("source")
    assert names.table("My Table") == "My Table"
    assert names.column("My Table", "userId") == "userId"


# -- names a warehouse would refuse (issue 11): see also test_hostile_names.py -------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Name", "name"),  # every warehouse but PostgreSQL
        ("É", "é"),  # MySQL/MariaDB: Unicode case
        ("\u212a", "k"),  # Kelvin sign: MySQL/MariaDB
        ("İ", "i"),  # MySQL/MariaDB lowercase İ to i
        ("İ", "i\u0307"),  # Python's lowercase of İ
        ("ı", "I"),  # uppercasing
        ("σ", "ς"),  # coarser than any warehouse: casefolding
    ],
)
def test_fold_sees_one_name_where_a_warehouse_does(a, b):
    assert fold(a) == fold(b)
    names = NameMap("source")
    assert [names.column("t", a), names.column("t", b)] == [a, b + "_2"]


def test_names_differing_in_accents_stay_apart():
    names = NameMap("source")
    assert [names.column("t", c) for c in ("e", "é", "e\u0301")] == ["e", "é", "e\u0301"]


@pytest.mark.parametrize("naming", ["source", "fivetran"])
def test_history_columns_are_reserved_too(naming):
    names = NameMap(naming)
    assert names.column("t", "_fivetran_active") == "_fivetran_active_2"
    assert names.column("t", "_FIVETRAN_END").lower() == "_fivetran_end_2"


def test_a_suffix_that_is_taken_moves_on():
    names = NameMap("source")
    got = [names.column("t", c) for c in ("a", "A_2", "A", "a_3")]
    assert got == ["a", "A_2", "A_3", "a_3_2"]


@pytest.mark.parametrize("naming", ["source", "fivetran"])
def test_unusable_names(naming):
    names = NameMap(naming)
    names.table("t")
    with pytest.raises(UnusableName, match="a column name must not be empty"):
        names.column("t", "")  # not the table's own entry ("t", "")
    with pytest.raises(UnusableName, match=r"a column name must not contain NUL"):
        names.column("t", "a\x00")
    with pytest.raises(UnusableName, match=r"a table name must not contain NUL"):
        names.table("\x00")
    if naming == "source":
        with pytest.raises(UnusableName, match="a table name must not be empty"):
            names.table("")
    else:
        assert names.table("") == "_"
    assert [e.table for e in names.added] == ["t"] + ([""] if naming == "fivetran" else [])


def test_forget_gives_a_name_back():
    names = NameMap("source")
    first = names.column("t", "Name")
    names.forget([NameEntry("t", "Name", first)])
    assert names.added == [] and names.column("t", "name") == "name"
