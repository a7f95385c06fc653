"""History mode on SQL databases (design §14): what a `Flavor` runs for a table that keeps
every version of its rows.

Built from SQLAlchemy Core on the flavor's quoted columns, so one set of statements
serves PostgreSQL, MySQL/MariaDB, SQLite and any other dialect. Each key has at most one
active version (`_fivetran_active`); an upsert compares the staged row's
`_fivetran_hash` (computed by the page planner) with it: equal, the version is only
confirmed (`_fivetran_synced`); different, it is closed and a new one opened, unless
this very sync opened it, when it is replaced. The primary key of a history table is the
function's key plus `_fivetran_start`.

Turning history on copies the table into its history layout and swaps it in (SQLite
cannot change a primary key in place; MySQL's RENAME TABLE swaps atomically).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import datetime

import pyarrow as pa
import sqlalchemy as sa

from connector_runtime.history import (
    ACTIVE,
    END,
    END_OF_TIME,
    HASH,
    START,
    closing_time,
    row_hashes,
    stored_array,
)
from connector_runtime.naming import SYSTEM_COLUMNS
from connector_runtime.page import TableInfo
from connector_runtime.types import LogicalType

from . import base  # whose Flavor calls this module: names are read when used

SYNCED, DELETED = SYSTEM_COLUMNS[:2]
COPY_SUFFIX = "__cr_history"  # the copy a conversion builds, then swaps in
_rehashes = itertools.count(1)  # staging names: unique within a transaction


def core_columns(flavor) -> list[sa.Column]:
    """The history columns of a data table's Core `Table`."""
    return [
        flavor.column(START, START, base.UtcTimestamp()),
        flavor.column(END, END, base.UtcTimestamp()),
        flavor.column(ACTIVE, ACTIVE, sa.Boolean()),
        flavor.column(HASH, HASH, sa.BigInteger()),
    ]


def column_defs(flavor) -> list[str]:
    """The history columns in CREATE TABLE; `_fivetran_start` is part of the key."""
    when = base.UtcTimestamp().compile(dialect=flavor.dialect)
    return [
        f"{flavor.q(START)} {when} NOT NULL",
        f"{flavor.q(END)} {when}",
        f"{flavor.q(ACTIVE)} {sa.Boolean().compile(dialect=flavor.dialect)}",
        f"{flavor.q(HASH)} {sa.BigInteger().compile(dialect=flavor.dialect)}",
    ]


def _same_key(t: sa.Table, s: sa.Table, keys: tuple[str, ...]):
    return sa.and_(*(t.c[k] == s.c[k] for k in keys))


# Statements on the versions of staged keys join the staging table, so that the database
# goes from the staged rows into the table's primary key. As a correlated EXISTS instead,
# MariaDB and SQLite scan the staging table once per row of the history table (a page
# into 20,000 rows took minutes). UPDATE joins everywhere (UPDATE ... FROM; UPDATE t, s on
# MySQL); DELETE ... USING only on these, elsewhere the key is looked up with IN.
DELETE_JOINS = ("postgresql", "mysql", "mariadb")


def _update(t: sa.Table, s: sa.Table, keys: tuple[str, ...], *where):
    """UPDATE of `t`'s rows whose key is staged in `s` and that meet `where` (which may
    name the staged row's columns, and so may the values set)."""
    return sa.update(t).where(_same_key(t, s, keys), *where)


def _delete(flavor, t: sa.Table, s: sa.Table, keys: tuple[str, ...], *where):
    """DELETE of `t`'s rows whose key is staged in `s` and that meet `where` (of `t`)."""
    if flavor.dialect.name in DELETE_JOINS:
        return sa.delete(t).where(_same_key(t, s, keys), *where)
    staged = sa.select(*(s.c[k] for k in keys))  # SQLite: looked up in the key's index
    return sa.delete(t).where(sa.tuple_(*(t.c[k] for k in keys)).in_(staged), *where)


def _active(t: sa.Table):
    return t.c[ACTIVE] == sa.true()


def _analyze(flavor, conn, staged: sa.Table) -> None:
    """PostgreSQL plans the joins into the history table by hash (about twice as fast as
    the merge join it picks otherwise) once it knows how many rows were staged."""
    if flavor.dialect.name == "postgresql":
        flavor.ddl(conn, f"ANALYZE {flavor.q(staged.name)}")


def _moment(value: datetime):
    return sa.literal(value, base.UtcTimestamp())


def upsert(
    flavor, conn, dt: base.DataTable, rows: pa.Table, synced_at: datetime, name: str
) -> None:
    """Replace, close or confirm the active versions of the page's keys, then open
    versions for the keys left without one."""
    t, keys = dt.core, dt.info.primary_key
    with flavor.stage(conn, dt, rows, name) as s:
        _analyze(flavor, conn, s)
        columns = [c.key for c in s.c if c.key not in ("__row", HASH)]
        same = t.c[HASH] == s.c[HASH]
        # a version this sync opened is replaced, not closed: no zero-length versions
        values = {c: s.c[c] if c in columns else sa.null() for c in dt.info.columns}
        conn.execute(
            _update(t, s, keys, _active(t), ~same, t.c[START] == synced_at).values(
                {**values, HASH: s.c[HASH], SYNCED: synced_at}
            )
        )
        # other values: closed; the same: the version stands, confirmed by this sync
        end = sa.case((same, t.c[END]), else_=_moment(closing_time(synced_at)))
        conn.execute(
            _update(t, s, keys, _active(t)).values({END: end, ACTIVE: same, SYNCED: synced_at})
        )
        other = t.alias("cr_version")
        values = sa.select(
            *(s.c[c] for c in columns),
            *(_moment(m) for m in (synced_at, synced_at, END_OF_TIME)),
            sa.true(),
            s.c[HASH],
        ).where(~sa.exists().where(_active(other), _same_key(other, s, keys)))
        targets = [*columns, SYNCED, START, END, ACTIVE, HASH]
        conn.execute(sa.insert(t).from_select(targets, values))


def close(flavor, conn, dt: base.DataTable, keys: pa.Table, synced_at: datetime, name: str):
    """Deletes: close each key's active version (remove it if this sync opened it).
    Returns (versions closed or removed, distinct keys without an active version)."""
    t = dt.core
    keys = keys.group_by(list(dt.info.primary_key)).aggregate([])
    primary_key = dt.info.primary_key
    with flavor.stage(conn, dt, keys, name) as s:
        _analyze(flavor, conn, s)
        removed = conn.execute(
            _delete(flavor, t, s, primary_key, _active(t), t.c[START] == synced_at)
        ).rowcount
        closed = conn.execute(
            _update(t, s, primary_key, _active(t)).values(
                {END: closing_time(synced_at), ACTIVE: sa.false(), SYNCED: synced_at}
            )
        ).rowcount
    return removed + closed, keys.num_rows - removed - closed


def close_unsent(conn, dt: base.DataTable, cutoff: datetime, synced_at: datetime) -> int:
    """softDelete and re-sync: close the active versions not written since `cutoff`."""
    t = dt.core
    return conn.execute(
        sa.update(t)
        .where(_active(t), t.c[SYNCED] < cutoff)
        .values({END: closing_time(synced_at), ACTIVE: sa.false(), SYNCED: synced_at})
    ).rowcount


def start(flavor, conn, dt: base.DataTable, old: dict[str, LogicalType], deleted: bool) -> None:
    """Turn history on for a table with rows: copy it into the history layout of `dt`
    (with `dt`'s columns and types: `old` are the types it holds now), each row its key's
    first version from its `_fivetran_synced` (a deleted one closed where it starts),
    hash every version, then swap the copy in."""
    copy = sibling(flavor, dt, COPY_SUFFIX)
    flavor.drop_leftover(conn, copy)
    flavor.ddl(conn, flavor.create_sql(dt, copy.ref))
    kept = [c for c in dt.info.columns if c in old]
    sources = [
        flavor.convert(old[c], new, dt.q(c)) if old[c] != new else dt.q(c)
        for c, new in dt.info.columns.items()
        if c in old
    ]
    synced, forever = flavor.q(SYNCED), _literal(flavor)
    false, true = (str(v.compile(dialect=flavor.dialect)) for v in (sa.false(), sa.true()))
    end, active = forever, true
    if deleted:
        flag = flavor.q(DELETED)
        end = f"CASE WHEN {flag} THEN {synced} ELSE {forever} END"
        active = f"CASE WHEN {flag} THEN {false} ELSE {true} END"
    targets = [dt.q(c) for c in kept] + [flavor.q(c) for c in (SYNCED, START, END, ACTIVE)]
    sources += [synced, synced, end, active]
    flavor.ddl(
        conn,
        f"INSERT INTO {copy.ref} ({', '.join(targets)}) SELECT {', '.join(sources)} FROM {dt.ref}",
    )
    rehash(flavor, conn, copy, active_only=False)
    flavor.swap_in(conn, dt, copy)


def _literal(flavor) -> str:
    """`END_OF_TIME` as an SQL literal of this database (no parameters in raw DDL)."""
    literal = sa.literal(END_OF_TIME, base.UtcTimestamp())
    return str(literal.compile(dialect=flavor.dialect, compile_kwargs={"literal_binds": True}))


def sibling(flavor, dt: base.DataTable, suffix: str) -> base.DataTable:
    """A table beside `dt` (same schema, same columns), named `dt`'s name plus `suffix`."""
    name = flavor.fit(f"{dt.name}{suffix}")
    ref = ".".join(flavor.q(part) for part in (dt.schema, name) if part)
    columns = [sa.Column(c.name, c.type, key=c.key) for c in dt.core.c]
    core = sa.Table(sa.sql.quoted_name(ref, False), sa.MetaData(), *columns)
    return replace(dt, name=name, ref=ref, core=core)


def rehash(flavor, conn, dt: base.DataTable, *, active_only: bool) -> None:
    """Compute `_fivetran_hash` from the values as stored now (after history is turned on,
    or after a widening that may change how values read): the planner's hash of a row.
    With `active_only`, active versions only (one per key); else a table with one row
    per key (a conversion)."""
    t, info = dt.core, dt.info
    read = [
        sa.cast(t.c[c], sa.Text()) if k.name == "JSON" else t.c[c] for c, k in info.columns.items()
    ]
    query = sa.select(*read).where(_active(t)) if active_only else sa.select(*read)
    stored = conn.execute(query).all()
    if not stored:
        return
    values = zip(*stored, strict=True)
    typed = pa.table(
        {
            c: stored_array(list(v), k)
            for (c, k), v in zip(info.columns.items(), values, strict=True)
        }
    )
    hashes = typed.select(list(info.primary_key)).append_column(
        HASH, row_hashes(typed, info.columns)
    )
    with flavor.stage(conn, dt, hashes, f"_cr_rehash_{next(_rehashes)}") as s:
        which = [_active(t)] if active_only else []
        conn.execute(_update(t, s, info.primary_key, *which).values({HASH: s.c[HASH]}))


def widened(previous: TableInfo, info: TableInfo) -> bool:
    """Whether a page changed the type of a column the table already had."""
    return any(c in previous.columns and previous.columns[c] != t for c, t in info.columns.items())
