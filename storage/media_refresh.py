"""Media URLs of the tasks maskloop imported, signed anew before they expire.

Tasks carry presigned S3 URLs (``Settings.presign_ttl_s``: SigV4 allows at most 7 days) and a labelling campaign
lasts longer; a URL that expired shows people a broken image. The catalog records when each task's URL expires
(``AnnotationTask.media_url_expires_at``). :func:`refresh_media_urls` signs anew the URLs of a project's tasks (and
of its key-frame project's) that expire within ``within_s``, or whose expiry was never recorded (tasks imported
before it was), a chunk at a time: a crash loses at most one chunk and a rerun does only what is still due. The
harvest flow runs it after every harvest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select

from storage.annotation import find_project
from storage.catalog import AnnotationTask, Asset
from storage.harvest import frames_project_of
from storage.prelabel.frames import frame_key
from storage.s3 import presigned_get_url
from storage.services import Services

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MediaRefresh:
    """How many tasks got a newly signed media URL, and how many were due but are gone from the backend."""

    refreshed: int = 0
    gone: int = 0


def refresh_media_urls(services: Services, project: str, within_s: int, *, chunk: int = 200) -> MediaRefresh:
    """Sign anew the media URLs of ``project`` (a catalog project name) and of its key-frame project that expire
    within ``within_s`` seconds (0: nothing is done); each new URL lives ``Settings.presign_ttl_s``."""
    settings, catalog, backend = services.settings, services.catalog, services.annotation
    if within_s <= 0:
        return MediaRefresh()
    if within_s >= settings.presign_ttl_s:
        raise ValueError(
            f"the refresh window ({within_s} s) must be shorter than the URLs' lifetime (presign_ttl_s "
            f"{settings.presign_ttl_s} s): otherwise every URL is due at every run"
        )
    row = find_project(catalog, project, backend=backend.name, url=backend.url)
    before = datetime.now(UTC) + timedelta(seconds=within_s)
    expires = AnnotationTask.media_url_expires_at
    refreshed = gone = 0
    for target in (row, frames_project_of(catalog, row)):
        if target is None:
            continue
        with catalog.session() as session:
            due = session.execute(
                select(AnnotationTask.frame_index, Asset)
                .join(Asset, Asset.id == AnnotationTask.asset_id)
                .where(AnnotationTask.project_id == target.id, or_(expires.is_(None), expires < before))
                .order_by(AnnotationTask.id)
            ).all()
        for start in range(0, len(due), chunk):
            urls = {
                (asset.id, frame): presigned_get_url(
                    services.s3,
                    asset.bucket,
                    asset.key if frame < 0 else frame_key(settings.frames_prefix, asset, frame),
                    settings.presign_ttl_s,
                )
                for frame, asset in due[start : start + chunk]
            }
            report = backend.replace_media_urls(catalog, target, urls)
            refreshed += report.replaced
            gone += len(report.gone)
        if due:
            logger.info("%s: %d media URLs signed anew", target.name, len(due))
    return MediaRefresh(refreshed, gone)
