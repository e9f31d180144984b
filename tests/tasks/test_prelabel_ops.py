"""Plain pre-label stage functions and the retry policy of their Prefect tasks."""

from __future__ import annotations

import math
from typing import Any

import pytest
from botocore.exceptions import ClientError

from storage.labelstudio.client import LabelStudioError
from tasks.prelabel import is_transient
from tasks.prelabel_ops import PrelabelParams, tapered_sizes, task_score


class _State:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def result(self, raise_on_failure: bool = True) -> Any:
        return self.error


def _s3_error(status: int) -> ClientError:
    return ClientError({"Error": {"Code": str(status)}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (LabelStudioError("POST", "/api/projects/", 400, "title too long"), False),
        (LabelStudioError("POST", "/api/projects/1/import", 500, "boom"), True),
        (LabelStudioError("GET", "/api/tasks", 429, "slow down"), True),
        (_s3_error(404), False),
        (_s3_error(503), True),
        (ConnectionError("reset"), True),
        (TimeoutError("slow"), True),
        (ValueError("bad label"), False),
    ],
)
def test_only_transient_io_errors_are_retried(error: BaseException, retry: bool) -> None:
    assert is_transient(None, None, _State(error)) is retry


@pytest.mark.parametrize(
    ("scores", "expected"),
    [([], 0.0), ([0.9], 0.9), ([0.9, 0.4, 0.7], 0.4), ([math.nan, 0.8], 0.8), ([math.nan], 0.0)],
)
def test_task_score_is_the_weakest_instance_and_zero_when_empty(scores: list[float], expected: float) -> None:
    assert task_score(scores) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "magic"}, "strategy"),
        ({"strategy": "text"}, "class"),
        ({"batch_size": 0}, "batch_size"),
        ({"project": "x" * 42}, "project"),
        ({"project": ""}, "project"),
    ],
)
def test_bad_prelabel_parameters_are_rejected_with_a_reason(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrelabelParams(source="s3://bucket/x", **kwargs)


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
