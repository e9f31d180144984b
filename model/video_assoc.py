"""Association helpers for tracking by detection (:mod:`model.tracker` with ``trust_memory`` false): proposal
de-duplication, constant-velocity mask prediction, IoU association and a size/colour/position fallback link."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def mask_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between every mask of ``a`` (N, H, W) and ``b`` (M, H, W); empty-vs-empty counts as 0."""
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"mask_iou_matrix: mask sizes differ, {a.shape[1:]} vs {b.shape[1:]}")
    pixels = int(np.prod(a.shape[1:]))
    fa = a.reshape(a.shape[0], pixels).astype(np.float32)
    fb = b.reshape(b.shape[0], pixels).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def greedy_match(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, col) in decreasing IoU order, each row/col used once, IoU >= ``threshold``."""
    pairs: list[tuple[int, int]] = []
    if iou.size == 0:
        return pairs
    used_r: set[int] = set()
    used_c: set[int] = set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        r, c = divmod(int(flat), iou.shape[1])
        if iou[r, c] < threshold:
            break
        if r in used_r or c in used_c:
            continue
        pairs.append((r, c))
        used_r.add(r)
        used_c.add(c)
    return pairs


def dedupe(masks: np.ndarray, order: np.ndarray, iou: float, covered: float) -> list[int]:
    """Indices of ``masks`` kept in ``order`` (best first): a mask is dropped when its IoU with a kept one is >=
    ``iou`` or when ``covered`` of it lies inside the kept ones (a part of an object already proposed)."""
    kept: list[int] = []
    if len(masks) == 0:
        return kept
    union = np.zeros(masks.shape[1:], bool)
    for i in (int(k) for k in order):
        area = int(masks[i].sum())
        if area == 0:
            continue
        if kept and (
            mask_iou_matrix(masks[i][None], masks[kept]).max() >= iou or (masks[i] & union).sum() >= covered * area
        ):
            continue
        kept.append(i)
        union |= masks[i]
    return kept


def centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return (float(xs.mean()), float(ys.mean())) if len(xs) else (0.0, 0.0)


def shift_mask(mask: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``mask`` moved by (dx, dy) pixels (rounded); what leaves the frame is cut off."""
    h, w = mask.shape
    x, y = int(round(dx)), int(round(dy))
    out = np.zeros_like(mask)
    if abs(x) >= w or abs(y) >= h:
        return out
    out[max(0, y) : h + min(0, y), max(0, x) : w + min(0, x)] = mask[
        max(0, -y) : h - max(0, y), max(0, -x) : w - max(0, x)
    ]
    return out


def associate(
    proposals: np.ndarray, last: np.ndarray, predicted: np.ndarray, threshold: float
) -> list[tuple[int, int]]:
    """(proposal, track) pairs: greedy by the better of the IoU with the track's last mask and with that mask moved
    by the track's last motion (``predicted``), each at least ``threshold``."""
    if len(proposals) == 0 or len(last) == 0:
        return []
    score = np.maximum(mask_iou_matrix(proposals, last), mask_iou_matrix(proposals, predicted))
    return greedy_match(score, threshold)


def predict_mask(mask: np.ndarray, velocity: tuple[float, float], steps: int) -> np.ndarray:
    """``mask`` moved ``steps`` times by ``velocity`` (pixels per step)."""
    return shift_mask(mask, velocity[0] * steps, velocity[1] * steps)


def mean_colour(rgb: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    if not mask.any():
        return (0.0, 0.0, 0.0)
    r, g, b = rgb[mask].reshape(-1, 3).mean(axis=0)
    return (float(r), float(g), float(b))


def overlaps(mask: np.ndarray, others: Sequence[np.ndarray], params: Any) -> bool:
    """``mask`` duplicates one of ``others`` (IoU >= ``params.dedupe_iou``) or lies ``params.covered`` inside them."""
    if not others:
        return False
    stack = np.stack(list(others))
    if mask_iou_matrix(mask[None], stack).max() >= params.dedupe_iou:
        return True
    return bool((mask & stack.any(axis=0)).sum() >= params.covered * max(1, int(mask.sum())))


def link_by_position(
    proposals: Sequence[np.ndarray],
    predicted: Sequence[np.ndarray],
    last: Sequence[np.ndarray],
    rgb: np.ndarray,
    colours: Sequence[tuple[float, float, float]],
    max_distance: float,
    max_colour: float = 60.0,
) -> list[tuple[int, int]]:
    """(proposal, track) pairs for objects that moved too far for any mask overlap: the proposal's centroid lies
    within ``max_distance`` object sizes (square root of the last area) of the track's predicted centroid (its last
    one when the prediction left the frame), the area is within 2x of the last one and the mean colour within
    ``max_colour`` (RGB distance). Nearest first, each used once."""
    if not proposals or not last:
        return []
    cost = np.full((len(proposals), len(last)), np.inf)
    for j, (pred, prev) in enumerate(zip(predicted, last, strict=True)):
        size = float(np.sqrt(max(1, int(prev.sum()))))
        cx, cy = centroid(pred if pred.any() else prev)
        for i, mask in enumerate(proposals):
            area, prev_area = int(mask.sum()), int(prev.sum())
            if not 0.5 * prev_area <= area <= 2.0 * prev_area:
                continue
            if np.linalg.norm(np.subtract(mean_colour(rgb, mask), colours[j])) > max_colour:
                continue
            x, y = centroid(mask)
            d = float(np.hypot(x - cx, y - cy)) / size
            if d <= max_distance:
                cost[i, j] = d
    pairs: list[tuple[int, int]] = []
    used_i: set[int] = set()
    used_j: set[int] = set()
    for flat in np.argsort(cost, axis=None, kind="stable"):
        i, j = divmod(int(flat), cost.shape[1])
        if not np.isfinite(cost[i, j]):
            break
        if i in used_i or j in used_j:
            continue
        pairs.append((i, j))
        used_i.add(i)
        used_j.add(j)
    return pairs
