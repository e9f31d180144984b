"""Harvest people's corrections from the annotation backend into the catalog, with how much they corrected.

Backend-neutral: the backend (:class:`~storage.annotation.AnnotationBackend`) lists what changed and turns its
regions into instance records; this module decides what is new, stores it and measures agreement.

* Incremental: only tasks changed since the project's ``harvested_until`` cursor are listed, each page stored in one
  transaction; the cursor moves only when every page is stored. Re-harvesting an unchanged annotation is a no-op
  (same content hash).
* Skipped/cancelled annotations are stored with status ``skipped``; bad ones (labels not in the project, masks that
  do not fit the image, an asset deleted from S3) with status ``invalid`` and the reason; empty regions are dropped
  and counted.
* Every accepted image annotation is compared to the task's prediction (the project's model version) and one
  :class:`~storage.catalog.AgreementRow` is written per predicted and per human-added instance.
* Videos reach people in two views: the video task (``<name> (videos)``, ``videorectangle`` boxes) and the key-frame
  image tasks (``<name> (video frames)``, brush masks; their catalog task rows are the video asset at the key
  frame's ``frame_index``). Harvesting the videos project harvests its frames project too (``report.frames``);
  both views' records keep their track id (``track_id``), which the version merges into one set of tracks
  (:mod:`storage.formats.video_tracks_merge`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from storage.agreement import match_instances, strategy_of
from storage.annotation.errors import AnnotationError, ProjectNotFoundError
from storage.annotation.items import ChangedAnnotation, ChangedTask, MediaSize
from storage.annotation.projects import VIDEOS_SUFFIX, find_project, job_project, view_project
from storage.annotation.protocol import AnnotationBackend
from storage.catalog import AgreementRow, Annotation, AnnotationProject, AnnotationTask, Asset, Catalog, Prediction

logger = logging.getLogger(__name__)

CURSOR_MARGIN = timedelta(seconds=60)  # clock skew between us and the backend; overlap is harmless (idempotent)
__all__ = [
    "AnnotationError",
    "HarvestReport",
    "ProjectNotFoundError",
    "content_hash",
    "frames_project_of",
    "harvest",
]


@dataclass
class HarvestReport:
    project: str
    tasks_seen: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0  # annotations skipped/cancelled by people
    invalid: dict[int, str] = field(default_factory=dict)  # the backend's annotation id -> reason
    unknown_tasks: list[int] = field(default_factory=list)  # backend tasks maskloop did not import
    empty_regions: int = 0
    agreement_rows: int = 0
    pages: int = 0
    cursor: datetime | None = None
    frames: HarvestReport | None = None  # the video project's key-frame project, harvested with it

    def total(self, name: str) -> int:
        """An integer count of this report plus its frames project's."""
        own = getattr(self, name)
        count = len(own) if isinstance(own, (dict, list)) else int(own)
        return count + (self.frames.total(name) if self.frames is not None else 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "tasks_seen": self.tasks_seen,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "invalid": {str(k): v for k, v in self.invalid.items()},
            "unknown_tasks": self.unknown_tasks,
            "empty_regions": self.empty_regions,
            "agreement_rows": self.agreement_rows,
            "pages": self.pages,
            "cursor": self.cursor.isoformat() if self.cursor else None,
            **({"frames": self.frames.to_json()} if self.frames is not None else {}),
        }


def content_hash(frame_index: int, records: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of the canonical form of an annotation's instances (labels + masks/boxes, and the track id of a video
    region; region ids and order ignored)."""
    canon: list[list[Any]] = []
    for r in records:
        if "rle" in r:
            entry = [r["label"], "rle", r["rle"]["size"], r["rle"]["counts"]]
        else:
            entry = [r["label"], "boxes", [[int(b[0])] + [round(float(v), 3) for v in b[1:]] for b in r["boxes"]]]
        if r.get("track_id") is not None:  # only video regions have one: image hashes stay what they were
            entry.append(["track", int(r["track_id"])])
        canon.append(entry)
    canon.sort(key=lambda c: json.dumps(c, sort_keys=True))
    blob = json.dumps({"frame_index": int(frame_index), "instances": canon}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _asset_missing(s3: Any, asset: Asset) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=asset.bucket, Key=asset.key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return True
        raise
    return False


def harvest(
    backend: AnnotationBackend,
    catalog: Catalog,
    project: str | AnnotationProject,
    *,
    s3: Any = None,
    page_size: int = 100,
    full: bool = False,
) -> HarvestReport:
    """Pull new and changed annotations of ``project`` (catalog project name on ``backend``, or its row) into the
    catalog.

    ``s3`` (a boto3 client) checks that each annotated task's asset still exists; ``full`` ignores the cursor.
    A video project's key-frame project (:func:`frames_project_of`), when the catalog has one, is harvested after
    it with the same arguments; its report is ``report.frames``.
    """
    row = (
        project
        if not isinstance(project, str)
        else find_project(catalog, project, backend=backend.name, url=backend.url)
    )
    project_version = backend.current_model_version(row)
    report = HarvestReport(project=row.name)
    started = datetime.now(UTC) - CURSOR_MARGIN
    since = None if full else row.harvested_until
    for tasks in backend.changed_annotations(row, since, page_size=page_size):
        report.pages += 1
        report.tasks_seen += len(tasks)
        with catalog.session() as session:
            _store_page(session, backend, row, tasks, project_version, s3, report)
    with catalog.session() as session:
        stored = session.get(AnnotationProject, row.id)
        assert stored is not None
        if stored.harvested_until is None or started > _aware(stored.harvested_until):
            stored.harvested_until = started
        report.cursor = stored.harvested_until
    logger.info("harvested %s: %s", row.name, report.to_json())
    frames = frames_project_of(catalog, row)
    if frames is not None:
        report.frames = harvest(backend, catalog, frames, s3=s3, page_size=page_size, full=full)
    return report


def frames_project_of(catalog: Catalog, project: AnnotationProject) -> AnnotationProject | None:
    """The key-frame image project of video project ``project`` (``<name> (video frames)`` next to
    ``<name> (videos)`` on the same backend server), None when it is not a video project or has none."""
    if project.media_kind != "video" or not project.name.endswith(VIDEOS_SUFFIX):
        return None
    name = view_project(job_project(project.name), "frames")
    with catalog.session() as session:
        return session.scalar(
            select(AnnotationProject).where(
                AnnotationProject.backend == project.backend,
                AnnotationProject.backend_url == project.backend_url,
                AnnotationProject.name == name,
            )
        )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _store_page(
    session: Session,
    backend: AnnotationBackend,
    project: AnnotationProject,
    tasks: Sequence[ChangedTask],
    project_version: str | None,
    s3: Any,
    report: HarvestReport,
) -> None:
    ids = [t.external_task_id for t in tasks]
    task_rows = {
        r.external_task_id: r
        for r in session.scalars(
            select(AnnotationTask).where(
                AnnotationTask.project_id == project.id, AnnotationTask.external_task_id.in_(ids)
            )
        )
    }
    for task in tasks:
        task_row = task_rows.get(task.external_task_id)
        if task_row is None:
            if task.annotations:
                report.unknown_tasks.append(task.external_task_id)
            continue
        if not task.annotations:
            continue
        asset = session.get(Asset, task_row.asset_id)
        assert asset is not None  # the foreign key cascades
        missing = s3 is not None and any(not a.cancelled for a in task.annotations) and _asset_missing(s3, asset)
        existing = {
            a.external_annotation_id: a
            for a in session.scalars(select(Annotation).where(Annotation.task_row_id == task_row.id))
        }
        for ann in task.annotations:
            status, records, reason = _convert(backend, project, ann, asset, report)
            if missing and status == "accepted":
                status, records, reason = "invalid", [], f"asset {asset.uri} was deleted from S3"
            digest = (
                content_hash(task_row.frame_index, records)
                if status == "accepted"
                else hashlib.sha256(f"{status}:{reason}".encode()).hexdigest()
            )
            row = existing.get(ann.external_id)
            if status == "skipped":
                report.skipped += 1
            elif status == "invalid":
                report.invalid[ann.external_id] = str(reason)
            if row is not None and row.content_hash == digest and row.status == status:
                report.unchanged += 1
                continue
            if row is None:
                row = Annotation(task_row_id=task_row.id, external_annotation_id=ann.external_id)
                session.add(row)
                report.created += 1
            else:
                report.updated += 1
                session.execute(delete(AgreementRow).where(AgreementRow.annotation_id == row.id))
            row.status, row.skip_reason, row.result = status, reason, list(ann.result)
            row.instances, row.content_hash, row.external_updated_at = records, digest, ann.updated_at
            session.flush()
            if status == "accepted" and project.media_kind == "image":
                report.agreement_rows += _record_agreement(session, row, task_row, asset, project_version)


def _convert(
    backend: AnnotationBackend,
    project: AnnotationProject,
    ann: ChangedAnnotation,
    asset: Asset,
    report: HarvestReport,
) -> tuple[str, list[dict[str, Any]], str | None]:
    if ann.cancelled:
        return "skipped", [], f"skipped in {backend.title}"  # (part of the stored hash: keep the wording)
    try:
        if project.media_kind == "image" and not (asset.height and asset.width):
            raise AnnotationError(f"asset {asset.uri} has no recorded size")
        media = MediaSize(int(asset.height or 0), int(asset.width or 0), int(asset.frames or 0))
        records, empty = backend.annotation_records(project, ann.result, media)
    except AnnotationError as exc:
        logger.warning("annotation %s of %s is invalid: %s", ann.external_id, asset.uri, exc)
        return "invalid", [], f"annotation {ann.external_id}: {exc}"
    report.empty_regions += empty
    return "accepted", records, None


def _record_agreement(
    session: Session, annotation: Annotation, task_row: AnnotationTask, asset: Asset, project_version: str | None
) -> int:
    """Agreement rows of one image annotation against the task's prediction; 0 when it has none."""
    from model.masks import rles_to_masks

    version = project_version or task_row.last_model_version
    if not version:
        return 0
    prediction = session.scalar(
        select(Prediction).where(
            Prediction.asset_id == asset.id,
            Prediction.model_version == version,
            Prediction.frame_index == task_row.frame_index,
        )
    )
    if prediction is None:
        return 0
    h, w = int(asset.height or 0), int(asset.width or 0)
    preds, humans = prediction.instances or [], annotation.instances or []
    if not isinstance(preds, list) or any("rle" not in r for r in preds):
        return 0  # a video's tracks, not one image's masks
    pred_masks = rles_to_masks([r["rle"] for r in preds]) if preds else np.zeros((0, h, w), bool)
    human_masks = rles_to_masks([r["rle"] for r in humans]) if humans else np.zeros((0, h, w), bool)
    outcomes = match_instances(pred_masks, [r["label"] for r in preds], human_masks, [r["label"] for r in humans])
    strategy = strategy_of(version)
    session.add_all(
        AgreementRow(
            annotation_id=annotation.id,
            prediction_id=prediction.id,
            asset_id=asset.id,
            frame_index=task_row.frame_index,
            model_version=version,
            prompt_strategy=strategy,
            label=o.label,
            pred_index=o.pred_index,
            human_index=o.human_index,
            pred_label=o.pred_label,
            human_label=o.human_label,
            iou=o.iou,
            boundary_f=o.boundary_f,
            outcome=o.outcome,
        )
        for o in outcomes
    )
    return len(outcomes)
