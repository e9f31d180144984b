"""The S3 → SQS → Prefect events bridge: notification parsing (table), the listener on moto's real HTTP server (S3
bucket notifications into SQS on the same port), and the whole chain through Prefect's test harness: the emitted
``s3.object.created`` event fires the ``prelabel-on-upload`` trigger, which schedules a flow run for that object."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import yaml

from flows.events import listen
from storage.s3_events import BadNotificationError, ObjectCreated, make_sqs_client, parse_notification
from storage.settings import Settings
from tests.conftest import REPO_ROOT


def s3_record(name: str = "ObjectCreated:Put", key: str = "in/a.png", bucket: str = "bkt") -> dict[str, Any]:
    return {"eventName": name, "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 3, "eTag": '"e1"'}}}


EVENTBRIDGE = {
    "source": "aws.s3",
    "detail-type": "Object Created",
    "detail": {"bucket": {"name": "bkt"}, "object": {"key": "in/a b.png", "size": 3, "etag": "e1"}},
}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"Records": [s3_record()]}, [ObjectCreated("bkt", "in/a.png", 3, "e1", "ObjectCreated:Put")]),
        (
            {"Records": [s3_record(key="in%2Fa+b%C3%A9.png")]},
            [ObjectCreated("bkt", "in/a bé.png", 3, "e1", "ObjectCreated:Put")],
        ),
        (
            {"Records": [s3_record("s3:ObjectCreated:Put")]},
            [ObjectCreated("bkt", "in/a.png", 3, "e1", "s3:ObjectCreated:Put")],
        ),
        (
            {"Records": [s3_record("ObjectRemoved:Delete"), s3_record(key="b.png")]},
            [ObjectCreated("bkt", "b.png", 3, "e1", "ObjectCreated:Put")],
        ),
        ({"Records": []}, []),
        ({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "bkt"}, []),
        (
            {"Type": "Notification", "Message": json.dumps({"Records": [s3_record()]})},
            [ObjectCreated("bkt", "in/a.png", 3, "e1", "ObjectCreated:Put")],
        ),
        (EVENTBRIDGE, [ObjectCreated("bkt", "in/a b.png", 3, "e1", "EventBridge:Object Created")]),
        ({**EVENTBRIDGE, "detail-type": "Object Deleted"}, []),
    ],
    ids=[
        "s3",
        "url-encoded-key",
        "minio",
        "removed-ignored",
        "empty",
        "test-event",
        "sns",
        "eventbridge",
        "eb-deleted",
    ],
)
def test_parse_notification(body: dict[str, Any], expected: list[ObjectCreated]) -> None:
    assert parse_notification(json.dumps(body)) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"hello": "world"}', "neither an S3 nor an EventBridge"),
        (json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]}), "lacks"),
        (json.dumps({"Records": [s3_record(bucket="")]}), "needs bucket and key"),
        (json.dumps({**EVENTBRIDGE, "detail": {}}), "lacks"),
    ],
)
def test_parse_notification_rejects_what_it_cannot_read(body: str, message: str) -> None:
    with pytest.raises(BadNotificationError, match=message):
        parse_notification(body)


def test_prefect_event_names_the_object_by_its_s3_uri() -> None:
    event = ObjectCreated("bkt", "in/a.png", 3, "e1", "ObjectCreated:Put").prefect_event()
    assert event["event"] == "s3.object.created"
    assert event["resource"]["prefect.resource.id"] == "s3://bkt/in/a.png"
    assert (event["payload"]["bucket"], event["payload"]["key"]) == ("bkt", "in/a.png")


# -- against moto's HTTP server -------------------------------------------------------------------------------------
def _notifying_queue(settings: Settings, s3: Any, bucket: str, visibility: int = 30) -> tuple[Any, str]:
    sqs = make_sqs_client(settings, settings.s3_endpoint_url)
    queue = sqs.create_queue(QueueName=f"q-{uuid.uuid4().hex[:10]}", Attributes={"VisibilityTimeout": str(visibility)})[
        "QueueUrl"
    ]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={"QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
    )
    return sqs, queue


def _queued(sqs: Any, queue: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def test_listener_emits_one_event_per_uploaded_object_and_deletes_only_handled_messages(
    settings: Settings, s3: Any, bucket: str
) -> None:
    sqs, queue = _notifying_queue(settings, s3, bucket)
    keys = ["in/a.png", "in/b c.jpg", "in/sub/d.mp4"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"xyz")
    sqs.send_message(QueueUrl=queue, MessageBody="garbage, not a notification")
    emitted: list[dict[str, Any]] = []
    flushes: list[int] = []
    report = listen(
        sqs, queue, emit=lambda **kw: emitted.append(kw), flush=lambda: flushes.append(1), wait_s=1, max_polls=3
    )
    assert sorted(e["resource"]["prefect.resource.id"] for e in emitted) == sorted(f"s3://{bucket}/{k}" for k in keys)
    assert {e["event"] for e in emitted} == {"s3.object.created"}
    assert all(e["payload"]["size"] == 3 for e in emitted)
    assert (report.events, report.rejected) == (3, 1) and flushes
    assert _queued(sqs, queue) == 1, "only the garbage message stays (for the dead-letter queue)"


def test_listener_that_fails_to_emit_leaves_the_message_for_redelivery(
    settings: Settings, s3: Any, bucket: str
) -> None:
    sqs, queue = _notifying_queue(settings, s3, bucket, visibility=1)
    listen(sqs, queue, emit=lambda **kw: None, flush=lambda: None, wait_s=0, max_polls=1)  # consume the test event
    s3.put_object(Bucket=bucket, Key="in/a.png", Body=b"xyz")

    def broken(**_kw: Any) -> None:
        raise ConnectionError("Prefect API unreachable")

    with pytest.raises(ConnectionError):
        listen(sqs, queue, emit=broken, flush=lambda: None, wait_s=1, max_polls=1)
    time.sleep(1.5)  # visibility timeout
    emitted: list[dict[str, Any]] = []
    listen(sqs, queue, emit=lambda **kw: emitted.append(kw), flush=lambda: None, wait_s=1, max_polls=1)
    assert [e["resource"]["prefect.resource.id"] for e in emitted] == [f"s3://{bucket}/in/a.png"]


# -- the whole chain through Prefect --------------------------------------------------------------------------------
def test_upload_becomes_a_prelabel_flow_run_through_the_event_trigger(
    prefect_api: str, settings: Settings, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    from flows.cli import main
    from flows.prelabel_fanout import prelabel_fanout_flow

    spec = next(
        d
        for d in yaml.safe_load((REPO_ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]
        if d["name"] == "prelabel-on-upload"
    )
    (trigger,) = spec["triggers"]
    trigger = {**trigger, "match": {"prefect.resource.id": f"s3://{bucket}/*"}}
    assert spec["entrypoint"] == "flows/prelabel_fanout.py:prelabel_fanout_flow"
    deployment_id = prelabel_fanout_flow.to_deployment(
        name=f"on-upload-{bucket[-8:]}",
        parameters=spec.get("parameters") or {},
        triggers=[DeploymentEventTrigger.model_validate(trigger)],
    ).apply()

    sqs, queue = _notifying_queue(settings, s3, bucket)
    s3.put_object(Bucket=bucket, Key="in/new image.png", Body=b"xyz")
    for name, value in {
        "MASKLOOP_DATA_DIR": str(settings.data_dir),
        "MASKLOOP_S3_ACCESS_KEY_ID": settings.s3_access_key_id.get_secret_value(),  # type: ignore[union-attr]
        "MASKLOOP_S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key.get_secret_value(),  # type: ignore[union-attr]
    }.items():
        monkeypatch.setenv(name, value)
    argv = ["events", "listen", "--queue-url", queue, "--sqs-endpoint-url", str(settings.s3_endpoint_url)]
    assert main([*argv, "--wait", "1", "--max-polls", "2"]) == 0

    deadline, runs = time.monotonic() + 90, []
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline and not runs:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                sort=FlowRunSort.ID_DESC,
                limit=10,
            )
            time.sleep(1)
    assert len(runs) == 1, "the s3.object.created event did not start a prelabel-on-upload run"
    assert runs[0].parameters["params"]["source"] == f"s3://{bucket}/in/new image.png"
    assert runs[0].parameters["params"]["project"] == "maskloop"
