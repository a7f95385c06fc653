"""Errors reported the way Fivetran's Python samples report them, and secrets that are
not all strings.

Run it:  cd examples/fivetran_samples/errors_and_secrets && connector run
Then set `pageSize: 0` in connectors.yaml and run again: the sync fails, and
`connector alerts` shows a function_error with the ValueError and its traceback.

- The handler catches every exception and answers `errorMessage`, `errorType` and
  `stackTrace`, the last as one string (`traceback.format_exc()`); the runtime stores it
  split into lines.
- `pageSize` is a number in connectors.yaml and arrives as a number; `account` is an
  object.
- The cursor in `state` is a string: the `issuedAt` of the last invoice sent.
"""

import traceback

# Stands in for your billing API: ten invoices, in the order they were issued.
INVOICES = [
    {"number": f"INV-{n:04d}", "amount": f"{n * 40}.00", "issuedAt": f"2025-02-{n:02d}T10:00:00Z"}
    for n in range(1, 11)
]


def lambda_handler(request, context):
    try:
        return sync_page(request)
    except Exception as error:
        return {
            "errorMessage": str(error),
            "errorType": type(error).__name__,
            "stackTrace": traceback.format_exc(),
        }


def sync_page(request):
    secrets = request["secrets"]
    page_size = secrets["pageSize"]
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise ValueError(f"secrets.pageSize must be a whole number above 0, got {page_size!r}")
    account = secrets["account"]
    cursor = request["state"].get("cursor", "")
    invoices = [i for i in INVOICES if i["issuedAt"] > cursor][:page_size]
    rows = [{**i, "accountId": account["id"], "currency": account["currency"]} for i in invoices]
    return {
        "state": {"cursor": invoices[-1]["issuedAt"] if invoices else cursor},
        "insert": {"invoices": rows},
        "schema": {"invoices": {"primary_key": ["number"], "columns": {"amount": "DECIMAL(10,2)"}}},
        "hasMore": len(invoices) == page_size,
    }
