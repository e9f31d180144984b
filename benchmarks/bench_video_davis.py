"""DAVIS 2016 quality benchmark: J (mask IoU) per sequence, tracking from the first frame's ground-truth mask.

    .venv/bin/python benchmarks/bench_video_davis.py --checkpoint /path/to/sam2.1-hiera-tiny [--device cuda --dtype bf16]

Needs a real transformers-format SAM 2 checkpoint (nothing is downloaded). Frames are read from
``../shared/data/davis2016_subset/JPEGImages/480p/<seq>``, masks from ``Annotations/480p/<seq>``; J is averaged over
the annotated frames after the prompt frame.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.tracker import mask_iou_matrix  # noqa: E402
from model.video_model import Sam2Video  # noqa: E402

DAVIS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "davis2016_subset"


def sequence_j(video: Sam2Video, seq: str, max_frames: int | None) -> tuple[float, int, float]:
    frames = sorted((DAVIS / "JPEGImages" / "480p" / seq).glob("*.jpg"))[:max_frames]
    ann_dir = DAVIS / "Annotations" / "480p" / seq
    first = np.asarray(Image.open(frames[0]).convert("RGB"))
    session = video.new_session(*first.shape[:2])
    ious = []
    start = time.perf_counter()
    for i, path in enumerate(frames):
        rgb = first if i == 0 else np.asarray(Image.open(path).convert("RGB"))
        out = session.step(rgb)
        gt_path = ann_dir / f"{path.stem}.png"
        gt = np.asarray(Image.open(gt_path).convert("L")) > 127 if gt_path.exists() else None
        if i == 0:
            if gt is None:
                raise SystemExit(f"{seq}: no annotation for the first frame {path.name}")
            session.prompt({1: gt})
            continue
        if gt is not None:
            pred = out[1].mask if out[1].visible else np.zeros_like(gt)
            ious.append(float(mask_iou_matrix(pred[None], gt[None])[0, 0]) if (pred.any() or gt.any()) else 1.0)
    fps = len(frames) / (time.perf_counter() - start)
    return float(np.mean(ious)) if ious else float("nan"), len(ious), fps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="transformers-format SAM 2 (video or image) checkpoint dir")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--sequences", nargs="*", default=None)
    parser.add_argument("--max-frames", type=int, default=None)
    args = parser.parse_args()
    if not Path(args.checkpoint).is_dir():
        raise SystemExit(f"no checkpoint directory at {args.checkpoint}; this benchmark needs real SAM 2 weights")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    video = Sam2Video.from_pretrained(args.checkpoint, device=args.device, dtype=args.dtype)
    seqs = args.sequences or sorted(p.name for p in (DAVIS / "Annotations" / "480p").iterdir())
    js = []
    for seq in seqs:
        j, n, fps = sequence_j(video, seq, args.max_frames)
        js.append(j)
        print(f"{seq:15s} J={j:.3f} over {n} frames  ({fps:.2f} frames/s)")
    print(f"mean J={np.nanmean(js):.3f}  model={video.model_id}")


if __name__ == "__main__":
    main()
