"""The prompts a :class:`model.segmenter.Segmenter` takes, checked: points (P, K, 2) xy with labels (P, K), boxes
(P, 4) xyxy and mask inputs (P, h, w) low-resolution logits, one set per image; and the lineage each mask keeps of
the prompt that made it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model.instances import Prompt


@dataclass(frozen=True)
class PromptArrays:
    """One image's prompts as checked arrays: P prompts of up to three kinds, in original-image pixels."""

    points: np.ndarray | None  # (P, K, 2)
    labels: np.ndarray | None  # (P, K)
    boxes: np.ndarray | None  # (P, 4)
    masks: np.ndarray | None  # (P, h, w)

    @property
    def count(self) -> int:
        for value in (self.points, self.boxes, self.masks):
            if value is not None:
                return int(value.shape[0])
        return 0


def check_prompts(points: Any, labels: Any, boxes: Any, masks: Any, image: int) -> PromptArrays:
    """The prompts of image ``image`` as arrays, or a ``ValueError`` naming the image, what was expected and what
    arrived (shapes, point labels, box corners, counts that disagree, NaN/inf)."""
    where = f"image {image}"
    pts = lab = bxs = msk = None
    if points is not None:
        pts = np.asarray(points, dtype=np.float32)
        if pts.ndim == 2 and pts.shape[-1] == 2:
            pts = pts[:, None, :]
        if pts.ndim != 3 or pts.shape[-1] != 2:
            raise ValueError(f"{where}: points must be (P, K, 2) or (P, 2) xy, got shape {pts.shape}")
        lab = np.ones(pts.shape[:2], np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        if lab.shape == (pts.shape[0],) and pts.shape[1] == 1:
            lab = lab[:, None]
        if lab.shape != pts.shape[:2]:
            raise ValueError(f"{where}: point_labels must have shape {pts.shape[:2]}, got {lab.shape}")
        if not np.isin(lab, (1, 0, -1, -10)).all():
            raise ValueError(f"{where}: point_labels must be 1, 0, -1 or -10 (padding), got {np.unique(lab).tolist()}")
    elif labels is not None:
        raise ValueError(f"{where}: point_labels given without points")
    if boxes is not None:
        raw = np.asarray(boxes, dtype=np.float32)
        if raw.size and (raw.ndim not in (1, 2) or raw.shape[-1] != 4):
            raise ValueError(f"{where}: boxes must be (P, 4) xyxy, got shape {raw.shape}")
        bxs = raw.reshape(-1, 4) if raw.size else np.zeros((0, 4), np.float32)
        if bxs.shape[0] and np.any(bxs[:, 2:] < bxs[:, :2]):
            raise ValueError(
                f"{where}: boxes must be xyxy with x2 >= x1 and y2 >= y1, got {bxs[np.any(bxs[:, 2:] < bxs[:, :2], 1)][0].tolist()}"
            )
    if masks is not None:
        msk = np.asarray(masks, dtype=np.float32)
        if msk.ndim != 3:
            raise ValueError(f"{where}: mask_inputs must be (P, h, w) low-res logits, got shape {msk.shape}")
    counts = {name: v.shape[0] for name, v in (("points", pts), ("boxes", bxs), ("mask_inputs", msk)) if v is not None}
    if len(set(counts.values())) > 1:
        raise ValueError(f"{where}: prompt kinds must have the same count P, got {counts}")
    for name, value in (("points", pts), ("boxes", bxs), ("mask_inputs", msk)):
        if value is not None and not np.all(np.isfinite(value)):
            raise ValueError(f"{where}: {name} must be finite, got NaN/inf")
    return PromptArrays(pts, lab, bxs, msk)


def split_per_image(value: Any, n: int, name: str, single: bool) -> list[Any]:
    """``value`` split into ``n`` per-image entries (``single``: one image, ``value`` is its own)."""
    if value is None:
        return [None] * n
    if single:
        return [value]
    if not isinstance(value, (list, tuple)) or len(value) != n:
        got = (
            f"{type(value).__name__} of length {len(value)}"
            if isinstance(value, (list, tuple))
            else type(value).__name__
        )
        raise ValueError(f"{name}: for {n} images pass a list of {n} per-image arrays (None allowed), got {got}")
    return list(value)


def prompt_lineage(prompts: PromptArrays, model_version: str) -> list[Prompt]:
    """The prompt behind each of the P masks, as the instances record it."""
    out = []
    for i in range(prompts.count):
        params: dict[str, Any] = {}
        kind = "mask"
        if prompts.masks is not None:
            params["mask_input"] = True
        if prompts.points is not None:
            kind = "point"
            params["points"] = prompts.points[i].astype(np.float64).round(2).tolist()  # 2 decimals, not float32 noise
            params["labels"] = prompts.labels[i].tolist()  # type: ignore[index]
        if prompts.boxes is not None:
            kind = "box"
            params["box"] = prompts.boxes[i].astype(np.float64).round(2).tolist()
        out.append(Prompt(kind, params, model_version))
    return out
