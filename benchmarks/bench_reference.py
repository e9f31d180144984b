"""maskloop's SAM 2 vs Meta's reference code on the CPU: same checkpoint, same threads, same photos and frames.

    bash scripts/setup.sh --reference
    .venv/bin/python benchmarks/bench_reference.py --size tiny --threads 2 --rounds 3 --frames 8

Meta's side runs in ``.venv-ref`` (``tests/reference/meta_side.py``), maskloop's in this process, one after the
other (never at the same time). Prints seconds per image (encoder), per everything-mode image and per video frame
(two objects) for both, and the ratio maskloop / Meta (goal <= 1.0). Medians of ``--rounds``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.everything import EverythingParams, segment_everything  # noqa: E402
from model.segmenter import Segmenter  # noqa: E402
from model.video_model import Sam2Video  # noqa: E402
from tests.reference import harness  # noqa: E402


def _median_s(fn, rounds: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def maskloop_side(spec: dict, rounds: int) -> dict[str, float]:
    checkpoint = Path(spec["checkpoint"])
    seg = Segmenter.from_pretrained(checkpoint, device="cpu", dtype="fp32")
    image = np.asarray(Image.open(spec["image"]["paths"][0]).convert("RGB"))
    seg.embed([image])  # warm-up
    out = {"image_embed_s": _median_s(lambda: seg.embed([image]), rounds)}
    params = EverythingParams(
        **{k: v for k, v in harness.EVERYTHING.items() if k != "box_nms_thresh"},
        nms_thresh=harness.EVERYTHING["box_nms_thresh"],
    )
    photo = np.asarray(Image.open(spec["everything"]["paths"][0]).convert("RGB"))
    out["everything_s"] = _median_s(lambda: segment_everything(seg, [photo], params), 1)
    video = Sam2Video.from_pretrained(checkpoint, device="cpu", dtype="fp32")
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in spec["video"]["frames"]]
    obj = spec["video"]["objects"]
    mask = np.asarray(Image.open(obj[1]["mask"])) > 0
    started = time.perf_counter()
    session = video.new_session(*frames[0].shape[:2])
    for t, frame in enumerate(frames):
        session.step(frame)
        if t == 0:
            session.prompt(points={1: (np.asarray(obj[0]["points"]), np.asarray(obj[0]["labels"]))})
            session.prompt({2: mask})
    out["video_s_per_frame"] = (time.perf_counter() - started) / len(frames)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="tiny", choices=[s.name for s in harness.SIZES])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = next(s for s in harness.SIZES if s.name == args.size)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        spec = harness.build_spec(size, work, args.threads)
        spec["image"]["paths"] = spec["image"]["paths"][:1] * args.rounds
        spec["image"]["prompts"] = [p[:1] * args.rounds for p in spec["image"]["prompts"][:1]]
        spec["video"]["frames"] = spec["video"]["frames"][: args.frames]
        spec["video"]["late"] = []
        spec["outputs"] = {part: str(work / f"{part}.npz") for part in ("image", "everything", "video")}
        (work / "spec.json").write_text(json.dumps(spec))
        harness._run_meta("build", work / "spec.json")
        harness._run_meta("run", work / "spec.json")
        meta: dict[str, float] = {}
        for path in spec["outputs"].values():
            with np.load(path) as data:
                meta.update(json.loads(str(data["timings"])))
        ours = maskloop_side(spec, args.rounds)
    print(f"{args.size}, {args.threads} threads, CPU")
    print(f"{'':22}{'maskloop s':>12}{'Meta s':>10}{'ratio':>8}")
    for key in ("image_embed_s", "everything_s", "video_s_per_frame"):
        print(f"{key:22}{ours[key]:12.2f}{meta[key]:10.2f}{ours[key] / meta[key]:8.2f}")


if __name__ == "__main__":
    main()
