"""Planning one page: a validated response becomes typed, named writes per table.

Pure apart from Arrow: takes the function's `Response` and what the warehouse already
holds (`TableInfo` per table) and returns a `PageWrite` that a destination applies in
one transaction. Every contract check that needs the table's history (primary keys,
declared types, key values) happens here, before anything is written; so does naming
(`naming.py`): a name no warehouse can hold is an `InvalidResponse` naming the field,
table and row, and the page is refused whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import chain
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from .batches import Inferred, ValueRejected, column_array, hashed, infer_array
from .columns import ColumnRows
from .errors import ConfigConflict, InvalidResponse
from .history import HASH, row_hashes
from .naming import NameEntry, NameMap, UnusableName
from .protocol import Response, TableSchema
from .typed_columns import TypedValues
from .types import JSON, STRING, LogicalType, infer_column, widen


class SentColumns(NamedTuple):
    """One table's rows in a page as columns, by the names the function sent (in the
    order first seen), and each column's `infer_array` where it was made ahead."""

    values: dict[str, list]
    inferred: dict[str, Inferred]


def sent_columns(rows: Sequence[dict], *, infer: bool) -> SentColumns:
    if isinstance(rows, ColumnRows):  # as our own worker sent them, some typed there
        values = rows.columns
    else:
        names = dict.fromkeys(chain.from_iterable(rows))
        values = {c: [row.get(c) for row in rows] for c in names}
    inferred = {}
    for column, sent in values.items():
        if isinstance(sent, TypedValues):  # typed by the worker: free
            inferred[column] = sent.inferred
        elif infer:
            inferred[column] = infer_array(sent)
    return SentColumns(values, inferred)


def prepare(response: Response) -> None:
    """Turn the page's rows into columns and type each one now, so that planning the page
    later only names them and widens the tables' types by them.

    None of it depends on the tables as they are: the sync runs it in the thread that
    asked for the page, while the page before it is written. A table this fails for is
    left to `PagePlanner.plan`, which then says what is wrong with it."""
    for field_name, tables in (("insert", response.insert), ("delete", response.delete)):
        for source, rows in tables.items():
            try:
                sent = sent_columns(rows, infer=field_name == "insert")
            except Exception:  # noqa: BLE001 - planning finds and reports it in place
                continue
            response._columns[field_name, source] = sent


@dataclass(frozen=True)
class TableInfo:
    """What the warehouse holds for one table: names are warehouse names."""

    name: str
    source: str
    primary_key: tuple[str, ...] = ()
    columns: Mapping[str, LogicalType] = field(default_factory=dict)
    declared: frozenset[str] = frozenset()
    deleted_column: bool = False  # has `_fivetran_deleted`
    history: bool = False  # keeps every version of a row (design §14); never `deleted_column`

    def stored(self) -> dict:
        """The catalog row's values (`connector_runtime.tables`), as JSON-ready data."""
        return {
            "primary_key": list(self.primary_key),
            "columns": {c: str(t) for c, t in self.columns.items()},
            "declared": sorted(self.declared),
            "deleted_column": self.deleted_column,
            "history": self.history,
        }

    @classmethod
    def from_stored(
        cls, name, source, primary_key, columns, declared, deleted_column, history=False
    ) -> TableInfo:
        """A catalog row read back: the inverse of `stored` (`history` NULL in a catalog
        written before history mode: False)."""
        return cls(
            name,
            source,
            tuple(primary_key),
            {c: LogicalType.parse(t) for c, t in columns.items()},
            frozenset(declared),
            bool(deleted_column),
            bool(history),
        )


@dataclass(frozen=True)
class TableWrite:
    """One table's part of a page. `previous` is None when the table is new; a `table`
    with `history` whose `previous` has none turns history mode on for its rows."""

    table: TableInfo
    previous: TableInfo | None
    # primary-keyed rows, deduplicated, last one wins; in a history table with the
    # `_fivetran_hash` of each row's values
    upserts: pa.Table | None = None
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

    @property
    def history_enabled(self) -> bool:
        """Whether this page turns history mode on for a table that had rows without it."""
        return self.table.history and self.previous is not None and not self.previous.history


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
    part: int | None = None  # of a streamed page (design §13): 1, 2, ...; None: a whole page

    @property
    def batch(self) -> str:
        """What tells an appended row's page apart (`_fivetran_batch`); with the row's
        position in it (`_fivetran_index`), each appended row's identity."""
        whole = f"{self.sync_id}:{self.number}"
        return whole if self.part is None else f"{whole}:{self.part}"


@dataclass
class TableSettings:
    """Per-table user settings from the config (`tables:`), by warehouse name."""

    skip: frozenset[str] = frozenset()
    blocked: Mapping[str, frozenset[str]] = field(default_factory=dict)
    hashed: Mapping[str, frozenset[str]] = field(default_factory=dict)
    history: frozenset[str] = frozenset()  # tables in history mode (design §14)


@dataclass
class PagePlanner:
    """Turns responses into `PageWrite`s, tracking the catalog as pages go by."""

    connector: str
    schema: str
    names: NameMap
    catalog: dict[str, TableInfo]
    settings: TableSettings = field(default_factory=TableSettings)

    def plan(
        self,
        response: Response,
        *,
        sync_id: str,
        number: int,
        synced_at: datetime,
        part: int | None = None,
    ) -> PageWrite:
        """Validate and type one page (`part` of it, when it streams); raises InvalidResponse
        and changes nothing then (ConfigConflict if the config turned history mode off for
        a table)."""
        self._check_history()
        names_before = len(self.names.added)
        try:
            writes = [self._table_write(source, response) for source in _tables_of(response)]
            for source in response.soft_delete:  # named now: stored with this page
                self._table_name(source, "softDelete")
        except InvalidResponse:
            self.names.forget(self.names.added[names_before:])
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
            part,
        )

    def commit(self, page: PageWrite) -> None:
        """Record the page's tables once the destination has committed it."""
        for write in page.tables:
            self.catalog[write.table.name] = write.table

    def rollback(self, page: PageWrite) -> None:
        """Forget names given by a page that did not commit."""
        self.names.forget(page.names)

    def _check_history(self) -> None:
        """History mode cannot be turned off: the versions would have no meaning left."""
        for name, info in self.catalog.items():
            if info.history and name not in self.settings.history | self.settings.skip:
                raise ConfigConflict(
                    f"connector {self.connector!r}, table {info.source!r}: history mode was "
                    f"turned off, but {self.schema}.{name} keeps every version of its rows "
                    "and cannot go back to one row per key; to stop keeping history, set "
                    "another `schema:` for the connector and re-sync into it (`connector "
                    f"resync {self.connector}`), or set `history: true` again"
                )

    def _table_name(self, source: str, field_name: str) -> str:
        try:
            return self.names.table(source)
        except UnusableName as exc:
            raise InvalidResponse(f"{field_name}: table {source!r}: {exc}") from None

    def _column_name(self, source: str, column: str, where: str) -> str:
        """The warehouse name of `column`; `where` says where it came from (`insert: table
        't', row 3`)."""
        try:
            return self.names.column(source, column)
        except UnusableName as exc:
            raise InvalidResponse(f"{where}, column {column!r}: {exc}") from None

    def _table_write(self, source: str, response: Response) -> TableWrite | None:
        name = self._table_name(source, "insert" if source in response.insert else "delete")
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
        rows, inferred = self._columns(source, name, table, response, "insert")
        keys, _ = self._columns(source, name, table, response, "delete")
        keys = {k: keys[k] for k in table.primary_key} if deletes else {}
        table, ready = self._typed(source, table, schema, rows, keys, inferred)
        marks = deletes and not table.history  # a history table closes versions instead
        write = TableWrite(replace(table, deleted_column=True) if marks else table, previous)
        if deletes:
            write = replace(write, deletes=self._arrow(source, table, keys, len(deletes)))
        if not inserts:
            return write
        typed = self._arrow(source, table, rows, len(inserts), ready)
        if not table.primary_key:
            return replace(write, appends=typed)
        upserts = _dedupe(typed, table.primary_key)
        if table.history:
            upserts = upserts.append_column(HASH, row_hashes(upserts, table.columns))
        return replace(write, upserts=upserts)

    def _table_info(
        self, name: str, source: str, schema: TableSchema | None, previous: TableInfo | None
    ) -> TableInfo:
        where = f"schema: table {source!r}, primary_key"
        declared_key = (
            tuple(self._column_name(source, c, where) for c in schema.primary_key)
            if schema
            else None
        )
        history = name in self.settings.history
        if previous is None:
            table = TableInfo(name, source, declared_key or (), history=history)
        elif declared_key is not None and declared_key != previous.primary_key:
            raise InvalidResponse(
                f"schema: table {source!r}: primary key {list(declared_key)} differs from "
                f"{list(previous.primary_key)}, the key the table was created with; to change "
                f"it, run `connector resync {self.connector}` after dropping the table"
            )
        elif history and not previous.history:  # its rows become first versions
            table = replace(previous, history=True, deleted_column=False)
        else:
            table = previous
        if table.history and not table.primary_key:
            raise ConfigConflict(
                f"connector {self.connector!r}, table {source!r}: history mode keeps the "
                "versions of rows by their primary key, and the function sends this table "
                "without one (its rows are appended, every one kept already); declare a key "
                f'in "schema": {{"{source}": {{"primary_key": [...]}}}} or remove `history: true`'
            )
        return table

    def _columns(
        self, source: str, table: str, info: TableInfo, response: Response, field_name: str
    ) -> tuple[dict[str, list], dict[str, Inferred]]:
        """The table's rows in `field_name` as warehouse-named columns, in table order: key
        first, then as first seen, with the inference of those `prepare` typed. Blocked
        columns are left out; key values are checked here."""
        rows = getattr(response, field_name).get(source, [])
        sent = response._columns.get((field_name, source)) or sent_columns(rows, infer=False)
        blocked = self.settings.blocked.get(table, frozenset())
        named = {}
        for c in sent.values:
            try:
                named[self.names.column(source, c)] = c
            except UnusableName as exc:
                index = next(i for i, row in enumerate(rows) if c in row)
                raise InvalidResponse(
                    f"{field_name}: table {source!r}, row {index}, column {c!r}: {exc}"
                ) from None
        order = [*info.primary_key, *(n for n in named if n not in info.primary_key)]
        kept = [n for n in order if n not in blocked and n in named]
        columns = {n: sent.values[named[n]] for n in kept}
        inferred = {n: sent.inferred[named[n]] for n in kept if named[n] in sent.inferred}
        for key in info.primary_key:
            values = columns.get(key) or [None] * len(rows)
            if None in values:
                index = values.index(None)
                problem = "is null" if named.get(key) in rows[index] else "is missing"
                raise InvalidResponse(
                    f"{field_name}: table {source!r}, row {index}: "
                    f"primary-key column {key!r} {problem}"
                )
        return columns, inferred

    def _typed(
        self,
        source: str,
        table: TableInfo,
        schema: TableSchema | None,
        rows: dict[str, list],
        keys: dict[str, list],
        inferred: Mapping[str, Inferred],
    ) -> tuple[TableInfo, dict[str, Inferred]]:
        """Widen the table's columns by this page's values; declared types win. Delete
        keys type only key columns no insert has typed yet. Also each inserted column's
        inference (from `inferred` if made ahead), with its array when inferring made one."""
        where = f"schema: table {source!r}, columns"
        declared = {
            self._column_name(source, c, where): t
            for c, t in (schema.declared() if schema else {}).items()
        }
        columns = dict(table.columns)
        columns.update(declared)
        hashed_columns = self.settings.hashed.get(table.name, ())

        def widen_by(column: str, inferred: LogicalType | None) -> None:
            if column in hashed_columns:
                inferred = inferred and STRING  # a hash is text, whatever it hashed
            widened = widen(columns.get(column), inferred)
            if widened is not None:
                columns[column] = widened

        ready = {}
        for column, values in rows.items():
            if column not in declared and column not in table.declared:
                ready[column] = inferred.get(column) or infer_array(values)
                widen_by(column, ready[column].logical)
        for column, values in keys.items():
            if column in declared or column in table.declared:
                continue
            if column not in rows and column in columns:
                continue
            widen_by(column, infer_column(values))
        for key in table.primary_key:
            if columns.get(key) == JSON:
                raise InvalidResponse(
                    f"insert: table {source!r}: primary-key column {key!r} would become JSON; "
                    "keys must be scalars"
                )
        typed = replace(table, columns=columns, declared=table.declared | frozenset(declared))
        return typed, ready

    def _arrow(
        self,
        source: str,
        table: TableInfo,
        columns: dict[str, list],
        count: int,
        ready: Mapping[str, Inferred] | None = None,
    ) -> pa.Table:
        """Typed Arrow columns plus `__row`, the row's position in the page; columns the
        page lacks stay out (→ NULL) and so do columns no value has typed yet (all null).
        An array in `ready` is used as it is when the column kept its inferred type."""
        hashed_columns = self.settings.hashed.get(table.name, frozenset())
        arrays = {"__row": pa.array(range(count), pa.int64())}
        for column, values in columns.items():
            if column not in table.columns:
                continue
            logical = table.columns[column]
            inferred = (ready or {}).get(column)
            if column in hashed_columns:
                values = [hashed(v) for v in values]
            elif inferred and inferred.array is not None and inferred.logical == logical:
                arrays[column] = inferred.array
                continue
            arrays[column] = self._column(source, column, values, logical)
        return pa.table(arrays)

    def _column(self, source: str, column: str, values: list, logical: LogicalType) -> pa.Array:
        try:
            return column_array(values, logical)
        except ValueRejected as exc:
            raise InvalidResponse(f"table {source!r}, column {column!r}, {exc}") from None


def _tables_of(response: Response) -> list[str]:
    """Every table the page touches, in a stable order."""
    return list(dict.fromkeys([*response.insert, *response.delete]))


def _dedupe(rows: pa.Table, primary_key: tuple[str, ...]) -> pa.Table:
    """Duplicate keys within a page: the last one wins (compared on typed values)."""
    if len(primary_key) == 1 and _all_distinct(rows[primary_key[0]]):
        return rows  # the usual page, at a third of grouping's cost
    last = rows.group_by(list(primary_key)).aggregate([("__row", "max")])
    if last.num_rows == rows.num_rows:
        return rows
    return rows.take(sorted(last["__row_max"].to_pylist()))


def _all_distinct(key: pa.ChunkedArray) -> bool:
    """Whether an integer or text key column holds each value once."""
    if not (pa.types.is_integer(key.type) or pa.types.is_string(key.type)):
        return False
    return pc.count_distinct(key).as_py() == len(key)
