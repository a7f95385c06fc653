"""Writes body.txt (beside this file), byte for byte, to the S3 object the request names,
or nothing when there is no body.txt; then raises if fail.txt exists (its text the
message), else answers with a new cursor and hasMore false.

Each request's `file`, and whether the object was written, go to requests.jsonl beside
this file.
"""

import json
import pathlib

import boto3

HERE = pathlib.Path(__file__).parent


def lambda_handler(request, context):
    body = HERE / "body.txt"
    if body.exists():
        boto3.client("s3").put_object(
            Bucket=request["bucket"], Key=request["file"], Body=body.read_bytes()
        )
    with (HERE / "requests.jsonl").open("a") as log:
        log.write(json.dumps({"file": request["file"], "written": body.exists()}) + "\n")
    if (HERE / "fail.txt").exists():
        raise RuntimeError((HERE / "fail.txt").read_text())
    return {"state": {"cursor": "2024-01-02T00:00:00Z"}, "hasMore": False}
