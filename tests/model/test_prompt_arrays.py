"""The segmenter's prompt checks without a model: the forms a prompt may take, what each becomes, and its lineage.
(Bad prompts through ``Segmenter.predict``: ``tests/model/test_segmenter.py``.)"""

from __future__ import annotations

import numpy as np
import pytest

from model.prompt_arrays import check_prompts, prompt_lineage, split_per_image

# (points, labels, boxes, masks) -> (count, points shape, labels, boxes shape, masks shape)
FORMS = [
    ("nothing", (None, None, None, None), (0, None, None, None, None)),
    ("no boxes", (None, None, np.zeros((0, 4)), None), (0, None, None, (0, 4), None)),
    ("an empty list of boxes", (None, None, [], None), (0, None, None, (0, 4), None)),
    ("one box as a flat xyxy", (None, None, [1, 2, 3, 4], None), (1, None, None, (1, 4), None)),
    ("a degenerate box (a point)", (None, None, [[5, 5, 5, 5]], None), (1, None, None, (1, 4), None)),
    ("(P, 2) points, default labels", ([[1, 2], [3, 4]], None, None, None), (2, (2, 1, 2), [[1], [1]], None, None)),
    ("(P,) labels for one point each", ([[1, 2], [3, 4]], [1, 0], None, None), (2, (2, 1, 2), [[1], [0]], None, None)),
    (
        "points with padding and a box each",
        ([[[1, 2], [0, 0]]], [[1, -10]], [[0, 0, 9, 9]], None),
        (1, (1, 2, 2), [[1, -10]], (1, 4), None),
    ),
    ("mask inputs alone", (None, None, None, np.zeros((3, 8, 8))), (3, None, None, None, (3, 8, 8))),
]


@pytest.mark.parametrize(("form", "given", "expected"), FORMS, ids=[f[0] for f in FORMS])
def test_each_accepted_prompt_form_becomes_arrays_of_one_count(form: str, given: tuple, expected: tuple) -> None:
    prompts = check_prompts(*given, image=0)
    count, points, labels, boxes, masks = expected
    assert prompts.count == count
    assert (None if prompts.points is None else prompts.points.shape) == points
    assert (None if prompts.labels is None else prompts.labels.tolist()) == labels
    assert (None if prompts.boxes is None else prompts.boxes.shape) == boxes
    assert (None if prompts.masks is None else prompts.masks.shape) == masks


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ((np.full((1, 2), np.inf), None, None, None), "points must be finite"),
        ((None, None, None, np.full((1, 4, 4), np.nan)), "mask_inputs must be finite"),
        ((None, None, np.zeros((2, 4)), np.zeros((1, 4, 4))), "same count P"),
    ],
)
def test_a_bad_prompt_names_its_image(given: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        check_prompts(*given, image=3)
    assert str(info.value).startswith("image 3:")


def test_lineage_records_each_masks_prompt_kind_and_coordinates_to_two_decimals_without_float32_noise() -> None:
    prompts = check_prompts([[1.234, 2.0]], [0], [[0.004, 1, 2, 3.111]], np.zeros((1, 4, 4)), image=0)
    (only,) = prompt_lineage(prompts, "m@1234/grid")
    assert only.kind == "box" and only.model_id == "m@1234/grid"
    assert only.params == {"mask_input": True, "points": [[1.23, 2.0]], "labels": [0], "box": [0.0, 1.0, 2.0, 3.11]}
    assert prompt_lineage(check_prompts(None, None, None, None, image=0), "m") == []


def test_per_image_values_are_split_or_refused_with_the_count_expected() -> None:
    assert split_per_image(None, 2, "boxes", single=False) == [None, None]
    assert split_per_image("one", 1, "boxes", single=True) == ["one"]
    assert split_per_image(["a", None], 2, "boxes", single=False) == ["a", None]
    with pytest.raises(ValueError, match="boxes: for 2 images pass a list of 2 per-image arrays"):
        split_per_image(["a"], 2, "boxes", single=False)
