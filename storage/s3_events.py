"""S3 "object created" notifications, as they arrive in an SQS queue, parsed into plain records.

Accepted message bodies (one SQS message may carry several records):

- S3 event notifications (``{"Records": [{"eventName": "ObjectCreated:Put", "s3": {...}}]}``), sent by AWS S3
  (bucket notification → SQS), MinIO (``mc event add ALIAS/bucket arn:minio:sqs::…`` with an SQS-compatible or
  AMQP/Kafka target; same record format, ``eventName`` ``s3:ObjectCreated:Put``) and moto;
- the same wrapped in an SNS envelope (``{"Type": "Notification", "Message": "<json>"}``; S3 → SNS → SQS fan-out);
- EventBridge events (``{"source": "aws.s3", "detail-type": "Object Created", "detail": {...}}``): enable
  "Send notifications to Amazon EventBridge" on the bucket and add a rule
  ``{"source": ["aws.s3"], "detail-type": ["Object Created"], "detail": {"bucket": {"name": ["BUCKET"]}}}``
  whose target is the SQS queue.

``s3:TestEvent`` messages (sent when a notification is configured) and non-create events are ignored. Keys arrive
URL-encoded (``+`` for spaces) in S3 records and are decoded; they remain untrusted strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from model.errors import MaskloopError
from storage.settings import Settings

EVENT_NAME = "s3.object.created"


class BadNotificationError(MaskloopError, ValueError):
    """A queue message that is not an S3/EventBridge notification maskloop understands."""


@dataclass(frozen=True)
class ObjectCreated:
    bucket: str
    key: str
    size: int | None = None
    etag: str | None = None
    source_event: str = ""

    def __post_init__(self) -> None:
        if not self.bucket or not self.key:
            raise BadNotificationError(
                f"an object-created record needs bucket and key, got {self.bucket!r}/{self.key!r}"
            )

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def prefect_event(self) -> dict[str, Any]:
        """Keyword arguments of ``prefect.events.emit_event`` for this object (resource id ``s3://bucket/key``)."""
        return {
            "event": EVENT_NAME,
            "resource": {"prefect.resource.id": self.uri, "prefect.resource.name": self.key, "s3.bucket": self.bucket},
            "payload": {
                "bucket": self.bucket,
                "key": self.key,
                "size": self.size,
                "etag": self.etag,
                "source_event": self.source_event,
            },
        }


def parse_notification(body: str) -> list[ObjectCreated]:
    """The object-created records of one queue message body (empty for test events and other event kinds)."""
    try:
        message = json.loads(body)
    except json.JSONDecodeError as error:
        raise BadNotificationError(f"queue message is not JSON ({error}): {body[:120]!r}") from error
    if not isinstance(message, dict):
        raise BadNotificationError(f"queue message is not a JSON object: {body[:120]!r}")
    if message.get("Type") == "Notification" and isinstance(message.get("Message"), str):
        return parse_notification(message["Message"])
    if message.get("Event") == "s3:TestEvent":
        return []
    if "Records" in message:
        return [rec for record in message["Records"] if (rec := _from_record(record)) is not None]
    if message.get("source") == "aws.s3" and "detail" in message:
        return _from_eventbridge(message)
    raise BadNotificationError(f"queue message is neither an S3 nor an EventBridge notification: {body[:120]!r}")


def _from_record(record: dict[str, Any]) -> ObjectCreated | None:
    name = str(record.get("eventName", ""))
    if not name.removeprefix("s3:").startswith("ObjectCreated:"):
        return None
    try:
        s3 = record["s3"]
        bucket, obj = s3["bucket"]["name"], s3["object"]
        key = unquote_plus(obj["key"])
    except (KeyError, TypeError) as error:
        raise BadNotificationError(f"S3 record {name} lacks {error}") from error
    return ObjectCreated(bucket, key, _int(obj.get("size")), _etag(obj.get("eTag")), name)


def _from_eventbridge(message: dict[str, Any]) -> list[ObjectCreated]:
    if message.get("detail-type") != "Object Created":
        return []
    detail = message["detail"]
    try:
        bucket, obj = detail["bucket"]["name"], detail["object"]
        key = str(obj["key"])  # EventBridge keys are not URL-encoded
    except (KeyError, TypeError) as error:
        raise BadNotificationError(f"EventBridge Object Created event lacks {error}") from error
    return [ObjectCreated(bucket, key, _int(obj.get("size")), _etag(obj.get("etag")), "EventBridge:Object Created")]


def _int(value: Any) -> int | None:
    return int(value) if value is not None else None


def _etag(value: Any) -> str | None:
    return str(value).strip('"') if value else None


def make_sqs_client(settings: Settings, endpoint_url: str | None = None) -> Any:
    """A boto3 SQS client with the S3 credentials and region (``endpoint_url`` for a local or non-AWS queue)."""
    import boto3

    key = settings.s3_access_key_id.get_secret_value() if settings.s3_access_key_id else None
    secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
    return boto3.session.Session().client(
        "sqs",
        endpoint_url=endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )
