"""Planning one page: a validated response becomes typed, named writes per table.

Pure apart from Arrow: takes the function's `Response` and what the warehouse already
holds (`TableInfo` per table) and returns a `PageWrite` that a destination applies in
one transaction. Every contract check that needs the table's history (primary keys,
declared types, key values) happens here, before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import chain
from typing import Any

import pyarrow as pa

from .batches import ValueRejected, column_array, hashed
from .errors import InvalidResponse
from .naming import NameEntry, NameMap
from .protocol import Response, TableSchema
from .types import JSON, LogicalType, infer_column, widen


@dataclass(frozen=True)
class TableInfo:
    """What the warehouse holds for one table: names are warehouse names."""

    name: str
    source: str
    primary_key: tuple[str, ...] = ()
    columns: Mapping[str, LogicalType] = field(default_factory=dict)
    declared: frozenset[str] = frozenset()
    deleted_column: bool = False  # has `_fivetran_deleted`


@dataclass(frozen=True)
class TableWrite:
    """One table's part of a page. `previous` is None when the table is new."""

    table: TableInfo
    previous: TableInfo | None
    upserts: pa.Table | None = None  # primary-keyed rows, deduplicated, last one wins
    appends: pa.Table | None = None  # rows of a table without a primary key
    deletes: pa.Table | None = None  # primary-key columns of rows to mark deleted

    @property
    def added_columns(self) -> dict[str, LogicalType]:
        old = self.previous.columns if self.previous else {}
        return {c: t for c, t in self.table.columns.items() if c not in old}

    @property
    def changed_columns(self) -> dict[str, tuple[LogicalType, LogicalType]]:
        old = self.previous.columns if self.previous else {}
        return {c: (old[c], t) for c, t in self.table.columns.items() if c in old and old[c] != t}


@dataclass(frozen=True)
class PageWrite:
    """Everything one page changes; applied with `state` in one transaction."""

    connector: str
    schema: str
    sync_id: str
    number: int
    synced_at: datetime
    state: dict[str, Any]
    tables: list[TableWrite]
    names: list[NameEntry]

    @property
    def batch(self) -> str:
        return f"{self.sync_id}:{self.number}"


@dataclass
class TableSettings:
    """Per-table user settings from the config (`tables:`), by warehouse name."""

    skip: frozenset[str] = frozenset()
    blocked: Mapping[str, frozenset[str]] = field(default_factory=dict)
    hashed: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass
class PagePlanner:
    """Turns responses into `PageWrite`s, tracking the catalog as pages go by."""

    connector: str
    schema: str
    names: NameMap
    catalog: dict[str, TableInfo]
    settings: TableSettings = field(default_factory=TableSettings)

    def plan(
        self, response: Response, *, sync_id: str, number: int, synced_at: datetime
    ) -> PageWrite:
        """Validate and type one page; raises InvalidResponse and changes nothing then."""
        names_before = len(self.names.added)
        try:
            writes = [self._table_write(source, response) for source in _tables_of(response)]
        except InvalidResponse:
            del self.names.added[names_before:]
            raise
        writes = [w for w in writes if w is not None]
        return PageWrite(
            self.connector,
            self.schema,
            sync_id,
            number,
            synced_at,
            response.state,
            writes,
            self.names.added[names_before:],
        )

    def commit(self, page: PageWrite) -> None:
        """Record the page's tables once the destination has committed it."""
        for write in page.tables:
            self.catalog[write.table.name] = write.table

    def rollback(self, page: PageWrite) -> None:
        """Forget names given by a page that did not commit."""
        for entry in page.names:
            self.names.entries.pop((entry.table, entry.column), None)
        self.names.added[:] = [e for e in self.names.added if e not in page.names]

    def _table_write(self, source: str, response: Response) -> TableWrite | None:
        name = self.names.table(source)
        if name in self.settings.skip:
            return None
        schema = response.schema_.get(source)
        previous = self.catalog.get(name)
        table = self._table_info(name, source, schema, previous)
        inserts = response.insert.get(source, [])
        deletes = response.delete.get(source, [])
        if deletes and not table.primary_key:
            raise InvalidResponse(
                f"delete: table {source!r} has no primary key; declare one in "
                f'"schema": {{"{source}": {{"primary_key": [...]}}}}'
            )
        rows = self._named_rows(source, name, inserts)
        key_rows = self._named_rows(source, name, deletes)
        self._check_keys(source, "insert", table, rows)
        self._check_keys(source, "delete", table, key_rows)
        page_columns = _columns_in_order(table.primary_key, rows)
        table = self._typed(source, table, schema, rows, page_columns)
        if deletes:
            table = replace(table, deleted_column=True)
        write = TableWrite(table, previous)
        if key_rows:
            write = replace(write, deletes=self._key_arrow(source, table, key_rows))
        if not rows:
            return write
        typed = self._arrow(source, table, rows, page_columns)
        if table.primary_key:
            return replace(write, upserts=_dedupe(typed, table.primary_key))
        return replace(write, appends=typed)

    def _table_info(
        self, name: str, source: str, schema: TableSchema | None, previous: TableInfo | None
    ) -> TableInfo:
        declared_key = (
            tuple(self.names.column(source, c) for c in schema.primary_key) if schema else None
        )
        if previous is None:
            return TableInfo(name, source, declared_key or ())
        if declared_key is not None and declared_key != previous.primary_key:
            raise InvalidResponse(
                f"schema: table {source!r}: primary key {list(declared_key)} differs from "
                f"{list(previous.primary_key)}, the key the table was created with; to change "
                f"it, run `connector resync {self.connector}` after dropping the table"
            )
        return previous

    def _named_rows(self, source: str, table: str, rows: list[dict]) -> list[dict]:
        if not rows:
            return rows
        columns = set().union(*rows)
        mapping = {c: self.names.column(source, c) for c in columns}
        blocked = self.settings.blocked.get(table, frozenset())
        if all(c == n for c, n in mapping.items()) and not blocked:
            return rows
        return [
            {mapping[c]: v for c, v in row.items() if mapping[c] not in blocked} for row in rows
        ]

    def _check_keys(self, source: str, field_name: str, table: TableInfo, rows: list[dict]) -> None:
        for key in table.primary_key:
            for index, row in enumerate(rows):
                if row.get(key) is None:
                    problem = "is null" if key in row else "is missing"
                    raise InvalidResponse(
                        f"{field_name}: table {source!r}, row {index}: primary-key column {key!r} {problem}"
                    )

    def _typed(
        self,
        source: str,
        table: TableInfo,
        schema: TableSchema | None,
        rows: list[dict],
        page_columns: dict[str, None],
    ) -> TableInfo:
        """Widen the table's columns by this page's values; declared types win."""
        declared = {
            self.names.column(source, c): t
            for c, t in (schema.declared() if schema else {}).items()
        }
        columns = dict(table.columns)
        columns.update(declared)
        for column in page_columns:
            if column in declared or column in table.declared:
                continue
            inferred = infer_column(row.get(column) for row in rows)
            if column in self.settings.hashed.get(table.name, ()):
                inferred = inferred and LogicalType("STRING")
            widened = widen(columns.get(column), inferred)
            if widened is not None:
                columns[column] = widened
        for key in table.primary_key:
            if columns.get(key) == JSON:
                raise InvalidResponse(
                    f"insert: table {source!r}: primary-key column {key!r} would become JSON; "
                    "keys must be scalars"
                )
        return replace(table, columns=columns, declared=table.declared | frozenset(declared))

    def _arrow(
        self, source: str, table: TableInfo, rows: list[dict], page_columns: dict[str, None]
    ) -> pa.Table:
        """The page's rows as typed columns; columns the page lacks stay out (→ NULL)."""
        present = [c for c in table.columns if c in page_columns]
        hashed_columns = self.settings.hashed.get(table.name, frozenset())
        arrays = {"__row": pa.array(range(len(rows)), pa.int64())}
        for column in present:
            values = [row.get(column) for row in rows]
            if column in hashed_columns:
                values = [hashed(v) for v in values]
            arrays[column] = self._column(source, column, values, table.columns[column])
        return pa.table(arrays)

    def _key_arrow(self, source: str, table: TableInfo, rows: list[dict]) -> pa.Table:
        keys = {
            c: self._column(source, c, [r[c] for r in rows], table.columns[c])
            for c in table.primary_key
        }
        return pa.table(keys)

    def _column(self, source: str, column: str, values: list, logical: LogicalType) -> pa.Array:
        try:
            return column_array(values, logical)
        except ValueRejected as exc:
            raise InvalidResponse(f"table {source!r}, column {column!r}, {exc}") from None


def _columns_in_order(primary_key: tuple[str, ...], rows: list[dict]) -> dict[str, None]:
    """The page's columns, key first, then as first seen: the order new columns get."""
    return dict.fromkeys([*primary_key, *chain.from_iterable(rows)])


def _tables_of(response: Response) -> list[str]:
    """Every table the page touches, in a stable order."""
    return list(dict.fromkeys([*response.insert, *response.delete]))


def _dedupe(rows: pa.Table, primary_key: tuple[str, ...]) -> pa.Table:
    """Duplicate keys within a page: the last one wins (compared on typed values)."""
    last = rows.group_by(list(primary_key)).aggregate([("__row", "max")])
    if last.num_rows == rows.num_rows:
        return rows
    return rows.take(sorted(last["__row_max"].to_pylist()))
