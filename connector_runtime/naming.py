"""Warehouse names for source tables and columns (design §5).

Pure: `normalize` is Fivetran's naming; `NameMap` adds collision suffixes and remembers
every decision, so a name never moves between syncs once it has been given.

The rules, in both naming modes (`fivetran` and `source`), so that one connector gets the
same names on every warehouse:

- Two names are one name when their `fold`s are equal: case-insensitively, by Unicode case
  folding. DuckDB and SQLite compare identifiers ignoring ASCII case and MySQL/MariaDB
  ignoring Unicode case; PostgreSQL's quoted identifiers are case-sensitive, but a
  connector behaves the same there. So `Name` then `name` in one table give `Name` and
  `name_2`, `Orders` then `orders` give tables `Orders` and `orders_2`.
- A column never takes one of the runtime's own columns (`RESERVED_COLUMNS`: the system
  columns, and history mode's `_fivetran_start`, `_fivetran_end`, `_fivetran_active`,
  `_fivetran_hash`),
  whatever its case: `_FIVETRAN_SYNCED` becomes `_FIVETRAN_SYNCED_2`.
- A collision's later name gets `_2`, `_3`, ... (the first suffix whose fold is free), in
  the order names arrive; every decision is stored (`connector_runtime.names`), and stored
  decisions win over these rules, so a name never moves between syncs.
- `naming: source` keeps a name as sent otherwise.
- `UnusableName` (the page is an `invalid_response`, nothing of it written) for:
  - a name containing NUL, in both modes. Rewriting it (to `_`) would not do: the source
    name itself is stored with the decision (`connector_runtime.names`, and a table's in
    `connector_runtime.tables`), and PostgreSQL's text cannot hold NUL at all (nor can
    PostgreSQL or MariaDB take it in an identifier). It is always a bug of the function's.
  - an empty column name, in both modes: there is nothing to keep, and its stored entry
    would be the table's own (`NameEntry.column == ""`).
  - an empty table name under `naming: source`; Fivetran naming makes it `_`.
- Length is the destination's business: a name longer than the warehouse's identifier
  limit is cut there and ends in a hash of the whole name (`destinations.sql.base.fit`),
  which keeps distinct names distinct.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

# Columns the runtime writes itself; a source column normalising to one of them is a
# collision and gets a suffix, never the runtime's column.
SYSTEM_COLUMNS = ("_fivetran_synced", "_fivetran_deleted", "_fivetran_batch", "_fivetran_index")
# History mode's columns (design §14), and the hash of each version's values that decides
# whether an upsert changes it (`history.py`): reserved, so turning history on never collides.
HISTORY_COLUMNS = ("_fivetran_start", "_fivetran_end", "_fivetran_active", "_fivetran_hash")
# The page planner's own Arrow columns (a row's position in its page, and the last
# position of a key): a source column of that name would be overwritten by them.
PLANNER_COLUMNS = ("__row", "__row_max")
RESERVED_COLUMNS = SYSTEM_COLUMNS + HISTORY_COLUMNS + PLANNER_COLUMNS

_CAMEL_LOWER_UPPER = re.compile(r"([a-z0-9])([A-Z])")
# Between the last two capitals of "HTTPServer": a lookaround, so that a long run of
# capitals costs linear time (`([A-Z]+)([A-Z][a-z])` backtracked: quadratic).
_CAMEL_ACRONYM = re.compile(r"(?<=[A-Z])(?=[A-Z][a-z])")
_OUTSIDE = re.compile(r"[^a-z0-9_]")
_REPEATED = re.compile(r"_{2,}")
_LEADING_UNDERSCORES = re.compile(r"^_+(?=[a-z])")


class UnusableName(ValueError):
    """A source name no warehouse can hold and no rule rewrites; the message says why."""


def normalize(source: str, *, table: bool = False) -> str:
    """`"Straße Name"` → `"strasse_name"`, `"userID"` → `"user_id"`, `"2fa"` → `"_2fa"`."""
    name = _to_ascii(source)
    name = _CAMEL_ACRONYM.sub("_", name)
    name = _CAMEL_LOWER_UPPER.sub(r"\1_\2", name).lower()
    name = _REPEATED.sub("_", _OUTSIDE.sub("_", name))
    if table:
        name = _LEADING_UNDERSCORES.sub("", name)
    if not name or name[0].isdigit():
        name = "_" + name
    return name


# Casefolding is Unicode's caseless matching, coarser than comparing lowercase (`ß` is `ss`,
# `ς` is `σ`), with one exception to mend: MySQL lowercases the Turkish dotted capital `İ`
# to `i`, Python to `i` plus a combining dot, which casefolding keeps; and dotless `ı`
# uppercases to `I`. So `ı` counts as `i`, and so does `i` plus a combining dot.
_DOTLESS_I = str.maketrans({"\u0131": "i"})


def fold(name: str) -> str:
    """The name as warehouses compare identifiers, or coarser: two names that are one to
    some warehouse (compared lowercased, uppercased or ASCII-lowercased) fold alike."""
    return name.translate(_DOTLESS_I).casefold().replace("i\u0307", "i")


_RESERVED_FOLDS = frozenset(fold(c) for c in RESERVED_COLUMNS)


def _check(source: str, kind: str) -> None:
    """UnusableName if `source` can be neither stored nor rewritten."""
    if not source:
        raise UnusableName(f"a {kind} name must not be empty")
    if "\x00" in source:
        raise UnusableName(f"a {kind} name must not contain NUL (\\x00)")


_TRANSLITERATE = str.maketrans(
    {
        "ß": "ss",
        "æ": "ae",
        "Æ": "AE",
        "ø": "o",
        "Ø": "O",
        "ł": "l",
        "Ł": "L",
        "đ": "d",
        "Đ": "D",
        "þ": "th",
        "Þ": "TH",
        "œ": "oe",
        "Œ": "OE",
    }
)


def _to_ascii(text: str) -> str:
    """Strip accents (é → e) and transliterate the letters NFKD cannot decompose."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_TRANSLITERATE))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


@dataclass(frozen=True)
class NameEntry:
    """One stored decision: `column` is "" for the table's own name."""

    table: str
    column: str
    name: str


@dataclass
class NameMap:
    """Source → warehouse names of one connector; `added` holds this page's new decisions.

    Change `entries` only through `table`, `column` and `forget`: the folds of the names
    given so far are indexed (built on first use), so that naming stays linear."""

    naming: str = "fivetran"
    entries: dict[tuple[str, str], str] = field(default_factory=dict)
    added: list[NameEntry] = field(default_factory=list)
    # folds of given names: tables under None, a table's columns under its source name
    _folds: dict[str | None, set[str]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @classmethod
    def load(cls, naming: str, stored: Iterable[NameEntry]) -> NameMap:
        return cls(naming, {(e.table, e.column): e.name for e in stored})

    def table(self, source: str) -> str:
        """The warehouse name of source table `source`; UnusableName if it cannot have one."""
        key = (source, "")
        if key not in self.entries:
            if source or self.naming == "source":  # Fivetran naming makes "" `_`
                _check(source, "table")
            name = source if self.naming == "source" else normalize(source, table=True)
            self._assign(key, name, self._taken(None))
        return self.entries[key]

    def column(self, source_table: str, source: str) -> str:
        """The warehouse name of column `source` of source table `source_table`;
        UnusableName if it cannot have one."""
        if not source:  # before the lookup: (table, "") is the table's own entry
            raise UnusableName("a column name must not be empty")
        key = (source_table, source)
        if key not in self.entries:
            _check(source, "column")
            name = source if self.naming == "source" else normalize(source)
            self._assign(key, name, self._taken(source_table) | _RESERVED_FOLDS)
        return self.entries[key]

    def forget(self, entries: Iterable[NameEntry]) -> None:
        """Undo decisions that were never stored (their page did not commit)."""
        gone = set(entries)
        for entry in gone:
            self.entries.pop((entry.table, entry.column), None)
        self.added[:] = [e for e in self.added if e not in gone]
        self._folds = None

    def _taken(self, table: str | None) -> set[str]:
        """Folds of the names given so far: of tables (None), or of `table`'s columns."""
        if self._folds is None:
            self._folds = {None: set()}
            for (t, column), name in self.entries.items():
                self._folds.setdefault(t if column else None, set()).add(fold(name))
        return self._folds.setdefault(table, set())

    def _assign(self, key: tuple[str, str], name: str, taken: set[str]) -> None:
        # a later source name that is a taken name to some warehouse is a collision: _2, ...
        candidate, n = name, 1
        while fold(candidate) in taken:
            n += 1
            candidate = f"{name}_{n}"
        self.entries[key] = candidate
        self.added.append(NameEntry(*key, candidate))
        table, column = key
        self._taken(table if column else None).add(fold(candidate))
