"""New objects of an S3 prefix found by listing it, for S3 servers that send no notifications (SeaweedFS).

``SeenObjects`` (a SQLite file) remembers each (bucket, key, ETag) already reported and which prefixes are watched.
A prefix seen for the first time reports only objects modified after the watch began (its trigger's creation): the
objects that were there before are recorded as seen, as S3 notifications would not have reported them either. An
object written again with new content (a new ETag) is reported again, as S3 sends ``ObjectCreated:Put`` for it.
"""

from __future__ import annotations

import fnmatch
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from storage.s3 import media_type_of
from storage.s3_events import ObjectCreated

# S3's LastModified has whole seconds: an object written in the second the watch began must still count as new.
CLOCK_SLACK = timedelta(seconds=2)
SOURCE_EVENT = "maskloop:poll"


class SeenObjects:
    """The objects already reported (or there before their prefix was watched), in a SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path)
        with self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS seen (bucket TEXT, key TEXT, etag TEXT, PRIMARY KEY (bucket, key))"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS watched (bucket TEXT, prefix TEXT, PRIMARY KEY (bucket, prefix))"
            )

    def watched(self, bucket: str, prefix: str) -> bool:
        row = self._db.execute("SELECT 1 FROM watched WHERE bucket = ? AND prefix = ?", (bucket, prefix)).fetchone()
        return row is not None

    def mark_watched(self, bucket: str, prefix: str) -> None:
        with self._db:
            self._db.execute("INSERT OR IGNORE INTO watched VALUES (?, ?)", (bucket, prefix))

    def etags(self, bucket: str, prefix: str) -> dict[str, str]:
        rows = self._db.execute(
            "SELECT key, etag FROM seen WHERE bucket = ? AND substr(key, 1, ?) = ?", (bucket, len(prefix), prefix)
        )
        return dict(rows.fetchall())

    def mark(self, objects: list[ObjectCreated]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO seen VALUES (?, ?, ?)", [(o.bucket, o.key, o.etag or "") for o in objects]
            )

    def close(self) -> None:
        self._db.close()


def _listing(client: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000}):
        yield from page.get("Contents", [])


def new_objects(
    client: Any, store: SeenObjects, bucket: str, pattern: str, since: datetime | None = None
) -> list[ObjectCreated]:
    """Media objects of ``bucket`` whose key matches ``pattern`` (a prefix, ``*`` wildcards allowed) that were not
    reported yet. On the first call for a prefix, objects last modified before ``since`` are recorded as seen and not
    returned (``since=None``: all are returned). Returned objects are recorded by ``store.mark`` once reported."""
    prefix = pattern.split("*", 1)[0]
    first = not store.watched(bucket, prefix)
    known = store.etags(bucket, prefix)
    baseline: list[ObjectCreated] = []
    found: list[ObjectCreated] = []
    for item in _listing(client, bucket, prefix):
        key, etag = str(item["Key"]), str(item.get("ETag", "")).strip('"')
        if media_type_of(key) is None or known.get(key) == etag:
            continue
        if "*" in pattern and not fnmatch.fnmatchcase(key, pattern):
            continue
        if "*" not in pattern and key != pattern:
            continue
        created = ObjectCreated(bucket, key, int(item.get("Size", 0)), etag, SOURCE_EVENT)
        modified = item.get("LastModified")
        old = first and since is not None and isinstance(modified, datetime) and modified < since - CLOCK_SLACK
        (baseline if old else found).append(created)
    store.mark(baseline)
    store.mark_watched(bucket, prefix)
    return found
