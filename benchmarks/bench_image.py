"""SAM 2 image throughput: encoder alone vs the full auto-prompt paths, and segment-everything vs a baseline.

    python -m benchmarks.bench_image                                  # tiny random config, CPU, 1 thread
    python -m benchmarks.bench_image --config hiera-tiny --device cuda --dtype bf16 --batch 1,8,32

Random weights (nothing is downloaded): the numbers measure compute, not mask quality. The everything-mode baseline
is transformers' ``mask-generation`` pipeline when torchvision imports, else a step-by-step re-implementation of
what that pipeline does with its defaults: per crop one encoder forward, points decoded 64 at a time, every mask
upsampled to full resolution, filtered there (predicted IoU, stability), RLE-encoded with a per-mask Python loop,
box NMS, and RLE decoded back to masks with a per-run Python loop. Both run on the same images with the same
thresholds; the ratio is printed from one run.
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model.autoprompt import auto_segment
from model.detector import TextDetector
from model.images import decode_image
from model.nms import batched_nms
from model.preprocess import preprocess_images
from model.segmenter import Segmenter
from tests.support.tiny_models import build_tiny_sam2, save_tiny_grounding_dino

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "coco128-seg" / "images" / "train2017"


def _load_images(count: int) -> list[np.ndarray]:
    paths = sorted(DATA.glob("*.jpg"))[:count]
    if len(paths) < count:
        raise SystemExit(f"need {count} images in {DATA}, found {len(paths)}")
    return [decode_image(p.read_bytes(), p.name) for p in paths]


def _build_model(config: str) -> torch.nn.Module:
    if config == "tiny":
        return build_tiny_sam2()
    from transformers import Sam2Model

    from model.configs import sam2_architecture_config

    torch.manual_seed(0)
    return Sam2Model(sam2_architecture_config(config.removeprefix("hiera-"))).eval()


def _timed(fn: Callable[[], Any], device: torch.device, repeat: int = 1) -> tuple[float, Any]:
    best, result = math.inf, None
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


# -- baseline: what transformers' mask-generation pipeline does --------------------------------------------------
def _pipeline_points(n_per_side: int, crop_h: int, crop_w: int, target: int) -> torch.Tensor:
    """Grid points in the pipeline's model coordinates (its ``_normalize_coordinates``: longest-side scaling)."""
    offset = 1 / (2 * n_per_side)
    side = torch.linspace(offset, 1 - offset, n_per_side)
    points = torch.stack([side[None, :].expand(n_per_side, -1), side[:, None].expand(-1, n_per_side)], dim=-1).reshape(
        -1, 2
    )
    points = points * torch.tensor([crop_w, crop_h])
    scale = target / max(crop_h, crop_w)
    new_w, new_h = int(crop_w * scale + 0.5), int(crop_h * scale + 0.5)
    return points * torch.tensor([new_w / crop_w, new_h / crop_h])


def _mask_to_rle_loop(masks: torch.Tensor) -> list[dict[str, Any]]:
    """Uncompressed column-major RLE, one Python iteration per mask (as the Sam2 image processor does)."""
    n, h, w = masks.shape
    flat = masks.permute(0, 2, 1).flatten(1)
    change = (flat[:, 1:] ^ flat[:, :-1]).nonzero()
    out = []
    for i in range(n):
        idx = change[change[:, 0] == i, 1] + 1
        if len(idx) == 0:
            out.append({"size": [h, w], "counts": [h * w] if not flat[i, 0] else [0, h * w]})
            continue
        counts = [] if not flat[i, 0] else [0]
        counts += [idx[0].item()] + (idx[1:] - idx[:-1]).tolist() + [h * w - idx[-1].item()]
        out.append({"size": [h, w], "counts": counts})
    return out


def _rle_to_mask_loop(rle: dict[str, Any]) -> torch.Tensor:
    h, w = rle["size"]
    mask = torch.empty(h * w, dtype=torch.bool)
    idx, parity = 0, False
    for count in rle["counts"]:
        mask[idx : idx + count] = parity
        idx += count
        parity = not parity
    return mask.reshape(w, h).transpose(0, 1)


def _boxes_of(masks: torch.Tensor) -> torch.Tensor:
    h, w = masks.shape[-2:]
    rows, cols = masks.any(dim=-1), masks.any(dim=-2)
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    bottom = (rows * ar_h).amax(-1)
    top = torch.where(rows, ar_h, h).amin(-1)
    right = (cols * ar_w).amax(-1)
    left = torch.where(cols, ar_w, w).amin(-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    return boxes * ~((right < left) | (bottom < top))[..., None]


def baseline_mask_generation(
    segmenter: Segmenter,
    image: np.ndarray,
    *,
    points_per_side: int = 32,
    points_per_batch: int = 64,
    pred_iou_thresh: float = 0.88,
    stability_score_thresh: float = 0.95,
    stability_score_offset: float = 1.0,
    crops_nms_thresh: float = 0.7,
) -> list[torch.Tensor]:
    """The mask-generation pipeline's steps (crops_n_layers=0) on ``segmenter.model``; returns full-res masks."""
    model, device, size = segmenter.model, segmenter.device, segmenter.input_size
    height, width = image.shape[:2]
    points = _pipeline_points(points_per_side, height, width, size).to(device)
    all_rles: list[dict[str, Any]] = []
    all_scores, all_boxes = [], []
    with segmenter._context():
        embeddings = model.get_image_embeddings(preprocess_images([image], size, device))
        for start in range(0, len(points), points_per_batch):
            batch = points[start : start + points_per_batch][None, :, None, :]
            labels = torch.ones(batch.shape[:3], dtype=torch.long, device=device)
            out = model(image_embeddings=embeddings, input_points=batch, input_labels=labels)
            masks = F.interpolate(out.pred_masks[0].float(), (height, width), mode="bilinear", align_corners=False)
            iou = out.iou_scores[0].float().flatten(0, 1)
            masks = masks.flatten(0, 1)
            keep = torch.ones_like(iou, dtype=torch.bool)
            if pred_iou_thresh > 0:
                keep &= iou > pred_iou_thresh
            if stability_score_thresh > 0:
                inter = (masks > stability_score_offset).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
                union = (masks > -stability_score_offset).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
                keep &= (inter / union) > stability_score_thresh
            binary = (masks[keep] > 0).cpu()
            boxes = _boxes_of(binary)
            # edge filter: the only crop is the whole image, so no box is near a crop edge that is not an image edge
            all_rles += _mask_to_rle_loop(binary)
            all_scores.append(iou[keep].cpu())
            all_boxes.append(boxes)
    scores = torch.cat(all_scores)
    boxes = torch.cat(all_boxes)
    kept = batched_nms(boxes.float(), scores, torch.zeros_like(scores), crops_nms_thresh)
    return [_rle_to_mask_loop(all_rles[i]) for i in kept.tolist()]


def _real_pipeline(segmenter: Segmenter) -> Callable[[np.ndarray, dict[str, float]], Any] | None:
    try:
        import torchvision  # noqa: F401
        from PIL import Image
        from transformers import Sam2ImageProcessor, pipeline
    except Exception:
        return None
    generator = pipeline(
        "mask-generation",
        model=copy.deepcopy(segmenter.model),
        image_processor=Sam2ImageProcessor(),
        device=segmenter.device,
    )
    return lambda image, params: generator(Image.fromarray(image), points_per_batch=64, **params)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default="tiny", choices=["tiny", "hiera-tiny", "hiera-small", "hiera-base-plus", "hiera-large"]
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 | bf16 | fp16 (default: bf16 on cuda, else float32)")
    parser.add_argument("--batch", default="1,2", help="encoder batch sizes, comma separated")
    parser.add_argument("--images", type=int, default=2, help="COCO images from ../shared/data")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="torch.compile the image encoder")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batch.split(",")]
    images = _load_images(max(args.images, max(batches)))
    seg = Segmenter(
        _build_model(args.config),
        model_id=f"random-{args.config}",
        device=args.device,
        dtype=args.dtype,
        compile_encoder=args.compile,
    )
    print(f"config={args.config} device={seg.device} dtype={seg.dtype} input={seg.input_size}px threads={args.threads}")
    print(f"images: {len(images)} COCO photos, sizes {sorted({im.shape[:2] for im in images})[:3]} ...")
    seg.embed(images[:1])  # warm-up (and compile)

    for batch in batches:
        subset = images[:batch]
        seconds, _ = _timed(
            lambda subset=subset, batch=batch: seg.embed(subset, batch_size=batch), seg.device, repeat=2
        )
        print(f"encoder alone, batch {batch:>3}: {batch / seconds:8.2f} images/s")
    n = args.images
    encoder_s, _ = _timed(lambda: seg.embed(images[:n], batch_size=min(n, max(batches))), seg.device)

    with tempfile.TemporaryDirectory() as tmp:
        detector = TextDetector.from_pretrained(save_tiny_grounding_dino(Path(tmp) / "gd"), device=seg.device)
    classes = ["cat", "dog", "person", "car"]
    text_s, text_out = _timed(
        lambda: auto_segment(
            seg, images[:n], "text", classes=classes, detector=detector, box_threshold=0.0, text_threshold=0.0
        ),
        seg.device,
    )
    print(
        f"text path (tiny random Grounding DINO, all boxes kept): {n / text_s:8.2f} images/s "
        f"({sum(len(r) for r in text_out)} masks; encoder alone {n / encoder_s:.2f} images/s)"
    )

    real = _real_pipeline(seg)
    baseline_name = (
        "transformers mask-generation pipeline"
        if real
        else "re-implementation of the mask-generation pipeline (torchvision absent)"
    )
    print(f"everything-mode baseline: {baseline_name}")
    settings = {
        "SAM thresholds (iou 0.88, stability 0.95)": {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95},
        "all masks pass (iou 0, stability 0)": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
    }
    pps = args.points_per_side
    for label, params in settings.items():
        ours_s, ours = _timed(
            lambda params=params: auto_segment(seg, images[:n], "everything", points_per_side=pps, **params), seg.device
        )
        if real is not None:
            base_s, base = _timed(
                lambda params=params: [real(im, {"points_per_crop": pps, **params}) for im in images[:n]], seg.device
            )
            base_masks = sum(len(b["masks"]) for b in base)
        else:
            base_s, base = _timed(
                lambda params=params: [
                    baseline_mask_generation(seg, im, points_per_side=pps, **params) for im in images[:n]
                ],
                seg.device,
            )
            base_masks = sum(len(b) for b in base)
        print(
            f"everything, {label}: ours {n / ours_s:.3f} images/s ({sum(len(r) for r in ours)} masks), "
            f"baseline {n / base_s:.3f} images/s ({base_masks} masks) -> time ratio ours/baseline = {ours_s / base_s:.3f}"
        )


if __name__ == "__main__":
    main()
