"""Fivetran's S3 mode in Python: each page's rows go to the S3 object the request names
(`bucket`, `file`); the answer carries only the cursor, the schema and `hasMore`. This is
for pages larger than the 6 MB an AWS Lambda answer can hold.

Run it:  set `bucket` in connectors.yaml (and `endpoint_url` for an S3-compatible store
such as MinIO), put AWS credentials in the environment, then
         cd examples/fivetran_samples/s3_python && connector run
The runtime reads each page's object after the call, writes its rows together with the
page's state, and deletes the object.
"""

import json

import boto3

# On Lambda the region comes from the environment; run locally, the runtime sets
# AWS_ENDPOINT_URL_S3 to the config's endpoint_url, and boto3 picks it up.
s3 = boto3.client("s3")
TOTAL, PAGE_SIZE = 2_500, 1_000


def lambda_handler(event, context):
    start = event["state"].get("next_id", 1)
    end = min(start + PAGE_SIZE, TOTAL + 1)
    events = [
        {"id": n, "kind": "view" if n % 3 else "click", "at": f"2025-05-01T{n % 24:02d}:00:00Z"}
        for n in range(start, end)
    ]
    page = {"insert": {"events": events}}
    s3.put_object(Bucket=event["bucket"], Key=event["file"], Body=json.dumps(page).encode())
    return {
        "state": {"next_id": end},
        "schema": {"events": {"primary_key": ["id"]}},
        "hasMore": end <= TOTAL,
    }
