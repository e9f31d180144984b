"""Video tracking benchmark: frames/s for 1, 3, 10 objects and session memory over 200 vs 2000 frames.

    .venv/bin/python benchmarks/bench_video.py                      # tiny random config on CPU
    .venv/bin/python benchmarks/bench_video.py --device cuda --dtype bf16 --config /path/to/sam2.1-hiera-tiny

Memory is measured three ways: the bytes held by the tracking session's tensors (frames, memory bank), the process'
current RSS, and tracemalloc's peak of Python-level allocations; with pruning all three must stay flat as the clip
gets longer, without pruning the session bytes grow with the frame count.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.video_model import Sam2Video  # noqa: E402
from tests.support.tiny_models import tiny_sam2_video_model  # noqa: E402


def session_bytes(session: object) -> int:
    inner = session.session  # type: ignore[attr-defined]
    total = sum(t.numel() * t.element_size() for t in inner.processed_frames.values())
    for per_obj in inner.output_dict_per_obj.values():
        for store in per_obj.values():
            for out in store.values():
                for v in out.values():
                    if isinstance(v, torch.Tensor):
                        total += v.numel() * v.element_size()
    return total


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(
    video: Sam2Video,
    n_frames: int,
    n_objects: int,
    h: int,
    w: int,
    prune: bool = True,
    checkpoints: tuple[int, ...] = (),
) -> tuple[float, dict[int, tuple[int, float, int]]]:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(8)]
    session = video.new_session(h, w, prune=prune)
    marks: dict[int, tuple[int, float, int]] = {}
    tracemalloc.start()
    start = time.perf_counter()
    for t in range(n_frames):
        session.step(frames[t % len(frames)])
        if t == 0:
            masks = {}
            for k in range(n_objects):
                m = np.zeros((h, w), bool)
                y, x = (k * 7) % (h - 12), (k * 11) % (w - 12)
                m[y : y + 12, x : x + 12] = True
                masks[k + 1] = m
            session.prompt(masks)
        if t + 1 in checkpoints:
            marks[t + 1] = (session_bytes(session), rss_mib(), tracemalloc.get_traced_memory()[1])
    elapsed = time.perf_counter() - start
    tracemalloc.stop()
    return n_frames / elapsed, marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--config", default="tiny", help="'tiny' (random) or a transformers SAM 2 checkpoint dir")
    parser.add_argument("--size", type=int, nargs=2, default=(48, 64), metavar=("H", "W"), help="frame size")
    parser.add_argument("--speed-frames", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-objects", type=int, default=2, help="objects tracked in the memory comparison")
    parser.add_argument("--video", default=None, help="also time track_video end to end on this file (decode+track)")
    parser.add_argument("--video-frames", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.config == "tiny":
        video = Sam2Video(tiny_sam2_video_model(), "sam2_video:tiny-random", args.device)
        video.model.to(args.device)
    else:
        video = Sam2Video.from_pretrained(args.config, device=args.device, dtype=args.dtype)
    h, w = args.size
    print(f"model={video.model_id} device={args.device} dtype={args.dtype} frame={h}x{w} image_size={video.image_size}")
    for n_obj in (1, 3, 10):
        fps, _ = run(video, args.speed_frames, n_obj, h, w)
        print(f"speed: {n_obj:2d} objects  {fps:7.1f} frames/s")
    _, marks = run(video, 2000, args.memory_objects, h, w, prune=True, checkpoints=(200, 2000))
    (b200, r200, p200), (b2000, r2000, p2000) = marks[200], marks[2000]
    print(
        f"pruned   200 frames: session {b200 / 2**20:7.2f} MiB  RSS {r200:7.1f} MiB  tracemalloc peak {p200 / 2**20:6.2f} MiB"
    )
    print(
        f"pruned  2000 frames: session {b2000 / 2**20:7.2f} MiB  RSS {r2000:7.1f} MiB  tracemalloc peak {p2000 / 2**20:6.2f} MiB"
    )
    print(
        f"pruned  ratio 2000/200: session {b2000 / b200:.2f}x  RSS {r2000 / r200:.2f}x  tracemalloc {p2000 / p200:.2f}x"
    )
    _, marks = run(video, 400, args.memory_objects, h, w, prune=False, checkpoints=(200, 400))
    (u200, ur200, _), (u400, ur400, _) = marks[200], marks[400]
    print(f"unpruned 200 frames: session {u200 / 2**20:7.2f} MiB  RSS {ur200:7.1f} MiB")
    print(f"unpruned 400 frames: session {u400 / 2**20:7.2f} MiB  RSS {ur400:7.1f} MiB  (ratio {u400 / u200:.2f}x)")
    print(f"process peak RSS (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB")
    if args.video:
        end_to_end(video, args.video, args.video_frames)


def end_to_end(video: Sam2Video, path: str, n_frames: int) -> None:
    """Decode + track with one prior box-shaped mask in the middle of the first frame."""
    from model.instances import Instances
    from model.tracker import track_video
    from model.video import probe_video

    info = probe_video(path)
    mask = np.zeros((1, info.height, info.width), bool)
    mask[0, info.height // 3 : 2 * info.height // 3, info.width // 3 : 2 * info.width // 3] = True
    start = time.perf_counter()
    result = track_video(video, path, "prior", priors={0: Instances(masks=mask)}, max_frames=n_frames)
    elapsed = time.perf_counter() - start
    print(
        f"end to end {Path(path).name} {info.width}x{info.height}: {n_frames / elapsed:.1f} frames/s "
        f"({len(result.tracks)} track, {len(result.tracks[0].frames) if result.tracks else 0} visible frames)"
    )


if __name__ == "__main__":
    main()
