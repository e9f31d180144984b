"""How well clips are tracked end to end: coverage, J and id switches per ground-truth object, per clip.

    .venv/bin/python benchmarks/bench_video_tracks.py [--checkpoint model/weights/shapes-tiny] [--rounds 1]
        [--clips demo davis:blackswan davis:car-shadow] [--max-frames N] [--device cpu]

Clips: ``demo`` is the clip ``maskloop demo`` uploads (``SyntheticDomain().clip(3026, n_frames=24)`` at 8 fps, as
``flows.demo.sample_media`` makes it); ``davis:<seq>`` are the DAVIS 2016 sequences in
``../shared/data/davis2016_subset`` (JPEG frames encoded to H.264 at 24 fps here, ground-truth masks from
``Annotations/480p``). Each clip goes through the user path: the checkpoint's video model and its tracking defaults
(``config.json`` ``maskloop_video``; for ``shapes-tiny`` re-proposals on every sampled frame), everything-mode
proposals with the demo's filters, :func:`model.tracker.track_video` on the encoded file.

Per object (``model.tracks.score_tracks``): covered = share of its frames on which a track's mask has IoU >= 0.5 with
it; J = mean IoU of its main track over all its frames (0 where absent); id switches = changes of the covering track
id. Timing is the median over ``--rounds`` of the whole tracking call (seconds per frame); the scores do not change
between rounds (the pipeline is deterministic).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.tracker import make_proposer, track_video  # noqa: E402
from model.tracks import ObjectScore, score_tracks  # noqa: E402
from model.video import write_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DAVIS = ROOT / ".." / "shared" / "data" / "davis2016_subset"
DEMO_SEED = 2026 + 1000  # flows.demo.sample_media: domain.clip(seed + 1000 + i, n_frames=24), fps=8
DEMO_FILTERS = {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.9}  # flows.demo.DEMO_MODEL_FILTERS


@dataclass(frozen=True)
class ClipData:
    name: str
    frames: list[np.ndarray]  # (H, W, 3) uint8
    gt: np.ndarray  # (T, N, H, W) bool
    fps: float


def demo_clip(seed: int = DEMO_SEED, n_frames: int = 24) -> ClipData:
    from model.synthetic import SyntheticDomain

    clip = SyntheticDomain().clip(seed, n_frames=n_frames)
    return ClipData("demo", list(clip.frames), clip.masks, 8.0)


def davis_clip(seq: str, max_frames: int | None = None) -> ClipData:
    from PIL import Image

    paths = sorted((DAVIS / "JPEGImages" / "480p" / seq).glob("*.jpg"))[:max_frames]
    if not paths:
        raise SystemExit(f"no DAVIS frames for {seq!r} under {DAVIS}")
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    gt = []
    for p in paths:
        ann = DAVIS / "Annotations" / "480p" / seq / f"{p.stem}.png"
        gt.append(
            np.asarray(Image.open(ann).convert("L")) > 127 if ann.exists() else np.zeros(frames[0].shape[:2], bool)
        )
    return ClipData(f"davis:{seq}", frames, np.stack(gt)[:, None], 24.0)


def load_clip(name: str, max_frames: int | None) -> ClipData:
    if name == "demo":
        return demo_clip()
    if name.startswith("davis:"):
        return davis_clip(name.split(":", 1)[1], max_frames)
    raise SystemExit(f"unknown clip {name!r}: use demo or davis:<sequence>")


def run_clip(clip: ClipData, video, segmenter, rounds: int) -> tuple[list[ObjectScore], int, float]:  # noqa: ANN001
    proposer = make_proposer("everything", segmenter, autoprompt_params=DEMO_FILTERS)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_video(Path(tmp) / "clip.mp4", clip.frames, fps=int(clip.fps))
        times, result = [], None
        for _ in range(rounds):
            start = time.perf_counter()
            result = track_video(video, path, "everything", segmenter=segmenter, proposer=proposer)
            times.append((time.perf_counter() - start) / len(clip.frames))
    assert result is not None
    return score_tracks(result, clip.gt, result.sampled_frames), len(result.tracks), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(ROOT / "model" / "weights" / "shapes-tiny"))
    parser.add_argument("--clips", nargs="*", default=["demo", "davis:blackswan", "davis:car-shadow"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-frames", type=int, default=None, help="first N frames of each DAVIS clip")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from model.segmenter import Segmenter
    from model.video_model import Sam2Video

    segmenter = Segmenter.from_pretrained(args.checkpoint, device=args.device)
    video = Sam2Video.from_pretrained(args.checkpoint, device=args.device)
    print(f"checkpoint {args.checkpoint} ({video.model_id}), tracking defaults {video.tracking}, device {args.device}")
    print("| clip | object | frames | covered | J (main track) | id switches | tracks in clip | s/frame |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.clips:
        clip = load_clip(name, args.max_frames)
        scores, n_tracks, per_frame = run_clip(clip, video, segmenter, args.rounds)
        for n, s in enumerate(scores):
            print(
                f"| {clip.name} | {n} | {s.frames} | {s.coverage:.1%} | {s.j:.3f} | {s.id_switches} | {n_tracks} "
                f"| {per_frame:.2f} |"
            )
        if scores:
            cov = sum(s.covered for s in scores) / sum(s.frames for s in scores)
            print(
                f"| {clip.name} | all | {sum(s.frames for s in scores)} | {cov:.1%} | "
                f"{np.mean([s.j for s in scores]):.3f} | {sum(s.id_switches for s in scores)} | {n_tracks} "
                f"| {per_frame:.2f} |"
            )


if __name__ == "__main__":
    main()
