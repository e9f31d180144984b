"""A round's fine-tuning: checkpoints named after their base and round, training data from the corrections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from model.al_finetune import coco_source, model_dir_name
from model.masks import mask_to_rle


@pytest.mark.parametrize(
    ("base", "number", "expected"),
    [
        ("shapes-tiny@1234abcd", 1, "shapes-tiny-al1"),
        ("shapes-tiny-al1@99887766", 2, "shapes-tiny-al2"),
        ("facebook/sam2.1-hiera-tiny@aa", 3, "facebook-sam2.1-hiera-tiny-al3"),
        ("@aa", 1, "model-al1"),
    ],
)
def test_fine_tuned_checkpoints_are_named_after_their_base_and_round(base: str, number: int, expected: str) -> None:
    assert model_dir_name(base, number) == expected


@dataclass(frozen=True)
class _Corrected:
    asset_id: int
    height: int
    width: int
    human: list[dict[str, Any]] | None


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((16, 16), bool)
    m[y0:y1, x0:x1] = True
    return m


def _item(asset_id: int, masks: list[np.ndarray]) -> _Corrected:
    return _Corrected(
        asset_id, 16, 16, [{"label": "object", "rle": mask_to_rle(m), "box": [0, 0, 1, 1]} for m in masks]
    )


def test_coco_source_of_corrections_yields_the_human_masks_at_the_model_size() -> None:
    items = [_item(1, [_box(0, 8, 0, 8), _box(8, 16, 8, 16)]), _item(2, [_box(0, 8, 8, 16)])]
    images = {1: np.zeros((16, 16, 3), np.uint8), 2: np.full((16, 16, 3), 9, np.uint8)}
    source = coco_source(items, images, image_size=32, version="v")
    assert len(source) == 2 and source.version == "v"
    image, masks = source.sample(np.random.default_rng(0), 1.0)
    assert image.shape == (32, 32, 3) and masks.shape[1:] == (32, 32) and masks.shape[0] in (1, 2)


def test_records_without_a_mask_are_not_training_targets() -> None:
    items = [_item(1, [_box(0, 8, 0, 8)]), _Corrected(2, 16, 16, [{"label": "object", "boxes": []}])]
    source = coco_source(items, {1: np.zeros((16, 16, 3), np.uint8), 2: np.zeros((16, 16, 3), np.uint8)}, 32, "v")
    assert len(source) == 1  # the image whose only record has no mask gives nothing to learn from
