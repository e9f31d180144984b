"""Segmentation-native uncertainty for active learning (pure numpy, plus one torch helper that runs the decoder).

Every signal is a *confidence* in [0, 1] (high = the model is probably right, low = a person should look), or NaN
when it cannot be measured for that instance (no detector box, no multimask output ...):

- predicted IoU: the mask decoder's own IoU estimate (``Instances.scores``);
- stability: IoU of the masks at logit thresholds ``t + offset`` and ``t - offset`` (SAM's stability score);
- multimask agreement: 1 - disagreement, the mean pairwise IoU of the decoder's three candidate masks;
- box-mask agreement: IoU of the prompt/detector box with the tight box of the mask (a model that ignores its box
  prompt and segments another object scores low);
- detector margin: how far the detector score is above its decision threshold, scaled to [0, 1].

:func:`instance_confidence` combines the available signals per instance (weighted mean over the non-NaN ones),
:func:`image_confidence` aggregates an image (the weakest instance by default; an image without any instance scores
0: someone should look). Video tracks: :func:`track_signals` measures predicted-IoU drops and mask-area jumps between
consecutive sampled frames and re-identification gaps (the object vanishes on sampled frames and comes back).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from model.instances import Instances
    from model.segmenter import Embeddings, Segmenter
    from model.tracks import Track, VideoTracks

SIGNALS = ("predicted_iou", "stability", "multimask_agreement", "box_agreement", "detector_margin")
Aggregate = Literal["min", "mean", "p25"]
DEFAULT_DETECTOR_THRESHOLD = 0.35  # Grounding DINO box threshold used by the text strategy


# -- per-instance signals ------------------------------------------------------------------------------------------
def _as_stack(name: str, value: Any, ndim: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    return arr


def stability_score(logits: np.ndarray, threshold: float = 0.0, offset: float = 1.0) -> np.ndarray:
    """(N, h, w) mask logits -> (N,) IoU of the masks at ``threshold + offset`` and ``threshold - offset``.

    A mask empty even at the low threshold scores 0 (no object where the prompt asked for one), as in
    :func:`model.preprocess.stability_scores`.
    """
    arr = _as_stack("logits", logits, 3).astype(np.float32)
    if offset <= 0:
        raise ValueError(f"stability offset must be > 0, got {offset}")
    flat = arr.reshape(arr.shape[0], arr.shape[1] * arr.shape[2])
    inter = (flat > threshold + offset).sum(1)
    union = (flat > threshold - offset).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float32)


def _pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two (N, P) bool arrays; two empty masks agree (IoU 1)."""
    inter = (a & b).sum(1)
    union = (a | b).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def multimask_disagreement(logits: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """(N, M, h, w) logits of M candidate masks per prompt -> (N,) 1 - mean pairwise IoU (0 = all agree).

    With fewer than two candidates there is nothing to compare: NaN.
    """
    arr = _as_stack("multimask logits", logits, 4)
    n, m = arr.shape[:2]
    if m < 2:
        return np.full((n,), np.nan, np.float32)
    masks = arr.reshape(n, m, arr.shape[2] * arr.shape[3]) > threshold
    ious = [_pair_iou(masks[:, i], masks[:, j]) for i in range(m) for j in range(i + 1, m)]
    return (1.0 - np.mean(ious, axis=0)).astype(np.float32) if n else np.zeros((0,), np.float32)


def box_mask_iou(boxes: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy prompt/detector boxes vs the tight boxes of (N, H, W) masks -> (N,) IoU.

    An empty mask scores 0; a row of NaN box coordinates (no box for that instance) gives NaN.
    """
    from model.masks import masks_to_boxes

    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    m = _as_stack("masks", masks, 3).astype(bool)
    if b.shape[0] != m.shape[0]:
        raise ValueError(f"box_mask_iou needs one box per mask: {b.shape[0]} boxes, {m.shape[0]} masks")
    out = np.full((b.shape[0],), np.nan, np.float32)
    if b.shape[0] == 0:
        return out
    known = np.all(np.isfinite(b), axis=1)
    mb = masks_to_boxes(m).astype(np.float64)
    empty = ~m.any(axis=(1, 2))
    ix = np.clip(np.minimum(b[:, 2], mb[:, 2]) - np.maximum(b[:, 0], mb[:, 0]), 0, None)
    iy = np.clip(np.minimum(b[:, 3], mb[:, 3]) - np.maximum(b[:, 1], mb[:, 1]), 0, None)
    inter = ix * iy
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    area_m = (mb[:, 2] - mb[:, 0]) * (mb[:, 3] - mb[:, 1])
    union = area_b + area_m - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    iou = np.where(empty, 0.0, iou)
    out[known] = iou[known]
    return out


def detector_margin(scores: np.ndarray, threshold: float = DEFAULT_DETECTOR_THRESHOLD) -> np.ndarray:
    """(N,) detector scores -> (N,) ``(score - threshold) / (1 - threshold)`` clipped to [0, 1]; NaN stays NaN."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"detector threshold must be in [0, 1), got {threshold}")
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    return np.clip((s - threshold) / (1.0 - threshold), 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class InstanceSignals:
    """The confidence signals of N instances, each (N,) float32 in [0, 1] or NaN where unknown."""

    predicted_iou: np.ndarray
    stability: np.ndarray
    multimask_agreement: np.ndarray
    box_agreement: np.ndarray
    detector_margin: np.ndarray

    def __post_init__(self) -> None:
        shapes = {name: np.asarray(getattr(self, name)).shape for name in SIGNALS}
        if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 1:
            raise ValueError(f"InstanceSignals needs one (N,) vector per signal, got shapes {shapes}")
        for name in SIGNALS:
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float32))

    def __len__(self) -> int:
        return int(self.predicted_iou.shape[0])

    def matrix(self) -> np.ndarray:
        """(N, 5) in :data:`SIGNALS` order."""
        return np.stack([getattr(self, name) for name in SIGNALS], axis=1)

    def to_json(self) -> dict[str, list[float | None]]:
        return {name: [None if math.isnan(v) else round(float(v), 6) for v in getattr(self, name)] for name in SIGNALS}


def instance_signals(
    instances: Instances,
    *,
    multimask_logits: np.ndarray | None = None,
    logits: np.ndarray | None = None,
    detector_threshold: float = DEFAULT_DETECTOR_THRESHOLD,
    mask_threshold: float = 0.0,
) -> InstanceSignals:
    """Signals of ``instances``: predicted IoU and stability as stored (stability recomputed when ``logits`` (N, h, w)
    are given), multimask agreement from ``multimask_logits`` (N, 3, h, w), the box of each instance's prompt
    lineage (``params["box"]`` of box/prior/text prompts) against its mask, the detector margin from
    ``detector_scores``."""
    n = len(instances)
    stability = np.asarray(instances.stability, np.float32)
    if logits is not None:
        if np.asarray(logits).shape[0] != n:
            raise ValueError(f"logits must have one row per instance ({n}), got shape {np.asarray(logits).shape}")
        stability = stability_score(np.asarray(logits), mask_threshold)
    agreement: np.ndarray = np.full((n,), np.nan, np.float32)
    if multimask_logits is not None:
        if np.asarray(multimask_logits).shape[0] != n:
            raise ValueError(
                f"multimask_logits must have one row per instance ({n}), got shape {np.asarray(multimask_logits).shape}"
            )
        agreement = 1.0 - multimask_disagreement(np.asarray(multimask_logits), mask_threshold)
    return InstanceSignals(
        predicted_iou=np.clip(np.asarray(instances.scores, np.float32), 0.0, 1.0),
        stability=stability,
        multimask_agreement=agreement,
        box_agreement=box_mask_iou(prompt_boxes(instances), instances.masks),
        detector_margin=detector_margin(np.asarray(instances.detector_scores), detector_threshold),
    )


def prompt_boxes(instances: Instances) -> np.ndarray:
    """(N, 4) the box each instance was prompted with (box, prior or text prompts), NaN rows for the others."""
    out = np.full((len(instances), 4), np.nan, np.float32)
    for i, prompt in enumerate(instances.prompts or []):
        box = prompt.params.get("box") if isinstance(prompt.params, Mapping) else None
        if box is not None and len(box) == 4:
            out[i] = np.asarray(box, np.float32)
    return out


def instance_confidence(signals: InstanceSignals, weights: Mapping[str, float] | None = None) -> np.ndarray:
    """(N,) weighted mean of each instance's known signals (default: equal weights); NaN-only rows score 0."""
    w = {name: 1.0 for name in SIGNALS}
    if weights is not None:
        unknown = sorted(set(weights) - set(SIGNALS))
        if unknown:
            raise ValueError(f"confidence weights name unknown signals {unknown}; known: {list(SIGNALS)}")
        if any(v < 0 for v in weights.values()):
            raise ValueError(f"confidence weights must be >= 0, got {dict(weights)}")
        w.update(weights)
    mat = signals.matrix()
    wv = np.array([w[name] for name in SIGNALS], np.float32)[None, :]
    known = np.isfinite(mat) & (wv > 0)
    total = (np.where(known, wv, 0.0)).sum(1)
    summed = np.where(known, np.nan_to_num(mat) * wv, 0.0).sum(1)
    return np.where(total > 0, summed / np.where(total > 0, total, 1.0), 0.0).astype(np.float32)


def fit_weights(signals: np.ndarray, true_iou: np.ndarray, *, min_instances: int = 8) -> dict[str, float] | None:
    """Signal weights learnt from corrected instances: per signal (columns in :data:`SIGNALS` order), its Spearman
    rank correlation with the instances' true IoU (measured against the people's masks) over the instances where it
    is known, floored at 0 (a signal that does not rank good masks above bad ones gets no say).

    None when fewer than ``min_instances`` instances, or when no signal correlates positively: keep the defaults.
    """
    from scipy.stats import spearmanr

    mat = np.asarray(signals, np.float64)
    target = np.asarray(true_iou, np.float64).reshape(-1)
    if mat.ndim != 2 or mat.shape[1] != len(SIGNALS) or mat.shape[0] != target.shape[0]:
        raise ValueError(
            f"fit_weights needs (N, {len(SIGNALS)}) signals and (N,) true IoU, got {mat.shape} and {target.shape}"
        )
    if target.shape[0] < min_instances:
        return None
    weights: dict[str, float] = {}
    for k, name in enumerate(SIGNALS):
        known = np.isfinite(mat[:, k]) & np.isfinite(target)
        if known.sum() < min_instances or np.ptp(mat[known, k]) == 0 or np.ptp(target[known]) == 0:
            weights[name] = 0.0
            continue
        rho = float(spearmanr(mat[known, k], target[known]).statistic)
        weights[name] = round(max(rho, 0.0), 6) if np.isfinite(rho) else 0.0
    return weights if any(v > 0 for v in weights.values()) else None


def image_confidence(confidences: np.ndarray | Sequence[float], how: Aggregate = "min") -> float:
    """One image's confidence from its instances': the weakest (``min``), the ``mean`` or the 25th percentile.

    An image with no instance (or only NaN) scores 0.0: nothing was found, so someone should look.
    """
    values = np.asarray(confidences, np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    if how not in ("min", "mean", "p25"):
        raise ValueError(f"image aggregation must be min, mean or p25, got {how!r}")
    if values.size == 0:
        return 0.0
    if how == "min":
        return float(values.min())
    if how == "mean":
        return float(values.mean())
    return float(np.percentile(values, 25))


def decoder_signals(
    segmenter: Segmenter, embeddings: Embeddings, index: int, instances: Instances, *, prompt_batch: int = 64
) -> InstanceSignals:
    """Signals of ``instances`` of image ``index`` after re-running their prompts through the decoder with three
    candidate masks (multimask agreement). Instances without a box or point prompt get NaN agreement."""
    n = len(instances)
    boxes = prompt_boxes(instances)
    points = np.full((n, 2), np.nan, np.float32)
    for i, prompt in enumerate(instances.prompts or []):
        params = prompt.params if isinstance(prompt.params, Mapping) else {}
        point = params.get("point")
        if point is None and params.get("points"):
            first = params["points"][0]
            point = first if len(first) == 2 else None
        if point is not None and not np.isfinite(boxes[i]).all():
            points[i] = np.asarray(point, np.float32)[:2]
    multimask = np.full((n, 3, *segmenter.mask_input_size), np.nan, np.float32)
    has_box = np.isfinite(boxes).all(1)
    has_point = np.isfinite(points).all(1) & ~has_box
    if has_box.any():
        out = segmenter.decode(embeddings, index, boxes=boxes[has_box], multimask=True, prompt_batch=prompt_batch)
        multimask[has_box] = out.logits.cpu().numpy()
    if has_point.any():
        out = segmenter.decode(
            embeddings, index, points=points[has_point][:, None], multimask=True, prompt_batch=prompt_batch
        )
        multimask[has_point] = out.logits.cpu().numpy()
    signals = instance_signals(instances)
    agreement = np.full((n,), np.nan, np.float32)
    known = has_box | has_point
    if known.any():
        agreement[known] = 1.0 - multimask_disagreement(multimask[known])
    return InstanceSignals(
        signals.predicted_iou, signals.stability, agreement, signals.box_agreement, signals.detector_margin
    )


# -- video tracks --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrackSignals:
    """A track's temporal consistency: the largest predicted-IoU drop and relative mask-area jump between
    consecutive frames where it is present, and its re-identification gaps (times it vanished on sampled frames
    and came back; ``gap_frames`` sampled frames missing in all)."""

    score_drop: float
    area_jump: float
    reid_gaps: int
    gap_frames: int
    mean_score: float
    frames: int = 0
    extra: Mapping[str, float] = field(default_factory=dict)

    @property
    def confidence(self) -> float:
        """mean(mean score, 1 - score drop, 1 - area jump) halved per re-identification gap; 0 for an empty track."""
        if self.frames == 0:
            return 0.0
        base = (self.mean_score + (1.0 - self.score_drop) + (1.0 - self.area_jump)) / 3.0
        return float(np.clip(base * 0.5**self.reid_gaps, 0.0, 1.0))

    def to_json(self) -> dict[str, float | int]:
        return {
            "score_drop": round(self.score_drop, 6),
            "area_jump": round(self.area_jump, 6),
            "reid_gaps": self.reid_gaps,
            "gap_frames": self.gap_frames,
            "mean_score": round(self.mean_score, 6),
            "frames": self.frames,
            "confidence": round(self.confidence, 6),
        }


def track_signals(
    frame_indices: Sequence[int], scores: Sequence[float], areas: Sequence[float], sampled_frames: Sequence[int]
) -> TrackSignals:
    """Signals of one track present on ``frame_indices`` (with predicted IoU ``scores`` and mask ``areas`` there)
    out of the video's ``sampled_frames``. Frames with area 0 count as absent."""
    idx: np.ndarray = np.asarray(frame_indices, np.int64).reshape(-1)
    sc: np.ndarray = np.asarray(scores, np.float64).reshape(-1)
    ar: np.ndarray = np.asarray(areas, np.float64).reshape(-1)
    if not (idx.shape == sc.shape == ar.shape):
        raise ValueError(
            f"track_signals needs one score and area per frame: {idx.size} frames, {sc.size} scores, {ar.size} areas"
        )
    if idx.size and np.any(np.diff(idx) <= 0):
        raise ValueError(f"track frame indices must be strictly increasing, got {idx[:10].tolist()}")
    present = ar > 0
    idx, sc, ar = idx[present], sc[present], ar[present]
    if idx.size == 0:
        return TrackSignals(0.0, 0.0, 0, 0, 0.0, 0)
    drops = np.clip(sc[:-1] - sc[1:], 0.0, None)
    jumps = np.abs(ar[1:] - ar[:-1]) / np.maximum(np.maximum(ar[1:], ar[:-1]), 1.0)
    sampled = np.asarray(sorted(set(int(f) for f in sampled_frames) | set(idx.tolist())), np.int64)
    window = sampled[(sampled >= idx[0]) & (sampled <= idx[-1])]
    on = np.isin(window, idx)
    gap_frames = int((~on).sum())
    reid = int(np.sum(on[1:] & ~on[:-1]))  # absent -> present transitions inside the track's span
    return TrackSignals(
        score_drop=float(drops.max()) if drops.size else 0.0,
        area_jump=float(jumps.max()) if jumps.size else 0.0,
        reid_gaps=reid,
        gap_frames=gap_frames,
        mean_score=float(np.clip(sc.mean(), 0.0, 1.0)),
        frames=int(idx.size),
    )


def track_signals_of(track: Track, sampled_frames: Sequence[int]) -> TrackSignals:
    """:func:`track_signals` of a :class:`~model.tracks.Track` (areas from its RLE masks)."""
    from model.masks import rle_area

    return track_signals(
        [f.frame_index for f in track.frames],
        [f.score for f in track.frames],
        [rle_area(f.rle) for f in track.frames],
        sampled_frames,
    )


def video_confidence(video: VideoTracks, how: Aggregate = "min") -> tuple[float, list[TrackSignals]]:
    """A video's confidence (its tracks' confidences aggregated; no track: 0) and the per-track signals."""
    signals = [track_signals_of(t, video.sampled_frames) for t in video.tracks]
    return image_confidence([s.confidence for s in signals], how), signals
