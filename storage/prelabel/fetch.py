"""The fetch stage: download a batch into the cache (parallel; S3 retries inside the client), record each asset's
sha256 and size (or frames and fps); objects that cannot be read fail alone, named by their S3 URI."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select

from model.errors import BadMediaError
from storage.catalog import Asset
from storage.prelabel.plan import StageReport, record_failures
from storage.s3 import S3Object, cache_path, download_many
from storage.services import Services
from storage.settings import Settings


def s3_object_of(asset: Asset) -> S3Object:
    return S3Object(asset.bucket, asset.key, asset.etag, asset.size, asset.last_modified, asset.media_type)  # type: ignore[arg-type]


def local_path(settings: Settings, asset: Asset) -> Path:
    return cache_path(settings.cache_dir, asset.bucket, asset.key, asset.etag)


def fetch(services: Services, run_id: int, asset_ids: Sequence[int]) -> StageReport:
    """Download a batch into the cache (parallel, retried), record sha256 and size/frames; bad objects fail alone."""
    report = StageReport()
    settings, catalog = services.settings, services.catalog
    with catalog.session() as session:
        assets = list(session.scalars(select(Asset).where(Asset.id.in_(asset_ids))))
    results = download_many(
        services.s3, [s3_object_of(a) for a in assets], settings.cache_dir, settings.s3_max_concurrency
    )
    facts: dict[int, dict[str, Any]] = {}
    for asset, result in zip(assets, results, strict=True):
        if result.path is None:
            report.failed[asset.id] = result.error or "download failed"
            if result.transient:
                report.transient.add(asset.id)
            continue
        try:
            facts[asset.id] = _probe(result.path, asset)
            report.ok.append(asset.id)
        except BadMediaError as error:
            report.failed[asset.id] = media_failure(asset, error, result.path)
    with catalog.session() as session:
        for asset_id, values in facts.items():
            row = session.get(Asset, asset_id)
            for name, value in values.items():
                setattr(row, name, value)
    record_failures(catalog, run_id, "fetch", report.failed, report.transient)
    return report


def media_failure(asset: Asset, error: BadMediaError, path: Path) -> str:
    """``<S3 URI>: <reason>``: bad media named as the user uploaded it, never by the cache file it was read from."""
    return f"{asset.uri}: {error.reason.replace(str(path), 'the downloaded file')}"


def _probe(path: Path, asset: Asset) -> dict[str, Any]:
    data = path.read_bytes() if asset.media_type == "image" else None
    sha = hashlib.sha256(data).hexdigest() if data is not None else _sha256_file(path)
    if asset.media_type == "image":
        from model.images import probe_image

        # header only: the pixels are decoded once, by the model step, which also records the decoded size
        height, width = probe_image(data or b"", asset.uri)
        return {"sha256": sha, "width": width, "height": height, "frames": 1}
    from model.video import probe_video

    info = probe_video(path)
    return {"sha256": sha, "width": info.width, "height": info.height, "frames": info.frame_count, "fps": info.fps}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
