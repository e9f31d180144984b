"""The pre-label flow end to end: real S3 HTTP server (moto), real Label Studio, Prefect's test harness, a real
(tiny, random-weight) SAM 2, the catalog on SQLite and PostgreSQL; plus kill-and-rerun resumption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from storage.catalog import AnnotationProject, AnnotationTask, Asset, Catalog, Prediction, Run, RunFailure
from storage.catalog.runs import start_run
from storage.labelstudio.client import LabelStudioClient
from storage.params import PrelabelParams
from storage.services import Services
from storage.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
# random weights: keep every decoded mask so that instances reach Label Studio
LOOSE = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "max_masks": 3}


def ls_tasks(client: LabelStudioClient, catalog: Catalog, project_name: str) -> list[dict[str, Any]]:
    with catalog.session() as session:
        project = session.scalar(select(AnnotationProject).where(AnnotationProject.name == project_name))
        assert project is not None, f"project {project_name!r} was not created"
        pid = project.external_project_id
    return list(client.iter_tasks(pid, all_fields=True))


def test_prelabel_puts_images_and_video_into_label_studio_and_skips_bad_object(
    prefect_api: str,
    flow_settings: Settings,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
) -> None:
    from flows.prelabel import prelabel_flow

    keys = fill_bucket(images=5, videos=1, broken=1)
    project = f"e2e-{bucket[-8:]}"
    params = PrelabelParams(
        source=f"s3://{bucket}/in/", project=project, batch_size=2, strategy_params=LOOSE, video_max_frames=4
    )
    result = prelabel_flow(params, settings=flow_settings)
    assert (result.count("assets"), result.count("done"), result.count("failed")) == (7, 6, 1)
    assert result.count("instances") > 0
    assert result.io_helper_calls > 0, "no download or import ran in the I/O helper process"

    catalog = Catalog(flow_settings.resolved_database_url)
    images = ls_tasks(ls_client, catalog, f"{project} (images)")
    videos = ls_tasks(ls_client, catalog, f"{project} (videos)")
    assert len(images) == 5 and len(videos) == 1
    for task in images:
        assert task["predictions"], f"task {task['id']} has no prediction"
        results = task["predictions"][0]["result"]
        assert results and all(r["type"] == "brushlabels" for r in results)
        assert task["data"]["image"].startswith(flow_settings.s3_endpoint_url or "")
    assert videos[0]["predictions"][0]["result"], "the video task has no tracks"
    assert all(r["type"] == "videorectangle" for r in videos[0]["predictions"][0]["result"])

    with catalog.session() as session:
        run = session.get(Run, result.run_id)
        assert run is not None and run.status == "completed" and run.model_id and run.checkpoint_sha256
        assert run.counts["done"] == 6
        failures = session.scalars(select(RunFailure).where(RunFailure.run_id == run.id)).all()
        assert len(failures) == 1 and "broken0.jpg" in failures[0].reason and "image" in failures[0].reason
        broken = session.scalar(select(Asset).where(Asset.key == keys["broken"][0]))
        assert broken is not None and broken.status == "failed"
        assert session.scalar(select(func.count(Prediction.id))) == 6

    again = prelabel_flow(params, settings=flow_settings)
    assert (again.count("assets"), again.count("done")) == (0, 0)
    assert len(ls_tasks(ls_client, catalog, f"{project} (images)")) == 5


def test_the_next_batch_is_decoded_in_its_own_thread_while_the_model_works_on_the_batch_before(
    prefect_api: str,
    flow_settings: Settings,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from flows.prelabel import prelabel_flow
    from storage.prelabel import predict

    fill_bucket(images=3, videos=0, broken=0)
    real_prepare, real_predict = predict.prepare, predict.predict
    prepare_threads: list[str] = []
    began = [threading.Event() for _ in range(3)]  # the prepare of batch i began
    model_threads: list[str] = []
    next_began_during_model: list[bool] = []

    def prepare(*args: Any) -> predict.Prepared:
        prepare_threads.append(threading.current_thread().name)
        began[len(prepare_threads) - 1].set()
        return real_prepare(*args)

    def model_step(*args: Any) -> predict.Predicted:
        k = len(model_threads)
        model_threads.append(threading.current_thread().name)
        if k + 1 < len(began):  # on the model thread, batch k+1's decode could not begin before this returns
            next_began_during_model.append(began[k + 1].wait(timeout=20))
        return real_predict(*args)

    monkeypatch.setattr(predict, "prepare", prepare)
    monkeypatch.setattr(predict, "predict", model_step)
    params = PrelabelParams(source=f"s3://{bucket}/in/", batch_size=1, strategy_params=LOOSE)
    result = prelabel_flow(params, settings=flow_settings)

    assert (result.count("assets"), result.count("done"), result.count("failed")) == (3, 3, 0)
    assert next_began_during_model == [True, True], "batch k+1 was not decoded while batch k was on the model"
    assert all(name.startswith("maskloop-prepare") for name in prepare_threads), prepare_threads
    assert len(set(model_threads)) == 1 and not model_threads[0].startswith("maskloop-prepare"), model_threads


def test_object_deleted_after_listing_is_recorded_and_the_run_goes_on(
    prefect_api: str,
    flow_settings: Settings,
    s3,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,  # noqa: ANN001
) -> None:
    from storage.catalog.assets import discover
    from storage.prelabel import fetch, predict
    from storage.s3 import list_objects
    from tasks.models import Models

    keys = fill_bucket(images=3, videos=0, broken=0)
    catalog = Catalog(flow_settings.resolved_database_url)
    ids = discover(catalog, list_objects(s3, bucket, "in/")).new_asset_ids
    s3.delete_object(Bucket=bucket, Key=keys["image"][1])
    run_id = start_run(catalog, "prelabel", {}, None)
    services = Services(flow_settings)
    fetched = fetch.fetch(services, run_id, ids)
    assert len(fetched.ok) == 2 and len(fetched.failed) == 1
    (reason,) = fetched.failed.values()
    assert keys["image"][1] in reason and ("NoSuchKey" in reason or "404" in reason)
    assert not fetched.transient, "a deleted object is a permanent failure: retrying cannot bring it back"
    params = PrelabelParams(source=f"s3://{bucket}/in/", model_id=str(flow_settings.model_id), strategy_params=LOOSE)
    models = Models.load(flow_settings, params.model_id, params.strategy)
    segmented = predict.segment(services, run_id, fetched.ok, "m@1/everything", models.predictor(params))
    assert sorted(segmented.ok) == sorted(fetched.ok)


# -- kill and rerun ----------------------------------------------------------------------------------------------
def _count(catalog: Catalog, model: Any) -> int:
    with catalog.session() as session:
        return int(session.scalar(select(func.count(model.id))) or 0)


def _spawn_prelabel(
    settings: Settings, prefect_api: str, source: str, project: str, stdout: int = subprocess.PIPE
) -> subprocess.Popen[bytes]:
    """``maskloop prelabel`` in a subprocess (its output piped, or into ``stdout``, e.g. a pseudo-terminal)."""
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "MASKLOOP_DATA_DIR": str(settings.data_dir),
        "MASKLOOP_DATABASE_URL": settings.resolved_database_url,
        "MASKLOOP_S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
        "MASKLOOP_S3_ACCESS_KEY_ID": settings.s3_access_key_id.get_secret_value() if settings.s3_access_key_id else "",
        "MASKLOOP_S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key.get_secret_value()
        if settings.s3_secret_access_key
        else "",
        "MASKLOOP_LABEL_STUDIO_URL": settings.label_studio_url,
        "MASKLOOP_LABEL_STUDIO_TOKEN": settings.label_studio_token.get_secret_value()
        if settings.label_studio_token
        else "",
        "MASKLOOP_MODEL_ID": settings.model_id,
        "MASKLOOP_DEVICE": "cpu",
    }
    argv = [sys.executable, "-m", "flows.cli", "prelabel", source, "--project", project, "--batch-size", "1"]
    argv += [arg for name, value in LOOSE.items() for arg in ("--param", f"{name}={value}")]
    return subprocess.Popen(
        argv, cwd=REPO_ROOT, env=env, stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True
    )


def _kill_when(
    proc: subprocess.Popen[bytes], condition: Callable[[], bool], timeout_s: float = 240, group: bool = True
) -> None:
    """SIGKILL the flow's process group (or, ``group=False``, only the flow's process: its I/O helper must then
    stop by itself) once ``condition()`` holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            pytest.fail(f"the flow finished before the kill point (rc {proc.returncode}):\n{output[-3000:]}")
        if condition():
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            return
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("kill point not reached in time")


@pytest.mark.parametrize(
    ("kill_point", "group"),
    [("after-first-prediction", True), ("after-first-import", True), ("after-first-import", False)],
    ids=["after-first-prediction", "after-first-import", "after-first-import-flow-process-only"],
)
def test_killed_run_resumes_without_loss_or_duplicates(
    kill_point: str,
    group: bool,
    prefect_api: str,
    flow_settings: Settings,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
) -> None:
    from flows.prelabel import prelabel_flow

    fill_bucket(images=8, videos=0, broken=0)
    catalog = Catalog(flow_settings.resolved_database_url)
    source, project = f"s3://{bucket}/in/", f"kill-{kill_point[6:]}-{int(group)}-{bucket[-8:]}"
    proc = _spawn_prelabel(flow_settings, prefect_api, source, project)
    watched = Prediction if kill_point == "after-first-prediction" else AnnotationTask
    _kill_when(proc, lambda: _count(catalog, watched) >= 1, group=group)
    with catalog.session() as session:
        done_before = session.scalar(select(func.count(Asset.id)).where(Asset.status == "done"))
    assert done_before is not None and done_before < 8, "the kill came too late to prove anything"

    params = PrelabelParams(source=source, project=project, batch_size=1, strategy_params=LOOSE)
    assert prelabel_flow(params, settings=flow_settings).count("failed") == 0
    tasks = ls_tasks(ls_client, catalog, f"{project} (images)")
    asset_ids = Counter(t["data"]["maskloop_asset_id"] for t in tasks)
    assert len(tasks) == 8 and all(n == 1 for n in asset_ids.values()), f"duplicated tasks: {asset_ids}"
    assert all(t["predictions"] for t in tasks)
    with catalog.session() as session:
        assert session.scalar(select(func.count(Asset.id)).where(Asset.status == "done")) == 8
        assert session.scalar(select(func.count(AnnotationTask.id))) == 8
        assert session.scalar(select(func.count(Prediction.id))) == 8
