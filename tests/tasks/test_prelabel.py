"""The retry policy of the pre-label Prefect tasks: transient I/O errors only."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from storage.labelstudio.client import LabelStudioError
from tasks.prelabel import is_transient


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
