"""The demo on the embedded default, end to end on real processes: ``run_demo`` (what ``maskloop demo`` runs) starts
the stack (SeaweedFS, Label Studio, Prefect server, process worker, S3 poller; free ports, a fresh data dir),
pre-labels the samples and deploys the schedules and the upload trigger onto the stack's server. Then, with no
command in between: the discovery deployment, triggered, is run by the stack's worker; and one more image uploaded to
the demo bucket becomes a pre-labelled Label Studio task (poller → s3.object.created → prelabel-on-upload → worker),
within the delay the README states."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from flows.demo import DEMO_BUCKET, DEMO_PREFIX, run_demo
from storage.catalog import AnnotationTask, Asset, Catalog
from storage.labelstudio.client import LabelStudioClient
from storage.s3 import make_client
from storage.settings import Settings
from storage.stack.prefect_server import WORKER_NAME
from tests.storage.test_stack_prefect import _stack

pytestmark = pytest.mark.slow
T = TypeVar("T")

# The README's stated bound from an upload to its pre-labelled Label Studio task on the embedded default (measured
# 25-40 s on a busy 2-core machine: poll <= 5 s, worker query <= 2 s, the flow run's process start and imports).
UPLOAD_TO_TASK_S = 90


def _wait(what: str, check: Callable[[], T | None], timeout_s: float, logs: Path) -> T:
    deadline = time.monotonic() + timeout_s
    while (got := check()) is None:
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs.glob("*.log"))
            pytest.fail(f"{what}: not within {timeout_s:.0f} s\n{tails}")
        time.sleep(0.5)
    return got


def _one_more_image() -> bytes:
    from PIL import Image

    from model.synthetic import SyntheticDomain

    buf = io.BytesIO()
    Image.fromarray(SyntheticDomain().image(77).image).save(buf, "PNG")
    return buf.getvalue()


def test_demo_then_one_upload_becomes_a_prelabelled_label_studio_task_with_no_other_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the demo looks for SAM 2 on this machine only
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    data = tmp_path / "data"
    stack = _stack(data)
    logs = data / "stack"
    try:
        assert run_demo(Settings(data_dir=data), keep_running=True, stack=stack, images=2, clips=0) == 0
        out = capsys.readouterr().out
        assert f"Prefect UI: {stack.prefect.url}" in out and "maskloop/shapes-tiny" in out
        sheet = re.search(r"^overlay sheet: (\S+\.html)", out, re.M)
        assert sheet and "<img" in Path(sheet.group(1)).read_text(), (
            f"no overlay sheet beside the Label Studio URL:\n{out}"
        )
        settings = stack.settings(Settings(data_dir=data))

        with temporary_settings({PREFECT_API_URL: stack.prefect.api_url}), get_client(sync_client=True) as client:
            discover = client.read_deployment_by_name("discover/discover-every-15-min")
            assert discover.schedules and discover.parameters["source"] == f"s3://{DEMO_BUCKET}/{DEMO_PREFIX}"
            assert client.read_deployment_by_name("prelabel-fanout/prelabel").schedules, "the hourly fan-out"
            run: Any = run_deployment(discover.id, timeout=0)
            final = _wait("the discovery run", lambda: _final(client, run.id), 240, logs)
            assert final.state.is_completed() and final.labels["prefect.worker.name"] == WORKER_NAME

            started = time.monotonic()
            key = f"{DEMO_PREFIX}one-more.png"
            make_client(settings).put_object(Bucket=DEMO_BUCKET, Key=key, Body=_one_more_image())
            task_id = _wait("a Label Studio task", lambda: _ls_task_id(settings, key), UPLOAD_TO_TASK_S, logs)
            with LabelStudioClient(stack.label_studio().url, stack.label_studio().token) as ls:
                predictions = _wait("its prediction", lambda: ls.list_predictions(task_id) or None, 30, logs)
            delay = time.monotonic() - started
            on_upload = client.read_deployment_by_name("prelabel-fanout/prelabel-on-upload")
            (upload_run,) = client.read_flow_runs(limit=5, deployment_filter=_deployment(on_upload.id))
        with capsys.disabled():
            print(f"\nupload -> pre-labelled Label Studio task: {delay:.1f} s")
        assert delay < UPLOAD_TO_TASK_S
        assert upload_run.parameters["params"]["source"] == f"s3://{DEMO_BUCKET}/{key}", "started by the upload's event"
        assert upload_run.labels["prefect.worker.name"] == WORKER_NAME
        assert predictions[0]["model_version"].startswith("shapes-tiny@"), "the demo's model, from the deployment"
    finally:
        stack.down()


def _final(client: Any, flow_run_id: Any) -> Any:
    run = client.read_flow_run(flow_run_id)
    return run if run.state is not None and run.state.is_final() else None


def _deployment(deployment_id: Any) -> Any:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))


def _ls_task_id(settings: Settings, key: str) -> int | None:
    catalog = Catalog(settings.resolved_database_url)
    try:
        with catalog.session() as session:
            stmt = select(AnnotationTask.external_task_id).join(Asset, Asset.id == AnnotationTask.asset_id)
            return session.scalar(stmt.where(Asset.bucket == DEMO_BUCKET, Asset.key == key))
    finally:
        catalog.dispose()
