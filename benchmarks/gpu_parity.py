"""GPU parity and speed beside Meta's code, in one process that imports both (run by ``benchmarks/gpu_suite.sh``).

For each released size (Meta's packaged configs, seeded random weights: speed does not depend on the weights):
  - parity on CUDA in float32 and bfloat16: point and box prompts on real photos, mask IoU with Meta's
    ``SAM2ImagePredictor`` (Meta's autocast bf16 vs maskloop's ``dtype="bf16"``);
  - images/s of the image encoder, seconds per image of everything mode (32x32 grid), frames/s of video
    propagation (2 objects), maskloop vs Meta, and maskloop's encoder with ``torch.compile``.
Prints one JSON object per line and a final table; medians of ``--rounds``.

    python3 benchmarks/gpu_parity.py --out results.json [--sizes tiny small base-plus large] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "reference"))

CONFIGS = {
    "tiny": ("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt"),
    "small": ("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt"),
    "base-plus": ("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt"),
    "large": ("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"),
}


def _sync() -> None:
    torch.cuda.synchronize()


def _timed(fn: Any, rounds: int) -> float:
    fn()  # warm-up
    _sync()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def run_size(name: str, workdir: Path, images: list[np.ndarray], frames: list[np.ndarray], rounds: int) -> dict:
    from meta_side import reinitialise
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.build_sam import build_sam2, build_sam2_video_predictor
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from model.everything import EverythingParams, segment_everything
    from model.segmenter import Segmenter
    from model.video_model import Sam2Video

    config, filename = CONFIGS[name]
    torch.manual_seed(0)
    meta = build_sam2(config, ckpt_path=None, device="cpu", mode="eval")
    reinitialise(meta, 0)
    checkpoint = workdir / filename
    torch.save({"model": meta.state_dict()}, checkpoint)
    meta = build_sam2(config, ckpt_path=str(checkpoint), device="cuda", mode="eval")
    predictor = SAM2ImagePredictor(meta)
    result: dict[str, Any] = {"size": name}
    for dtype in ("fp32", "bf16"):
        seg = Segmenter.from_pretrained(checkpoint, device="cuda", dtype=dtype)
        ious = []
        for image in images:
            h, w = image.shape[:2]
            prompts = [{"points": [[w / 2, h / 2]], "labels": [1]}, {"box": [w * 0.2, h * 0.25, w * 0.7, h * 0.8]}]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                predictor.set_image(image)
                theirs = [
                    predictor.predict(
                        point_coords=np.asarray(p["points"]) if "points" in p else None,
                        point_labels=np.asarray(p["labels"]) if "labels" in p else None,
                        box=np.asarray(p["box"]) if "box" in p else None,
                        multimask_output=False,
                    )[0][0]
                    > 0
                    for p in prompts
                ]
            emb = seg.embed([image])
            for p, their in zip(prompts, theirs, strict=True):
                ours = seg.predict(
                    emb, points=[p["points"]] if "points" in p else None, boxes=[p["box"]] if "box" in p else None
                )[0].masks[0]
                ious.append(_iou(ours, their))
        result[f"parity_{dtype}_min_iou"] = round(min(ious), 5)
        result[f"parity_{dtype}_mean_iou"] = round(float(np.mean(ious)), 5)
    batch = [images[0]] * 8
    seg = Segmenter.from_pretrained(checkpoint, device="cuda", dtype="bf16")
    result["encoder_img_s_maskloop"] = round(8 / _timed(lambda: seg.embed(batch, batch_size=8), rounds), 1)

    def meta_encode() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            predictor.set_image_batch(batch)

    result["encoder_img_s_meta"] = round(8 / _timed(meta_encode, rounds), 1)
    compiled = Segmenter.from_pretrained(checkpoint, device="cuda", dtype="bf16", compile_encoder=True)
    compiled.embed(batch, batch_size=8)  # compile
    result["encoder_img_s_maskloop_compiled"] = round(
        8 / _timed(lambda: compiled.embed(batch, batch_size=8), rounds), 1
    )
    params = EverythingParams(points_per_side=32, points_per_batch=256)
    result["everything_s_maskloop"] = round(_timed(lambda: segment_everything(seg, [images[0]], params), rounds), 3)
    generator = SAM2AutomaticMaskGenerator(meta, points_per_side=32, points_per_batch=256)

    def meta_everything() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            generator.generate(images[0])

    result["everything_s_meta"] = round(_timed(meta_everything, rounds), 3)
    result.update(_video(config, checkpoint, frames, build_sam2_video_predictor, Sam2Video, workdir))
    return result


def _video(config: str, checkpoint: Path, frames: list[np.ndarray], build: Any, sam2_video: Any, workdir: Path) -> dict:
    h, w = frames[0].shape[:2]
    first = np.zeros((h, w), bool)
    first[h // 4 : h // 2, w // 4 : w // 2] = True
    video = sam2_video.from_pretrained(checkpoint, device="cuda", dtype="bf16")

    def ours() -> None:
        session = video.new_session(h, w)
        for t, frame in enumerate(frames):
            session.step(frame)
            if t == 0:
                session.prompt({1: first, 2: ~first})

    clip = workdir / "clip"
    clip.mkdir(exist_ok=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(clip / f"{t:05d}.jpg", quality=95)
    predictor = build(config, ckpt_path=str(checkpoint), device="cuda")

    def theirs() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            state = predictor.init_state(video_path=str(clip))
            predictor.add_new_mask(state, 0, 1, first)
            predictor.add_new_mask(state, 0, 2, ~first)
            for _ in predictor.propagate_in_video(state):
                pass

    return {
        "video_fps_maskloop": round(len(frames) / _timed(ours, 1), 2),
        "video_fps_meta": round(len(frames) / _timed(theirs, 1), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shared", type=Path, default=None, help="the shared data folder (default ../shared/data)")
    args = parser.parse_args()
    shared = args.shared or next(
        (p for p in (REPO / ".." / "shared" / "data", REPO / "shared" / "data") if p.is_dir()), REPO / "shared"
    )
    images = [
        np.asarray(Image.open(shared / "coco128-seg/images/train2017/000000000009.jpg").convert("RGB")),
        np.asarray(Image.open(shared / "sam2_notebooks/images/truck.jpg").convert("RGB")),
    ]
    clip = sorted((shared / "davis2016_subset/JPEGImages/480p/blackswan").glob("*.jpg"))[: args.frames]
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in clip]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sizes:
            try:
                row = run_size(name, Path(tmp), images, frames, args.rounds)
            except Exception as exc:  # one size failing must not lose the others' figures
                row = {"size": name, "error": f"{exc.__class__.__name__}: {exc}"}
            print(json.dumps(row), flush=True)
            results.append(row)
            args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
