"""Prompt sampling for training and evaluation: boxes with jitter, points inside masks, corrective clicks."""

from __future__ import annotations

import numpy as np


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight xyxy box (pixel edges) of a non-empty bool mask."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("mask_box needs a non-empty mask, got an empty one")
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def jitter_box(box: np.ndarray, rng: np.random.Generator, size: int, amount: float = 0.1) -> np.ndarray:
    """Box corners moved by up to ``amount`` of the box side (clipped to the image), as a sloppy annotator would."""
    w, h = box[2] - box[0], box[3] - box[1]
    noise = rng.normal(0, amount / 2, size=4) * np.array([w, h, w, h])
    noise = np.clip(noise, -amount * np.array([w, h, w, h]), amount * np.array([w, h, w, h]))
    out = np.clip(box + noise, 0, size).astype(np.float32)
    out[2] = max(out[2], out[0] + 1)
    out[3] = max(out[3], out[1] + 1)
    return out


def random_point(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random (x, y) pixel centre inside a non-empty bool mask."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("random_point needs a non-empty mask, got an empty one")
    i = int(rng.integers(ys.size))
    return np.array([xs[i], ys[i]], dtype=np.float32)


def interior_point(mask: np.ndarray) -> np.ndarray:
    """The deterministic 'most inside' point: erode until one step before empty, then take the pixel nearest the
    centroid of what is left (the usual centre-click protocol of interactive segmentation benchmarks)."""
    if not mask.any():
        raise ValueError("interior_point needs a non-empty mask, got an empty one")
    core = mask.copy()
    while True:
        eroded = core.copy()
        eroded[1:, :] &= core[:-1, :]
        eroded[:-1, :] &= core[1:, :]
        eroded[:, 1:] &= core[:, :-1]
        eroded[:, :-1] &= core[:, 1:]
        eroded[0, :] = eroded[-1, :] = False
        eroded[:, 0] = eroded[:, -1] = False
        if not eroded.any():
            break
        core = eroded
    ys, xs = np.nonzero(core)
    cy, cx = ys.mean(), xs.mean()
    i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return np.array([xs[i], ys[i]], dtype=np.float32)


def corrective_click(pred: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A simulated user's next click: a point in the missed (label 1) or spurious (label 0) region, picked with
    probability proportional to each region's size. With no error left, a positive click inside the target."""
    missed = target & ~pred
    spurious = pred & ~target
    n_missed, n_spurious = int(missed.sum()), int(spurious.sum())
    if n_missed + n_spurious == 0:
        return random_point(target, rng), 1
    if rng.random() < n_missed / (n_missed + n_spurious):
        return random_point(missed, rng), 1
    return random_point(spurious, rng), 0
