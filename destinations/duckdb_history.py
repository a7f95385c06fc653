"""History mode on DuckDB (design §14): the statements `DuckDBDestination` runs for a table
that keeps every version of its rows, inside the page's transaction.

A version is active while `_fivetran_active`; each key has at most one active version.
An upsert compares the incoming row's `_fivetran_hash` (computed by the page planner) with
the active version's: equal, the version is only confirmed (`_fivetran_synced`); different,
it is closed and a new one opened, unless this very sync opened it, when it is replaced.
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from connector_runtime.batches import arrow_type
from connector_runtime.history import (
    ACTIVE,
    END,
    END_OF_TIME,
    HASH,
    START,
    closing_time,
    row_hashes,
)
from connector_runtime.page import TableInfo, TableWrite
from connector_runtime.types import LogicalType

SYNCED, DELETED = "_fivetran_synced", "_fivetran_deleted"
COLUMNS_DDL = [
    f"{START} TIMESTAMPTZ",
    f"{END} TIMESTAMPTZ",
    f"{ACTIVE} BOOLEAN",
    f"{HASH} BIGINT",
]
REHASH_BATCH = 100_000  # rows read back at a time when hashes are computed from the table


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _on(keys: tuple[str, ...]) -> str:
    return " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in keys)


def upsert(con, target: str, write: TableWrite, synced_at: datetime) -> int:
    """Confirm, replace, close and open versions for the page's rows (`_page_rows`)."""
    rows = write.upserts
    on = _on(write.table.primary_key)
    changed = f"t.{ACTIVE} AND {on} AND t.{HASH} <> s.{HASH}"
    _page_rows = rows  # noqa: F841 - the SQL below reads it by name
    # a version this sync opened is replaced, not closed: no zero-length versions
    con.execute(
        f"DELETE FROM {target} AS t USING _page_rows AS s WHERE {changed} AND t.{START} = ?",
        [synced_at],
    )
    con.execute(
        f"UPDATE {target} AS t SET {SYNCED} = ?,"
        f" {END} = CASE WHEN t.{HASH} = s.{HASH} THEN t.{END} ELSE ? END,"
        f" {ACTIVE} = t.{HASH} = s.{HASH} FROM _page_rows AS s WHERE t.{ACTIVE} AND {on}",
        [synced_at, closing_time(synced_at)],
    )
    columns = [c for c in rows.column_names if c not in ("__row", HASH)]
    names = "".join(f"{q(c)}, " for c in columns)
    values = "".join(f"s.{q(c)}, " for c in columns)
    con.execute(
        f"INSERT INTO {target} ({names}{SYNCED}, {START}, {END}, {ACTIVE}, {HASH})"
        f" SELECT {values}?, ?, ?, true, s.{HASH} FROM _page_rows AS s WHERE NOT EXISTS"
        f" (SELECT 1 FROM {target} AS t WHERE t.{ACTIVE} AND {on})",
        [synced_at, synced_at, END_OF_TIME],
    )
    return rows.num_rows


def close(con, target: str, write: TableWrite, synced_at: datetime) -> tuple[int, int]:
    """Deletes: close each key's active version (remove it if this sync opened it).
    Returns (versions closed or removed, distinct keys without an active version)."""
    keys = write.table.primary_key
    key_list = ", ".join(q(k) for k in keys)
    _page_keys = write.deletes  # noqa: F841 - the SQL below reads it by name
    distinct = f"(SELECT DISTINCT {key_list} FROM _page_keys) AS s"
    wanted = con.execute(f"SELECT count(*) FROM {distinct}").fetchone()[0]
    where = f"t.{ACTIVE} AND {_on(keys)}"
    removed = con.execute(
        f"DELETE FROM {target} AS t USING {distinct} WHERE {where} AND t.{START} = ?",
        [synced_at],
    ).fetchone()[0]
    closed = con.execute(
        f"UPDATE {target} AS t SET {END} = ?, {ACTIVE} = false, {SYNCED} = ?"
        f" FROM {distinct} WHERE {where}",
        [closing_time(synced_at), synced_at],
    ).fetchone()[0]
    return removed + closed, wanted - removed - closed


def close_unsent(con, target: str, cutoff: datetime, synced_at: datetime) -> int:
    """softDelete and re-sync: close the active versions not written since `cutoff`."""
    return con.execute(
        f"UPDATE {target} SET {END} = ?, {ACTIVE} = false, {SYNCED} = ?"
        f" WHERE {ACTIVE} AND {SYNCED} < ?",
        [closing_time(synced_at), synced_at, cutoff],
    ).fetchone()[0]


def start(con, target: str, previous: TableInfo, table: TableInfo) -> None:
    """Turn history on for a table with rows: each row becomes its key's first version,
    from its `_fivetran_synced`; a deleted row a closed one, ending where it starts."""
    for column in COLUMNS_DDL:
        con.execute(f"ALTER TABLE {target} ADD COLUMN {column}")
    deleted = f"coalesce({DELETED}, false)" if previous.deleted_column else "false"
    con.execute(
        f"UPDATE {target} SET {START} = {SYNCED},"
        f" {END} = CASE WHEN {deleted} THEN {SYNCED} ELSE ? END, {ACTIVE} = NOT {deleted}",
        [END_OF_TIME],
    )
    if previous.deleted_column:
        con.execute(f"ALTER TABLE {target} DROP COLUMN {DELETED}")
    rehash(con, target, table, active_only=False)


def rehash(con, target: str, table: TableInfo, *, active_only: bool) -> None:
    """Compute `_fivetran_hash` from the values as stored now (after history is turned on,
    or a widening changed how values read): the same hash the planner gives a page's row."""
    keys, columns = table.primary_key, table.columns
    select = ", ".join(q(c) for c in columns)
    where = f" WHERE {ACTIVE}" if active_only else ""
    reader = con.sql(f"SELECT {select} FROM {target}{where}").to_arrow_reader(REHASH_BATCH)
    parts = []
    for batch in reader:
        typed = _typed(pa.Table.from_batches([batch]), columns)
        parts.append(typed.select(list(keys)).append_column(HASH, row_hashes(typed, columns)))
    if not parts:
        return
    _rehashed = pa.concat_tables(parts)  # noqa: F841 - the SQL below reads it by name
    con.execute(
        f"UPDATE {target} AS t SET {HASH} = s.{HASH} FROM _rehashed AS s WHERE {_on(keys)}"
        + (f" AND t.{ACTIVE}" if active_only else "")
    )


def _typed(rows: pa.Table, columns: dict[str, LogicalType]) -> pa.Table:
    """DuckDB's Arrow as the planner's (its JSON is text already)."""
    return pa.table({c: rows.column(c).cast(arrow_type(t)) for c, t in columns.items()})
