"""Pure parts of the pre-label stages: batch sizes and the task score."""

from __future__ import annotations

import math

import pytest

from storage.prelabel.plan import tapered_sizes
from storage.prelabel.predict import task_score


@pytest.mark.parametrize(
    ("scores", "expected"),
    [([], 0.0), ([0.9], 0.9), ([0.9, 0.4, 0.7], 0.4), ([math.nan, 0.8], 0.8), ([math.nan], 0.0)],
)
def test_task_score_is_the_weakest_instance_and_zero_when_empty(scores: list[float], expected: float) -> None:
    assert task_score(scores) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("n", "batch_size", "expected"),
    [
        (0, 64, []),
        (5, 64, [5]),
        (8, 64, [8]),
        (20, 64, [8, 8, 4]),
        (64, 64, [8, 8, 16, 32]),
        (100, 64, [8, 8, 16, 32, 36]),
        (128, 64, [8, 8, 16, 32, 32, 16, 8, 8]),
        (256, 64, [8, 8, 16, 32, 64, 64, 32, 16, 8, 8]),
        (300, 64, [8, 8, 16, 32, 64, 64, 44, 32, 16, 8, 8]),
        (10, 4, [4, 4, 2]),
        (33, 32, [4, 4, 8, 16, 1]),
        (7, 1, [1] * 7),
    ],
)
def test_batches_taper_at_both_ends_and_cover_every_image_once(n: int, batch_size: int, expected: list[int]) -> None:
    sizes = tapered_sizes(n, batch_size)
    assert sizes == expected
    assert sum(sizes) == n and all(0 < s <= batch_size for s in sizes)


def test_tapered_sizes_rejects_a_batch_size_below_one() -> None:
    with pytest.raises(ValueError, match="batch_size >= 1"):
        tapered_sizes(10, 0)
