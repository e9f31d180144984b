"""Pictures of what a model predicted: masks blended over an image, tracked boxes with their ids over a frame,
thumbnails and a small histogram. Pure numpy + PIL (no I/O); colours are stable per class or track id."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
)


def color_of(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def blend_masks(
    rgb: np.ndarray, masks: np.ndarray, colors: Sequence[tuple[int, int, int]], alpha: float = 0.55
) -> np.ndarray:
    """``rgb`` (H, W, 3) with each of ``masks`` (N, H, W) bool tinted by its colour (``alpha`` of the colour)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"blend_masks needs an (H, W, 3) image, got shape {rgb.shape}")
    if masks.ndim != 3 or masks.shape[1:] != rgb.shape[:2]:
        raise ValueError(f"blend_masks needs (N, {rgb.shape[0]}, {rgb.shape[1]}) masks, got shape {masks.shape}")
    if len(colors) != len(masks):
        raise ValueError(f"blend_masks got {len(colors)} colours for {len(masks)} masks")
    out = rgb.astype(np.float32)
    for mask, color in zip(masks, colors, strict=True):
        out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(color, np.float32)
    return out.clip(0, 255).astype(np.uint8)


def draw_boxes(
    rgb: np.ndarray, boxes: Sequence[Sequence[float]], labels: Sequence[str], colors: Sequence[tuple[int, int, int]]
) -> np.ndarray:
    """``rgb`` with xyxy ``boxes`` outlined and ``labels`` (e.g. ``#3 person``) written at their top-left corner."""
    from PIL import Image, ImageDraw

    if not len(boxes) == len(labels) == len(colors):
        raise ValueError(f"draw_boxes got {len(boxes)} boxes, {len(labels)} labels and {len(colors)} colours")
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    width = max(1, round(max(rgb.shape[:2]) / 200))
    for box, label, color in zip(boxes, labels, colors, strict=True):
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        draw.rectangle([x1, max(0.0, y1 - 12), x1 + 7 * len(label) + 4, max(12.0, y1)], fill=color)
        draw.text((x1 + 2, max(0.0, y1 - 12)), label, fill=(0, 0, 0))
    return np.asarray(image)


def thumbnail(rgb: np.ndarray, size: int) -> Any:
    """A PIL image of ``rgb`` whose longer side is ``size`` pixels."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    scale = size / max(image.size)
    return image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR
    )


def histogram_counts(values: Sequence[float], bins: int = 10, low: float = 0.0, high: float = 1.0) -> list[int]:
    """How many ``values`` fall in each of ``bins`` equal bins over [low, high] (outside values go to the ends)."""
    if bins < 1 or not high > low:
        raise ValueError(f"histogram_counts needs bins >= 1 and high > low, got {bins}, [{low}, {high}]")
    counts = [0] * bins
    for value in values:
        if value != value:  # NaN
            continue
        i = int((min(max(float(value), low), high) - low) / (high - low) * bins)
        counts[min(i, bins - 1)] += 1
    return counts
