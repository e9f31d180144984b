"""A dataset version's S3 objects on a real (moto) S3 server: what the sweeps delete and what they must keep."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from storage.catalog import Catalog
from storage.version_objects import delete_unreferenced, gc_orphans, get_json, put_if_absent
from tests.support.dataset_versions import box_mask, make_version

IMAGES = {"gc/cat.png": ([box_mask(20, 30, 2, 12, 3, 20)], ["cat"])}


def _keys(s3: Any, bucket: str, prefix: str) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}


def test_gc_orphans_deletes_only_old_unreferenced_objects_under_the_destination(
    sqlite_catalog: Catalog, s3: Any, bucket: str
) -> None:
    made, _ = make_version(sqlite_catalog, s3, bucket, IMAGES)
    version_keys = _keys(s3, bucket, "datasets/")
    assert {made.version.coco_uri, made.version.manifest_uri} == {f"s3://{bucket}/{k}" for k in version_keys}
    s3.put_object(Bucket=bucket, Key="datasets/export-test/coco/orphan.json", Body=b"{}")  # a crashed creation's
    s3.put_object(Bucket=bucket, Key="elsewhere/orphan.json", Body=b"{}")  # not under the destination

    assert gc_orphans(sqlite_catalog, s3, f"s3://{bucket}/datasets") == []  # too young: a creation may be running
    time.sleep(1.1)  # S3's LastModified has whole seconds
    deleted = gc_orphans(sqlite_catalog, s3, f"s3://{bucket}/datasets", min_age=timedelta(seconds=1))

    assert deleted == [f"s3://{bucket}/datasets/export-test/coco/orphan.json"]
    assert _keys(s3, bucket, "datasets/") == version_keys
    assert _keys(s3, bucket, "elsewhere/") == {"elsewhere/orphan.json"}
    assert get_json(s3, made.version.manifest_uri)  # the version still reads back


def test_a_failed_creation_deletes_what_it_wrote_but_never_what_a_committed_version_references(
    sqlite_catalog: Catalog, s3: Any, bucket: str
) -> None:
    made, _ = make_version(sqlite_catalog, s3, bucket, IMAGES)
    referenced = made.version.manifest_uri.removeprefix(f"s3://{bucket}/")
    assert put_if_absent(s3, bucket, "datasets/x/new.json", b"{}") is True
    assert put_if_absent(s3, bucket, "datasets/x/new.json", b"{}") is False  # content-addressed: written once

    delete_unreferenced(sqlite_catalog, s3, bucket, [referenced, "datasets/x/new.json"])

    assert _keys(s3, bucket, "datasets/x/") == set()
    assert referenced in _keys(s3, bucket, "datasets/")
