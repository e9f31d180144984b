"""Incremental discovery: which listed objects are new asset revisions, and asset state changes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from storage.catalog.db import Catalog
from storage.catalog.models import Asset, utcnow
from storage.s3 import S3Object


@dataclass
class DiscoveryReport:
    listed: int = 0
    new_asset_ids: list[int] = field(default_factory=list)
    new_revisions: int = 0  # of the new ones, how many are a changed ETag of a known key
    unchanged: int = 0


def discover(catalog: Catalog, objects: Iterable[S3Object], chunk: int = 500) -> DiscoveryReport:
    """Record every listed object whose (bucket, key, ETag, size) is not in the catalog yet.

    A known key with a different ETag/size is a new *revision* of the same asset (``revision`` + 1; the older
    revision is marked ``superseded``), not a duplicate. Rerunning on the same listing inserts nothing.
    """
    report = DiscoveryReport()
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


def pending_asset_ids(session: Session, bucket: str, prefix: str = "", limit: int | None = None) -> list[int]:
    """Ids of current (not superseded) asset revisions under a prefix that are not done yet, oldest first."""
    stmt = (
        select(Asset.id)
        .where(Asset.bucket == bucket, Asset.key.startswith(prefix, autoescape=True), Asset.status == "new")
        .order_by(Asset.id)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def count_assets(session: Session, status: str | None = None) -> int:
    stmt = select(func.count(Asset.id))
    if status is not None:
        stmt = stmt.where(Asset.status == status)
    return int(session.scalar(stmt) or 0)
