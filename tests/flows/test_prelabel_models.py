"""Model choice end to end through the CLI: ``maskloop prelabel s3://… --model <dir>`` with a tiny random SAM 3
(strategy ``concept``, class names) and a tiny random EdgeTAM (strategy ``everything``), against moto S3, the real
Label Studio and Prefect's test harness. Lineage (model id + checkpoint sha256) reaches the catalog and Label Studio."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from flows.cli import main
from model.loading import checkpoint_identity
from storage.catalog import Catalog
from storage.catalog.models import Run
from storage.labelstudio.client import LabelStudioClient
from storage.settings import Settings
from tests.flows.test_prelabel import LOOSE, ls_tasks
from tests.flows.test_prelabel_jobs import _env


def _timm_missing() -> str | None:
    try:
        import timm  # noqa: F401
    except Exception as exc:
        return f"EdgeTAM needs timm (+ a torchvision for this torch): {exc.__class__.__name__}: {exc}"
    return None


@pytest.fixture(scope="module")
def sam3_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny_models import save_tiny_sam3

    return save_tiny_sam3(tmp_path_factory.mktemp("sam3") / "tiny-sam3")


def _prelabel(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, int, int, int]:
    capsys.readouterr()
    assert main(["prelabel", *argv, "--batch-size", "2"]) == 0, f"maskloop prelabel {' '.join(argv)} failed"
    out = capsys.readouterr().out
    found = re.search(r"run (\d+) \(job \d+\): (\d+)/(\d+) assets pre-labelled, (\d+) failed", out)
    assert found, f"no summary line in:\n{out}"
    run, done, assets, failed = map(int, found.groups())
    return run, done, assets, failed


def _check_lineage(catalog: Catalog, run_id: int, checkpoint: Path) -> str:
    model_id, sha = checkpoint_identity(checkpoint)
    with catalog.session() as session:
        run = session.get(Run, run_id)
        assert run is not None and run.status == "completed"
        assert (run.model_id, run.checkpoint_sha256) == (model_id, sha)
    return f"{model_id}@{sha[:8]}"


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)  # the catalog is not what is tested
def test_sam3_concept_prelabels_every_instance_of_each_class_in_images_and_a_video_into_label_studio(
    prefect_api: str,
    flow_settings: Settings,
    sam3_checkpoint: Path,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fill_bucket(images=3, videos=1, broken=0)
    _env(monkeypatch, flow_settings, str(flow_settings.s3_endpoint_url))
    project = f"sam3-{bucket[-8:]}"
    run, done, assets, failed = _prelabel(
        capsys,
        f"s3://{bucket}/in/",
        "--project",
        project,
        "--model",
        str(sam3_checkpoint),
        "--strategy",
        "concept",
        "--classes",
        "person",
        "car",
        "--param",
        "score_threshold=0.5",
    )
    assert (done, assets, failed) == (4, 4, 0)
    catalog = Catalog(flow_settings.resolved_database_url)
    version = _check_lineage(catalog, run, sam3_checkpoint)
    # the video: SAM 3's instances on every sampled frame, tracked by detection into videorectangle tracks
    (video_task,) = ls_tasks(ls_client, catalog, f"{project} (videos)")
    (video_prediction,) = video_task["predictions"]
    assert video_prediction["model_version"].startswith(version)
    tracks = video_prediction["result"]
    assert tracks and all(r["type"] == "videorectangle" for r in tracks)
    assert {label for r in tracks for label in r["value"]["labels"]} <= {"person", "car"}
    assert any(len(r["value"]["sequence"]) > 1 for r in tracks), "no track spans more than one key frame"
    tasks = ls_tasks(ls_client, catalog, f"{project} (images)")
    assert len(tasks) == 3
    seen: set[str] = set()
    for task in tasks:
        (prediction,) = task["predictions"]
        assert prediction["model_version"].startswith(version), prediction["model_version"]
        results = prediction["result"]
        assert results and all(r["type"] == "brushlabels" for r in results)
        labels = {label for r in results for label in r["value"]["brushlabels"]}
        assert labels <= {"person", "car"}, labels
        seen |= labels
    assert seen == {"person", "car"}, "both concepts should be found somewhere in three images"
    catalog.dispose()


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)  # the catalog is not what is tested
@pytest.mark.skipif(_timm_missing() is not None, reason=str(_timm_missing()))
def test_edgetam_prelabels_images_and_videos_into_label_studio_with_the_everything_strategy(
    prefect_api: str,
    flow_settings: Settings,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    from tests.support.tiny_models import save_tiny_edgetam

    # 64 wide: EdgeTAM's video memories are 64 channels, so the video model needs a multiple of 64
    checkpoint = save_tiny_edgetam(tmp_path / "tiny-edgetam", hidden_size=64)
    fill_bucket(images=3, videos=1, broken=0)
    _env(monkeypatch, flow_settings, str(flow_settings.s3_endpoint_url))
    project = f"edgetam-{bucket[-8:]}"
    loose = [arg for name, value in LOOSE.items() for arg in ("--param", f"{name}={value}")]
    run, done, assets, failed = _prelabel(
        capsys, f"s3://{bucket}/in/", "--project", project, "--model", str(checkpoint), *loose
    )
    assert (done, assets, failed) == (4, 4, 0)
    catalog = Catalog(flow_settings.resolved_database_url)
    version = _check_lineage(catalog, run, checkpoint)
    tasks = ls_tasks(ls_client, catalog, f"{project} (images)")
    assert len(tasks) == 3
    for task in tasks:
        (prediction,) = task["predictions"]
        assert prediction["model_version"].startswith(version) and prediction["result"]
    (video_task,) = ls_tasks(ls_client, catalog, f"{project} (videos)")  # tracked by EdgeTamVideoModel
    (prediction,) = video_task["predictions"]
    assert prediction["model_version"].startswith(version)
    assert prediction["result"] and all(r["type"] == "videorectangle" for r in prediction["result"])
    catalog.dispose()
