"""What was each customer's plan at a given moment? Ask the history table.

Usage: python as_of.py warehouse.duckdb [MOMENT]

With a MOMENT (ISO 8601, e.g. 2026-03-01T00:00:00Z) it prints the customers as they were
then; without one, every version, then the plans as they stood after each sync. A version
holds from `_fivetran_start` to `_fivetran_end`, both included; the active one ends on
9999-12-31T23:59:59.999Z.
"""

import sys

import duckdb

AS_OF = """
SELECT id, name, plan, seats FROM billing.customers
WHERE _fivetran_start <= CAST($moment AS TIMESTAMPTZ)
  AND CAST($moment AS TIMESTAMPTZ) <= _fivetran_end
ORDER BY id
"""
VERSIONS = """
SELECT id, name, plan, seats, strftime(_fivetran_start, '%Y-%m-%dT%H:%M:%S.%gZ'),
       strftime(_fivetran_end, '%Y-%m-%dT%H:%M:%S.%gZ'), _fivetran_active
FROM billing.customers ORDER BY id, _fivetran_start
"""
SYNC_ENDS = """
SELECT strftime(finished_at, '%Y-%m-%dT%H:%M:%S.%fZ') FROM connector_runtime.syncs
WHERE connector = 'billing' AND status = 'succeeded' ORDER BY started_at
"""


def plans_as_of(con: duckdb.DuckDBPyConnection, moment: str) -> list[tuple]:
    return con.execute(AS_OF, {"moment": moment}).fetchall()


def show(rows: list[tuple]) -> None:
    for id_, name, plan, seats in rows:
        print(f"  {id_:>3}  {name:<10} {plan:<6} {seats:>3} seats")


def main(path: str, moment: str | None) -> None:
    con = duckdb.connect(path, read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    if moment is not None:
        print(f"as of {moment}:")
        show(plans_as_of(con, moment))
        return
    print("every version:")
    for id_, name, plan, seats, start, end, active in con.execute(VERSIONS).fetchall():
        state = "active" if active else "closed"
        print(f"  {id_:>3}  {name:<10} {plan:<6} {seats:>3} seats  {start} → {end}  {state}")
    for number, (ended,) in enumerate(con.execute(SYNC_ENDS).fetchall(), start=1):
        print(f"after sync {number} (as of {ended}):")
        show(plans_as_of(con, ended))


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None)
