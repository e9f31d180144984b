"""Print the quality figures of a shapes-tiny checkpoint on the held-out set of tests/model/test_shapes_tiny_quality.py.

    .venv/bin/python scripts/measure_shapes_tiny.py [model/weights/shapes-tiny]

Use it to re-set the regression floors of that test after retraining.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    import torch

    from model.autoprompt import auto_segment
    from model.finetune.prompts import mask_box
    from model.segmenter import Segmenter
    from model.synthetic import SyntheticDomain
    from tests.model import test_shapes_tiny_quality as quality

    torch.set_num_threads(1)
    weights = Path(argv[0]) if argv else quality.WEIGHTS
    segmenter = Segmenter.from_pretrained(weights, device="cpu")
    held_out = [SyntheticDomain().image(seed) for seed in quality.HELD_OUT_SEEDS]
    box = quality._prompt_ious(segmenter, held_out, "box")
    point = quality._prompt_ious(segmenter, held_out, "point")
    print(f"{len(held_out)} images, {len(box)} objects: box IoU {np.mean(box):.3f}  point IoU {np.mean(point):.3f}")
    fill, overlap = [], []
    for sample in held_out:
        boxes = np.stack([mask_box(m) for m in sample.masks])
        for (x0, y0, x1, y1), target in zip(boxes.astype(int), sample.masks, strict=True):
            filled = np.zeros_like(target)
            filled[y0 : y1 + 1, x0 : x1 + 1] = True
            fill.append(quality._iou(filled, target))
        masks = segmenter.predict(sample.image, boxes=boxes)[0].masks
        overlap += [quality._iou(masks[i], masks[j]) for i in range(len(masks)) for j in range(i + 1, len(masks))]
    print(f"baseline 'fill the box' IoU {np.mean(fill):.3f} (a model that uses its box prompt beats this)")
    print(
        f"prompt dependence: mean IoU between the masks of different objects' boxes {np.mean(overlap):.3f} "
        "(near 1: the model ignores its prompts; ground truth: near 0)"
    )
    found = {0.5: 0, 0.75: 0}
    total = 0
    for sample in held_out[: quality.EVERYTHING_IMAGES]:
        params = quality.EVERYTHING_PARAMS
        instances = auto_segment(segmenter, [sample.image], "everything", points_per_side=16, **params)[0]
        for target in sample.masks:
            total += 1
            best = max((quality._iou(mask, target) for mask in instances.masks), default=0.0)
            for thr in found:
                found[thr] += best >= thr
    print(
        f"everything mode ({quality.EVERYTHING_PARAMS}): "
        + ", ".join(f"recall@{thr} {n / total:.3f}" for thr, n in found.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
