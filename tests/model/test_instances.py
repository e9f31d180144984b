"""The typed currency: Instances validates on construction and round-trips through its stored (RLE) form."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from model.instances import Instances, Prompt


def _two() -> Instances:
    masks = np.zeros((2, 6, 8), bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4:6, 0:8] = True
    return Instances(
        masks=masks,
        labels=["cat", "dog"],
        scores=[0.9, 0.5],
        detector_scores=[0.7, math.nan],
        prompts=[Prompt("box", {"box": [2, 1, 5, 3]}, "m@1"), Prompt("grid", {"xy": np.array([1.5, 4.0])}, "m@1")],
    )


def test_boxes_default_to_tight_xyxy_of_the_masks() -> None:
    assert _two().boxes.tolist() == [[2, 1, 5, 3], [0, 4, 8, 6]]  # type: ignore[union-attr]


def test_records_round_trip_through_json() -> None:
    inst = _two()
    back = Instances.from_records(json.loads(json.dumps(inst.to_records())), 6, 8)
    assert np.array_equal(back.masks, inst.masks)
    assert back.labels == inst.labels and back.prompts == [
        Prompt("box", {"box": [2, 1, 5, 3]}, "m@1"),
        Prompt("grid", {"xy": [1.5, 4.0]}, "m@1"),
    ]
    assert np.allclose(back.scores, inst.scores)  # type: ignore[arg-type]
    assert math.isnan(back.detector_scores[1]) and math.isnan(back.stability[0])  # type: ignore[index]


def test_empty_instances_keep_the_image_size_and_round_trip() -> None:
    empty = Instances.empty(5, 7)
    assert len(empty) == 0 and empty.image_size == (5, 7)
    assert Instances.from_records([], 5, 7).image_size == (5, 7)


def test_selection_and_concatenation_keep_every_field_aligned() -> None:
    inst = _two()
    picked = inst[np.array([False, True])]
    assert picked.labels == ["dog"] and picked.scores.tolist() == [0.5]  # type: ignore[union-attr]
    both = Instances.concatenate([inst[1], inst[0]])
    assert both.labels == ["dog", "cat"] and np.array_equal(both.masks[1], inst.masks[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"masks": np.zeros((6, 8), bool)}, r"\(N, H, W\)"),
        ({"masks": np.full((1, 2, 2), 0.5)}, "bool"),
        ({"masks": np.ones((1, 2, 2), bool), "boxes": [[0, 0, 1]]}, "boxes"),
        ({"masks": np.ones((1, 2, 2), bool), "boxes": [[2, 0, 1, 1]]}, "x2 >= x1"),
        ({"masks": np.ones((1, 2, 2), bool), "boxes": [[0, 0, math.nan, 1]]}, "finite"),
        ({"masks": np.ones((1, 2, 2), bool), "labels": ["a", "b"]}, "labels"),
        ({"masks": np.ones((1, 2, 2), bool), "labels": [""]}, "labels"),
        ({"masks": np.ones((1, 2, 2), bool), "scores": [0.1, 0.2]}, "scores"),
        ({"masks": np.ones((1, 2, 2), bool), "prompts": ["box"]}, "Prompt"),
        ({"masks": np.ones((1, 2, 2), bool), "track_ids": [1, 2]}, "track_ids"),
    ],
)
def test_bad_instances_are_rejected_naming_expected_and_got(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Instances(**kwargs)


def test_unknown_prompt_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="Prompt.kind"):
        Prompt("telepathy")
