"""The pure parts of an active-learning round: the stable held-out split, held-out metrics, checkpoint names, the
fine-tuning source built from corrections, and the parameters' validation."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from model.instances import Instances
from model.masks import mask_to_rle
from tasks.active_learning_ops import ActiveLearningParams, Item, held_out, manifest_of, split_items
from tasks.al_training import coco_source, heldout_metrics, model_dir_name


def _sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def _box(y0: int, y1: int, x0: int, x1: int, h: int = 16, w: int = 16) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _item(i: int, human: list[np.ndarray] | None = None) -> Item:
    records = [{"label": "object", "rle": mask_to_rle(m), "box": [0, 0, 1, 1]} for m in human or []]
    return Item(i, -1, 100 + i, _sha(i), 16, 16, "m@1/prior", [], records)


def test_held_out_split_is_stable_and_close_to_the_fraction() -> None:
    shas = [_sha(i) for i in range(2000)]
    first = [held_out(s, 0.25) for s in shas]
    assert first == [held_out(s, 0.25) for s in shas]  # same answer every round
    assert 0.22 < np.mean(first) < 0.28
    assert not any(held_out(s, 0.0) for s in shas)


def test_an_item_held_out_at_a_fraction_stays_held_out_at_a_larger_one() -> None:
    shas = [_sha(i) for i in range(500)]
    small = {s for s in shas if held_out(s, 0.2)}
    large = {s for s in shas if held_out(s, 0.4)}
    assert small <= large


def test_split_items_partitions_and_growing_the_corrections_never_moves_an_item() -> None:
    items = [_item(i) for i in range(40)]
    train, test = split_items(items[:20], 0.3)
    train2, test2 = split_items(items, 0.3)
    assert sorted(i.asset_id for i in train + test) == list(range(20))
    assert {i.asset_id for i in test} <= {i.asset_id for i in test2}
    assert {i.asset_id for i in train} <= {i.asset_id for i in train2}


def test_manifest_depends_on_the_corrections_not_their_order() -> None:
    a, b = _item(1, [_box(0, 4, 0, 4)]), _item(2, [_box(4, 8, 4, 8)])
    assert manifest_of([a, b]) == manifest_of([b, a])
    assert manifest_of([a, b]) != manifest_of([a, _item(2, [_box(4, 9, 4, 8)])])


A, B, C = _box(0, 8, 0, 8), _box(8, 16, 8, 16), _box(0, 8, 8, 16)
A_HALF = _box(0, 4, 0, 8)  # IoU 0.5 with A


def _inst(*masks: np.ndarray, labels: list[str] | None = None) -> Instances:
    if not masks:
        return Instances.empty(16, 16)
    return Instances(masks=np.stack(masks), labels=labels or ["object"] * len(masks))


@pytest.mark.parametrize(
    ("pred", "human", "iou", "accepted", "predicted"),
    [
        pytest.param([_inst(A, B)], [_inst(A, B)], 1.0, 1.0, 2, id="all-right"),
        pytest.param([_inst(A_HALF, B)], [_inst(A, B)], 0.75, 0.5, 2, id="one-reshaped"),
        pytest.param([_inst(A)], [_inst(A, B)], 0.5, 1.0, 1, id="one-missed-counts-iou-0"),
        pytest.param([_inst(A, C)], [_inst(A)], 1.0, 0.5, 2, id="one-spurious"),
        pytest.param([_inst(A, labels=["cat"])], [_inst(A)], 1.0, 0.0, 1, id="relabelled-is-not-accepted"),
        pytest.param([_inst()], [_inst(A)], 0.0, float("nan"), 0, id="nothing-predicted"),
        pytest.param([_inst(A), _inst(A_HALF)], [_inst(A), _inst(A)], 0.75, 0.5, 2, id="over-two-images"),
    ],
)
def test_heldout_metrics(pred, human, iou, accepted, predicted) -> None:  # noqa: ANN001
    got = heldout_metrics(pred, human, accept_iou=0.9)
    assert got["mean_iou"] == pytest.approx(iou)
    np.testing.assert_allclose(got["accepted_rate"], accepted)
    assert got["predicted"] == predicted


@pytest.mark.parametrize(
    ("base", "number", "expected"),
    [
        ("shapes-tiny@1234abcd", 1, "shapes-tiny-al1"),
        ("shapes-tiny-al1@99887766", 2, "shapes-tiny-al2"),
        ("facebook/sam2.1-hiera-tiny@aa", 3, "facebook-sam2.1-hiera-tiny-al3"),
    ],
)
def test_fine_tuned_checkpoints_are_named_after_their_base_and_round(base: str, number: int, expected: str) -> None:
    assert model_dir_name(base, number) == expected


def test_coco_source_of_corrections_yields_the_human_masks_at_the_model_size() -> None:
    items = [_item(1, [A, B]), _item(2, [C])]
    images = {1: np.zeros((16, 16, 3), np.uint8), 2: np.full((16, 16, 3), 9, np.uint8)}
    source = coco_source(items, images, image_size=32, version="v")
    assert len(source) == 2 and source.version == "v"
    image, masks = source.sample(np.random.default_rng(0), 1.0)
    assert image.shape == (32, 32, 3) and masks.shape[1:] == (32, 32) and masks.shape[0] in (1, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "entropy"}, "strategy must be one of"),
        ({"budget": -1}, "budget must be >= 0"),
        ({"held_out_fraction": 1.0}, "held_out_fraction"),
        ({"accept_iou": 0.0}, "accept_iou"),
        ({"steps": 0}, "must be >= 1"),
        ({"confidence_weights": (("entropy", 1.0),)}, "unknown signals"),
    ],
)
def test_params_reject_bad_values_naming_them(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ActiveLearningParams(project="p", **kwargs)


def test_params_round_trip_to_json_with_weights() -> None:
    params = ActiveLearningParams(project="p", confidence_weights=(("predicted_iou", 0.0),))
    assert params.weights == {"predicted_iou": 0.0}
    data = params.to_json()
    assert data["confidence_weights"] == {"predicted_iou": 0.0} and data["freeze"] == [
        "image_encoder",
        "prompt_encoder",
    ]
    assert ActiveLearningParams(project="p").weights is None


def test_cli_parses_the_active_learning_verb() -> None:
    from flows.cli import _weights, build_parser

    args = build_parser().parse_args(
        ["active-learning", "maskloop (images)", "--strategy", "hybrid", "--budget", "20", "--weight", "stability=2"]
    )
    assert (args.project, args.strategy, args.budget, args.func.__name__) == (
        "maskloop (images)",
        "hybrid",
        20,
        "cmd_active_learning",
    )
    assert _weights(args.weight) == {"stability": 2.0}
    with pytest.raises(SystemExit):
        _weights(["stability"])
