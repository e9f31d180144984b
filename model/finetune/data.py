"""Training data sources: each yields (image (S, S, 3) uint8, masks (N, S, S) bool) at the model's input size."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
from PIL import Image

from model.errors import BadMediaError
from model.masks import polygons_to_mask, rle_to_mask
from model.synthetic import SyntheticDomain


class ImageSource(Protocol):
    """What the engine samples from. ``progress`` in [0, 1] lets a source run an easy-to-hard curriculum."""

    @property
    def version(self) -> str: ...

    def sample(self, rng: np.random.Generator, progress: float) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class SyntheticSource:
    """Fresh synthetic stills every step. Before ``curriculum_until`` (fraction of training) the scenes are easier:
    fewer objects, calmer backgrounds, stronger textures; difficulty then ramps linearly to ``domain.difficulty``."""

    domain: SyntheticDomain = SyntheticDomain()
    curriculum_until: float = 0.0
    start_difficulty: float = 0.2

    def __post_init__(self) -> None:
        if not (0.0 <= self.curriculum_until <= 1.0):
            raise ValueError(f"SyntheticSource.curriculum_until must be in [0, 1], got {self.curriculum_until}")

    @property
    def version(self) -> str:
        return self.domain.version

    def domain_at(self, progress: float) -> SyntheticDomain:
        if self.curriculum_until <= 0 or progress >= self.curriculum_until:
            return self.domain
        frac = progress / self.curriculum_until
        difficulty = self.start_difficulty + frac * (self.domain.difficulty - self.start_difficulty)
        lo, hi = self.domain.n_objects
        hi_now = max(lo, round(lo + frac * (hi - lo)))
        return replace(self.domain, difficulty=float(np.clip(difficulty, 0, 1)), n_objects=(lo, hi_now))

    def sample(self, rng: np.random.Generator, progress: float) -> tuple[np.ndarray, np.ndarray]:
        sample = self.domain_at(progress).image(int(rng.integers(0, 2**31 - 1)))
        return sample.image, sample.masks


@dataclass(frozen=True)
class BoxFillSource:
    """Prompt-geometry drills: a blank grey canvas whose 'objects' are random axis-aligned rectangles.

    Nothing in the image tells the objects apart, so the only way to lower the loss is to read the box prompt. A
    SAM 2 trained from scratch on real scenes first learns to segment the most salient object whatever the prompt
    (a plateau it rarely leaves); a few hundred of these steps teach the decoder to localise from prompts first.
    """

    size: int = 256
    objects: int = 4
    side: tuple[float, float] = (0.08, 0.55)  # rectangle sides as fractions of ``size``
    version: str = "box-fill-v1"

    def sample(self, rng: np.random.Generator, progress: float) -> tuple[np.ndarray, np.ndarray]:
        image = np.full((self.size, self.size, 3), 128, np.uint8)
        masks = np.zeros((self.objects, self.size, self.size), bool)
        lo, hi = (max(1, round(f * self.size)) for f in self.side)
        for mask in masks:
            w, h = rng.integers(lo, hi + 1, size=2)
            x, y = rng.integers(0, self.size - w + 1), rng.integers(0, self.size - h + 1)
            mask[y : y + h, x : x + w] = True
        return image, masks


class CocoSource:
    """A COCO-style dataset (the dict) plus its images as arrays (list in ``images`` order, or keyed by image id).

    Segmentations may be polygons, compressed or uncompressed RLE. Images are resized to ``image_size`` squared
    (what the SAM 2 processor does); images without annotations are skipped.
    """

    def __init__(
        self,
        dataset: Mapping[str, Any],
        images: Sequence[np.ndarray] | Mapping[int, np.ndarray],
        *,
        image_size: int,
        version: str = "coco",
        min_area: int = 16,
    ) -> None:
        if "images" not in dataset or "annotations" not in dataset:
            raise ValueError(
                f"CocoSource needs a COCO dict with 'images' and 'annotations', got keys {sorted(dataset)}"
            )
        self.version = version
        self.image_size = image_size
        by_image: dict[int, list[Mapping[str, Any]]] = {}
        for ann in dataset["annotations"]:
            if not ann.get("iscrowd", 0):
                by_image.setdefault(int(ann["image_id"]), []).append(ann)
        arrays = (
            images
            if isinstance(images, Mapping)
            else {int(info["id"]): arr for info, arr in zip(dataset["images"], images, strict=True)}
        )
        self._items: list[tuple[np.ndarray, np.ndarray]] = []
        for info in dataset["images"]:
            anns = by_image.get(int(info["id"]), [])
            if not anns:
                continue
            name = str(info.get("file_name", info["id"]))
            arr = arrays.get(int(info["id"]))
            if arr is None:
                raise BadMediaError(name, "no image array was given for this COCO image id")
            arr = np.asarray(arr)
            if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
                raise BadMediaError(name, f"expected an (H, W, 3) uint8 image, got {arr.shape} {arr.dtype}")
            h, w = arr.shape[:2]
            masks = np.stack([_decode(ann["segmentation"], h, w) for ann in anns])
            masks = masks[masks.reshape(len(masks), -1).sum(1) >= min_area]
            if masks.shape[0] == 0:
                continue
            self._items.append(_resize(arr, masks, image_size))
        if not self._items:
            raise ValueError("CocoSource found no image with a usable (non-crowd, non-tiny) annotation")

    def __len__(self) -> int:
        return len(self._items)

    def sample(self, rng: np.random.Generator, progress: float) -> tuple[np.ndarray, np.ndarray]:
        image, masks = self._items[int(rng.integers(len(self._items)))]
        if rng.random() < 0.5:  # horizontal flip
            return image[:, ::-1].copy(), masks[:, :, ::-1].copy()
        return image, masks


def _decode(segmentation: Any, h: int, w: int) -> np.ndarray:
    if isinstance(segmentation, list):
        return polygons_to_mask(segmentation, h, w)
    mask = rle_to_mask(segmentation)
    if mask.shape != (h, w):
        raise ValueError(f"segmentation of size {mask.shape} does not match its image ({h}, {w})")
    return mask


def _resize(image: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    if image.shape[:2] == (size, size):
        return image, masks
    img = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    out = np.stack([np.asarray(Image.fromarray(m).resize((size, size), Image.Resampling.NEAREST)) for m in masks])
    return img, out.astype(bool)
