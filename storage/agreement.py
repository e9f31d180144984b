"""How much people corrected: predicted vs final human instances, matched by mask IoU (Hungarian).

Pure numpy/scipy; the matching itself is :func:`model.matching.match_masks`. :func:`match_instances` gives one
:class:`InstanceOutcome` per predicted instance and per human-added instance; :func:`summarize` aggregates outcomes
per (model version, prompt strategy, class).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.matching import iou_matrix as iou_matrix  # re-exported: the agreement's IoU is the matching's
from model.matching import match_masks, stack_masks

OUTCOMES = ("accepted", "modified", "relabelled", "deleted", "added")
ACCEPT_IOU = 0.9  # accepted unchanged: IoU >= this and the same label
MIN_MATCH_IOU = 0.1  # below this a pair is not the same object (the prediction was deleted, the human one added)
BOUNDARY_TOLERANCE = 2  # pixels


@dataclass(frozen=True)
class InstanceOutcome:
    """One row of the agreement table: a prediction (``pred_index``) and/or a human instance (``human_index``)."""

    outcome: str
    pred_index: int | None
    human_index: int | None
    pred_label: str | None
    human_label: str | None
    iou: float
    boundary_f: float

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")
        if self.pred_index is None and self.human_index is None:
            raise ValueError("an agreement outcome needs a predicted or a human instance, got neither")
        if not (0.0 <= self.iou <= 1.0 and 0.0 <= self.boundary_f <= 1.0):
            raise ValueError(f"iou and boundary_f must be in [0, 1], got {self.iou}, {self.boundary_f}")

    @property
    def label(self) -> str:
        return self.human_label if self.human_label is not None else str(self.pred_label)


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image border counts as outside)."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    if radius <= 0:
        return mask
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return binary_dilation(mask, structure=(yy**2 + xx**2) <= radius**2)


def boundary_f_score(a: np.ndarray, b: np.ndarray, tolerance: int = BOUNDARY_TOLERANCE) -> float:
    """Boundary F-measure (DAVIS F): precision/recall of boundary pixels within ``tolerance`` pixels.

    Both empty: 1.0 (identical); one empty: 0.0.
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"boundary_f_score needs two (H, W) masks of one size, got {a.shape} and {b.shape}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    ba, bb = boundary(a), boundary(b)
    na, nb = int(ba.sum()), int(bb.sum())
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    precision = float((ba & _dilate(bb, tolerance)).sum()) / na
    recall = float((bb & _dilate(ba, tolerance)).sum()) / nb
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def match_instances(
    pred_masks: np.ndarray,
    pred_labels: Sequence[str],
    human_masks: np.ndarray,
    human_labels: Sequence[str],
    *,
    accept_iou: float = ACCEPT_IOU,
    min_match_iou: float = MIN_MATCH_IOU,
    tolerance: int = BOUNDARY_TOLERANCE,
) -> list[InstanceOutcome]:
    """Hungarian matching on mask IoU; one outcome per prediction (in order), then one per unmatched human instance.

    A matched pair is ``accepted`` (IoU >= ``accept_iou``, same label), ``relabelled`` (label changed) or
    ``modified`` (same label, reshaped). Pairs with IoU < ``min_match_iou`` are not matches.
    """
    pred_masks, human_masks = stack_masks(pred_masks, "pred_masks"), stack_masks(human_masks, "human_masks")
    if len(pred_labels) != pred_masks.shape[0] or len(human_labels) != human_masks.shape[0]:
        raise ValueError(
            f"labels must match masks: {len(pred_labels)} pred labels for {pred_masks.shape[0]} masks, "
            f"{len(human_labels)} human labels for {human_masks.shape[0]} masks"
        )
    if not 0.0 < min_match_iou <= accept_iou <= 1.0:
        raise ValueError(f"need 0 < min_match_iou <= accept_iou <= 1, got {min_match_iou}, {accept_iou}")
    matching = match_masks(pred_masks, human_masks, min_iou=min_match_iou)
    ious, pairs = matching.ious, matching.pairs
    out: list[InstanceOutcome] = []
    for p in range(pred_masks.shape[0]):
        h = pairs.get(p)
        if h is None:
            out.append(InstanceOutcome("deleted", p, None, pred_labels[p], None, 0.0, 0.0))
            continue
        iou = float(ious[p, h])
        same = pred_labels[p] == human_labels[h]
        outcome = "relabelled" if not same else ("accepted" if iou >= accept_iou else "modified")
        bf = boundary_f_score(pred_masks[p], human_masks[h], tolerance)
        out.append(InstanceOutcome(outcome, p, h, pred_labels[p], human_labels[h], iou, bf))
    matched = set(pairs.values())
    for h in range(human_masks.shape[0]):
        if h not in matched:
            out.append(InstanceOutcome("added", None, h, None, human_labels[h], 0.0, 0.0))
    return out


def strategy_of(model_version: str) -> str:
    """The prompt strategy of a ``<model>@<sha8>/<strategy>[+<prompt hash>]`` model version ("" when it has none)."""
    head, sep, tail = model_version.rpartition("/")
    return tail.partition("+")[0] if sep and "@" in head else ""


@dataclass(frozen=True)
class AgreementGroup:
    model_version: str
    prompt_strategy: str
    label: str
    counts: Mapping[str, int]
    mean_iou: float | None  # over matched predictions (accepted, modified, relabelled)
    mean_boundary_f: float | None

    @property
    def predicted(self) -> int:
        return sum(self.counts.get(k, 0) for k in ("accepted", "modified", "relabelled", "deleted"))

    @property
    def acceptance_rate(self) -> float | None:
        return self.counts.get("accepted", 0) / self.predicted if self.predicted else None

    def to_json(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "prompt_strategy": self.prompt_strategy,
            "label": self.label,
            "counts": {k: int(self.counts.get(k, 0)) for k in OUTCOMES},
            "mean_iou": self.mean_iou,
            "mean_boundary_f": self.mean_boundary_f,
            "acceptance_rate": self.acceptance_rate,
        }


def summarize(rows: Iterable[tuple[str, str, str, str, float, float]]) -> list[AgreementGroup]:
    """Aggregate ``(model_version, prompt_strategy, label, outcome, iou, boundary_f)`` rows per group, sorted."""
    groups: dict[tuple[str, str, str], list[tuple[str, float, float]]] = {}
    for model_version, strategy, label, outcome, iou, bf in rows:
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
        groups.setdefault((model_version, strategy, label), []).append((outcome, float(iou), float(bf)))
    out = []
    for (model_version, strategy, label), items in sorted(groups.items()):
        counts = {k: sum(1 for o, _, _ in items if o == k) for k in OUTCOMES}
        matched = [(i, b) for o, i, b in items if o in ("accepted", "modified", "relabelled")]
        mean_iou = round(float(np.mean([i for i, _ in matched])), 6) if matched else None
        mean_bf = round(float(np.mean([b for _, b in matched])), 6) if matched else None
        out.append(AgreementGroup(model_version, strategy, label, counts, mean_iou, mean_bf))
    return out
