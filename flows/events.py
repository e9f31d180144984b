"""``maskloop events listen``: the bridge from S3 notifications (in SQS) to Prefect events.

Long-polls the queue (``WaitTimeSeconds`` up to 20), emits one Prefect event ``s3.object.created`` per created object
(resource id ``s3://bucket/key``, payload bucket/key/size/etag) and deletes each message only after its events were
handed to Prefect, so a crash redelivers rather than loses. The ``prelabel-on-upload`` deployment's trigger turns those
events into flow runs. Messages that are not notifications are logged and left in the queue, for the queue's redrive
policy to move them to a dead-letter queue. Sources of the messages (S3, MinIO, EventBridge) are described in
:mod:`storage.s3_events`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from storage.s3_events import BadNotificationError, ObjectCreated, parse_notification

log = logging.getLogger(__name__)

Emit = Callable[..., Any]


@dataclass
class ListenReport:
    messages: int = 0
    events: int = 0
    rejected: int = 0
    emitted: list[str] = field(default_factory=list)


def prefect_emit(**kwargs: Any) -> Any:
    from prefect.events import emit_event

    return emit_event(**kwargs)


def _flush() -> None:
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=30)


def listen(
    sqs: Any,
    queue_url: str,
    *,
    emit: Emit = prefect_emit,
    flush: Callable[[], Any] = _flush,
    wait_s: int = 20,
    max_polls: int | None = None,
    stop: threading.Event | None = None,
) -> ListenReport:
    """Poll ``queue_url`` until ``stop`` is set (or ``max_polls`` receives), emitting one event per created object."""
    if not 0 <= wait_s <= 20:
        raise ValueError(f"wait_s must be in 0..20 (SQS long-poll limit), got {wait_s}")
    report = ListenReport()
    polls = 0
    while not (stop is not None and stop.is_set()) and (max_polls is None or polls < max_polls):
        polls += 1
        answer = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s)
        handled: list[dict[str, str]] = []
        for message in answer.get("Messages", []):
            report.messages += 1
            try:
                created = parse_notification(message["Body"])
            except BadNotificationError as error:
                report.rejected += 1
                log.warning("message %s left for the dead-letter queue: %s", message.get("MessageId"), error)
                continue
            for item in created:
                _emit_one(emit, item, report)
            handled.append({"Id": str(len(handled)), "ReceiptHandle": message["ReceiptHandle"]})
        if handled:
            flush()
            sqs.delete_message_batch(QueueUrl=queue_url, Entries=handled)
    return report


def _emit_one(emit: Emit, item: ObjectCreated, report: ListenReport) -> None:
    emit(**item.prefect_event())
    report.events += 1
    report.emitted.append(item.uri)
    log.info("emitted s3.object.created for %s", item.uri)
