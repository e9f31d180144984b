"""SAM 2 pre/post-processing in plain torch (transformers' Sam2 processors need torchvision).

Same maths as Meta's ``SAM2Transforms`` (``sam2.utils.transforms``, checked by ``tests/reference``): rescale by
1/255, resize to the square model input (bilinear, antialiased, in float — not rounded back to uint8 levels as
transformers' ``Sam2ImageProcessor`` does), ImageNet normalisation; prompt coordinates scaled per axis to the input
size; low-resolution mask logits upsampled bilinearly straight to the original image size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_image(image: np.ndarray, index: int = 0) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array, or ValueError naming the image and what was wrong."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image {index}: expected an (H, W, 3) uint8 numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image {index}: expected an (H, W, 3) uint8 array, got shape {image.shape} dtype {image.dtype}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image {index}: expected at least 1x1 pixels, got shape {image.shape}")
    return image


def preprocess_images(images: Sequence[np.ndarray], size: int, device: torch.device) -> torch.Tensor:
    """(B, 3, size, size) float32 normalised pixel values on ``device``."""
    import torch
    import torch.nn.functional as F

    batch = []
    for i, image in enumerate(images):
        image = check_image(image, i)
        pixels = torch.from_numpy(np.array(image, order="C", copy=True)).to(device).permute(2, 0, 1)[None]
        pixels = pixels.float().div_(255.0)
        if pixels.shape[-2:] != (size, size):
            pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        batch.append(pixels)
    stacked = torch.cat(batch)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (stacked - mean) / std


def scale_coords(coords: torch.Tensor, original_size: tuple[int, int], size: int) -> torch.Tensor:
    """Pixel (x, y) coordinates of the original image (last dim 2, or 4 for xyxy boxes) in model input pixels."""
    import torch

    height, width = original_size
    factors = torch.tensor([size / width, size / height], dtype=torch.float32, device=coords.device)
    if coords.shape[-1] == 4:
        factors = factors.repeat(2)
    return coords.float() * factors


def upsample_logits(logits: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) low-res mask logits -> (N, H, W) logits at the original image size (bilinear)."""
    import torch.nn.functional as F

    if logits.shape[0] == 0:
        return logits.new_zeros((0, *original_size))
    return F.interpolate(logits[:, None].float(), size=original_size, mode="bilinear", align_corners=False)[:, 0]


def stability_scores(logits: torch.Tensor, threshold: float = 0.0, offset: float = 1.0) -> torch.Tensor:
    """IoU between the masks at ``threshold + offset`` and ``threshold - offset`` (SAM's stability score), per mask.

    ``logits`` is (..., h, w); masks empty at the low threshold score 0 (not NaN).
    """
    import torch

    inter = (logits > threshold + offset).flatten(-2).sum(-1, dtype=torch.int32)
    union = (logits > threshold - offset).flatten(-2).sum(-1, dtype=torch.int32)
    return torch.where(
        union > 0, inter.float() / union.clamp(min=1).float(), torch.zeros_like(inter, dtype=torch.float32)
    )
