"""COCO instance-segmentation export of a dataset version, validated by loading it with pycocotools.

Image annotations carry their masks as compressed RLE (or polygons on request, exact with
:func:`model.masks.mask_to_polygons`); video annotations become one COCO image per annotated frame
(``maskloop_frame_index``): an instance with a corrected mask (from a key-frame task) carries it like an image's,
one known only as a Label Studio video box is box-only (the box as a 4-point polygon, ``maskloop_box_only`` set);
merged tracks (:mod:`storage.formats.video_tracks_merge`) put their id in ``maskloop_track_id``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storage.formats.export_layout import DATA_DIR, LABELS_FILE
from storage.formats.exporter import ExportedFile, ExportSource

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CocoSource:
    """One dataset item: an image asset (``frame_index`` -1) or a video asset, and its human instance records.

    A video's records have ``boxes`` rows ``[frame, x1, y1, x2, y2]``, and, from a merge, ``track_id`` and
    ``masks`` (frame -> RLE, the corrected masks); ``frames`` are video frames to list even without an instance.
    """

    asset_id: int
    file_name: str
    width: int
    height: int
    frame_index: int
    media_type: str
    records: Sequence[Mapping[str, Any]]
    frames: Sequence[int] = ()

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(
                f"asset {self.asset_id} ({self.file_name}): size must be positive, got {self.width}x{self.height}"
            )
        if self.media_type not in ("image", "video"):
            raise ValueError(f"asset {self.asset_id}: media_type must be image or video, got {self.media_type!r}")


def _bbox_xywh(box: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def build_coco(
    sources: Sequence[CocoSource],
    classes: Sequence[str],
    *,
    polygons: bool = False,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A COCO dict (images, annotations, categories). Labels outside ``classes`` raise ``ValueError``."""
    from model.masks import mask_to_polygons, rle_area, rle_to_mask

    categories = [{"id": i + 1, "name": c, "supercategory": ""} for i, c in enumerate(classes)]
    cat_ids = {c: i + 1 for i, c in enumerate(classes)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []

    def category(label: str, source: CocoSource) -> int:
        if label not in cat_ids:
            raise ValueError(
                f"asset {source.asset_id} ({source.file_name}): label {label!r} is not a class; expected one of {list(classes)}"
            )
        return cat_ids[label]

    for source in sorted(sources, key=lambda s: (s.file_name, s.frame_index)):
        base = {"width": source.width, "height": source.height, "maskloop_asset_id": source.asset_id}
        if source.media_type == "image":
            image_id = len(images) + 1
            images.append(
                {"id": image_id, "file_name": source.file_name, "maskloop_frame_index": source.frame_index, **base}
            )
            for r in source.records:
                rle = r["rle"]
                entry: dict[str, Any] = {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category(r["label"], source),
                    "iscrowd": 0,
                }
                if polygons:
                    entry["segmentation"] = mask_to_polygons(rle_to_mask(rle))
                else:
                    entry["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"]}
                entry["area"] = float(rle_area(rle))
                entry["bbox"] = _bbox_xywh(r["box"])
                annotations.append(entry)
            continue
        frames: dict[int, list[tuple[str, list[float], Any, Any]]] = {int(f): [] for f in source.frames}
        for r in source.records:
            masks = r.get("masks") or {}
            for frame, *box in r["boxes"]:
                rle = masks.get(int(frame))
                if rle is not None or (box[2] > box[0] and box[3] > box[1]):  # a box squeezed to nothing is none
                    frames.setdefault(int(frame), []).append((r["label"], box, rle, r.get("track_id")))
        for frame in sorted(frames):
            image_id = len(images) + 1
            images.append(
                {
                    "id": image_id,
                    "file_name": f"{source.file_name}#frame={frame}",
                    "maskloop_frame_index": frame,
                    **base,
                }
            )
            for label, (x1, y1, x2, y2), rle, track_id in frames[frame]:
                video_entry: dict[str, Any] = {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category(label, source),
                    "iscrowd": 0,
                }
                if rle is None:
                    video_entry.update(
                        segmentation=[[x1, y1, x2, y1, x2, y2, x1, y2]],
                        area=float((x2 - x1) * (y2 - y1)),
                        bbox=[x1, y1, x2 - x1, y2 - y1],
                        maskloop_box_only=True,
                    )
                else:
                    video_entry.update(
                        segmentation=mask_to_polygons(rle_to_mask(rle))
                        if polygons
                        else {"size": list(rle["size"]), "counts": rle["counts"]},
                        area=float(rle_area(rle)),
                        bbox=_bbox_xywh((x1, y1, x2, y2)),
                    )
                if track_id is not None:
                    video_entry["maskloop_track_id"] = int(track_id)
                annotations.append(video_entry)
    return {
        "info": dict(info or {}),
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


@contextlib.contextmanager
def quiet_stdout(source: str) -> Iterator[None]:
    """Capture what a third-party call prints to ``sys.stdout`` (pycocotools' ``creating index...``) and log it
    at debug level instead. ``sys.stdout`` is process-wide: another thread's prints in the meantime are captured
    too (and logged), so keep the block short."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        if text := buffer.getvalue().strip():
            logger.debug("%s printed: %s", source, " | ".join(text.splitlines()))


def load_coco(data: Mapping[str, Any]) -> Any:
    """A ``pycocotools.coco.COCO`` indexed over ``data`` (no file needed); its prints go to the debug log."""
    from pycocotools.coco import COCO

    with quiet_stdout("pycocotools"):
        coco = COCO()
        coco.dataset = dict(data)
        coco.createIndex()
    return coco


def validate_coco(data: Mapping[str, Any], *, area_tolerance: float = 0.02) -> Any:
    """Load with pycocotools and recompute every mask's area; raises ``ValueError`` naming the first bad annotation.

    Polygon areas may differ slightly from the stored mask area (rasterisation), hence ``area_tolerance``.
    """
    from pycocotools import mask as mask_utils

    try:
        coco = load_coco(data)
    except (KeyError, TypeError, AssertionError) as exc:
        raise ValueError(f"COCO export does not load with pycocotools: {exc!r}") from exc
    for ann in data.get("annotations", []):
        img = coco.imgs.get(ann["image_id"])
        if img is None:
            raise ValueError(f"COCO annotation {ann['id']} refers to missing image {ann['image_id']}")
        if ann["category_id"] not in coco.cats:
            raise ValueError(f"COCO annotation {ann['id']} has unknown category {ann['category_id']}")
        area = float(mask_utils.area(coco.annToRLE(ann)))
        if abs(area - float(ann["area"])) > max(1.0, area_tolerance * max(area, 1.0)):
            raise ValueError(
                f"COCO annotation {ann['id']}: stored area {ann['area']} but the mask covers {area} pixels"
            )
        mask = coco.annToMask(ann)
        if mask.shape != (img["height"], img["width"]) or not np.any(mask):
            raise ValueError(
                f"COCO annotation {ann['id']}: mask is {mask.shape} and {'non-' if np.any(mask) else ''}empty for a {img['width']}x{img['height']} image"
            )
    return coco


def write_coco(source: ExportSource, out_dir: Path) -> list[ExportedFile]:
    """The exporter of the table's ``coco`` row: ``labels.json``, the version's frozen COCO as it was stored (RLE or
    polygons, ``maskloop_*`` fields) but for the file names :func:`~storage.formats.export_layout.plan_export` gave
    it. The frozen document is the version's own form, so it is written, not re-encoded from ``source.items``."""
    if source.coco is None:
        raise ValueError(f"the COCO exporter writes a version's frozen COCO, and none was given for {out_dir}")
    (out_dir / LABELS_FILE).write_text(json.dumps(source.coco))
    images, annotations, categories = (len(source.coco.get(k, [])) for k in ("images", "annotations", "categories"))
    return [
        ExportedFile(
            LABELS_FILE,
            f"COCO: {images} images, {annotations} annotations, {categories} categories "
            f"(file_name relative to {DATA_DIR}/)",
        )
    ]
