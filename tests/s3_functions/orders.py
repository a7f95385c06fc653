"""An AWS Lambda function in Fivetran's cloud-storage shape: the rows of each page go to
the S3 object the request names (`bucket`, `file`); the answer carries only the cursor,
the schema and whether there is more. Three pages, one day of orders each; the second
also deletes an order of the first.

Each request's `bucket`, `file` and `sync_id` are appended to requests.jsonl beside this
file, so a test can see where it was asked to write.
"""

import json
import pathlib

import boto3

DAYS = ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z", "2024-01-03T00:00:00Z"]
END = "2024-01-04T00:00:00Z"
LOG = pathlib.Path(__file__).with_name("requests.jsonl")


def lambda_handler(request, context):
    cursor = request["state"].get("cursor", DAYS[0])
    day = DAYS.index(cursor)
    with LOG.open("a") as log:
        log.write(json.dumps({k: request.get(k) for k in ("bucket", "file", "sync_id")}) + "\n")

    orders = [{"id": day * 10 + n, "amount": n * 2.5, "placed": cursor} for n in (1, 2)]
    page = {"insert": {"orders": orders}, "delete": {}}
    if day == 1:
        page["delete"]["orders"] = [{"id": 1}]
    # boto3 finds the endpoint in AWS_ENDPOINT_URL_S3, which the runtime sets for its workers
    boto3.client("s3").put_object(
        Bucket=request["bucket"], Key=request["file"], Body=json.dumps(page).encode()
    )

    following = DAYS[day + 1] if day + 1 < len(DAYS) else END
    return {
        "state": {"cursor": following},
        "schema": {"orders": {"primary_key": ["id"]}},
        "hasMore": following != END,
    }
