"""Print what landed in a DuckDB warehouse: each table, its row count and first rows.

Usage: python examples/show.py path/to/warehouse.duckdb
"""

import sys

import duckdb
from rich.console import Console
from rich.table import Table


def main(path: str) -> None:
    console = Console(width=200)
    con = duckdb.connect(path, read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    tables = con.execute(
        "SELECT table_schema, table_name FROM information_schema.tables"
        " WHERE table_schema <> 'connector_runtime' ORDER BY 1, 2"
    ).fetchall()
    for schema, name in tables:
        target = f'"{schema}"."{name}"'
        count = con.execute(f"SELECT count(*) FROM {target}").fetchone()[0]
        cursor = con.execute(f"SELECT * FROM {target} LIMIT 5")
        table = Table(*[d[0] for d in cursor.description], title=f"{schema}.{name}: {count:,} rows")
        for row in cursor.fetchall():
            table.add_row(*[str(v) for v in row])
        console.print(table)
    state = con.execute(
        "SELECT connector, CAST(state AS VARCHAR) FROM connector_runtime.state"
    ).fetchall()
    for connector, saved in state:
        console.print(f"state of {connector}: {saved}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "warehouse.duckdb")
