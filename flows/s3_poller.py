"""The S3 poller: Prefect events ``s3.object.created`` for S3 servers that send no notifications (SeaweedFS).

Every ``interval_s`` it reads from the Prefect server which S3 prefixes the enabled ``s3.object.created`` triggers
watch (their ``prefect.resource.id`` match, e.g. ``s3://maskloop/incoming/*`` of ``prelabel-on-upload``), lists those
prefixes and emits one event per new or rewritten media object, the same event ``maskloop events listen`` emits from
an SQS notification (:mod:`flows.events`), so the same trigger starts the same deployment. Objects are recorded as
reported only after their events were handed to Prefect: a crash re-reports rather than loses. A prefix starts being
watched when its trigger is created; objects that were there before are not reported (:mod:`storage.s3_poll`).

``maskloop stack up`` runs it (``python -m flows.s3_poller --data-dir DIR``) beside its Prefect server and worker.
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from flows.events import Emit, ListenReport, _emit_one, _flush, prefect_emit
from storage.s3_events import EVENT_NAME
from storage.s3_poll import SeenObjects, new_objects

log = logging.getLogger("flows.s3_poller")  # also when run as ``python -m flows.s3_poller`` (``__main__``)

DEFAULT_INTERVAL_S = 5.0


@dataclass(frozen=True)
class Watch:
    """Keys of ``bucket`` matching ``pattern`` (a trailing ``*`` for a prefix), watched since ``since``."""

    bucket: str
    pattern: str
    since: datetime | None = None


@dataclass
class PollReport(ListenReport):
    polls: int = 0
    errors: list[str] = field(default_factory=list)


def watches_of(automations: list[dict[str, Any]]) -> list[Watch]:
    """The S3 patterns of the enabled automations whose event trigger expects ``s3.object.created`` (API JSON)."""
    earliest: dict[tuple[str, str], datetime | None] = {}
    for automation in automations:
        trigger = automation.get("trigger") or {}
        if not automation.get("enabled", True) or trigger.get("type") != "event":
            continue
        if EVENT_NAME not in (trigger.get("expect") or []):
            continue
        ids = (trigger.get("match") or {}).get("prefect.resource.id") or []
        created = automation.get("created")
        since = datetime.fromisoformat(created) if isinstance(created, str) else None
        for value in [ids] if isinstance(ids, str) else ids:
            bucket, _, pattern = str(value).removeprefix("s3://").partition("/")
            if not str(value).startswith("s3://") or not bucket:
                continue
            known = earliest.get((bucket, pattern), since)
            earliest[(bucket, pattern)] = min(since, known) if since and known else None
    return [Watch(bucket, pattern, since) for (bucket, pattern), since in sorted(earliest.items())]


def read_watches() -> list[Watch]:
    """The watches of the configured Prefect server's automations (with their creation times)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        answer = client.request("POST", "/automations/filter", json={"sort": "CREATED_DESC", "offset": 0})
        answer.raise_for_status()
        return watches_of(answer.json())


def poll(
    s3: Any,
    store: SeenObjects,
    *,
    watches: Callable[[], list[Watch]] = read_watches,
    emit: Emit = prefect_emit,
    flush: Callable[[], Any] = _flush,
    interval_s: float = DEFAULT_INTERVAL_S,
    max_polls: int | None = None,
    stop: threading.Event | None = None,
) -> PollReport:
    """List the watched prefixes every ``interval_s`` until ``stop`` is set (or ``max_polls`` rounds), emitting one
    event per new object. A failing round (Prefect or S3 not answering, a missing bucket) is logged and retried."""
    stop = stop or threading.Event()
    report = PollReport()
    log.info("polling every %.1f s for the prefixes of s3.object.created triggers", interval_s)
    while not stop.is_set() and (max_polls is None or report.polls < max_polls):
        report.polls += 1
        try:
            current = watches()
        except Exception as error:  # noqa: BLE001 - a service: log and try again next round
            _failed(report, f"reading the triggers from Prefect: {error}")
            current = []
        for watch in current:
            try:
                found = new_objects(s3, store, watch.bucket, watch.pattern, watch.since)
                for item in found:
                    _emit_one(emit, item, report)
                if found:
                    flush()
                    store.mark(found)
            except Exception as error:  # noqa: BLE001 - one prefix failing does not stop the others
                _failed(report, f"s3://{watch.bucket}/{watch.pattern}: {error}")
        if max_polls is None or report.polls < max_polls:
            stop.wait(interval_s)
    return report


def _failed(report: PollReport, what: str) -> None:
    if what not in report.errors[-5:]:  # the same failure every round is logged once in a row
        log.warning("poll failed: %s", what)
    report.errors.append(what)


def main(argv: Sequence[str] | None = None) -> int:
    from storage.s3 import make_client
    from storage.settings import Settings
    from storage.stack.manager import Stack

    parser = argparse.ArgumentParser(prog="python -m flows.s3_poller", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="state directory (default: $MASKLOOP_DATA_DIR or ~/.maskloop)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, help="seconds between listings")
    parser.add_argument("--max-polls", type=int, help="stop after this many rounds (default: run until stopped)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    base = Settings(data_dir=Path(args.data_dir)) if args.data_dir else Settings()  # type: ignore[call-arg]
    settings = Stack(base.data_dir).settings(base)
    store = SeenObjects(settings.data_dir / "stack" / "s3-poller.sqlite")
    try:
        poll(make_client(settings), store, interval_s=args.interval, max_polls=args.max_polls)
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
