"""A function written for Fivetran's AWS Lambda connector, run here unchanged.

Run it:  cd examples/fivetran_lambda && connector run

It follows the shape of Fivetran's documented Lambda sample: `lambda_handler(event,
context)` reads a cursor from `event["state"]`, returns inserted rows, one deleted row
and a schema with a compound primary key, and says `hasMore: false`.
"""


def lambda_handler(event, context):
    cursor = event["state"].get("transactionsCursor", "2018-01-01T00:00:00Z")
    inserted = [
        {"date": "2017-12-31T05:12:05Z", "order_id": 1001, "amount": "$1200", "discount": "$12"},
        {"date": "2017-12-31T06:12:04Z", "order_id": 1001, "amount": "$1200", "discount": "$12"},
    ]
    deleted = [{"date": "2017-12-31T05:12:05Z", "order_id": 1001}]
    return {
        "state": {"transactionsCursor": max(cursor, "2018-01-01T00:00:00Z")},
        "insert": {"transactions": inserted},
        "delete": {"transactions": deleted},
        "schema": {"transactions": {"primary_key": ["order_id", "date"]}},
        "hasMore": False,
    }
