"""Harvest human corrections from Label Studio into the catalog, with how much people corrected.

* Incremental: only tasks updated since the project's ``harvested_until`` cursor are listed (Label Studio's data
  manager filter on ``tasks:updated_at``, paged), each page stored in one transaction; the cursor moves only when
  every page is stored. Re-harvesting an unchanged annotation is a no-op (same content hash).
* Image regions (brush RLE, polygons, rectangles in percent) become COCO-RLE instance records; video tracks
  (``videorectangle`` keyframes) are interpolated to per-frame boxes.
* Skipped/cancelled annotations are stored with status ``skipped``; bad ones (labels not in the config, masks that
  do not fit the image, an asset deleted from S3) with status ``invalid`` and the reason; empty brush regions are
  dropped and counted.
* Every accepted image annotation is compared to the task's prediction (the project's model version) and one
  :class:`~storage.catalog.AgreementRow` is written per predicted and per human-added instance.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from storage.agreement import match_instances, strategy_of
from storage.catalog import AgreementRow, Annotation, Asset, Catalog, LabelStudioProject, LabelStudioTask, Prediction
from storage.labelstudio.client import LabelStudioClient, LabelStudioError
from storage.labelstudio.config import LabelConfig
from storage.labelstudio.convert import BRUSH, POLYGON, RECTANGLE, result_to_mask

logger = logging.getLogger(__name__)

LS_DATETIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # Label Studio's data manager filter format (UTC)
CURSOR_MARGIN = timedelta(seconds=60)  # clock skew between us and Label Studio; overlap is harmless (idempotent)
_IMAGE_TYPES = (BRUSH, POLYGON, RECTANGLE)


class ProjectNotFoundError(LookupError):
    """The Label Studio project is unknown to the catalog or no longer exists on the server."""

    def __init__(self, project: str, reason: str) -> None:
        super().__init__(f"Label Studio project {project!r}: {reason}")
        self.project = project


class AnnotationError(ValueError):
    """One annotation cannot be used (the reason names the region)."""


@dataclass
class HarvestReport:
    project: str
    tasks_seen: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0  # annotations skipped/cancelled by people
    invalid: dict[int, str] = field(default_factory=dict)  # ls annotation id -> reason
    unknown_tasks: list[int] = field(default_factory=list)  # Label Studio tasks maskloop did not import
    empty_regions: int = 0
    agreement_rows: int = 0
    pages: int = 0
    cursor: datetime | None = None

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
        }


# -- pure converters ---------------------------------------------------------------------------------------------
def content_hash(frame_index: int, records: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of the canonical form of an annotation's instances (labels + masks/boxes; ids and order ignored)."""
    canon = []
    for r in records:
        if "rle" in r:
            canon.append([r["label"], "rle", r["rle"]["size"], r["rle"]["counts"]])
        else:
            canon.append([r["label"], "boxes", [[int(b[0])] + [round(float(v), 3) for v in b[1:]] for b in r["boxes"]]])
    canon.sort(key=lambda c: json.dumps(c, sort_keys=True))
    blob = json.dumps({"frame_index": int(frame_index), "instances": canon}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def image_records(
    results: Sequence[Mapping[str, Any]], config: LabelConfig, height: int, width: int
) -> tuple[list[dict[str, Any]], int]:
    """COCO-RLE instance records of an image annotation's regions, and how many empty regions were dropped.

    Raises :class:`AnnotationError` for a label not in the config or a mask that does not fit the image.
    """
    from model.masks import mask_to_rle, masks_to_boxes

    records: list[dict[str, Any]] = []
    empty = 0
    for result in results:
        if str(result.get("type", "")).lower() not in _IMAGE_TYPES:
            continue
        rid = result.get("id", "?")
        try:
            config.validate_result(result)
            ow, oh = result.get("original_width"), result.get("original_height")
            if (oh, ow) != (height, width):
                raise ValueError(f"region is drawn on a {ow}x{oh} image, the asset is {width}x{height}")
            label, mask = result_to_mask(result, height, width)
            if str(result.get("type")).lower() != BRUSH:
                _check_in_bounds(result)
        except ValueError as exc:
            raise AnnotationError(f"region {rid!r}: {exc}") from exc
        if not mask.any():
            empty += 1
            continue
        box = masks_to_boxes(mask[None])[0]
        records.append(
            {"region_id": str(rid), "label": label, "rle": mask_to_rle(mask), "box": [float(v) for v in box]}
        )
    return records, empty


def _check_in_bounds(result: Mapping[str, Any], slack: float = 0.5) -> None:
    value = result.get("value") or {}
    if "points" in value:
        xs = [float(p[0]) for p in value["points"]]
        ys = [float(p[1]) for p in value["points"]]
    else:
        x, y = float(value.get("x", 0.0)), float(value.get("y", 0.0))
        xs, ys = [x, x + float(value.get("width", 0.0))], [y, y + float(value.get("height", 0.0))]
    if xs and (min(xs + ys) < -slack or max(xs + ys) > 100.0 + slack):
        raise ValueError(
            f"coordinates leave the image (percent range {min(xs + ys):.1f}..{max(xs + ys):.1f}, expected 0..100)"
        )


def interpolate_sequence(
    sequence: Sequence[Mapping[str, Any]], frames_count: int, height: int, width: int
) -> list[list[float]]:
    """Per-frame ``[frame_index, x1, y1, x2, y2]`` pixel boxes of one ``videorectangle`` track.

    Keyframes are 1-based and in percent; boxes are interpolated linearly between an enabled keyframe and the next;
    a disabled keyframe ends the region there; an enabled last keyframe lasts to the clip's last frame.
    """
    if frames_count <= 0 or height <= 0 or width <= 0:
        raise ValueError(f"video size must be positive, got {frames_count} frames of {width}x{height}")
    keys = sorted(sequence, key=lambda k: int(k["frame"]))
    frames = [int(k["frame"]) for k in keys]
    if len(set(frames)) != len(frames):
        raise ValueError(f"videorectangle keyframes repeat a frame: {frames}")
    out: list[list[float]] = []

    def box(k: Mapping[str, Any]) -> np.ndarray:
        x, y = float(k["x"]) * width / 100.0, float(k["y"]) * height / 100.0
        return np.array([x, y, x + float(k["width"]) * width / 100.0, y + float(k["height"]) * height / 100.0])

    for i, key in enumerate(keys):
        start = int(key["frame"])
        if start < 1 or start > frames_count:
            raise ValueError(f"videorectangle keyframe {start} is outside the clip's frames 1..{frames_count}")
        a = box(key)
        if not key.get("enabled", True):
            out.append([start - 1, *a.tolist()])
            continue
        nxt = keys[i + 1] if i + 1 < len(keys) else None
        end = int(nxt["frame"]) if nxt is not None else frames_count + 1
        b = box(nxt) if nxt is not None else a
        for f in range(start, end):
            t = (f - start) / (end - start) if nxt is not None else 0.0
            out.append([f - 1, *(a + t * (b - a)).tolist()])
    clip = np.array([width, height, width, height], np.float64)
    return [[int(r[0]), *np.clip(np.array(r[1:]), 0, clip).round(3).tolist()] for r in out]


def video_records(
    results: Sequence[Mapping[str, Any]], config: LabelConfig, frames_count: int, height: int, width: int
) -> list[dict[str, Any]]:
    records = []
    for result in results:
        if str(result.get("type", "")).lower() != "videorectangle":
            continue
        rid = result.get("id", "?")
        try:
            config.validate_result(result)
            value = result["value"]
            labels = value.get("labels") or []
            if len(labels) != 1:
                raise ValueError(f"a video track must carry exactly one label, got {labels!r}")
            count = int(value.get("framesCount") or frames_count)
            boxes = interpolate_sequence(value["sequence"], count, height, width)
        except (ValueError, KeyError, TypeError) as exc:
            raise AnnotationError(f"region {rid!r}: {exc}") from exc
        records.append({"region_id": str(rid), "label": labels[0], "boxes": boxes})
    return records


# -- Label Studio listing ------------------------------------------------------------------------------------------
def iter_task_pages(
    client: LabelStudioClient, ls_project_id: int, since: datetime | None, page_size: int = 100
) -> Iterator[list[dict[str, Any]]]:
    """Pages of tasks (with annotations) updated after ``since`` (all tasks when None), in id order."""
    query: dict[str, Any] = {"filters": {"conjunction": "and", "items": []}, "ordering": ["tasks:id"]}
    if since is not None:
        value = since.astimezone(UTC).strftime(LS_DATETIME)
        query["filters"]["items"].append(
            {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": value}
        )
    page = 1
    while True:
        params = {
            "project": ls_project_id,
            "page": page,
            "page_size": page_size,
            "fields": "all",
            "resolve_uri": "false",
            "query": json.dumps(query),
        }
        try:
            data = client.request("GET", "/api/tasks/", params=params)
        except LabelStudioError as exc:
            if exc.status == 404:  # past the last page
                return
            raise
        tasks = data.get("tasks", []) if isinstance(data, dict) else data
        if tasks:
            yield tasks
        if len(tasks) < page_size:
            return
        page += 1


# -- harvest -----------------------------------------------------------------------------------------------------
def find_project(catalog: Catalog, client: LabelStudioClient, name: str) -> LabelStudioProject:
    with catalog.session() as session:
        row = session.scalar(
            select(LabelStudioProject).where(LabelStudioProject.ls_url == client.url, LabelStudioProject.name == name)
        )
    if row is None:
        raise ProjectNotFoundError(name, f"not in the catalog for {client.url} (pre-label into it first)")
    return row


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


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
    client: LabelStudioClient,
    catalog: Catalog,
    project: str | LabelStudioProject,
    *,
    s3: Any = None,
    page_size: int = 100,
    full: bool = False,
) -> HarvestReport:
    """Pull new and changed annotations of ``project`` (catalog project name or row) into the catalog.

    ``s3`` (a boto3 client) checks that each annotated task's asset still exists; ``full`` ignores the cursor.
    """
    row = find_project(catalog, client, project) if isinstance(project, str) else project
    try:
        ls_project = client.get_project(row.ls_project_id)
    except LabelStudioError as exc:
        if exc.status == 404:
            raise ProjectNotFoundError(
                row.name, f"project id {row.ls_project_id} does not exist on {client.url}"
            ) from exc
        raise
    project_version = ls_project.get("model_version") or None
    config = LabelConfig.parse(row.label_config)
    report = HarvestReport(project=row.name)
    started = datetime.now(UTC) - CURSOR_MARGIN
    since = None if full else row.harvested_until
    for tasks in iter_task_pages(client, row.ls_project_id, since, page_size):
        report.pages += 1
        report.tasks_seen += len(tasks)
        with catalog.session() as session:
            _store_page(session, row, config, tasks, project_version, s3, report)
    with catalog.session() as session:
        stored = session.get(LabelStudioProject, row.id)
        assert stored is not None
        if stored.harvested_until is None or started > _aware(stored.harvested_until):
            stored.harvested_until = started
        report.cursor = stored.harvested_until
    logger.info("harvested %s: %s", row.name, report.to_json())
    return report


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _store_page(
    session: Session,
    project: LabelStudioProject,
    config: LabelConfig,
    tasks: Sequence[Mapping[str, Any]],
    project_version: str | None,
    s3: Any,
    report: HarvestReport,
) -> None:
    ids = [int(t["id"]) for t in tasks]
    task_rows = {
        r.ls_task_id: r
        for r in session.scalars(
            select(LabelStudioTask).where(LabelStudioTask.project_id == project.id, LabelStudioTask.ls_task_id.in_(ids))
        )
    }
    for task in tasks:
        annotations = task.get("annotations") or []
        task_row = task_rows.get(int(task["id"]))
        if task_row is None:
            if annotations:
                report.unknown_tasks.append(int(task["id"]))
            continue
        if not annotations:
            continue
        asset = session.get(Asset, task_row.asset_id)
        assert asset is not None  # the foreign key cascades
        missing = s3 is not None and any(not a.get("was_cancelled") for a in annotations) and _asset_missing(s3, asset)
        existing = {
            a.ls_annotation_id: a
            for a in session.scalars(select(Annotation).where(Annotation.ls_task_row_id == task_row.id))
        }
        for ann in annotations:
            status, records, reason = _convert(ann, config, project.media_kind, asset, report)
            if missing and status == "accepted":
                status, records, reason = "invalid", [], f"asset {asset.uri} was deleted from S3"
            digest = (
                content_hash(task_row.frame_index, records)
                if status == "accepted"
                else hashlib.sha256(f"{status}:{reason}".encode()).hexdigest()
            )
            row = existing.get(int(ann["id"]))
            if status == "skipped":
                report.skipped += 1
            elif status == "invalid":
                report.invalid[int(ann["id"])] = str(reason)
            if row is not None and row.content_hash == digest and row.status == status:
                report.unchanged += 1
                continue
            if row is None:
                row = Annotation(ls_task_row_id=task_row.id, ls_annotation_id=int(ann["id"]))
                session.add(row)
                report.created += 1
            else:
                report.updated += 1
                session.execute(delete(AgreementRow).where(AgreementRow.annotation_id == row.id))
            row.status, row.skip_reason, row.result = status, reason, list(ann.get("result") or [])
            row.instances, row.content_hash, row.ls_updated_at = records, digest, _parse_time(ann.get("updated_at"))
            session.flush()
            if status == "accepted" and project.media_kind == "image":
                report.agreement_rows += _record_agreement(session, row, task_row, asset, project_version)


def _convert(
    ann: Mapping[str, Any], config: LabelConfig, media_kind: str, asset: Asset, report: HarvestReport
) -> tuple[str, list[dict[str, Any]], str | None]:
    if ann.get("was_cancelled"):
        return "skipped", [], "skipped in Label Studio"
    results = ann.get("result") or []
    try:
        if media_kind == "video":
            frames = int(asset.frames or 0)
            return (
                "accepted",
                video_records(results, config, frames, int(asset.height or 0), int(asset.width or 0)),
                None,
            )
        if not asset.height or not asset.width:
            raise AnnotationError(f"asset {asset.uri} has no recorded size")
        records, empty = image_records(results, config, int(asset.height), int(asset.width))
    except AnnotationError as exc:
        logger.warning("annotation %s of %s is invalid: %s", ann.get("id"), asset.uri, exc)
        return "invalid", [], f"annotation {ann.get('id')}: {exc}"
    report.empty_regions += empty
    return "accepted", records, None


def _record_agreement(
    session: Session, annotation: Annotation, task_row: LabelStudioTask, asset: Asset, project_version: str | None
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
