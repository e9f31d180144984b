"""Held-out prompt quality: mask IoU from one box (tight) and from one centre click, per object."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from model.finetune.losses import mask_iou
from model.finetune.modelio import decode, image_features, to_pixel_values
from model.finetune.prompts import interior_point, mask_box


@torch.no_grad()
def prompt_iou(
    model: torch.nn.Module, samples: list[tuple[np.ndarray, np.ndarray]], device: str = "cpu"
) -> dict[str, float]:
    """Mean mask IoU over every object of ``samples`` (image, masks) with a box prompt and with a point prompt.

    The point prompt is the object's most interior pixel; of the three candidate masks the one with the highest
    predicted IoU is kept (what an interactive tool shows). Masks are compared at the input resolution.
    """
    was_training = model.training
    model.eval()
    box_ious: list[float] = []
    point_ious: list[float] = []
    for image, masks in samples:
        if masks.shape[0] == 0:
            continue
        size = image.shape[0]
        feats = image_features(model, to_pixel_values([image], device), encoder_grad=False)
        idx = torch.zeros(masks.shape[0], dtype=torch.long, device=device)
        target = torch.from_numpy(masks).to(device)
        boxes = torch.from_numpy(np.stack([mask_box(m) for m in masks])).to(device)
        logits, _ = decode(model, feats, idx, boxes=boxes, multimask=False)
        box_ious += mask_iou(_up(logits[:, 0], size), target).tolist()
        pts = torch.from_numpy(np.stack([interior_point(m) for m in masks])[:, None]).to(device)
        labels = torch.ones(pts.shape[:2], dtype=torch.long, device=device)
        logits, iou = decode(model, feats, idx, points=pts, labels=labels, multimask=True)
        best = logits[torch.arange(len(logits)), iou.argmax(1)]
        point_ious += mask_iou(_up(best, size), target).tolist()
    model.train(was_training)
    return {
        "box_iou": float(np.mean(box_ious)) if box_ious else float("nan"),
        "point_iou": float(np.mean(point_ious)) if point_ious else float("nan"),
        "objects": float(len(box_ious)),
    }


def _up(logits: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(logits[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
