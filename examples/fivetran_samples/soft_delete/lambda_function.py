"""A full-snapshot source with `softDelete`, in the shape of Fivetran's soft-delete samples.

Run it:  cd examples/fivetran_samples/soft_delete && connector run
Then look: python ../../show.py warehouse.duckdb
Remove an employee from employees.json and run again: that employee's row stays, with
`_fivetran_deleted = true`.

Every sync sends the whole employee list again, two employees per call, and names the
table in `softDelete`: when the sync has succeeded, each row it did not send again is
marked deleted. `hasMore` is the string "true" or "false", as many Fivetran functions
send it.
"""

import json
from pathlib import Path

PAGE_SIZE = 2
DIRECTORY = Path(__file__).with_name("employees.json")  # stands in for your HR system's API


def lambda_handler(event, context):
    employees = json.loads(DIRECTORY.read_text())
    offset = event["state"].get("offset", 0)
    page = employees[offset : offset + PAGE_SIZE]
    more = offset + PAGE_SIZE < len(employees)
    return {
        # back to 0 at the end of the list: the next sync sends the whole snapshot again
        "state": {"offset": offset + PAGE_SIZE if more else 0},
        "insert": {"employees": page},
        "schema": {"employees": {"primary_key": ["employee_id"]}},
        "softDelete": ["employees"],
        "hasMore": "true" if more else "false",
    }
