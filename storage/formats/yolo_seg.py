"""YOLO segmentation export (Ultralytics' documented format), polygons traced from the masks::

    DIR/data.yaml                 ``train``/``val``: ``images`` (one split), ``names``: index -> class name
    DIR/images/<file name>        the image files (``versions export --images``)
    DIR/labels/<file stem>.txt    one line per instance: ``<class index> x1 y1 x2 y2 ...``, normalised to [0, 1]

Coordinates are pixel corners divided by the image's width and height, so a polygon re-rasterised the COCO way
(pixel centres inside, even-odd) gives back the mask exactly. Ultralytics reads one polygon per instance: a mask's
holes are already joined into its outline (:func:`model.masks.mask_to_polygons`), and a mask of several parts has
them joined by zero-width bridges between nearest vertices, as Ultralytics' COCO converter does. An image without
instances gets an empty label file (a background image); video frames have no image file, so no label file either.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from model.instances import Instances
from model.masks import mask_to_polygons
from storage.formats.exporter import ExportedFile, ExportSource

logger = logging.getLogger(__name__)

DATA_YAML = "data.yaml"
IMAGES_DIR = "images"
LABELS_DIR = "labels"


def join_parts(polygons: Sequence[Sequence[float]]) -> list[float]:
    """One flat polygon visiting every part: from the vertex of the polygon so far nearest to the next part, out
    to that part, round it and back (a zero-width bridge adds no area; rasterisers that draw edges, such as
    OpenCV's, paint it as a thin line, kept short this way); ``[]`` for no parts."""
    from scipy.spatial import cKDTree

    if not polygons:
        return []
    joined: np.ndarray = np.asarray(polygons[0], np.float64).reshape(-1, 2)
    for flat in polygons[1:]:
        part: np.ndarray = np.asarray(flat, np.float64).reshape(-1, 2)
        distance, nearest = cKDTree(joined).query(part)
        j = int(np.argmin(distance))
        i = int(nearest[j])
        part = np.roll(part, -j, axis=0)
        joined = np.concatenate([joined[: i + 1], part, part[:1], joined[i:]])
    return [float(v) for v in joined.ravel()]


def label_lines(instances: Instances, class_index: Mapping[str, int]) -> list[str]:
    """One ``<class> x1 y1 ...`` line per instance with a non-empty mask; a label not in ``class_index`` raises
    ``ValueError``. Coordinates with 6 significant digits (as Ultralytics writes them)."""
    height, width = instances.image_size
    lines = []
    for i, (mask, label) in enumerate(zip(instances.masks, instances.labels or [], strict=True)):
        if label not in class_index:
            raise ValueError(f"instance {i}: label {label!r} is not a class; expected one of {list(class_index)}")
        polygon = join_parts(mask_to_polygons(mask))
        if not polygon:
            logger.warning("yolo-seg: instance %d (%s) has an empty mask and is left out", i, label)
            continue
        coords = (v / (width if j % 2 == 0 else height) for j, v in enumerate(polygon))
        lines.append(" ".join([str(class_index[label]), *(f"{c:.6g}" for c in coords)]))
    return lines


def data_yaml(classes: Sequence[str]) -> str:
    """The dataset file: both splits are ``images`` (one split; split it with your trainer), names by index.
    Names are JSON strings, which YAML reads as they are."""
    names = "".join(f"  {i}: {json.dumps(name)}\n" for i, name in enumerate(classes))
    return f"train: {IMAGES_DIR}\nval: {IMAGES_DIR}\nnc: {len(classes)}\nnames:\n{names}"


def write_yolo_seg(source: ExportSource, out_dir: Path) -> list[ExportedFile]:
    """The exporter of the table's ``yolo-seg`` row: ``data.yaml`` and ``labels/<image stem>.txt``."""
    class_index = {name: i for i, name in enumerate(source.classes)}
    labels_dir = out_dir / LABELS_DIR
    labels_dir.mkdir(parents=True, exist_ok=True)
    files = polygons = frames = 0
    for item in source.items:
        if item.frame_index >= 0:
            frames += 1
            continue
        lines = label_lines(item.instances, class_index)
        (labels_dir / f"{Path(item.file_name).stem}.txt").write_text("".join(f"{line}\n" for line in lines))
        files += 1
        polygons += len(lines)
    (out_dir / DATA_YAML).write_text(data_yaml(source.classes))
    summary = f"{files} label files, {polygons} polygons"
    if frames:
        summary += f"; {frames} video frames left out (no image file)"
    return [
        ExportedFile(DATA_YAML, f"YOLO segmentation: {len(source.classes)} classes, images in {IMAGES_DIR}/"),
        ExportedFile(f"{LABELS_DIR}/", summary),
    ]
