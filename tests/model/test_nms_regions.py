"""Pure-torch NMS, IoU and connected-component cleanup on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.nms import batched_nms, box_iou, mask_iou, mask_nms, nms
from model.regions import clean_logits, component_areas, connected_components, fill_small_holes, remove_small_regions


def _t(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "#" for c in row] for row in rows])


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),
        ([0, 0, 10, 10], [10, 10, 20, 20], 0.0),
        ([0, 0, 10, 10], [2, 2, 4, 4], 4 / 100),
        ([0, 0, 0, 0], [0, 0, 0, 0], 0.0),
    ],
)
def test_box_iou_table(a: list, b: list, iou: float) -> None:
    assert box_iou(
        torch.tensor([a], dtype=torch.float32), torch.tensor([b], dtype=torch.float32)
    ).item() == pytest.approx(iou)


def test_nms_keeps_best_of_overlapping_and_all_disjoint_sorted_by_score() -> None:
    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 9, 10], [50, 50, 60, 60]], dtype=torch.float32
    )
    scores = torch.tensor([0.8, 0.9, 0.3, 0.1, 0.5])
    assert nms(boxes, scores, 0.5).tolist() == [1, 4, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 0, 4, 2, 3]
    assert nms(torch.zeros((0, 4)), torch.zeros((0,)), 0.5).tolist() == []


def test_nms_is_greedy_not_transitive() -> None:
    # B overlaps A and C; A suppresses B, so C survives although it overlaps B
    boxes = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]], dtype=torch.float32)
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.3).tolist() == [0, 2]


def test_batched_nms_never_suppresses_across_classes() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1]
    assert batched_nms(boxes, scores, torch.tensor([0, 0, 0]), 0.5).tolist() == [0]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: nms(torch.zeros((2, 3)), torch.zeros(2), 0.5), r"boxes must be \(N, 4\)"),
        (lambda: nms(torch.zeros((2, 4)), torch.zeros(3), 0.5), r"scores must have shape \(2,\)"),
        (lambda: batched_nms(torch.zeros((2, 4)), torch.zeros(2), torch.zeros(3), 0.5), "classes must have shape"),
        (lambda: mask_nms(torch.zeros((2, 4, 4), dtype=torch.bool), torch.zeros(3), 0.5), "mask_nms needs"),
    ],
)
def test_nms_input_errors(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call()


def test_mask_iou_and_mask_nms_on_hand_made_masks() -> None:
    a = _t(["##..", "##..", "....", "...."])
    b = _t(["###.", "##..", "....", "...."])  # IoU(a, b) = 4/5
    c = _t(["....", "....", "..##", "..##"])
    masks = torch.stack([a, b, c])
    iou = mask_iou(masks)
    assert iou[0, 1].item() == pytest.approx(0.8) and iou[0, 2].item() == 0.0 and iou[2, 2].item() == 1.0
    assert mask_nms(masks, torch.tensor([0.5, 0.9, 0.1]), 0.7).tolist() == [1, 2]
    assert mask_nms(masks, torch.tensor([0.5, 0.9, 0.1]), 0.85).tolist() == [1, 0, 2]


def test_connected_components_are_eight_connected_and_batched() -> None:
    masks = torch.stack([_t(["#..#", ".#..", "....", "##.#"]), _t(["####", "....", "####", "...."])])
    labels = connected_components(masks)
    first = labels[0][masks[0]].tolist()
    assert len(set(first)) == 4  # diagonal pair joins: {(0,0),(1,1)}, (0,3), {(3,0),(3,1)}, (3,3)
    assert labels[0, 0, 0] == labels[0, 1, 1] and labels[0, 3, 0] == labels[0, 3, 1]
    assert len(set(labels[1][masks[1]].tolist())) == 2
    assert (labels[~masks] == 0).all()
    areas = component_areas(labels)
    assert areas[0, 0, 0] == 2 and areas[0, 0, 3] == 1 and areas[1, 0, 0] == 4


def test_connected_components_of_a_long_spiral_converge() -> None:
    grid = np.zeros((21, 21), bool)
    grid[1::4, 1:-1] = True  # horizontal bars joined alternately left and right: one snake
    for i, row in enumerate(range(1, 17, 4)):
        col = -2 if i % 2 == 0 else 1
        grid[row : row + 5, col] = True
    labels = connected_components(torch.from_numpy(grid)[None])
    assert len(set(labels[0][torch.from_numpy(grid)].tolist())) == 1


def test_remove_small_regions_and_keep_largest_when_all_small() -> None:
    masks = torch.stack([_t(["##...", "##...", ".....", "....#"]), _t(["##...", ".....", "..#..", "....."])])
    cleaned = remove_small_regions(masks, min_area=3)
    assert cleaned[0].sum() == 4 and not cleaned[0, 3, 4]
    assert cleaned[1].sum() == 2 and not cleaned[1, 2, 2]  # every region below 3 px: only the largest stays
    assert torch.equal(remove_small_regions(masks, 0), masks)


def test_fill_small_holes_fills_only_holes_below_the_threshold() -> None:
    mask = _t(["#######", "#.###..", "#.###..", "#######"])  # hole of 2 px; border notch of 4 px (a gap)
    filled = fill_small_holes(mask[None], max_area=3)[0]
    assert filled[1, 1] and filled[2, 1] and not filled[1, 5]
    assert fill_small_holes(mask[None], max_area=5)[0].all()


def test_clean_logits_flips_only_the_changed_pixels() -> None:
    logits = torch.where(_t(["####.", "#.##.", "####.", ".....", "....#"]), 3.0, -3.0)[None]
    cleaned = clean_logits(logits, min_region_area=2, max_hole_area=2)
    assert cleaned[0, 1, 1] == 10.0 and cleaned[0, 4, 4] == -10.0
    unchanged = torch.ones_like(cleaned, dtype=torch.bool)
    unchanged[0, 1, 1] = unchanged[0, 4, 4] = False
    assert torch.equal(cleaned[unchanged], logits[unchanged])
