"""Handlers that fail each way a Lambda function can."""

import os
import time


def handled(event, context):
    """Answers with Lambda's error shape itself."""
    return {"errorMessage": "the API token was refused", "errorType": "AuthError"}


def unhandled(event, context):
    print("fetching orders")
    raise ConnectionRefusedError("orders API is down")


def sleeps(event, context):
    """Outlives a 1-second function timeout."""
    print("sleeping")
    time.sleep(3)
    return {"state": {}}


def exits(event, context):
    print("exiting")
    os._exit(3)


def oversized(event, context):
    """Answers with more than Lambda's 6 MB response limit."""
    return {"state": {}, "insert": {"blobs": [{"id": 1, "blob": "x" * 7_000_000}]}}
