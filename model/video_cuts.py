"""A cheap scene-cut detector: colour-histogram difference between consecutive (sampled) frames."""

from __future__ import annotations

import numpy as np


def frame_histogram(rgb: np.ndarray, bins: int = 16, max_side: int = 64) -> np.ndarray:
    """Normalised per-channel histogram (3 * ``bins`` values summing to 3) of a subsampled (H, W, 3) uint8 frame."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"frame_histogram expects (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    if bins < 2 or 256 % bins:
        raise ValueError(f"frame_histogram: bins must divide 256 and be >= 2, got {bins}")
    step = max(1, max(rgb.shape[:2]) // max_side)
    small = rgb[::step, ::step].reshape(-1, 3) // (256 // bins)
    hist = np.stack([np.bincount(small[:, c], minlength=bins) for c in range(3)]).astype(np.float64)
    return (hist / max(1, small.shape[0])).ravel()


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance averaged over channels: 0 (same colours) .. 1 (disjoint colours)."""
    if a.shape != b.shape:
        raise ValueError(f"histogram_distance: shapes differ, {a.shape} vs {b.shape}")
    return float(np.abs(a - b).sum() / 6.0)


class SceneCutDetector:
    """Feed frames in order; :meth:`update` says whether the frame starts a new shot (distance > ``threshold``)."""

    def __init__(self, threshold: float = 0.5, bins: int = 16) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"SceneCutDetector.threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.bins = bins
        self._previous: np.ndarray | None = None

    def update(self, rgb: np.ndarray) -> bool:
        hist = frame_histogram(rgb, self.bins)
        previous, self._previous = self._previous, hist
        return previous is not None and histogram_distance(previous, hist) > self.threshold
