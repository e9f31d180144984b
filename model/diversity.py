"""Diversity for active learning: pooled SAM 2 image-encoder embeddings and k-center greedy selection.

:func:`image_embeddings` pools the image encoder's lowest-resolution feature map (the one the mask decoder attends
to) into one L2-normalised vector per image: mean and max over positions, concatenated. :func:`k_center_greedy`
picks points that cover the embedding space (each new pick is the point farthest from everything picked so far);
:func:`assign_clusters` gives every point its nearest center, the clusters the ``hybrid`` strategy picks within.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from model.segmenter import Segmenter


def pool_features(features: np.ndarray) -> np.ndarray:
    """(B, C, h, w) feature maps -> (B, 2C) L2-normalised [mean, max] over positions."""
    arr = np.asarray(features, np.float32)
    if arr.ndim != 4:
        raise ValueError(f"pool_features expects (B, C, h, w) feature maps, got shape {arr.shape}")
    flat = arr.reshape(arr.shape[0], arr.shape[1], -1)
    if flat.shape[2] == 0:
        raise ValueError(f"pool_features got feature maps without positions, shape {arr.shape}")
    pooled = np.concatenate([flat.mean(2), flat.max(2)], axis=1)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.where(norms > 0, norms, 1.0)


def image_embeddings(segmenter: Segmenter, images: Sequence[np.ndarray], batch_size: int = 8) -> np.ndarray:
    """(B, D) pooled image-encoder embeddings of ``images`` ((H, W, 3) uint8 each) from ``segmenter``."""
    if len(images) == 0:
        return np.zeros((0, 0), np.float32)
    out = []
    for start in range(0, len(images), batch_size):
        emb = segmenter.embed(list(images[start : start + batch_size]), batch_size=batch_size)
        out.append(pool_features(emb.features[-1].cpu().numpy()))
    return np.concatenate(out)


def _check(embeddings: np.ndarray) -> np.ndarray:
    arr = np.asarray(embeddings, np.float64)
    if arr.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("embeddings must be finite, got NaN/inf")
    return arr


def _sq_dist(points: np.ndarray, center: np.ndarray) -> np.ndarray:
    return ((points - center[None, :]) ** 2).sum(1)


def k_center_greedy(embeddings: np.ndarray, k: int, *, already: Sequence[int] = (), seed: int = 0) -> list[int]:
    """Indices of up to ``k`` new points, each the farthest (Euclidean) from all points picked before it.

    ``already`` are points labelled earlier (the coverage starts from them); with none, the first pick is a seeded
    random point. Duplicates of picked points are never picked while others remain.
    """
    arr = _check(embeddings)
    n = arr.shape[0]
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    bad = [i for i in already if not 0 <= int(i) < n]
    if bad:
        raise ValueError(f"already-selected indices out of range 0..{n - 1}: {bad[:5]}")
    picked: list[int] = []
    chosen = np.zeros(n, bool)
    dist = np.full(n, np.inf)
    for i in already:
        chosen[int(i)] = True
        dist = np.minimum(dist, _sq_dist(arr, arr[int(i)]))
    k = min(k, n - int(chosen.sum()))
    rng = np.random.default_rng([seed, 0xC3])
    for _ in range(k):
        if not np.isfinite(dist).any():  # nothing picked yet
            pick = int(rng.integers(n))
        else:
            masked = np.where(chosen, -1.0, dist)
            pick = int(np.argmax(masked))
        picked.append(pick)
        chosen[pick] = True
        dist = np.minimum(dist, _sq_dist(arr, arr[pick]))
    return picked


def assign_clusters(embeddings: np.ndarray, centers: Sequence[int]) -> np.ndarray:
    """(N,) index into ``centers`` of each point's nearest center (ties: the earlier center)."""
    arr = _check(embeddings)
    if len(centers) == 0:
        raise ValueError("assign_clusters needs at least one center")
    d = np.stack([_sq_dist(arr, arr[int(c)]) for c in centers], axis=1)
    return d.argmin(1).astype(np.int64)
