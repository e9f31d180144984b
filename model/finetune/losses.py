"""Mask losses used by SAM 2 training: sigmoid focal, dice, and the IoU-head regression."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Per-mask mean sigmoid focal loss; ``logits``/``targets`` are (..., H, W), result is (...)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-mask soft dice loss; (..., H, W) -> (...)."""
    prob = logits.sigmoid().flatten(-2)
    tgt = targets.flatten(-2)
    num = 2 * (prob * tgt).sum(-1)
    den = prob.sum(-1) + tgt.sum(-1)
    return 1 - (num + eps) / (den + eps)


def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Hard IoU of ``logits > 0`` against binary ``targets``; (..., H, W) -> (...). Empty vs empty counts as 1."""
    pred = (logits > 0).flatten(-2)
    tgt = targets.flatten(-2) > 0.5
    inter = (pred & tgt).sum(-1).float()
    union = (pred | tgt).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def mask_losses(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    targets: torch.Tensor,
    *,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    focal_alpha: float = 0.25,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SAM-style loss for ``logits`` (N, M, H, W) with ``iou_pred`` (N, M) against ``targets`` (N, H, W).

    With several candidate masks (M > 1) only the one with the lowest focal+dice loss is trained for each
    prompt (the ambiguity-aware min over outputs); the IoU head is trained on every candidate. ``focal_alpha`` < 0
    weighs object and background pixels alike (more robust than SAM's 0.25 when training from scratch).
    """
    if logits.ndim != 4 or targets.ndim != 3 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"mask_losses expects logits (N, M, H, W) and targets (N, H, W), got {logits.shape} {targets.shape}"
        )
    tgt = targets[:, None].expand_as(logits).float()
    focal = focal_loss(logits, tgt, alpha=focal_alpha)
    dice = dice_loss(logits, tgt)
    combo = focal_weight * focal + dice_weight * dice
    best = combo.argmin(dim=1, keepdim=True)
    mask_term = combo.gather(1, best).mean()
    with torch.no_grad():
        actual_iou = mask_iou(logits, tgt)
    iou_term = F.mse_loss(iou_pred.float(), actual_iou)
    total = mask_term + iou_weight * iou_term
    stats = {
        "focal": float(focal.detach().gather(1, best).mean()),
        "dice": float(dice.detach().gather(1, best).mean()),
        "iou_mse": float(iou_term.detach()),
        "iou": float(actual_iou.gather(1, best).mean()),
    }
    return total, stats
