"""Model families on CPU at their released architectures (random weights: speed does not depend on them).

    python -m benchmarks.bench_models                        # SAM 2.1 tiny vs EdgeTAM vs SAM 3, 1 thread, 3 rounds
                                                             # (SAM 3 at 1008 px: ~2-3 min per round on one core)
    python -m benchmarks.bench_models --threads 2 --rounds 5 --families sam2,sam3     # SAM 2.1 tiny first: the base

Per family and round, one image (640x480, random pixels) goes through the path a pre-label job takes:

- SAM 2.1 tiny, EdgeTAM: ``Segmenter.embed`` + ``predict`` with ``--boxes`` box prompts (the text/prior strategies'
  decoder load), and the encoder alone;
- SAM 3: ``ConceptSegmenter.segment`` with ``--classes`` class phrases (strategy ``concept``), and the vision
  encoder alone.

Printed: the median over rounds of images/s for the full path (and with ``--encoder`` for the encoder alone), each
as a ratio to SAM 2.1 tiny measured in the same run (the machine is shared and noisy: compare ratios, not absolute numbers). A family whose
packages are missing (EdgeTAM needs timm) is reported as skipped with the reason.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

BASELINE = "sam2"


@dataclass
class Row:
    family: str
    label: str
    params_m: float
    full_s: list[float]
    encoder_s: list[float]
    note: str = ""


def _tokenizer() -> Any:
    """SAM 3's released tokenizer is downloaded with the checkpoint; a character-level CLIP tokenizer gives token
    sequences of the same (padded) length 32, which is all the speed depends on."""
    from transformers import CLIPTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["<|startoftext|>", "<|endoftext|>", *letters, *(f"{c}</w>" for c in letters)]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


def _build(family: str) -> tuple[str, Any]:
    """(label, segmenter) at the released architecture with seeded random weights."""
    import transformers

    from model.families import get_family

    spec = get_family(family)
    spec.check_requirements()
    assert spec.architecture_config is not None
    size = "tiny" if family == "sam2" else spec.sizes[0]
    torch.manual_seed(0)
    model = getattr(transformers, spec.image_class)(spec.architecture_config(size)).eval()
    label = f"{spec.title} {size}" if family == "sam2" else spec.title
    if family == "sam3":
        from model.concept import ConceptSegmenter

        return label, ConceptSegmenter(model, _tokenizer(), model_id="sam3-random", device="cpu", dtype="fp32")
    from model.segmenter import Segmenter

    return label, Segmenter(model, model_id=f"{family}-random", device="cpu", dtype="fp32")


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(
    family: str, image: np.ndarray, rounds: int, boxes: int, classes: list[str], encoder_too: bool = False
) -> Row:
    label, seg = _build(family)
    params_m = sum(p.numel() for p in seg.model.parameters()) / 1e6
    rng = np.random.default_rng(0)
    h, w = image.shape[:2]
    xy = rng.uniform(0, [w / 2, h / 2], (boxes, 2))
    box_prompts = np.concatenate([xy, xy + rng.uniform(20, [w / 2, h / 2], (boxes, 2))], axis=1).astype(np.float32)
    if family == "sam3":

        def full() -> Any:
            return seg.segment([image], classes)

        def encoder() -> Any:
            with torch.inference_mode():
                return seg.model.get_vision_features(pixel_values=seg._pixels([image]))
    else:

        def full() -> Any:
            return seg.predict(seg.embed(image), boxes=box_prompts)

        def encoder() -> Any:
            return seg.embed(image)

    full()  # warm-up
    full_s, encoder_s = [], []
    for _ in range(rounds):
        full_s.append(_seconds(full))
        if encoder_too:
            encoder_s.append(_seconds(encoder))
    return Row(family, label, params_m, full_s, encoder_s)


HEADER = f"{'model':<14} {'params':>8} {'img/s':>8} {'ratio':>7} {'enc img/s':>10} {'ratio':>7}  rounds (s)"


def _line(row: Row, base: Row | None) -> str:
    """One table row; ratios are to ``base`` (SAM 2.1 tiny of the same run)."""
    if not row.full_s:
        return f"{row.label:<14} skipped: {row.note}"
    full = 1.0 / statistics.median(row.full_s)
    enc = 1.0 / statistics.median(row.encoder_s) if row.encoder_s else float("nan")
    r_full = full * statistics.median(base.full_s) if base else float("nan")
    r_enc = enc * statistics.median(base.encoder_s) if base and base.encoder_s else float("nan")
    rounds = ", ".join(f"{s:.2f}" for s in row.full_s)
    return f"{row.label:<14} {row.params_m:>7.1f}M {full:>8.3f} {r_full:>6.2f}x {enc:>10.3f} {r_enc:>6.2f}x  {rounds}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="sam2,edgetam,sam3", help="comma-separated names in model.families")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--boxes", type=int, default=8, help="box prompts per image for SAM 2 / EdgeTAM")
    parser.add_argument("--classes", default="person,car", help="class phrases per image for SAM 3")
    parser.add_argument("--size", default="480x640", help="image HxW")
    parser.add_argument("--encoder", action="store_true", help="also time the image encoder alone (doubles the run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.split("x"))
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    classes = [c for c in args.classes.split(",") if c]
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds, image {height}x{width}")
    print(HEADER, flush=True)
    base: Row | None = None
    for family in [f for f in args.families.split(",") if f]:
        try:
            row = measure(family, image, args.rounds, args.boxes, classes, encoder_too=args.encoder)
        except Exception as exc:  # a family whose packages are missing is reported, not fatal
            row = Row(family, family, 0.0, [], [], note=f"{exc.__class__.__name__}: {exc}"[:160])
        if family == BASELINE and row.full_s:
            base = row
        print(_line(row, base), flush=True)  # row by row: a long SAM 3 run still leaves the rows before it


if __name__ == "__main__":
    main()
