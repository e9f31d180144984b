"""Open-vocabulary box detection with transformers' ``GroundingDinoForObjectDetection`` (text -> boxes).

Own pre/post-processing (no torchvision): DETR-style resize (shortest edge, capped longest edge), ImageNet
normalisation, one image per forward (no padding). Each query's label is the class phrase whose tokens score
highest, so labels are always exactly one of the requested class names.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

SETTINGS_FILE = "maskloop_detector.json"  # optional {"shortest_edge": int, "longest_edge": int} next to the weights


@dataclass(frozen=True)
class Detections:
    """Boxes of one image: xyxy pixels (N, 4), scores (N,), labels (N class phrases)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str]

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.boxes.shape != (n, 4) or self.scores.shape != (n,):
            raise ValueError(
                f"Detections: expected boxes ({n}, 4) and scores ({n},), got {self.boxes.shape} and {self.scores.shape}"
            )


def build_caption(classes: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Grounding DINO caption ``"cat . traffic light ."`` and each class's character span in it."""
    caption, spans = "", []
    for name in classes:
        phrase = " ".join(str(name).lower().split())
        if not phrase:
            raise ValueError(f"class names must be non-empty strings, got {list(classes)!r}")
        spans.append((len(caption), len(caption) + len(phrase)))
        caption += phrase + " . "
    return caption.strip(), spans


def resize_shape(height: int, width: int, shortest_edge: int, longest_edge: int) -> tuple[int, int]:
    """Output (h, w) of DETR's resize: shortest side to ``shortest_edge`` unless the longest would exceed its cap."""
    scale = shortest_edge / min(height, width)
    if max(height, width) * scale > longest_edge:
        scale = longest_edge / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


class TextDetector:
    """Grounding DINO text-prompted box detector."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_id: str = "grounding-dino",
        device: str | torch.device | None = None,
        shortest_edge: int = 800,
        longest_edge: int = 1333,
    ) -> None:
        from model.device import select_device

        self.device = select_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.shortest_edge = shortest_edge
        self.longest_edge = longest_edge
        self.max_text_len = int(model.config.max_text_len)

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        *,
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        hub_timeout_s: float = 3.0,
    ) -> TextDetector:
        """Load a Grounding DINO checkpoint (hub id such as ``IDEA-Research/grounding-dino-tiny`` or a local dir)."""
        from transformers import AutoTokenizer, GroundingDinoForObjectDetection

        from model.loading import load_pretrained

        loaded = load_pretrained(
            GroundingDinoForObjectDetection,
            model_id_or_path,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
            hub_timeout_s=hub_timeout_s,
        )
        source = loaded.model.name_or_path or str(model_id_or_path)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        settings: dict[str, Any] = {}
        settings_path = Path(source) / SETTINGS_FILE
        if settings_path.is_file():
            settings = json.loads(settings_path.read_text())
        return cls(
            loaded.model,
            tokenizer,
            model_id=loaded.model_version,
            device=device,
            shortest_edge=int(settings.get("shortest_edge", 800)),
            longest_edge=int(settings.get("longest_edge", 1333)),
        )

    def _pixels(self, image: np.ndarray) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        from model.preprocess import IMAGENET_MEAN, IMAGENET_STD

        h, w = resize_shape(image.shape[0], image.shape[1], self.shortest_edge, self.longest_edge)
        pixels = torch.from_numpy(np.array(image, order="C", copy=True)).to(self.device).permute(2, 0, 1)[None].float()
        if (h, w) != tuple(image.shape[:2]):
            pixels = F.interpolate(pixels, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
            pixels = pixels.round_().clamp_(0, 255)
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        return (pixels / 255.0 - mean) / std

    def _tokens(self, classes: Sequence[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Tokenised caption and a (C, T) bool matrix: which tokens belong to which class."""
        import torch

        caption, spans = build_caption(classes)
        encoded = self.tokenizer(
            caption, return_tensors="pt", return_offsets_mapping=True, truncation=True, max_length=self.max_text_len
        )
        offsets = encoded.pop("offset_mapping")[0]
        membership = torch.zeros((len(classes), offsets.shape[0]), dtype=torch.bool)
        for c, (start, end) in enumerate(spans):
            membership[c] = (offsets[:, 0] >= start) & (offsets[:, 1] <= end) & (offsets[:, 1] > offsets[:, 0])
        missing = [classes[c] for c in range(len(classes)) if not membership[c].any()]
        if missing:
            raise ValueError(f"class names {missing} do not fit in the detector's {self.max_text_len}-token caption")
        return {k: v.to(self.device) for k, v in encoded.items()}, membership.to(self.device)

    def detect(
        self,
        images: Sequence[np.ndarray],
        classes: Sequence[str],
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
    ) -> list[Detections]:
        """Boxes per image whose best class-token probability exceeds ``box_threshold`` and whose chosen class
        scores above ``text_threshold``; the label is that class's phrase as given in ``classes``."""
        import torch

        from model.preprocess import check_image

        if not classes:
            raise ValueError("text detection needs at least one class name, got []")
        tokens, membership = self._tokens(classes)
        results = []
        with torch.inference_mode():
            for i, image in enumerate(images):
                image = check_image(image, i)
                height, width = image.shape[:2]
                out = self.model(pixel_values=self._pixels(image), **tokens)
                probs = out.logits[0].float().sigmoid()[:, : membership.shape[1]]  # (Q, T)
                per_class = torch.where(membership[None], probs[:, None, :], torch.zeros((), device=probs.device)).amax(
                    -1
                )
                class_score, class_idx = per_class.max(dim=1)  # (Q,)
                best_token = probs.max(dim=1).values
                keep = (best_token > box_threshold) & (class_score > text_threshold)
                cx, cy, bw, bh = out.pred_boxes[0].float()[keep].unbind(-1)
                boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)
                scale = torch.tensor([width, height, width, height], device=boxes.device, dtype=boxes.dtype)
                boxes = (boxes * scale).clamp(min=0)
                boxes = torch.minimum(boxes, scale)
                results.append(
                    Detections(
                        boxes=boxes.cpu().numpy().astype(np.float32).reshape(-1, 4),
                        scores=best_token[keep].cpu().numpy().astype(np.float32),
                        labels=[str(classes[int(c)]) for c in class_idx[keep].tolist()],
                    )
                )
        return results
