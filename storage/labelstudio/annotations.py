"""Label Studio's side of the harvest: changed tasks listed through the data manager, and annotation results turned
into maskloop's instance records (pure converters).

* Incremental: tasks updated after a time are listed with the data manager's ``tasks:updated_at`` filter, paged in
  id order.
* Image regions (brush RLE, polygons, rectangles in percent) become COCO-RLE instance records; video tracks
  (``videorectangle`` keyframes) are interpolated to per-frame boxes. Labels not in the config and shapes that do
  not fit the image raise :class:`~storage.annotation.errors.AnnotationError` naming the region; empty brush
  regions are dropped and counted.
* Track identity (videos): a ``videorectangle`` region's record and a key-frame task's brush region's record carry
  ``track_id``, read from the region's ``meta.track_id`` or else its id (``track-<id>`` for the video task,
  ``track-<id>-f<frame>`` for a key-frame task, :mod:`storage.formats.ls_video` / :mod:`storage.formats.ls_frames`);
  a region a person added has neither, and its record has no ``track_id`` (the version's merge numbers it,
  :mod:`storage.formats.video_tracks_merge`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from storage.annotation.errors import AnnotationError
from storage.annotation.items import ChangedAnnotation, ChangedTask, MediaSize
from storage.labelstudio.client import LabelStudioClient, LabelStudioError
from storage.labelstudio.config import LabelConfig
from storage.labelstudio.convert import BRUSH, POLYGON, RECTANGLE, result_to_mask

LS_DATETIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # Label Studio's data manager filter format (UTC)
_IMAGE_TYPES = (BRUSH, POLYGON, RECTANGLE)
_TRACK_REGION_ID = re.compile(r"^track-(\d+)(?:-f\d+)?$")


def track_id_of(result: Mapping[str, Any]) -> int | None:
    """The track a region belongs to: ``meta.track_id`` (an integer >= 0), else the number in a region id
    ``track-<id>`` or ``track-<id>-f<frame>``; None for a region without one (drawn by a person)."""
    meta = result.get("meta")
    if isinstance(meta, Mapping):
        value = meta.get("track_id")
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
    found = _TRACK_REGION_ID.match(str(result.get("id", "")))
    return int(found.group(1)) if found else None


# -- pure converters ---------------------------------------------------------------------------------------------
def annotation_records(
    config: LabelConfig, media_kind: str, result: Sequence[Mapping[str, Any]], media: MediaSize
) -> tuple[list[dict[str, Any]], int]:
    """The instance records of one annotation's ``result`` in a ``media_kind`` project, and how many empty regions
    were dropped (:meth:`storage.annotation.AnnotationBackend.annotation_records`)."""
    if media_kind == "video":
        return video_records(result, config, media.frames, media.height, media.width), 0
    if not media.height or not media.width:
        raise AnnotationError(f"the asset has no recorded size ({media.width}x{media.height})")
    return image_records(result, config, media.height, media.width)


def changed_task(task: Mapping[str, Any]) -> ChangedTask:
    """One task of the data manager's listing (``fields=all``) with its annotations."""
    return ChangedTask(
        int(task["id"]),
        [
            ChangedAnnotation(
                int(ann["id"]),
                list(ann.get("result") or []),
                bool(ann.get("was_cancelled")),
                parse_time(ann.get("updated_at")),
            )
            for ann in task.get("annotations") or []
        ],
    )


def parse_time(value: Any) -> datetime | None:
    """Label Studio's ISO time (``Z`` or an offset; naive means UTC)."""
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


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
        record: dict[str, Any] = {
            "region_id": str(rid),
            "label": label,
            "rle": mask_to_rle(mask),
            "box": [float(v) for v in box],
        }
        track_id = track_id_of(result)
        if track_id is not None:
            record["track_id"] = track_id
        records.append(record)
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
        record: dict[str, Any] = {"region_id": str(rid), "label": labels[0], "boxes": boxes}
        track_id = track_id_of(result)
        if track_id is not None:
            record["track_id"] = track_id
        records.append(record)
    return records


# -- listing -----------------------------------------------------------------------------------------------------
def iter_task_pages(
    client: LabelStudioClient, external_project_id: int, since: datetime | None, page_size: int = 100
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
            "project": external_project_id,
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
