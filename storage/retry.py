"""The one retry layer of each kind of I/O: S3, the annotation server (Label Studio) and the SQL catalog.

A :class:`RetryPolicy` is bounded twice, by attempts and by total time, both from :class:`~storage.settings.Settings`
(``s3_retry_*``, ``annotation_retry_*``, ``catalog_retry_*``). A call is retried only when its ``classify`` function
calls the error transient; a server's ``Retry-After`` (429/503) is honoured, within the total time. Each failure is
logged once: one line when the call recovers after failed attempts, or one line when the policy gives up (the error
is then re-raised as it was, with a note saying how many attempts over how long) — never a line per attempt.

Nothing else in maskloop retries these calls: botocore's own retries are off (``storage.s3.make_client``), and the
Prefect tasks retry only what is not a server's answer (a lost I/O helper process), see docs/reliability.md.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from storage.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Transient:
    """``classify``'s verdict for an error that may pass: retry, after at least ``retry_after_s`` when given."""

    retry_after_s: float | None = None


Classify = Callable[[BaseException], Transient | None]


@dataclass(frozen=True)
class RetryPolicy:
    """Retry transient failures of calls to ``server``: at most ``attempts`` calls and ``total_s`` seconds in all
    (sleeps included; a sleep that would pass ``total_s`` is not taken), exponential backoff with jitter from
    ``base_delay_s`` up to ``max_delay_s``."""

    server: str
    attempts: int = 5
    total_s: float = 30.0
    base_delay_s: float = 0.2
    max_delay_s: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"{self.server} retry attempts must be >= 1, got {self.attempts}")
        if self.total_s < 0:
            raise ValueError(f"{self.server} retry total time must be >= 0 s, got {self.total_s}")

    @classmethod
    def for_s3(cls, settings: Settings) -> RetryPolicy:
        return cls("S3", settings.s3_retry_attempts, settings.s3_retry_total_s)

    @classmethod
    def for_annotation(cls, settings: Settings) -> RetryPolicy:
        return cls("Label Studio", settings.annotation_retry_attempts, settings.annotation_retry_total_s, 0.5)

    @classmethod
    def for_catalog(cls, settings: Settings) -> RetryPolicy:
        return cls("catalog", settings.catalog_retry_attempts, settings.catalog_retry_total_s, 0.25)

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """The sleep before attempt ``attempt + 1``: backoff with jitter, at least the server's ``Retry-After``."""
        backoff = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
        return max(backoff, retry_after_s or 0.0)

    def call(self, fn: Callable[[], T], what: str, classify: Classify) -> T:
        """``fn()``, retried while ``classify`` calls its error transient and the bounds allow; ``what`` names the
        call in the one log line (e.g. ``"download s3://b/k"``)."""
        started = time.monotonic()
        failures: list[str] = []
        attempt = 0
        while True:
            attempt += 1
            try:
                result = fn()
            except Exception as error:  # noqa: BLE001 - re-raised below unless transient and within bounds
                verdict = classify(error)
                failures.append(_short(error))
                elapsed = time.monotonic() - started
                if verdict is None:
                    if len(failures) > 1:  # permanent now, after transient failures: say what came before
                        log.warning("%s: %s after %d failed attempts", what, failures[-1], len(failures) - 1)
                    raise
                delay = self.delay_s(attempt, verdict.retry_after_s)
                if attempt >= self.attempts or elapsed + delay > self.total_s:
                    note = (
                        f"{self.server}: gave up on {what} after {attempt} attempts in {elapsed:.1f} s "
                        f"(bounds: {self.attempts} attempts, {self.total_s:g} s)"
                    )
                    log.warning("%s; last error: %s", note, failures[-1])
                    error.add_note(note)
                    error.maskloop_retries_exhausted = True  # type: ignore[attr-defined]
                    raise
                log.debug("%s: attempt %d failed (%s); retrying in %.2f s", what, attempt, failures[-1], delay)
                time.sleep(delay)
                continue
            if failures:
                log.warning(
                    "%s: recovered after %d failed attempts in %.1f s (first: %s)",
                    what,
                    len(failures),
                    time.monotonic() - started,
                    failures[0],
                )
            return result


def _short(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from an HTTP ``Retry-After`` value (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def retries_exhausted(error: BaseException) -> bool:
    """Whether a :class:`RetryPolicy` already retried ``error`` to its bounds (so no outer layer should again)."""
    return bool(getattr(error, "maskloop_retries_exhausted", False))
