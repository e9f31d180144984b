"""The one typed currency between maskloop's stages: the instances found in one image (or one video frame).

Everything downstream of the model (catalog rows, Label Studio results, COCO exports, agreement metrics) is
built from :class:`Instances`; everything upstream (auto-prompters, trackers, priors) produces it.
Validation happens on construction and raises ``ValueError`` naming what was expected and what arrived.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROMPT_KINDS = frozenset({"point", "box", "mask", "text", "grid", "prior", "track", "human"})


@dataclass(frozen=True)
class Prompt:
    """How one instance was made: the lineage stored next to the mask.

    ``kind`` is one of :data:`PROMPT_KINDS`; ``params`` is JSON-serialisable (point coordinates, box, text phrase,
    grid cell, prior annotation id ...); ``model_id`` names the model (and checkpoint short sha) that decoded it.
    """

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    model_id: str = ""

    def __post_init__(self) -> None:
        if self.kind not in PROMPT_KINDS:
            raise ValueError(f"Prompt.kind must be one of {sorted(PROMPT_KINDS)}, got {self.kind!r}")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": _jsonable(dict(self.params)), "model_id": self.model_id}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Prompt:
        return cls(kind=str(data["kind"]), params=dict(data.get("params", {})), model_id=str(data.get("model_id", "")))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _as_float_vector(name: str, value: Any, n: int, default: float) -> np.ndarray:
    if value is None:
        return np.full((n,), default, dtype=np.float32)
    arr = np.asarray(value, dtype=np.float32)
    if arr.shape != (n,):
        raise ValueError(f"Instances.{name} must have shape ({n},) to match {n} masks, got {arr.shape}")
    return arr


@dataclass(eq=False)
class Instances:
    """Instance masks of one image.

    Attributes:
        masks: bool array of shape (N, H, W) — one full-resolution mask per instance.
        boxes: float32 array of shape (N, 4), xyxy in pixels (x1, y1 inclusive; x2, y2 exclusive).
        labels: N class names (the text phrase for text prompts, "object" for class-agnostic modes).
        scores: float32 (N,) — predicted IoU from the mask decoder (or 1.0 for human masks).
        stability: float32 (N,) — stability score (IoU of the mask at logit thresholds ±offset), NaN if unknown.
        detector_scores: float32 (N,) — detector confidence for text prompts, NaN otherwise.
        prompts: N :class:`Prompt` — the lineage of each instance.
        track_ids: int64 (N,) — track id in a video, -1 for still images.
    """

    masks: np.ndarray
    boxes: np.ndarray | None = None
    labels: Sequence[str] | None = None
    scores: np.ndarray | None = None
    stability: np.ndarray | None = None
    detector_scores: np.ndarray | None = None
    prompts: Sequence[Prompt] | None = None
    track_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        masks = np.asarray(self.masks)
        if masks.ndim != 3:
            raise ValueError(f"Instances.masks must be a (N, H, W) array, got shape {masks.shape}")
        if masks.dtype != np.bool_:
            if masks.dtype.kind not in "biu" or (masks.size and not np.isin(masks, (0, 1)).all()):
                raise ValueError(f"Instances.masks must be bool (or 0/1 integers), got dtype {masks.dtype}")
            masks = masks.astype(bool)
        n = masks.shape[0]
        self.masks = masks
        if self.boxes is None:
            from model.masks import masks_to_boxes

            self.boxes = masks_to_boxes(masks)
        boxes = np.asarray(self.boxes, dtype=np.float32)
        if boxes.size == 0:
            boxes = np.zeros((0, 4), np.float32)
        if boxes.shape != (n, 4):
            raise ValueError(f"Instances.boxes must have shape ({n}, 4) xyxy, got {boxes.shape}")
        if n and not np.all(np.isfinite(boxes)):
            raise ValueError("Instances.boxes must be finite xyxy coordinates, got NaN/inf")
        if n and np.any(boxes[:, 2:] < boxes[:, :2]):
            raise ValueError(
                f"Instances.boxes must be xyxy with x2 >= x1 and y2 >= y1, got {boxes[np.any(boxes[:, 2:] < boxes[:, :2], axis=1)][0].tolist()}"
            )
        self.boxes = boxes
        labels = list(self.labels) if self.labels is not None else ["object"] * n
        if len(labels) != n or not all(isinstance(label, str) and label for label in labels):
            raise ValueError(f"Instances.labels must be {n} non-empty strings, got {labels!r}")
        self.labels = labels
        self.scores = _as_float_vector("scores", self.scores, n, 1.0)
        self.stability = _as_float_vector("stability", self.stability, n, math.nan)
        self.detector_scores = _as_float_vector("detector_scores", self.detector_scores, n, math.nan)
        prompts = list(self.prompts) if self.prompts is not None else [Prompt("human")] * n
        if len(prompts) != n or not all(isinstance(p, Prompt) for p in prompts):
            raise ValueError(f"Instances.prompts must be {n} Prompt objects, got {prompts!r}")
        self.prompts = prompts
        track_ids = np.full((n,), -1, np.int64) if self.track_ids is None else np.asarray(self.track_ids, np.int64)
        if track_ids.shape != (n,):
            raise ValueError(f"Instances.track_ids must have shape ({n},), got {track_ids.shape}")
        self.track_ids = track_ids

    # -- construction helpers ---------------------------------------------------------------------------------
    @classmethod
    def empty(cls, height: int, width: int) -> Instances:
        """No instances in an image of ``height`` x ``width`` (a valid result, not an error)."""
        return cls(masks=np.zeros((0, height, width), dtype=bool))

    @classmethod
    def concatenate(cls, parts: Sequence[Instances]) -> Instances:
        if not parts:
            raise ValueError("Instances.concatenate needs at least one Instances to know the image size")
        sizes = {p.image_size for p in parts}
        if len(sizes) != 1:
            raise ValueError(f"Instances.concatenate needs one image size, got {sorted(sizes)}")
        return cls(
            masks=np.concatenate([p.masks for p in parts]),
            boxes=np.concatenate([p.boxes for p in parts]),  # type: ignore[misc]
            labels=[label for p in parts for label in p.labels],  # type: ignore[union-attr]
            scores=np.concatenate([p.scores for p in parts]),  # type: ignore[misc]
            stability=np.concatenate([p.stability for p in parts]),  # type: ignore[misc]
            detector_scores=np.concatenate([p.detector_scores for p in parts]),  # type: ignore[misc]
            prompts=[pr for p in parts for pr in p.prompts],  # type: ignore[union-attr]
            track_ids=np.concatenate([p.track_ids for p in parts]),  # type: ignore[misc]
        )

    # -- access -------------------------------------------------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the image the masks belong to."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def __getitem__(self, index: Any) -> Instances:
        """Select instances by int, slice, index array or bool array; always returns Instances."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        return Instances(
            masks=self.masks[idx],
            boxes=self.boxes[idx],  # type: ignore[index]
            labels=[self.labels[i] for i in idx],  # type: ignore[index]
            scores=self.scores[idx],  # type: ignore[index]
            stability=self.stability[idx],  # type: ignore[index]
            detector_scores=self.detector_scores[idx],  # type: ignore[index]
            prompts=[self.prompts[i] for i in idx],  # type: ignore[index]
            track_ids=self.track_ids[idx],  # type: ignore[index]
        )

    @property
    def areas(self) -> np.ndarray:
        return self.masks.reshape(len(self), -1).sum(axis=1).astype(np.int64)

    # -- serialisation: the form stored in SQL and passed between processes -----------------------------------
    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-serialisable dict per instance, the mask as COCO RLE (``counts`` as str)."""
        from model.masks import masks_to_rles

        rles = masks_to_rles(self.masks)
        return [
            {
                "rle": rles[i],
                "box": [float(v) for v in self.boxes[i]],  # type: ignore[index]
                "label": self.labels[i],  # type: ignore[index]
                "score": float(self.scores[i]),  # type: ignore[index]
                "stability": _nan_to_none(self.stability[i]),  # type: ignore[index]
                "detector_score": _nan_to_none(self.detector_scores[i]),  # type: ignore[index]
                "prompt": self.prompts[i].to_json(),  # type: ignore[index]
                "track_id": int(self.track_ids[i]),  # type: ignore[index]
            }
            for i in range(len(self))
        ]

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]], height: int, width: int) -> Instances:
        """Inverse of :meth:`to_records`; ``height``/``width`` are needed when ``records`` is empty."""
        from model.masks import rles_to_masks

        if not records:
            return cls.empty(height, width)
        masks = rles_to_masks([r["rle"] for r in records])
        if masks.shape[1:] != (height, width):
            raise ValueError(
                f"Instances.from_records: RLE size {masks.shape[1:]} does not match image ({height}, {width})"
            )
        return cls(
            masks=masks,
            boxes=np.array([r["box"] for r in records], np.float32),
            labels=[r["label"] for r in records],
            scores=np.array([r["score"] for r in records], np.float32),
            stability=np.array([_none_to_nan(r.get("stability")) for r in records], np.float32),
            detector_scores=np.array([_none_to_nan(r.get("detector_score")) for r in records], np.float32),
            prompts=[Prompt.from_json(r["prompt"]) for r in records],
            track_ids=np.array([r.get("track_id", -1) for r in records], np.int64),
        )


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(float(value)) else float(value)


def _none_to_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
