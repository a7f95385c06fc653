"""A billing system's customers, one monthly export per sync (a stand-in for an API).

Each sync sends the whole customer list with `softDelete`, so a customer missing from an
export is closed. The state says which export comes next; after the third, the third is
sent again, and since nothing in it changed, history mode adds nothing.

    export 1: Ada free, Grace pro, Linus free
    export 2: Ada upgrades to pro (Grace and Linus unchanged: no new versions)
    export 3: Ada moves to team, Linus leaves, Margaret signs up
"""

EXPORTS = [
    [(1, "Ada", "free", 1), (2, "Grace", "pro", 5), (3, "Linus", "free", 1)],
    [(1, "Ada", "pro", 5), (2, "Grace", "pro", 5), (3, "Linus", "free", 1)],
    [(1, "Ada", "team", 20), (2, "Grace", "pro", 5), (4, "Margaret", "free", 1)],
]


def handler(request):
    export = min(request["state"].get("export", 0) + 1, len(EXPORTS))
    customers = [
        {"id": id_, "name": name, "plan": plan, "seats": seats}
        for id_, name, plan, seats in EXPORTS[export - 1]
    ]
    return {
        "state": {"export": export},
        "insert": {"customers": customers},
        "schema": {"customers": {"primary_key": ["id"]}},
        "softDelete": ["customers"],
        "hasMore": False,
    }
