"""A paging source with a cursor: card transactions from a deterministic fake API.

Run it:  cd examples/transactions && connector run      (or `make run` from the top)

The "API" returns transactions in id order, PAGE_SIZE at a time, starting after the
cursor the runtime sends back in `state`. Every fifth transaction is later refunded:
the refund arrives as an update of the same id on a following page. After LAST_ID the
source is exhausted; a later sync finds nothing new and just returns the same cursor.
"""

import random
from datetime import UTC, datetime, timedelta

PAGE_SIZE = 250
LAST_ID = 2_000
MERCHANTS = ["Coffee Lab", "Bücherhalle", "Metro Fuel", "Green Grocer", "Night Owl Books"]


def transaction(txn_id: int, *, refunded: bool = False) -> dict:
    rng = random.Random(txn_id)  # the same id always yields the same transaction
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=7 * txn_id)
    return {
        "id": txn_id,
        "merchant": rng.choice(MERCHANTS),
        "amountCents": rng.randint(100, 25_000),
        "currency": "EUR",
        "createdAt": at.isoformat().replace("+00:00", "Z"),
        "status": "refunded" if refunded else "settled",
        "tags": rng.sample(["card", "online", "travel", "food"], k=2),
    }


def handler(request: dict) -> dict:
    cursor = request["state"].get("after_id", 0)
    ids = range(cursor + 1, min(cursor + PAGE_SIZE, LAST_ID) + 1)
    rows = [transaction(i) for i in ids]
    # refunds of transactions sent one page earlier, re-sent with the same primary key
    rows += [
        transaction(i - PAGE_SIZE, refunded=True) for i in ids if i % 25 == 0 and i > PAGE_SIZE
    ]
    last = ids[-1] if ids else cursor
    return {
        "state": {"after_id": last},
        "insert": {"transactions": rows},
        "schema": {"transactions": {"primary_key": ["id"]}},
        "hasMore": last < LAST_ID,
    }
