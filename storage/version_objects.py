"""A dataset version's objects in S3 (its COCO export and manifest, under content-addressed keys): written once, read
back, and deleted when no committed version references them (:func:`gc_orphans` sweeps what a crashed creation
left; :func:`delete_unreferenced` is the creator's own clean-up when its commit failed)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from storage.catalog import Catalog, DatasetVersion

logger = logging.getLogger(__name__)


def parse_dest(dest: str) -> tuple[str, str]:
    from storage.s3 import parse_s3_uri

    bucket, prefix = parse_s3_uri(dest)
    return bucket, prefix.strip("/")


def put_if_absent(s3: Any, bucket: str, key: str, body: bytes) -> bool:
    """Write a content-addressed object unless it is there already; True when this call wrote it."""
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=bucket, Key=key)
        return False
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    return True


def get_json(s3: Any, uri: str) -> Any:
    from storage.s3 import parse_s3_uri

    bucket, key = parse_s3_uri(uri)
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def referenced_uris(catalog: Catalog) -> set[str]:
    with catalog.session() as session:
        rows = session.execute(select(DatasetVersion.coco_uri, DatasetVersion.manifest_uri)).all()
    return {u for row in rows for u in row if u}


def delete_unreferenced(catalog: Catalog, s3: Any, bucket: str, keys: Sequence[str]) -> None:
    try:
        referenced = referenced_uris(catalog)
    except Exception:  # noqa: BLE001 - the catalog is down; gc_orphans will sweep later
        logger.warning("could not check references; leaving %d objects for gc_orphans", len(keys))
        return
    for key in keys:
        if f"s3://{bucket}/{key}" not in referenced:
            s3.delete_object(Bucket=bucket, Key=key)
            logger.info("deleted s3://%s/%s (its version was never committed)", bucket, key)


def gc_orphans(catalog: Catalog, s3: Any, dest: str, *, min_age: timedelta = timedelta(hours=1)) -> list[str]:
    """Delete objects under ``dest`` that no version references and that are older than ``min_age`` (so a
    version being created right now keeps its objects). Returns the deleted URIs."""
    bucket, prefix = parse_dest(dest)
    referenced = referenced_uris(catalog)
    cutoff = datetime.now(UTC) - min_age
    deleted = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""):
        for obj in page.get("Contents", []):
            uri = f"s3://{bucket}/{obj['Key']}"
            if uri not in referenced and obj["LastModified"] <= cutoff:
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
                deleted.append(uri)
    return deleted
