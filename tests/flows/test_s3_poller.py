"""The S3 poller against a real S3 HTTP server (moto): which prefixes the ``s3.object.created`` triggers watch, which
objects it reports (new and rewritten ones, not those there before the watch began), and that an object is recorded
as reported only once its events were handed to Prefect."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flows.s3_poller import Watch, poll, watches_of
from storage.s3_events import EVENT_NAME
from storage.s3_poll import SeenObjects, new_objects


def _automation(pattern: Any, created: str, *, enabled: bool = True, expect: str = EVENT_NAME) -> dict[str, Any]:
    trigger = {"type": "event", "expect": [expect], "match": {"prefect.resource.id": pattern}, "posture": "Reactive"}
    return {"name": "a", "enabled": enabled, "created": created, "trigger": trigger}


def test_watches_are_the_s3_patterns_of_enabled_object_created_triggers_with_their_earliest_creation() -> None:
    automations = [
        _automation("s3://raw/incoming/*", "2026-01-02T00:00:00+00:00"),
        _automation(["s3://raw/incoming/*", "s3://other/one.png"], "2026-01-01T00:00:00+00:00"),
        _automation("s3://off/*", "2026-01-01T00:00:00+00:00", enabled=False),
        _automation("s3://flows/*", "2026-01-01T00:00:00+00:00", expect="prefect.flow-run.Completed"),
        _automation("prefect.flow-run.*", "2026-01-01T00:00:00+00:00"),
    ]
    jan1 = datetime(2026, 1, 1, tzinfo=UTC)
    assert watches_of(automations) == [Watch("other", "one.png", jan1), Watch("raw", "incoming/*", jan1)]


def test_first_listing_reports_only_objects_written_after_the_watch_began_then_new_and_rewritten_ones(
    tmp_path: Path, s3: Any, bucket: str
) -> None:
    s3.put_object(Bucket=bucket, Key="in/before.png", Body=b"a")
    s3.put_object(Bucket=bucket, Key="out/elsewhere.png", Body=b"a")
    store = SeenObjects(tmp_path / "seen.sqlite")
    later = datetime.now(UTC) + timedelta(seconds=30)  # the watch began after "before.png" was written
    assert new_objects(s3, store, bucket, "in/*", since=later) == []
    s3.put_object(Bucket=bucket, Key="in/new.png", Body=b"b")
    s3.put_object(Bucket=bucket, Key="in/notes.txt", Body=b"not media")
    (found,) = new_objects(s3, store, bucket, "in/*", since=later)
    assert (found.uri, found.size, found.prefect_event()["event"]) == (f"s3://{bucket}/in/new.png", 1, EVENT_NAME)
    assert new_objects(s3, store, bucket, "in/*") == [found], "not recorded until the caller marks it reported"
    store.mark([found])
    assert new_objects(s3, store, bucket, "in/*") == []
    s3.put_object(Bucket=bucket, Key="in/before.png", Body=b"new content")  # a rewrite is a new ObjectCreated
    assert [o.key for o in new_objects(s3, store, bucket, "in/*")] == ["in/before.png"]


def test_a_prefix_watched_from_before_its_objects_reports_them_all(tmp_path: Path, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="in/a.png", Body=b"a")
    store = SeenObjects(tmp_path / "seen.sqlite")
    earlier = datetime.now(UTC) - timedelta(minutes=5)
    assert [o.key for o in new_objects(s3, store, bucket, "in/*", since=earlier)] == ["in/a.png"]
    assert [o.key for o in new_objects(s3, store, bucket, "in/a.png", since=None)] == ["in/a.png"]  # exact key


def test_poll_emits_one_event_per_upload_and_re_reports_after_a_failed_hand_over(
    tmp_path: Path, s3: Any, bucket: str
) -> None:
    store = SeenObjects(tmp_path / "seen.sqlite")
    watch = Watch(bucket, "in/*", datetime.now(UTC) - timedelta(minutes=1))
    emitted: list[dict[str, Any]] = []
    s3.put_object(Bucket=bucket, Key="in/a.png", Body=b"a")

    def broken_flush() -> None:
        raise ConnectionError("Prefect is not answering")

    report = poll(
        s3,
        store,
        watches=lambda: [watch],
        emit=lambda **e: emitted.append(e),
        flush=broken_flush,
        interval_s=0,
        max_polls=2,
    )
    assert len(emitted) == 2 and len(report.errors) == 2, "not handed over: reported again the next round"
    emitted.clear()
    report = poll(
        s3,
        store,
        watches=lambda: [watch],
        emit=lambda **e: emitted.append(e),
        flush=lambda: None,
        interval_s=0,
        max_polls=3,
    )
    assert [e["resource"]["prefect.resource.id"] for e in emitted] == [f"s3://{bucket}/in/a.png"]
    assert emitted[0]["payload"]["key"] == "in/a.png" and report.errors == []


def test_poll_survives_a_missing_bucket_and_stops_when_told(tmp_path: Path, s3: Any) -> None:
    store = SeenObjects(tmp_path / "seen.sqlite")
    stop = threading.Event()
    stop.set()
    assert poll(s3, store, watches=lambda: [Watch("no-such-bucket", "x/*")], interval_s=0, stop=stop).polls == 0
    report = poll(
        s3,
        store,
        watches=lambda: [Watch("no-such-bucket", "x/*")],
        emit=lambda **e: None,
        flush=lambda: None,
        interval_s=0,
        max_polls=2,
    )
    assert report.polls == 2 and len(report.errors) == 2 and "NoSuchBucket" in report.errors[0]


@pytest.fixture(autouse=True)
def _no_prefect(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests never reach Prefect: emit and flush are given; reading the triggers is given."""
    import flows.s3_poller

    def refuse() -> list[Watch]:
        raise AssertionError("the test should have given the watches")

    monkeypatch.setattr(flows.s3_poller, "read_watches", refuse)
