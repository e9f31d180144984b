"""The retry policy of the pre-label Prefect tasks: transient I/O errors only."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from storage.catalog.db import CatalogUnavailableError
from storage.labelstudio.client import LabelStudioError
from storage.retry import RetryPolicy, Transient
from tasks.prelabel import is_transient


class _State:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def result(self, raise_on_failure: bool = True) -> Any:
        return self.error


def _exhausted(error: BaseException) -> BaseException:
    """``error`` as a :class:`~storage.retry.RetryPolicy` raises it when it gives up."""
    policy = RetryPolicy("test", attempts=2, total_s=1.0, base_delay_s=0.0)

    def fail() -> None:
        raise error

    with pytest.raises(type(error)) as raised:
        policy.call(fail, "the call", lambda _e: Transient())
    return raised.value


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
        (_exhausted(_s3_error(503)), False),  # the S3 policy already retried it to its bounds
        (_exhausted(LabelStudioError("GET", "/api/tasks", 502, "bad gateway")), False),
        (CatalogUnavailableError("the catalog at sqlite:///x is unavailable"), True),  # a restart may outlast it
    ],
)
def test_only_transient_io_errors_are_retried(error: BaseException, retry: bool) -> None:
    assert is_transient(None, None, _State(error)) is retry
