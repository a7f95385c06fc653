"""Sync through cloud storage (design §2): Fivetran's S3 mode, for pages above the 6 MB
an AWS Lambda answer can carry.

With `storage: {s3: ...}` on a connector, each request also carries `bucket` and `file`,
a fresh object key `<prefix><connector>/<sync_id>/<page>.json`. The function may write
the page's rows there and answer with its `state`, `schema` and `hasMore` only. After
the call the runtime reads the object and merges it into the answer (`merge`), applies
the page and deletes the object (`delete`).

The object:

- absent: the page is the answer alone (the function had nothing to write);
- a JSON object with `insert`, `delete`, `schema`, `softDelete` (each optional; Fivetran's
  functions write only the first two). Its rows follow the answer's rows of the same
  table (so, for one key, the object's row wins); its `schema` tables join the answer's
  (one table declared in both must be declared the same); its `softDelete` tables join
  the answer's. `state` and `hasMore` belong to the answer: in the object they are
  accepted only when they say what the answer says, so a cursor or a `hasMore: true`
  written to the wrong place never ends a sync early or silently;
- anything else (not JSON, not an object, another key, a field of the wrong kind) is an
  `InvalidResponse` naming `s3://bucket/key`.

S3 errors: "no such key" is the absent object; throttling, 5xx, timeouts and connection
errors raise `TransientStorageError` (the caller retries); anything else (no such bucket,
access denied, no credentials) raises `StorageError`, which fails the page as a
warehouse error does, never as an empty page.

The client is made on first use, with the standard credential chain, `region` and
`endpoint_url`, and no SDK retries (the sync loop's backoff decides). Local function
workers get `worker_env()` (`AWS_ENDPOINT_URL_S3`), so a function's own S3 client writes
where the runtime reads.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as SdkConnectionError

from . import __version__
from .columns import ColumnRows
from .errors import InvalidResponse, StorageError, TransientStorageError
from .jsonio import NotUnicode, TooDeep, decode_json, encode_json

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
PAGE_KEYS = ("insert", "delete", "schema", "softDelete")
ANSWER_KEYS = ("state", "hasMore")  # allowed in the object only when equal to the answer's
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
    }
)


class S3PageStore:
    """Where a connector's functions put pages too big for an answer: one S3 bucket."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        session: boto3.Session | None = None,
    ) -> None:
        self.bucket, self.prefix = bucket, prefix
        self.region, self.endpoint_url = region, endpoint_url
        self._session = session

    @cached_property
    def client(self) -> Any:
        """The S3 client, made on first use."""
        session = self._session or boto3.Session(region_name=self.region)
        config = Config(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"mode": "standard", "total_max_attempts": 1},
            user_agent_extra=f"connector-runtime/{__version__}",
        )
        return session.client(
            "s3", region_name=self.region, endpoint_url=self.endpoint_url, config=config
        )

    def location(self, connector: str, sync_id: str, page: int | str) -> dict[str, str]:
        """The request's `bucket` and `file` for one page of one sync."""
        return {"bucket": self.bucket, "file": f"{self.prefix}{connector}/{sync_id}/{page}.json"}

    def worker_env(self) -> dict[str, str]:
        """Environment for local function workers: the same S3 endpoint as the runtime's."""
        return {"AWS_ENDPOINT_URL_S3": self.endpoint_url} if self.endpoint_url else {}

    def merge(self, answer: dict[str, Any], location: dict[str, str]) -> dict[str, Any]:
        """`answer` completed with the page's object, if the function wrote one."""
        raw = self._read(location)
        if raw is None:
            return answer
        where = url(location)
        return merge_page(answer, _decode(raw, where), where)

    def delete(self, location: dict[str, str]) -> None:
        """Delete the page's object; an absent one is fine."""
        try:
            self.client.delete_object(Bucket=location["bucket"], Key=location["file"])
        except ClientError as exc:
            if _code(exc) != "NoSuchKey":
                raise _failure(exc, f"cannot delete {url(location)}") from exc
        except BotoCoreError as exc:
            raise _failure(exc, f"cannot delete {url(location)}") from exc

    def _read(self, location: dict[str, str]) -> bytes | None:
        what = f"cannot read {url(location)}"
        try:
            found = self.client.get_object(Bucket=location["bucket"], Key=location["file"])
            return found["Body"].read()
        except ClientError as exc:
            if _code(exc) == "NoSuchKey":
                return None
            raise _failure(exc, what) from exc
        except BotoCoreError as exc:
            raise _failure(exc, what) from exc


def url(location: dict[str, str]) -> str:
    """`s3://bucket/key`: how messages name a page's object."""
    return f"s3://{location['bucket']}/{location['file']}"


def merge_page(answer: dict[str, Any], page: Any, where: str) -> dict[str, Any]:
    """The answer with the object's page merged in (see the module's docstring)."""
    if not isinstance(page, dict):
        raise InvalidResponse(f"{where} holds {_kind(page)}, not a JSON object")
    for key in page:
        if key not in PAGE_KEYS and key not in ANSWER_KEYS:
            raise InvalidResponse(
                f"{where}: unknown key {key!r}; the object may hold insert, delete, schema "
                "and softDelete"
            )
    for key in ANSWER_KEYS:
        if key in page:
            _same_as_answer(answer, page, key, where)
    merged = dict(answer)
    for key in ("insert", "delete"):
        if key in page:
            merged[key] = _merged_rows(answer.get(key), _tables(page[key], key, where), key)
    if "schema" in page:
        merged["schema"] = _merged_schema(answer.get("schema"), page["schema"], where)
    if "softDelete" in page:
        merged["softDelete"] = _merged_soft_delete(answer.get("softDelete"), page, where)
    return merged


def _tables(tables: Any, key: str, where: str) -> dict[str, list]:
    if not isinstance(tables, dict):
        raise InvalidResponse(f"{where}: {key} must be an object of tables, not {_kind(tables)}")
    for table, rows in tables.items():
        if not isinstance(rows, list):
            raise InvalidResponse(
                f"{where}: {key}: table {table!r} must be an array of rows, not {_kind(rows)}"
            )
    return tables


def _merged_rows(ours: Any, theirs: dict[str, list], key: str) -> Any:
    """The answer's tables with the object's rows after their own (the later row wins)."""
    if ours is None:
        return theirs
    if not isinstance(ours, dict):
        return ours  # the answer's own mistake: validation names it
    merged = dict(ours)
    for table, rows in theirs.items():
        before = merged.get(table)
        merged[table] = before + rows if isinstance(before, list | ColumnRows) else rows
    return merged


def _merged_schema(ours: Any, theirs: Any, where: str) -> Any:
    if not isinstance(theirs, dict):
        raise InvalidResponse(f"{where}: schema must be an object of tables, not {_kind(theirs)}")
    if not isinstance(ours, dict):
        return theirs if ours is None else ours
    for table, declared in theirs.items():
        if table in ours and ours[table] != declared:
            raise InvalidResponse(
                f"{where}: schema of table {table!r} differs from the answer's; declare it "
                "in one place or the same in both"
            )
    return {**ours, **theirs}


def _merged_soft_delete(ours: Any, page: dict[str, Any], where: str) -> Any:
    theirs = page["softDelete"]
    if not isinstance(theirs, list):
        raise InvalidResponse(
            f"{where}: softDelete must be an array of tables, not {_kind(theirs)}"
        )
    if not isinstance(ours, list):
        return theirs if ours is None else ours
    return ours + [table for table in theirs if table not in ours]


def _same_as_answer(answer: dict[str, Any], page: dict[str, Any], key: str, where: str) -> None:
    """`state`/`hasMore` in the object must agree with the answer, which is what counts."""
    if key == "hasMore":
        ours, theirs = _has_more(answer.get(key, False)), _has_more(page[key])
        if ours == theirs:
            return
        differs = f"hasMore is {theirs} in the object but {ours} in the answer"
    elif key in answer and answer[key] == page[key]:
        return
    else:
        differs = "state in the object differs from the answer's"
        if key not in answer:
            differs = "state is in the object but not in the answer"
    raise InvalidResponse(
        f"{where}: {differs}; the answer's {key} is the one that counts: send it there"
    )


def _has_more(value: Any) -> str:
    """`hasMore` as the protocol reads it (a boolean, or "true"/"false" in any case), as
    text: `true`, `false`, or the JSON value it is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower()
    return encode_json(value).decode()


def _decode(raw: bytes, where: str) -> Any:
    try:
        return decode_json(raw)  # exact integers and a depth limit, as for answers
    except (TooDeep, NotUnicode) as exc:
        raise InvalidResponse(f"{where}: {exc}") from None
    except ValueError as exc:
        raise InvalidResponse(f"{where} is not JSON: {exc}") from None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _failure(exc: ClientError | BotoCoreError, what: str) -> StorageError | TransientStorageError:
    """botocore's error as the decision it drives: retry the page's object, or fail the page."""
    if isinstance(exc, HTTPClientError | SdkConnectionError):
        return TransientStorageError(f"{what}: {exc}")
    if not isinstance(exc, ClientError):  # credentials, region, parameters: configuration
        return StorageError(f"{what}: {exc}")
    error = exc.response.get("Error", {})
    code = _code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    description = f"{code or status}: {error.get('Message') or 'no message'}"
    if code == "NoSuchBucket":
        bucket = error.get("BucketName") or what
        return StorageError(f"{what}: the bucket {bucket!r} does not exist ({description})")
    if code in _TRANSIENT_CODES or status == 429 or status >= 500:
        return TransientStorageError(f"{what}: {description}")
    return StorageError(f"{what}: {description}")


def _kind(value: object) -> str:
    kinds = {list: "an array", dict: "an object", str: "a string", bool: "a boolean"}
    return kinds.get(type(value), "null" if value is None else "a number")
