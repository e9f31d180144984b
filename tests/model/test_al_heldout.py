"""Judging a round on corrections: the stable held-out split, held-out metrics, promotion and the calibration sample."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pytest

from model.al_heldout import (
    HeldOutMetrics,
    calibration_sample,
    held_out,
    heldout_metrics,
    promotion,
    split_held_out,
)
from model.instances import Instances


def _sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


@dataclass(frozen=True)
class _Item:
    asset_id: int
    sha256: str


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


def test_split_partitions_and_growing_the_corrections_never_moves_an_item() -> None:
    items = [_Item(i, _sha(i)) for i in range(40)]
    train, test = split_held_out(items[:20], 0.3)
    train2, test2 = split_held_out(items, 0.3)
    assert sorted(i.asset_id for i in train + test) == list(range(20))
    assert {i.asset_id for i in test} <= {i.asset_id for i in test2}
    assert {i.asset_id for i in train} <= {i.asset_id for i in train2}


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((16, 16), bool)
    m[y0:y1, x0:x1] = True
    return m


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
        pytest.param([_inst(A)], [_inst()], float("nan"), 0.0, 1, id="nothing-to-find"),
        pytest.param([], [], float("nan"), float("nan"), 0, id="no-images"),
        pytest.param([_inst(A), _inst(A_HALF)], [_inst(A), _inst(A)], 0.75, 0.5, 2, id="over-two-images"),
    ],
)
def test_heldout_metrics(pred, human, iou, accepted, predicted) -> None:  # noqa: ANN001
    got = heldout_metrics(pred, human, accept_iou=0.9)
    np.testing.assert_allclose(got.mean_iou, iou)
    np.testing.assert_allclose(got.accepted_rate, accepted)
    assert got.predicted == predicted


def _metrics(iou: float, accepted: float) -> HeldOutMetrics:
    return HeldOutMetrics(iou, accepted, 0, 0, 0)


@pytest.mark.parametrize(
    ("old", "new", "margin", "promoted"),
    [
        pytest.param(0.5, 0.6, 0.0, True, id="better"),
        pytest.param(0.5, 0.5, 0.0, False, id="equal-is-not-better"),
        pytest.param(0.5, 0.45, -0.1, True, id="negative-margin-tolerates-a-loss"),
        pytest.param(0.5, 0.55, 0.1, False, id="gain-below-margin"),
        pytest.param(float("nan"), float("nan"), -1.0, False, id="nothing-to-compare"),
    ],
)
def test_promotion_needs_a_held_out_gain_above_the_margin(
    old: float, new: float, margin: float, promoted: bool
) -> None:
    verdict = promotion(_metrics(old, 0.2), _metrics(new, 0.5), margin)
    assert verdict.promoted is promoted
    assert (verdict.reason is None) is promoted
    np.testing.assert_equal(verdict.held_out["old"]["mean_iou"], old)
    assert math.isclose(verdict.held_out["accepted_rate_gain"], 0.3)


def test_calibration_sample_keeps_all_small_sets_and_a_seeded_subset_of_large_ones() -> None:
    assert calibration_sample(3, 200, 0) == [0, 1, 2]
    assert calibration_sample(0, 200, 0) == []
    picked = calibration_sample(500, 10, 7)
    assert len(picked) == 10 == len(set(picked)) and picked == sorted(picked)
    assert picked == calibration_sample(500, 10, 7) != calibration_sample(500, 10, 8)
