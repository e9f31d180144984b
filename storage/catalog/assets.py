"""Incremental discovery: which listed objects are new asset revisions, and asset state changes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.catalog.db import Catalog
from storage.catalog.models import Asset, SkippedObject, utcnow
from storage.s3 import MediaType, S3Object, head_bytes

log = logging.getLogger(__name__)


@dataclass
class DiscoveryReport:
    listed: int = 0
    new_asset_ids: list[int] = field(default_factory=list)
    new_revisions: int = 0  # of the new ones, how many are a changed ETag of a known key
    unchanged: int = 0
    sniffed: int = 0  # of the listed, how many had no media extension but media content
    not_media: int = 0  # objects skipped as not images or videos by their content (``skipped_objects``)
    unreadable: int = 0  # objects whose first bytes could not be read this time (tried again next discovery)


def discover(
    catalog: Catalog, objects: Iterable[S3Object], chunk: int = 500, report: DiscoveryReport | None = None
) -> DiscoveryReport:
    """Record every listed object whose (bucket, key, ETag, size) is not in the catalog yet.

    A known key with a different ETag/size is a new *revision* of the same asset (``revision`` + 1; the older
    revision is marked ``superseded``), not a duplicate. Rerunning on the same listing inserts nothing.
    """
    report = report if report is not None else DiscoveryReport()
    batch: list[S3Object] = []
    for obj in objects:
        report.listed += 1
        batch.append(obj)
        if len(batch) >= chunk:
            _discover_chunk(catalog, batch, report)
            batch = []
    if batch:
        _discover_chunk(catalog, batch, report)
    return report


def _discover_chunk(catalog: Catalog, objects: Sequence[S3Object], report: DiscoveryReport) -> None:
    by_bucket: dict[str, list[S3Object]] = {}
    for obj in objects:
        by_bucket.setdefault(obj.bucket, []).append(obj)
    with catalog.session() as session:
        for bucket, objs in by_bucket.items():
            keys = [o.key for o in objs]
            rows = session.execute(
                select(Asset.key, Asset.etag, Asset.size, Asset.revision).where(
                    Asset.bucket == bucket, Asset.key.in_(keys)
                )
            ).all()
            known = {(r.key, r.etag, r.size) for r in rows}
            latest: dict[str, int] = {}
            for r in rows:
                latest[r.key] = max(latest.get(r.key, 0), r.revision)
            for obj in objs:
                if (obj.key, obj.etag, obj.size) in known:
                    report.unchanged += 1
                    continue
                revision = latest.get(obj.key, 0) + 1
                if revision > 1:
                    report.new_revisions += 1
                    session.execute(
                        update(Asset)
                        .where(Asset.bucket == bucket, Asset.key == obj.key, Asset.status != "superseded")
                        .values(status="superseded", updated_at=utcnow())
                    )
                asset = Asset(
                    bucket=bucket,
                    key=obj.key,
                    etag=obj.etag,
                    size=obj.size,
                    revision=revision,
                    last_modified=obj.last_modified,
                    media_type=obj.media_type,
                    status="new",
                )
                session.add(asset)
                session.flush()
                known.add((obj.key, obj.etag, obj.size))
                latest[obj.key] = revision
                report.new_asset_ids.append(asset.id)


def count_assets(session: Session, status: str | None = None) -> int:
    stmt = select(func.count(Asset.id))
    if status is not None:
        stmt = stmt.where(Asset.status == status)
    return int(session.scalar(stmt) or 0)


def content_sniffer(
    catalog: Catalog, client: Any, bucket: str, report: DiscoveryReport
) -> Callable[[str, str, int], MediaType | None]:
    """For :func:`storage.s3.list_objects`: the media type of a key without a media extension, from what the
    catalog knows of that revision, else from its first bytes (one ranged GET); objects that are not media are
    recorded in ``skipped_objects`` (and counted in ``report``), so they are read once per ETag."""
    from storage.sniff import SNIFF_BYTES, sniff_media_type

    def sniff(key: str, etag: str, size: int) -> MediaType | None:
        with catalog.session() as session:
            kind = session.scalar(
                select(Asset.media_type).where(Asset.bucket == bucket, Asset.key == key, Asset.etag == etag).limit(1)
            )
            if kind is None and session.scalar(
                select(SkippedObject.id).where(
                    SkippedObject.bucket == bucket, SkippedObject.key == key, SkippedObject.etag == etag
                )
            ):
                report.not_media += 1
                return None
        if kind is not None:
            return "video" if kind == "video" else "image"
        reason = "empty object (0 bytes)"
        if size > 0:
            try:
                found, reason = sniff_media_type(head_bytes(client, bucket, key, SNIFF_BYTES))
            except Exception as exc:  # noqa: BLE001 - read again by the next discovery
                log.warning("s3://%s/%s: could not read its first bytes (%s); tried again next time", bucket, key, exc)
                report.unreadable += 1
                return None
            if found is not None:
                report.sniffed += 1
                return found
        try:
            with catalog.session() as session:
                session.add(SkippedObject(bucket=bucket, key=key, etag=etag, size=size, reason=reason))
        except IntegrityError:  # another discovery recorded it at the same time
            pass
        report.not_media += 1
        return None

    return sniff


def skipped_objects(catalog: Catalog, bucket: str, prefix: str = "") -> list[SkippedObject]:
    """The objects under ``prefix`` skipped as not media, by key."""
    with catalog.session() as session:
        return list(
            session.scalars(
                select(SkippedObject)
                .where(SkippedObject.bucket == bucket, SkippedObject.key.startswith(prefix, autoescape=True))
                .order_by(SkippedObject.key, SkippedObject.id)
            )
        )
