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
from storage.labelstudio.client import LabelStudioClient
from storage.labelstudio.config import LabelConfig
from storage.s3 import presigned_url_expiry

logger = logging.getLogger(__name__)


def replace_media_urls(
    client: LabelStudioClient, catalog: Catalog, project: AnnotationProject, urls: Mapping[tuple[int, int], str]
) -> ReplacedMedia:
    """Put ``urls[(asset id, frame index)]`` into each of those tasks of ``project`` (their data read in one
    listing, then one PATCH per task: Label Studio replaces a task's data whole) and record each URL's expiry.
    Unknown keys raise ``KeyError``; a task gone from Label Studio is left as it is and reported."""
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
    key_of = {task: key for key, task in task_of.items() if key in urls}
    for task in client.selected_tasks(project.external_project_id, list(key_of)):  # one listing, not a GET per task
        key = key_of[int(task["id"])]
        data = dict(task.get("data") or {})
        data[data_key] = urls[key]
        client.update_task(int(task["id"]), data=data)
        done[key] = presigned_url_expiry(urls[key])
    gone = [key for key in urls if key not in done]
    if gone:
        logger.warning("%d tasks of project %s are gone from Label Studio; their URLs stay", len(gone), project.name)
    with catalog.session() as session:
        for row in session.scalars(
            select(AnnotationTask).where(
                AnnotationTask.project_id == project.id, AnnotationTask.asset_id.in_({a for a, _ in done})
            )
        ):
            if (row.asset_id, row.frame_index) in done:
                row.media_url_expires_at = done[(row.asset_id, row.frame_index)]
    return ReplacedMedia(len(done), gone)
