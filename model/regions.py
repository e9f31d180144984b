"""Batched connected components and SAM-style small-region / hole cleanup on mask tensors (no per-mask loops)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_MAX_PIXELS = 1 << 24  # labels travel through float32 max-pooling: exact up to 2**24


def connected_components(masks: torch.Tensor) -> torch.Tensor:
    """8-connected component labels of (N, H, W) bool masks, all masks at once.

    Returns int64 (N, H, W): 0 on background, otherwise 1 + the largest flat pixel index of the component (unique
    within each mask). Label propagation by 3x3 max-pooling with pointer jumping; converges in a few dozen steps.
    """
    import torch
    import torch.nn.functional as F

    if masks.ndim != 3:
        raise ValueError(f"connected_components needs (N, H, W) masks, got shape {tuple(masks.shape)}")
    n, h, w = masks.shape
    if h * w >= _MAX_PIXELS:
        raise ValueError(f"connected_components supports masks below {_MAX_PIXELS} pixels, got {h}x{w}")
    masks = masks.bool()
    if n == 0 or h * w == 0:
        return torch.zeros(masks.shape, dtype=torch.long, device=masks.device)
    index = torch.arange(1, h * w + 1, device=masks.device, dtype=torch.float32).view(1, h, w)
    labels = torch.where(masks, index, torch.zeros((), device=masks.device))
    while True:
        grown = F.max_pool2d(labels[:, None], kernel_size=3, stride=1, padding=1)[:, 0]
        grown = torch.where(masks, grown, torch.zeros((), device=masks.device))
        flat = grown.view(n, -1)
        jumped = torch.gather(flat, 1, (flat.long() - 1).clamp(min=0)).view(n, h, w)
        grown = torch.where(masks, torch.maximum(grown, jumped), grown)
        if torch.equal(grown, labels):
            return labels.long()
        labels = grown


def component_areas(labels: torch.Tensor) -> torch.Tensor:
    """For each pixel of (N, H, W) component labels, the area of its component (0 on background)."""
    import torch

    n = labels.shape[0]
    span = labels.shape[1] * labels.shape[2] + 1
    keys = labels + torch.arange(n, device=labels.device).view(n, 1, 1) * span
    _, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    return torch.where(labels > 0, counts[inverse], torch.zeros_like(labels))


def remove_small_regions(masks: torch.Tensor, min_area: int) -> torch.Tensor:
    """Drop components smaller than ``min_area`` pixels; a mask whose every component is small keeps its largest."""
    if min_area <= 0 or masks.shape[0] == 0:
        return masks.bool()
    areas = component_areas(connected_components(masks))
    largest = areas.flatten(1).max(dim=1).values.view(-1, 1, 1)
    return masks.bool() & ((areas >= min_area) | (areas == largest))


def fill_small_holes(masks: torch.Tensor, max_area: int) -> torch.Tensor:
    """Fill background components (holes, including small gaps at the border) smaller than ``max_area`` pixels."""
    if max_area <= 0 or masks.shape[0] == 0:
        return masks.bool()
    background = ~masks.bool()
    areas = component_areas(connected_components(background))
    return masks.bool() | (background & (areas < max_area))


def clean_logits(
    logits: torch.Tensor, min_region_area: int, max_hole_area: int, threshold: float = 0.0
) -> torch.Tensor:
    """Apply hole filling then small-region removal to (N, h, w) logits: changed pixels are set to +/-10."""
    import torch

    masks = logits > threshold
    cleaned = remove_small_regions(fill_small_holes(masks, max_hole_area), min_region_area)
    out = torch.where(cleaned & ~masks, torch.full_like(logits, threshold + 10.0), logits)
    return torch.where(~cleaned & masks, torch.full_like(logits, threshold - 10.0), out)
