"""Objects that already sit in S3, read with the service's own credentials for an import
(POST /v1/files with a `url`): which URLs an admin allows (IMPORT_ALLOWED_PREFIXES), and
the object's bytes as a stream of chunks.

A URL is allowed when its bucket is a prefix's bucket and its key starts with the
prefix's key part: `s3://data/batches/` allows `s3://data/batches/a.jsonl`, not
`s3://data/other.jsonl` nor `s3://data-2/batches/a.jsonl`. Nothing is allowed by default.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from app.core.errors import InvalidRequest

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_url(url: str) -> S3Url | None:
    """`s3://bucket/key` split, or None for anything else (another scheme, no bucket)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment or parsed.params:
        return None
    return S3Url(parsed.netloc, parsed.path.removeprefix("/"))


def parse_prefixes(text: str) -> list[str]:
    """IMPORT_ALLOWED_PREFIXES: `s3://bucket/prefix,...`; anything else is a settings error."""
    prefixes = [item.strip() for item in text.split(",") if item.strip()]
    for prefix in prefixes:
        if parse_s3_url(prefix) is None:
            raise ValueError(f"IMPORT_ALLOWED_PREFIXES: {prefix!r} is not s3://bucket/prefix")
    return prefixes


def allowed_source(url: str, prefixes: Sequence[str]) -> S3Url:
    """The object a URL names, if the rules allow it; else a 400 naming the rule."""
    if not prefixes:
        raise InvalidRequest(
            "Imports from object storage are off: the server's IMPORT_ALLOWED_PREFIXES allows none.",
            param="url",
            code="import_not_allowed",
        )
    source = parse_s3_url(url)
    if source is None or not source.key or source.key.endswith("/"):
        raise InvalidRequest(
            f"url: {url!r} is not an object URL of the form s3://bucket/key.", param="url", code="invalid_url"
        )
    for prefix in prefixes:
        rule = parse_s3_url(prefix)
        if rule is not None and rule.bucket == source.bucket and source.key.startswith(rule.key):
            return source
    raise InvalidRequest(
        f"url: {source} is outside the prefixes the server's IMPORT_ALLOWED_PREFIXES allows ({', '.join(prefixes)}).",
        param="url",
        code="import_not_allowed",
    )


@dataclass(frozen=True)
class SourceObject:
    size: int
    chunks: Iterator[bytes]


def open_source(source: S3Url, endpoint_url: str | None, region: str) -> SourceObject:
    """The object's size and a stream of its bytes; one the service cannot read is a 400
    naming S3's reason (no such bucket or key, access denied)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client: Any = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
    try:
        response = client.get_object(Bucket=source.bucket, Key=source.key)
    except ClientError as exc:
        reason = exc.response.get("Error", {}).get("Code", "error")
        raise InvalidRequest(
            f"url: the service cannot read {source} ({reason}).", param="url", code="url_unreadable"
        ) from None
    except BotoCoreError as exc:
        raise InvalidRequest(
            f"url: the service cannot read {source} ({type(exc).__name__}).", param="url", code="url_unreadable"
        ) from None
    return SourceObject(int(response["ContentLength"]), iter(response["Body"].iter_chunks(CHUNK_BYTES)))
