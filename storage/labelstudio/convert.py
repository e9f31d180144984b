"""Pure converters between maskloop's :class:`Instances` and Label Studio result dicts.

* Brush masks use Label Studio's brush RLE (:mod:`storage.labelstudio.brush`): from dense masks, or from the
  catalog's COCO RLE records without decoding them (all of an image's masks in one pass).
* Polygons and rectangles are in percent of the image size, as the editor stores them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from model.instances import Instances, Prompt
from storage.labelstudio.brush import brush_rle_to_mask, coco_counts, coco_counts_to_brush_rles, mask_to_brush_rle

BRUSH, POLYGON, RECTANGLE = "brushlabels", "polygonlabels", "rectanglelabels"


# -- Instances -> results ----------------------------------------------------------------------------------------
def _base(
    rid: str, kind: str, from_name: str, to_name: str, height: int, width: int, score: float | None
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "id": rid,
        "type": kind,
        "from_name": from_name,
        "to_name": to_name,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
    }
    if score is not None:
        result["score"] = float(score)
    return result


def box_to_percent(box: Sequence[float], height: int, width: int) -> dict[str, float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return {
        "x": 100.0 * x1 / width,
        "y": 100.0 * y1 / height,
        "width": 100.0 * (x2 - x1) / width,
        "height": 100.0 * (y2 - y1) / height,
        "rotation": 0.0,
    }


def instances_to_results(
    instances: Instances,
    *,
    to_name: str = "image",
    brush_from: str | None = "brush",
    polygon_from: str | None = None,
    rectangle_from: str | None = None,
    polygon_tolerance: float = 1.0,
    id_prefix: str = "",
) -> list[dict[str, Any]]:
    """Label Studio results (one region per instance per enabled tag) with per-region ``score``.

    Empty masks get no brush/polygon region (the editor cannot show them); rectangles come from ``boxes``.
    """
    height, width = instances.image_size
    results: list[dict[str, Any]] = []
    for i in range(len(instances)):
        mask = instances.masks[i]
        results += _regions(
            _Region(i, instances.labels[i], float(instances.scores[i]), instances.boxes[i], bool(mask.any())),  # type: ignore[index]
            height,
            width,
            partial(mask_to_brush_rle, mask),
            partial(np.asarray, mask),
            to_name=to_name,
            brush_from=brush_from,
            polygon_from=polygon_from,
            rectangle_from=rectangle_from,
            polygon_tolerance=polygon_tolerance,
            id_prefix=id_prefix,
        )
    return results


def records_to_results(
    records: Sequence[Mapping[str, Any]],
    height: int,
    width: int,
    *,
    to_name: str = "image",
    brush_from: str | None = "brush",
    polygon_from: str | None = None,
    rectangle_from: str | None = None,
    polygon_tolerance: float = 1.0,
    id_prefix: str = "",
) -> list[dict[str, Any]]:
    """:func:`instances_to_results` of ``Instances.from_records(records, height, width)``, the same results, but
    brush regions come from each record's COCO RLE directly (:func:`coco_rle_to_brush_rle`): no mask is decoded
    unless polygons are asked for."""
    from model.masks import rle_to_mask

    counts = []
    for record in records:
        rle = record["rle"]
        if [int(v) for v in rle["size"]] != [height, width]:
            raise ValueError(f"records_to_results: RLE size {rle['size']} does not match image ({height}, {width})")
        counts.append(coco_counts(rle["counts"]))
    has_pixels = [bool(c[1::2].any()) for c in counts]
    painted = [i for i, has in enumerate(has_pixels) if has] if brush_from else []
    brushes = dict(zip(painted, coco_counts_to_brush_rles([counts[i] for i in painted], height, width), strict=True))
    results: list[dict[str, Any]] = []
    for i, record in enumerate(records):
        score = float(np.float32(record["score"]))  # as Instances holds it
        results += _regions(
            _Region(i, str(record["label"]), score, record["box"], has_pixels[i]),
            height,
            width,
            partial(brushes.__getitem__, i),
            partial(rle_to_mask, record["rle"]),
            to_name=to_name,
            brush_from=brush_from,
            polygon_from=polygon_from,
            rectangle_from=rectangle_from,
            polygon_tolerance=polygon_tolerance,
            id_prefix=id_prefix,
        )
    return results


@dataclass(frozen=True)
class _Region:
    index: int
    label: str
    score: float
    box: Sequence[float]
    has_pixels: bool


def _regions(
    region: _Region,
    height: int,
    width: int,
    brush: Callable[[], list[int]],
    mask: Callable[[], np.ndarray],
    *,
    to_name: str,
    brush_from: str | None,
    polygon_from: str | None,
    rectangle_from: str | None,
    polygon_tolerance: float,
    id_prefix: str,
) -> list[dict[str, Any]]:
    """The results of one instance: brush and polygons when it has pixels, a rectangle from its box."""
    from model.masks import mask_to_polygons

    i, label, score = region.index, region.label, region.score
    results: list[dict[str, Any]] = []
    if brush_from and region.has_pixels:
        r = _base(f"{id_prefix}b{i}", BRUSH, brush_from, to_name, height, width, score)
        r["value"] = {"format": "rle", "rle": brush(), BRUSH: [label]}
        results.append(r)
    if polygon_from and region.has_pixels:
        for k, poly in enumerate(mask_to_polygons(mask(), tolerance=polygon_tolerance)):
            pts = np.asarray(poly, np.float64).reshape(-1, 2) * (100.0 / width, 100.0 / height)
            r = _base(f"{id_prefix}p{i}_{k}", POLYGON, polygon_from, to_name, height, width, score)
            r["value"] = {"points": pts.tolist(), "closed": True, POLYGON: [label]}
            results.append(r)
    if rectangle_from:
        r = _base(f"{id_prefix}r{i}", RECTANGLE, rectangle_from, to_name, height, width, score)
        r["value"] = {**box_to_percent(region.box, height, width), RECTANGLE: [label]}
        results.append(r)
    return results


# -- results -> Instances ----------------------------------------------------------------------------------------
def _result_size(result: Mapping[str, Any], height: int | None, width: int | None) -> tuple[int, int]:
    h = int(result.get("original_height") or height or 0)
    w = int(result.get("original_width") or width or 0)
    if h <= 0 or w <= 0:
        raise ValueError(
            f"Label Studio result {result.get('id')!r} has no original_width/original_height and no size was given"
        )
    return h, w


def result_to_mask(
    result: Mapping[str, Any], height: int | None = None, width: int | None = None
) -> tuple[str, np.ndarray]:
    """(label, (H, W) bool mask) of one brush, polygon or rectangle result."""
    from model.masks import polygons_to_mask

    kind = str(result.get("type", "")).lower()
    value = result.get("value") or {}
    h, w = _result_size(result, height, width)
    labels = value.get(kind) or []
    if len(labels) != 1:
        raise ValueError(
            f"Label Studio result {result.get('id')!r} must carry exactly one {kind} label, got {labels!r}"
        )
    if kind == BRUSH:
        if value.get("format", "rle") != "rle" or "rle" not in value:
            raise ValueError(f"brush result {result.get('id')!r} must have format 'rle' and an 'rle' list")
        return labels[0], brush_rle_to_mask(value["rle"], h, w)
    if kind == POLYGON:
        pts = np.asarray(value.get("points", []), np.float64).reshape(-1, 2) * (w / 100.0, h / 100.0)
        return labels[0], polygons_to_mask([pts.ravel().tolist()], h, w)
    if kind == RECTANGLE:
        if float(value.get("rotation", 0.0) or 0.0) != 0.0:
            raise ValueError(f"rectangle result {result.get('id')!r} is rotated; only axis-aligned boxes are supported")
        x1, y1 = value["x"] * w / 100.0, value["y"] * h / 100.0
        x2, y2 = x1 + value["width"] * w / 100.0, y1 + value["height"] * h / 100.0
        mask = np.zeros((h, w), bool)
        mask[max(0, round(y1)) : min(h, round(y2)), max(0, round(x1)) : min(w, round(x2))] = True
        return labels[0], mask
    raise ValueError(
        f"Label Studio result {result.get('id')!r} has unsupported type {kind!r}; expected one of {BRUSH}, {POLYGON}, {RECTANGLE}"
    )


def results_to_instances(results: Iterable[Mapping[str, Any]], height: int, width: int) -> Instances:
    """Human masks from an annotation's results (brush, polygon, rectangle regions; other result types ignored)."""
    masks, labels = [], []
    for result in results:
        if str(result.get("type", "")).lower() not in (BRUSH, POLYGON, RECTANGLE):
            continue
        label, mask = result_to_mask(result, height, width)
        if mask.shape != (height, width):
            raise ValueError(
                f"Label Studio result {result.get('id')!r} is {mask.shape}, the image is {(height, width)}"
            )
        masks.append(mask)
        labels.append(label)
    if not masks:
        return Instances.empty(height, width)
    return Instances(masks=np.stack(masks), labels=labels, prompts=[Prompt("human")] * len(masks))
