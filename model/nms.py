"""Non-maximum suppression and IoU in pure torch (torchvision is not available everywhere maskloop runs).

Greedy semantics equal ``torchvision.ops.nms`` / ``batched_nms``: visit boxes by descending score, keep a box
unless it overlaps an already kept box (of the same class) by IoU > ``iou_threshold``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4) x (M, 4) xyxy -> (N, M) IoU; pairs with zero union give 0."""
    import torch

    a, b = a.float(), b.float()
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def mask_iou(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool masks -> (N, N) IoU, one matrix product (no per-pair loop)."""
    import torch

    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(dim=1)
    union = area[:, None] + area[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def nms_from_iou(iou: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS given a precomputed (N, N) IoU matrix; returns kept indices by descending score."""
    import numpy as np
    import torch

    n = scores.shape[0]
    if n == 0:
        return torch.zeros((0,), dtype=torch.long)
    order = torch.argsort(scores.float().cpu(), descending=True, stable=True)
    overlap = (iou.float().cpu()[order][:, order] > iou_threshold).numpy()
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):  # one vector operation per kept box, never per pair
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlap[i]
    return order[torch.tensor(keep, dtype=torch.long)]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of boxes kept by greedy NMS, sorted by descending score (like ``torchvision.ops.nms``)."""
    _check(boxes, scores)
    return nms_from_iou(box_iou(boxes, boxes), scores, iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-aware NMS: boxes of different ``classes`` never suppress each other (coordinate-offset trick)."""
    import torch

    _check(boxes, scores)
    if classes.shape != scores.shape:
        raise ValueError(f"classes must have shape {tuple(scores.shape)}, got {tuple(classes.shape)}")
    if boxes.shape[0] == 0:
        return torch.zeros((0,), dtype=torch.long)
    boxes = boxes.float()
    offsets = classes.to(boxes) * (boxes.max() - boxes.min() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS on mask IoU of (N, H, W) bool masks; returns kept indices by descending score.

    IoU rows are computed only for kept masks (one matrix-vector product each against all lower-scored masks),
    so the cost is (kept x N x H x W) rather than the full N x N matrix.
    """
    import numpy as np
    import torch

    if masks.ndim != 3 or masks.shape[0] != scores.shape[0]:
        raise ValueError(
            f"mask_nms needs (N, H, W) masks and (N,) scores, got {tuple(masks.shape)} and {tuple(scores.shape)}"
        )
    n = masks.shape[0]
    if n == 0:
        return torch.zeros((0,), dtype=torch.long)
    order = torch.argsort(scores.float().cpu(), descending=True, stable=True)
    flat = masks.flatten(1)[order.to(masks.device)].float()
    areas = flat.sum(dim=1)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        if i + 1 == n:
            break
        inter = flat[i + 1 :] @ flat[i]
        union = areas[i] + areas[i + 1 :] - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
        suppressed[i + 1 :] |= (iou > iou_threshold).cpu().numpy()
    return order[torch.tensor(keep, dtype=torch.long)]


def _check(boxes: torch.Tensor, scores: torch.Tensor) -> None:
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) xyxy, got shape {tuple(boxes.shape)}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must have shape ({boxes.shape[0]},), got {tuple(scores.shape)}")
