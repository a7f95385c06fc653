"""Warehouse names for source tables and columns (design §5).

Pure: `normalize` is Fivetran's naming; `NameMap` adds collision suffixes and remembers
every decision, so a name never moves between syncs once it has been given.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

# Columns the runtime writes itself; a source column normalising to one of them is a
# collision and gets a suffix, never the runtime's column.
SYSTEM_COLUMNS = ("_fivetran_synced", "_fivetran_deleted", "_fivetran_batch", "_fivetran_index")

_CAMEL_LOWER_UPPER = re.compile(r"([a-z0-9])([A-Z])")
_CAMEL_ACRONYM = re.compile(r"([A-Z]+)([A-Z][a-z])")
_OUTSIDE = re.compile(r"[^a-z0-9_]")
_REPEATED = re.compile(r"_{2,}")
_LEADING_UNDERSCORES = re.compile(r"^_+(?=[a-z])")


def normalize(source: str, *, table: bool = False) -> str:
    """`"Straße Name"` → `"strasse_name"`, `"userID"` → `"user_id"`, `"2fa"` → `"_2fa"`."""
    name = _to_ascii(source)
    name = _CAMEL_ACRONYM.sub(r"\1_\2", name)
    name = _CAMEL_LOWER_UPPER.sub(r"\1_\2", name).lower()
    name = _REPEATED.sub("_", _OUTSIDE.sub("_", name))
    if table:
        name = _LEADING_UNDERSCORES.sub("", name)
    if not name or name[0].isdigit():
        name = "_" + name
    return name


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
    """Source → warehouse names of one connector; `added` holds this page's new decisions."""

    naming: str = "fivetran"
    entries: dict[tuple[str, str], str] = field(default_factory=dict)
    added: list[NameEntry] = field(default_factory=list)

    @classmethod
    def load(cls, naming: str, stored: Iterable[NameEntry]) -> NameMap:
        return cls(naming, {(e.table, e.column): e.name for e in stored})

    def table(self, source: str) -> str:
        """The warehouse name of source table `source`."""
        return self._lookup(source, "", lambda: set(self._names_of_tables()))

    def column(self, source_table: str, source: str) -> str:
        """The warehouse name of column `source` of source table `source_table`."""
        return self._lookup(
            source_table, source, lambda: set(SYSTEM_COLUMNS) | self._names_of_columns(source_table)
        )

    def _lookup(self, table: str, column: str, taken) -> str:
        key = (table, column)
        if key not in self.entries:
            self._assign(key, taken())
        return self.entries[key]

    def _assign(self, key: tuple[str, str], taken: set[str]) -> None:
        table, column = key
        if self.naming == "source":
            name = column or table
        else:
            name = normalize(column or table, table=not column)
        # a later source name normalising to a taken name is a collision: _2, _3, ...
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name}_{n}"
        self.entries[key] = candidate
        self.added.append(NameEntry(table, column, candidate))

    def _names_of_tables(self):
        return (name for (_, column), name in self.entries.items() if not column)

    def _names_of_columns(self, table: str) -> set[str]:
        return {name for (t, column), name in self.entries.items() if t == table and column}
