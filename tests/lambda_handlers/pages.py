"""A Fivetran-style Lambda connector: seven orders, three a page, the cursor in `state`."""

ORDERS = [
    {"id": n, "amount": n * 1.25, "placed_at": f"2024-03-0{n}T12:00:00+02:00"} for n in range(1, 8)
]
PAGE_SIZE = 3


def handler(event, context):
    if event["secrets"].get("apiToken") != "t0ken":
        raise PermissionError("apiToken missing from secrets")
    cursor = event["state"].get("cursor", 0)
    page = ORDERS[cursor : cursor + PAGE_SIZE]
    print(f"page from cursor {cursor}: {len(page)} orders")
    return {
        "state": {"cursor": cursor + len(page)},
        "insert": {"orders": [{**order, "sync_id": event["sync_id"]} for order in page]},
        "schema": {"orders": {"primary_key": ["id"]}},
        "hasMore": cursor + len(page) < len(ORDERS),
    }
