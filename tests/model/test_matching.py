"""The one Hungarian matching of predicted and reference masks: which pairs it makes and the IoU each side gets."""

from __future__ import annotations

import numpy as np
import pytest

from model.matching import iou_matrix, match_masks


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((16, 16), bool)
    m[y0:y1, x0:x1] = True
    return m


A, B, C = _box(0, 8, 0, 8), _box(8, 16, 8, 16), _box(0, 8, 8, 16)
A_HALF = _box(0, 4, 0, 8)  # IoU 0.5 with A
NONE = np.zeros((0, 16, 16), bool)


@pytest.mark.parametrize(
    ("pred", "ref", "min_iou", "pairs", "pred_iou", "ref_iou"),
    [
        pytest.param([A, B], [B, A], 0.0, {0: 1, 1: 0}, [1, 1], [1, 1], id="order-does-not-matter"),
        pytest.param([A_HALF, A], [A], 0.0, {1: 0}, [0, 1], [1], id="the-better-of-two-wins"),
        pytest.param([A], [A_HALF, B], 0.0, {0: 0}, [0.5], [0.5, 0], id="unmatched-reference-gets-0"),
        pytest.param([A_HALF], [A], 0.6, {}, [0], [0], id="below-min-iou-is-no-match"),
        pytest.param([C], [A], 0.0, {0: 0}, [0], [0], id="disjoint-pair-has-iou-0"),
        pytest.param(NONE, [A], 0.0, {}, [], [0], id="no-predictions"),
        pytest.param([A], NONE, 0.0, {}, [0], [], id="no-reference"),
        pytest.param(NONE, NONE, 0.0, {}, [], [], id="nothing"),
    ],
)
def test_matching_pairs_by_largest_total_iou(pred, ref, min_iou, pairs, pred_iou, ref_iou) -> None:  # noqa: ANN001
    matching = match_masks(np.asarray(pred, bool), np.asarray(ref, bool), min_iou=min_iou)
    assert matching.pairs == pairs
    np.testing.assert_allclose(matching.pred_iou(), pred_iou)
    np.testing.assert_allclose(matching.reference_iou(), ref_iou)


def test_iou_matrix_rejects_masks_of_different_sizes_and_non_stacks() -> None:
    with pytest.raises(ValueError, match="sizes must match"):
        iou_matrix(np.zeros((1, 4, 4), bool), np.zeros((1, 5, 5), bool))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        iou_matrix(np.zeros((4, 4), bool), np.zeros((1, 4, 4), bool))


def test_the_agreement_table_uses_the_same_matching() -> None:
    from storage.agreement import match_instances

    pred, ref = np.stack([A_HALF, A]), np.stack([A])
    outcomes = match_instances(pred, ["object", "object"], ref, ["object"])
    assert [(o.outcome, o.pred_index, o.human_index) for o in outcomes] == [
        ("deleted", 0, None),
        ("accepted", 1, 0),
    ]
