"""Pictures of predictions: masks blended over images, boxes with track ids, thumbnails, histogram bins."""

from __future__ import annotations

import numpy as np
import pytest

from model.overlay import blend_masks, color_of, draw_boxes, histogram_counts, thumbnail


def test_blend_masks_tints_only_the_masked_pixels() -> None:
    rgb = np.full((4, 6, 3), 100, np.uint8)
    masks = np.zeros((2, 4, 6), bool)
    masks[0, 0, 0] = masks[1, 3, 5] = True
    out = blend_masks(rgb, masks, [(255, 0, 0), (0, 0, 255)], alpha=1.0)
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[3, 5]) == (0, 0, 255)
    assert (out[1:3] == 100).all(), "unmasked pixels changed"


@pytest.mark.parametrize(
    ("rgb_shape", "mask_shape", "colors", "error"),
    [
        ((4, 6), (1, 4, 6), 1, "(H, W, 3) image"),
        ((4, 6, 3), (1, 5, 6), 1, "masks"),
        ((4, 6, 3), (2, 4, 6), 1, "2 masks"),
    ],
)
def test_blend_masks_says_what_it_expected(rgb_shape: tuple, mask_shape: tuple, colors: int, error: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        blend_masks(np.zeros(rgb_shape, np.uint8), np.zeros(mask_shape, bool), [color_of(0)] * colors)


def test_draw_boxes_outlines_each_box_in_its_colour() -> None:
    out = draw_boxes(np.zeros((60, 80, 3), np.uint8), [(10, 20, 50, 50)], ["#1 cat"], [(0, 255, 0)])
    assert tuple(out[35, 10]) == (0, 255, 0) and tuple(out[35, 30]) == (0, 0, 0)  # edge drawn, inside left alone
    with pytest.raises(ValueError, match="1 boxes, 0 labels"):
        draw_boxes(np.zeros((8, 8, 3), np.uint8), [(0, 0, 1, 1)], [], [])


def test_thumbnail_keeps_the_aspect_ratio() -> None:
    assert thumbnail(np.zeros((100, 300, 3), np.uint8), 150).size == (150, 50)


@pytest.mark.parametrize(
    ("values", "bins", "expected"),
    [
        ([], 4, [0, 0, 0, 0]),
        ([0.0, 0.24, 0.25, 0.99, 1.0], 4, [2, 1, 0, 2]),
        ([-1.0, 2.0, float("nan")], 2, [1, 1]),  # outside values go to the end bins, NaN is dropped
    ],
)
def test_histogram_counts_bins_values(values: list[float], bins: int, expected: list[int]) -> None:
    assert histogram_counts(values, bins) == expected
