"""Label Studio's side of signing media URLs anew (:func:`storage.media_refresh.refresh_media_urls` decides which
tasks are due): each task's media URL replaced, every other field of its data kept, and the new expiry recorded in
the catalog."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import select

from storage.annotation.items import ReplacedMedia
from storage.catalog import AnnotationProject, AnnotationTask, Catalog
from storage.labelstudio.client import LabelStudioClient, LabelStudioError
from storage.labelstudio.config import LabelConfig
from storage.s3 import presigned_url_expiry

logger = logging.getLogger(__name__)


def replace_media_urls(
    client: LabelStudioClient, catalog: Catalog, project: AnnotationProject, urls: Mapping[tuple[int, int], str]
) -> ReplacedMedia:
    """Put ``urls[(asset id, frame index)]`` into each of those tasks of ``project`` (one GET and one PATCH per
    task: Label Studio replaces a task's data whole) and record each URL's expiry. Unknown keys raise
    ``KeyError``; a task gone from Label Studio is left as it is and reported."""
    data_key = LabelConfig.parse(project.label_config).data_key
    with catalog.session() as session:
        rows = session.execute(
            select(AnnotationTask.asset_id, AnnotationTask.frame_index, AnnotationTask.external_task_id).where(
                AnnotationTask.project_id == project.id, AnnotationTask.asset_id.in_({a for a, _ in urls})
            )
        ).all()
    task_of = {(a, f): t for a, f, t in rows}
    unknown = [key for key in urls if key not in task_of]
    if unknown:
        raise KeyError(f"asset {unknown[0][0]} frame {unknown[0][1]} has no task in project {project.name!r}")
    done: dict[tuple[int, int], datetime | None] = {}
    gone: list[tuple[int, int]] = []
    for key, url in urls.items():
        try:
            data = dict(client.get_task(task_of[key]).get("data") or {})
        except LabelStudioError as error:
            if error.status != 404:
                raise
            logger.warning("task %s of project %s is gone from Label Studio; its URL stays", task_of[key], project.name)
            gone.append(key)
            continue
        data[data_key] = url
        client.update_task(task_of[key], data=data)
        done[key] = presigned_url_expiry(url)
    with catalog.session() as session:
        for row in session.scalars(
            select(AnnotationTask).where(
                AnnotationTask.project_id == project.id, AnnotationTask.asset_id.in_({a for a, _ in done})
            )
        ):
            if (row.asset_id, row.frame_index) in done:
                row.media_url_expires_at = done[(row.asset_id, row.frame_index)]
    return ReplacedMedia(len(done), gone)
