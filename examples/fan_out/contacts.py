"""A CRM source: contacts changed since the cursor, 50 per page.

A stand-in for an API: contact N was last changed at minute N of 2026-12-01, and every
seventh one has unsubscribed (a delete). The cursor is the last change time read.
"""

from datetime import UTC, datetime, timedelta

START = datetime(2026, 12, 1, tzinfo=UTC)
CONTACTS = 120
PAGE = 50


def changed_at(n: int) -> str:
    return (START + timedelta(minutes=n)).isoformat().replace("+00:00", "Z")


def handler(request):
    after = request["state"].get("changed_after", changed_at(0))
    first = next((n for n in range(1, CONTACTS + 1) if changed_at(n) > after), CONTACTS + 1)
    page = range(first, min(first + PAGE, CONTACTS + 1))
    upserts = [
        {
            "id": n,
            "email": f"contact{n}@example.com",
            "plan": "pro" if n % 3 else "free",
            "changedAt": changed_at(n),
        }
        for n in page
        if n % 7
    ]
    deletes = [{"id": n} for n in page if n % 7 == 0]
    return {
        "state": {"changed_after": changed_at(page[-1]) if page else after},
        "insert": {"contacts": upserts},
        "delete": {"contacts": deletes},
        "schema": {"contacts": {"primary_key": ["id"]}},
        "hasMore": bool(page) and page[-1] < CONTACTS,
    }
