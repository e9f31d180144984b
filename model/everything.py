"""Segment-everything: a point grid decoded in large batches on one cached embedding, filtered with tensors.

Per image (and per crop when ``crop_n_layers`` > 0): all crops of all images go through the encoder together;
grid points are decoded ``points_per_batch`` at a time with three masks each. Two ways to filter the candidates
(``EverythingParams.filter_at``):

- ``"original"`` (default) as Meta's ``SAM2AutomaticMaskGenerator``: predicted-IoU filter, then each candidate
  upsampled to the crop's size, stability score there, box NMS on the masks' boxes (inclusive pixel coordinates,
  as Meta's ``batched_mask_to_box``). ``tests/reference`` checks it mask for mask against Meta's generator.
- ``"low"``: stability, cleaning and mask NMS on the 256x256 low-resolution logits; only the survivors are
  upsampled. Several times less work per image; masks differ from Meta's at the edges.

Crops add an edge filter and a cross-crop box NMS. Region cleaning (``min_region_area`` / ``max_hole_area``) works
on the low-resolution logits in both modes (Meta cleans the final masks with OpenCV).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from model.instances import Instances, Prompt

if TYPE_CHECKING:
    import torch

    from model.segmenter import Segmenter


FILTER_MODES = ("original", "low")


@dataclass(frozen=True)
class EverythingParams:
    """Segment-everything settings (defaults follow Meta's ``SAM2AutomaticMaskGenerator``; ``points_per_batch``
    only changes speed and memory)."""

    points_per_side: int = 32
    points_per_batch: int = 256
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    crop_nms_thresh: float = 0.7
    min_region_area: int = 0
    max_hole_area: int = 0
    max_masks: int | None = None
    filter_at: str = "original"

    def __post_init__(self) -> None:
        if self.filter_at not in FILTER_MODES:
            raise ValueError(f"filter_at must be one of {FILTER_MODES}, got {self.filter_at!r}")
        if self.points_per_side < 1:
            raise ValueError(f"points_per_side must be >= 1, got {self.points_per_side}")
        if self.points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {self.points_per_batch}")
        if self.crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be >= 0, got {self.crop_n_layers}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "nms_thresh", "crop_nms_thresh"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.min_region_area < 0 or self.max_hole_area < 0:
            raise ValueError(
                f"min_region_area / max_hole_area must be >= 0, got {self.min_region_area}, {self.max_hole_area}"
            )


def point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) cell-centred points in [0, 1]^2, x varying fastest (SAM's ``build_point_grid``)."""
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side, dtype=np.float64)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


def crop_boxes(
    height: int, width: int, n_layers: int, overlap_ratio: float
) -> list[tuple[tuple[int, int, int, int], int]]:
    """xyxy crop boxes with their layer: the full image, then 2^i x 2^i overlapping crops per layer i (SAM)."""
    boxes = [((0, 0, width, height), 0)]
    short = min(height, width)
    for layer in range(1, n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short * (2 / per_side))
        crop_w = int(math.ceil((overlap * (per_side - 1) + width) / per_side))
        crop_h = int(math.ceil((overlap * (per_side - 1) + height) / per_side))
        x0s = [int((crop_w - overlap) * i) for i in range(per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0, y0 in itertools.product(x0s, y0s):
            boxes.append(((x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)), layer))
    return boxes


def _low_res_boxes(masks: torch.Tensor, scale_x: float, scale_y: float) -> torch.Tensor:
    """xyxy boxes (in crop pixels) of (N, h, w) bool low-res masks; empty masks give zeros."""
    import torch

    n, h, w = masks.shape
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ar_h, h).amin(dim=1)
    y2 = torch.where(rows, ar_h + 1, 0).amax(dim=1)
    x1 = torch.where(cols, ar_w, w).amin(dim=1)
    x2 = torch.where(cols, ar_w + 1, 0).amax(dim=1)
    boxes = torch.stack([x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y], dim=1).float()
    return torch.where(rows.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))


@dataclass(frozen=True)
class _Candidates:
    """Surviving masks of one crop: (N, crop_h, crop_w) bool masks, their boxes in crop pixels, scores, points."""

    masks: torch.Tensor
    boxes: torch.Tensor
    iou: torch.Tensor
    stability: torch.Tensor
    points: torch.Tensor
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)

    def take(self, keep: torch.Tensor) -> _Candidates:
        cpu = keep.cpu()
        return _Candidates(
            self.masks[keep], self.boxes[keep], self.iou[keep], self.stability[keep], self.points[cpu], self.crop
        )

    def with_crop(self, crop: tuple[int, int, int, int]) -> _Candidates:
        return _Candidates(self.masks, self.boxes, self.iou, self.stability, self.points, crop)


def mask_boxes_inclusive(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) xyxy with x2/y2 the last pixel inside (Meta's ``batched_mask_to_box``); empty -> 0."""
    import torch

    boxes = _low_res_boxes(masks, 1.0, 1.0)
    nonempty = masks.flatten(1).any(dim=1, keepdim=True).float()
    return boxes - torch.tensor([0.0, 0.0, 1.0, 1.0], device=masks.device)[None] * nonempty


def _upsampled_masks(logits: torch.Tensor, size: tuple[int, int], threshold: float, chunk: int = 64) -> torch.Tensor:
    import torch

    from model.preprocess import upsample_logits

    parts = [upsample_logits(logits[s : s + chunk], size) > threshold for s in range(0, logits.shape[0], chunk)]
    return torch.cat(parts) if parts else torch.zeros((0, *size), dtype=torch.bool, device=logits.device)


def _filter_original(
    logits: torch.Tensor,
    iou: torch.Tensor,
    points: torch.Tensor,
    crop_size: tuple[int, int],
    params: EverythingParams,
    chunk: int = 64,
) -> _Candidates:
    """Meta's order: stability of each candidate upsampled to the crop size, threshold, boxes, box NMS. Masks wait
    for the NMS bit-packed on the CPU (as Meta keeps them run-length encoded), so memory stays ~1 bit per pixel."""
    import torch

    from model.nms import box_iou, nms_from_iou
    from model.preprocess import stability_scores, upsample_logits

    h, w = crop_size
    packed, boxes, kept_iou, kept_stab, kept_points = [], [], [], [], []
    for start in range(0, logits.shape[0], chunk):
        rows = slice(start, start + chunk)
        up = upsample_logits(logits[rows], crop_size)
        stability = stability_scores(up, params.mask_threshold, params.stability_score_offset)
        keep = stability > params.stability_score_thresh if params.stability_score_thresh > 0 else None
        masks = up > params.mask_threshold
        chunk_iou, chunk_points = iou[rows], points[rows]
        if keep is not None:
            masks, stability, chunk_iou, chunk_points = (
                masks[keep],
                stability[keep],
                chunk_iou[keep],
                chunk_points[keep.cpu()],
            )
        boxes.append(mask_boxes_inclusive(masks).cpu())
        packed.append(np.packbits(masks.cpu().numpy(), axis=-1))
        kept_iou.append(chunk_iou.cpu())
        kept_stab.append(stability.cpu())
        kept_points.append(chunk_points)
    all_boxes = torch.cat(boxes) if boxes else torch.zeros((0, 4))
    all_iou = torch.cat(kept_iou) if kept_iou else torch.zeros((0,))
    order = nms_from_iou(box_iou(all_boxes, all_boxes), all_iou, params.nms_thresh)
    bits = np.concatenate(packed) if packed else np.zeros((0, h, (w + 7) // 8), np.uint8)
    chosen = order.numpy()
    masks_out = torch.from_numpy(np.unpackbits(bits[chosen], axis=-1, count=w).astype(bool))
    return _Candidates(
        masks_out,
        all_boxes[order],
        all_iou[order],
        (torch.cat(kept_stab) if kept_stab else torch.zeros((0,)))[order],
        (torch.cat(kept_points) if kept_points else points[:0])[order],
    )


def _filter_low(
    logits: torch.Tensor,
    iou: torch.Tensor,
    points: torch.Tensor,
    crop_size: tuple[int, int],
    params: EverythingParams,
) -> _Candidates:
    """Stability and mask NMS on the low-resolution logits; only the survivors are upsampled."""
    from model.nms import mask_nms
    from model.preprocess import stability_scores

    stability = stability_scores(logits, params.mask_threshold, params.stability_score_offset)
    if params.stability_score_thresh > 0:
        keep = stability > params.stability_score_thresh
        logits, iou, stability, points = logits[keep], iou[keep], stability[keep], points[keep.cpu()]
    binary = logits > params.mask_threshold
    nonempty = binary.flatten(1).any(dim=1)
    logits, iou, stability, points, binary = (
        logits[nonempty],
        iou[nonempty],
        stability[nonempty],
        points[nonempty.cpu()],
        binary[nonempty],
    )
    kept = mask_nms(binary, iou, params.nms_thresh)
    logits, iou, stability, points = logits[kept], iou[kept], stability[kept], points[kept]
    masks = _upsampled_masks(logits, crop_size, params.mask_threshold)
    return _Candidates(masks, mask_boxes_inclusive(masks), iou.cpu(), stability.cpu(), points)


def segment_everything(segmenter: Segmenter, images: list[np.ndarray], params: EverythingParams) -> list[Instances]:
    """All objects of each image as :class:`Instances` (label ``"object"``, prompt kind ``"grid"``)."""
    import torch

    from model.nms import box_iou, nms_from_iou
    from model.preprocess import check_image
    from model.regions import clean_logits

    images = [check_image(image, i) for i, image in enumerate(images)]
    jobs = []  # (image index, crop box, layer)
    for i, image in enumerate(images):
        for box, layer in crop_boxes(image.shape[0], image.shape[1], params.crop_n_layers, params.crop_overlap_ratio):
            jobs.append((i, box, layer))
    crops = [images[i][y0:y1, x0:x1] for i, (x0, y0, x1, y1), _ in jobs]
    embeddings = segmenter.embed(crops)
    low_h, low_w = segmenter.mask_input_size
    per_image: list[list[_Candidates]] = [[] for _ in images]
    for j, (i, crop, layer) in enumerate(jobs):
        x0, y0, x1, y1 = crop
        crop_h, crop_w = y1 - y0, x1 - x0
        n_side = max(1, int(params.points_per_side / params.crop_n_points_downscale_factor**layer))
        grid = point_grid(n_side) * np.array([crop_w, crop_h], np.float32)
        decoded = segmenter.decode(
            embeddings, j, points=grid[:, None, :], multimask=True, prompt_batch=params.points_per_batch
        )
        logits = decoded.logits.flatten(0, 1)  # (P*3, h, w)
        iou = decoded.iou.flatten()
        points = torch.from_numpy(np.repeat(grid, decoded.logits.shape[1], axis=0))
        if params.pred_iou_thresh > 0:  # a zero threshold disables the filter (as in SAM / transformers)
            keep = iou > params.pred_iou_thresh
            logits, iou, points = logits[keep], iou[keep], points[keep.cpu()]
        if params.min_region_area or params.max_hole_area:
            to_low = (low_h * low_w) / float(crop_h * crop_w)
            logits = clean_logits(
                logits,
                int(round(params.min_region_area * to_low)),
                int(round(params.max_hole_area * to_low)),
                params.mask_threshold,
            )
        select = _filter_original if params.filter_at == "original" else _filter_low
        found = select(logits, iou, points, (crop_h, crop_w), params)
        if len(jobs) > 1 and (crop_h, crop_w) != images[i].shape[:2]:
            near = _near_crop_edge(found.boxes, crop, images[i].shape[:2])
            found = found.take(~near)
        per_image[i].append(found.with_crop(crop))

    results = []
    for i, parts in enumerate(per_image):
        height, width = images[i].shape[:2]
        masks_list, ious, stabs, prompts = [], [], [], []
        for part in parts:
            x0, y0, x1, y1 = part.crop
            full = np.zeros((part.masks.shape[0], height, width), dtype=bool)
            full[:, y0:y1, x0:x1] = part.masks.cpu().numpy()
            masks_list.append(full)
            ious.append(part.iou.cpu().numpy())
            stabs.append(part.stability.cpu().numpy())
            for px, py in part.points.tolist():
                prompts.append(
                    Prompt(
                        "grid",
                        {"point": [round(px + x0, 2), round(py + y0, 2)], "crop": list(part.crop)},
                        segmenter.model_version,
                    )
                )
        masks = np.concatenate(masks_list) if masks_list else np.zeros((0, height, width), bool)
        scores = np.concatenate(ious) if ious else np.zeros((0,), np.float32)
        stability_all = np.concatenate(stabs) if stabs else np.zeros((0,), np.float32)
        inst = Instances(masks=masks, scores=scores, stability=stability_all, prompts=prompts)
        if len(parts) > 1 and len(inst):
            boxes_t = torch.from_numpy(inst.boxes)  # type: ignore[arg-type]
            keep = nms_from_iou(box_iou(boxes_t, boxes_t), torch.from_numpy(inst.scores), params.crop_nms_thresh)  # type: ignore[arg-type]
            inst = inst[keep.numpy()]
        elif len(inst):
            inst = inst[np.argsort(-inst.scores, kind="stable")]  # type: ignore[operator]
        if params.max_masks is not None:
            inst = inst[: params.max_masks]
        results.append(inst if len(inst) else Instances.empty(height, width))
    return results


def _near_crop_edge(
    boxes: torch.Tensor, crop: tuple[int, int, int, int], image_size: tuple[int, int], atol: float = 20.0
) -> torch.Tensor:
    """Boxes (crop pixels) touching a crop edge that is not an image edge (SAM's ``is_box_near_crop_edge``)."""
    import torch

    x0, y0, _, _ = crop
    crop_t = torch.tensor(crop, dtype=torch.float32, device=boxes.device)
    image_t = torch.tensor([0, 0, image_size[1], image_size[0]], dtype=torch.float32, device=boxes.device)
    shifted = boxes + torch.tensor([x0, y0, x0, y0], dtype=torch.float32, device=boxes.device)
    near_crop = torch.isclose(shifted, crop_t[None], atol=atol, rtol=0)
    near_image = torch.isclose(shifted, image_t[None], atol=atol, rtol=0)
    return (near_crop & ~near_image).any(dim=1)
