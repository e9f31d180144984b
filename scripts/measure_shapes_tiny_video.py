"""Video J (mean mask IoU) of a shapes-tiny checkpoint on held-out synthetic clips: each object is prompted with its
ground-truth mask on frame 0 and tracked by the video model's memory path through the remaining frames (objects
move, rotate, scale, leave and re-enter the frame and pass behind each other).

    .venv/bin/python scripts/measure_shapes_tiny_video.py [model/weights/shapes-tiny] [--clips 6] [--frames 12]

A frame where an object is absent counts as 1 when the prediction is empty too, as in DAVIS.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HELD_OUT_CLIP_SEEDS = range(2_000_000_000, 2_000_001_000)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def main(argv: list[str]) -> int:
    import torch

    from model.synthetic import SyntheticDomain
    from model.video_model import Sam2Video

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="?", type=Path, default=ROOT / "model" / "weights" / "shapes-tiny")
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--frames", type=int, default=12)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    video = Sam2Video.from_pretrained(args.weights, device="cpu")
    domain = SyntheticDomain()
    per_clip, occluded = [], []
    for seed in HELD_OUT_CLIP_SEEDS[: args.clips]:
        clip = domain.clip(seed, n_frames=args.frames)
        session = video.new_session(domain.size, domain.size)
        session.step(clip.frames[0])
        first = {i: m for i, m in enumerate(clip.masks[0]) if m.any()}
        session.prompt(first)
        scores = []
        for t in range(1, args.frames):
            out = session.step(clip.frames[t])
            for obj in first:
                pred = out[obj].mask if obj in out else np.zeros_like(clip.masks[t, obj])
                score = _iou(pred, clip.masks[t, obj])
                scores.append(score)
                visible, full = clip.masks[t, obj].sum(), clip.amodal[t, obj].sum()
                if full and visible < 0.7 * full:  # partly hidden behind another object or out of frame
                    occluded.append(score)
        per_clip.append(float(np.mean(scores)))
        print(f"clip {seed}: {len(first)} objects, J {per_clip[-1]:.3f}")
    print(f"video J over {len(per_clip)} clips x {args.frames - 1} propagated frames: {np.mean(per_clip):.3f}")
    print(f"  on frames where the object is partly hidden or out of frame: {np.mean(occluded):.3f} ({len(occluded)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
