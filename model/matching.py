"""Predicted vs reference instance masks: the IoU matrix and its one-to-one Hungarian matching (pure numpy/scipy).

One matching serves every comparison maskloop makes: the harvest's agreement table (what people changed,
:func:`storage.agreement.match_instances`), the held-out evaluation of an active-learning round and the true IoU the
uncertainty signals are calibrated against (:mod:`model.al_heldout`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def stack_masks(masks: np.ndarray | Sequence[np.ndarray], name: str) -> np.ndarray:
    arr = np.asarray(masks, dtype=bool)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W) masks, got shape {arr.shape}")
    return arr


def iou_matrix(pred: np.ndarray, human: np.ndarray) -> np.ndarray:
    """(P, H) mask IoU; two empty masks have IoU 0 (nothing to agree on)."""
    pred, human = stack_masks(pred, "pred"), stack_masks(human, "human")
    if pred.shape[1:] != human.shape[1:] and pred.shape[0] and human.shape[0]:
        raise ValueError(f"pred masks are {pred.shape[1:]}, human masks are {human.shape[1:]}: sizes must match")
    if pred.shape[0] == 0 or human.shape[0] == 0:
        return np.zeros((pred.shape[0], human.shape[0]), np.float64)
    p = pred.reshape(pred.shape[0], -1).astype(np.float32)
    h = human.reshape(human.shape[0], -1).astype(np.float32)
    inter = p @ h.T
    union = p.sum(1)[:, None] + h.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float64)


@dataclass(frozen=True)
class Matching:
    """``ious``: the (P, H) IoU matrix; ``pairs``: predicted index -> reference index of each matched pair."""

    ious: np.ndarray
    pairs: dict[int, int]

    def pred_iou(self) -> np.ndarray:
        """(P,) each prediction's IoU with its match, 0 when unmatched."""
        out = np.zeros(self.ious.shape[0])
        for p, h in self.pairs.items():
            out[p] = self.ious[p, h]
        return out

    def reference_iou(self) -> np.ndarray:
        """(H,) each reference instance's IoU with its match, 0 when unmatched."""
        out = np.zeros(self.ious.shape[1])
        for p, h in self.pairs.items():
            out[h] = self.ious[p, h]
        return out


def match_masks(pred: np.ndarray, reference: np.ndarray, *, min_iou: float = 0.0) -> Matching:
    """The one-to-one matching of ``pred`` and ``reference`` (N, H, W) masks with the largest total IoU (Hungarian);
    pairs with IoU < ``min_iou`` are not matches."""
    from scipy.optimize import linear_sum_assignment

    ious = iou_matrix(pred, reference)
    pairs: dict[int, int] = {}
    if ious.size:
        rows, cols = linear_sum_assignment(ious, maximize=True)
        pairs = {int(r): int(c) for r, c in zip(rows, cols, strict=True) if ious[r, c] >= min_iou}
    return Matching(ious, pairs)
