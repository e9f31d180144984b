"""The one retry layer (storage/retry.py): bounded by attempts and by total time, Retry-After honoured, one log line
per failed call; and each server kind's verdict on which errors are transient."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError
from sqlalchemy.exc import IntegrityError, OperationalError

from storage import retry
from storage.catalog.db import classify as catalog_classify
from storage.labelstudio.client import LabelStudioError
from storage.labelstudio.client import classify as ls_classify
from storage.retry import RetryPolicy, Transient, retry_after_s
from storage.s3 import classify as s3_classify
from storage.settings import Settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(retry.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(retry.time, "sleep", fake.sleep)
    return fake


def failing(times: int, error: Exception) -> Any:
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise error
        return "ok"

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


def always(_error: BaseException) -> Transient | None:
    return Transient()


def test_transient_failures_are_retried_until_success_and_logged_once(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="storage.retry")
    fn = failing(3, ConnectionError("reset"))
    assert RetryPolicy("S3", attempts=5, total_s=60).call(fn, "download s3://b/k", always) == "ok"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "download s3://b/k: recovered after 3 failed attempts" in warnings[0]
    assert len(clock.sleeps) == 3


def test_attempts_bound_gives_up_with_one_line_and_a_note_on_the_error(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="storage.retry")
    fn = failing(10, ConnectionError("reset"))
    with pytest.raises(ConnectionError) as raised:
        RetryPolicy("S3", attempts=3, total_s=600).call(fn, "list s3://b/", always)
    assert fn.calls["n"] == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "gave up on list s3://b/ after 3 attempts" in warnings[0]
    assert any("after 3 attempts" in note for note in raised.value.__notes__)


def test_total_time_bound_stops_before_a_sleep_that_would_pass_it(clock: FakeClock) -> None:
    fn = failing(100, ConnectionError("down"))
    policy = RetryPolicy("catalog", attempts=100, total_s=5.0, base_delay_s=1.0, max_delay_s=1.0)
    with pytest.raises(ConnectionError):
        policy.call(fn, "claim", always)
    assert clock.now <= 5.0 and sum(clock.sleeps) <= 5.0
    assert 3 <= fn.calls["n"] < 100


def test_retry_after_is_honoured_as_the_least_wait(clock: FakeClock) -> None:
    fn = failing(1, ConnectionError("throttled"))
    RetryPolicy("Label Studio", base_delay_s=0.01).call(fn, "GET /api/tasks/", lambda _e: Transient(7.0))
    assert clock.sleeps == [7.0]


def test_permanent_errors_raise_at_once_without_sleeping(clock: FakeClock) -> None:
    fn = failing(1, ValueError("bad"))
    with pytest.raises(ValueError):
        RetryPolicy("S3").call(fn, "x", lambda _e: None)
    assert fn.calls["n"] == 1 and clock.sleeps == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("-4", 0.0),
        ("soon", None),
        ("Sun, 06 Dec 2026 10:00:05 GMT", 5.0),
        ("Sun, 06 Dec 2026 09:59:00 GMT", 0.0),
    ],
)
def test_retry_after_header_values(value: str | None, expected: float | None) -> None:
    assert retry_after_s(value, now=datetime(2026, 12, 6, 10, 0, 0, tzinfo=UTC)) == expected


def _client_error(code: str, status: int, headers: dict[str, str] | None = None) -> ClientError:
    meta = {"HTTPStatusCode": status, "HTTPHeaders": headers or {}}
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": meta}, "GetObject")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_client_error("SlowDown", 503), Transient()),
        (_client_error("SlowDown", 503, {"retry-after": "2"}), Transient(2.0)),
        (_client_error("InternalError", 500), Transient()),
        (_client_error("NoSuchKey", 404), None),
        (_client_error("PreconditionFailed", 412), None),
        (_client_error("AccessDenied", 403), None),
        (ReadTimeoutError(endpoint_url="http://s3"), Transient()),
        (ConnectionClosedError(endpoint_url="http://s3"), Transient()),
        (ConnectionResetError(), Transient()),
        (ValueError("bad key"), None),
    ],
)
def test_s3_transient_errors(error: Exception, expected: Transient | None) -> None:
    assert s3_classify(error) == expected


def _ls_error(status: int, retry_after: float | None = None) -> LabelStudioError:
    error = LabelStudioError("GET", "/api/tasks/", status, "")
    error.retry_after_s = retry_after
    return error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_ls_error(502), Transient()),
        (_ls_error(503), Transient()),
        (_ls_error(504), Transient()),
        (_ls_error(429, 3.0), Transient(3.0)),
        (_ls_error(500), None),
        (_ls_error(400), None),
        (_ls_error(404), None),
        (httpx.ConnectError("refused"), Transient()),
        (httpx.ReadTimeout("stalled"), Transient()),
        (httpx.RemoteProtocolError("disconnected"), Transient()),
        (ValueError("bad"), None),
    ],
)
def test_label_studio_transient_errors(error: Exception, expected: Transient | None) -> None:
    assert ls_classify(error) == expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OperationalError("UPDATE", {}, Exception("database is locked")), Transient()),
        (
            OperationalError("SELECT", {}, Exception("connection to server at 127.0.0.1 failed: Connection refused")),
            Transient(),
        ),
        (OperationalError("SELECT", {}, Exception("terminating connection due to administrator command")), Transient()),
        (OperationalError("SELECT", {}, Exception("no such table: assets")), None),
        (IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")), None),
        (ValueError("bad"), None),
    ],
)
def test_catalog_transient_errors(error: Exception, expected: Transient | None) -> None:
    assert catalog_classify(error) == expected


def test_policies_take_their_bounds_from_settings() -> None:
    settings = Settings(
        s3_retry_attempts=3,
        s3_retry_total_s=7,
        annotation_retry_attempts=4,
        annotation_retry_total_s=9,
        catalog_retry_attempts=5,
        catalog_retry_total_s=11,
    )
    assert (RetryPolicy.for_s3(settings).attempts, RetryPolicy.for_s3(settings).total_s) == (3, 7.0)
    assert (RetryPolicy.for_annotation(settings).attempts, RetryPolicy.for_annotation(settings).total_s) == (4, 9.0)
    assert (RetryPolicy.for_catalog(settings).attempts, RetryPolicy.for_catalog(settings).total_s) == (5, 11.0)
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        RetryPolicy("S3", attempts=0)
