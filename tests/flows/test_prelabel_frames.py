"""The video key-frame view end to end (real S3 HTTP server, real Label Studio, Prefect's test harness, the tiny
random-weight SAM 2): a video becomes its video task and image tasks of its key frames with one brush mask per track,
linked to the video asset; reruns and crashes between or inside the two views' imports leave one task per (asset,
project, frame)."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select

from model.tracks import VideoTracks, tracks_from_json
from storage.catalog import AnnotationProject, AnnotationTask, Asset, Catalog, Prediction
from storage.formats.ls_frames import task_key_frames
from storage.labelstudio.client import LabelStudioClient
from storage.params import PrelabelParams
from storage.prelabel.frames import frame_key
from storage.services import Services
from storage.settings import Settings
from tests.flows.test_prelabel import LOOSE, ls_tasks

EVERY = 2


class SimulatedCrash(ValueError):
    """A crash inside the import stage (a ValueError: the Prefect task does not retry it, the run fails)."""


def _params(bucket: str, project: str) -> PrelabelParams:
    return PrelabelParams(
        source=f"s3://{bucket}/in/",
        project=project,
        strategy_params=LOOSE,
        video_max_frames=4,
        video_frame_tasks_every=EVERY,
    )


def _video(catalog: Catalog) -> tuple[Asset, VideoTracks]:
    with catalog.session() as session:
        asset, prediction = session.execute(
            select(Asset, Prediction)
            .join(Prediction, Prediction.asset_id == Asset.id)
            .where(Asset.media_type == "video")
        ).one()
        session.expunge(asset)
        return asset, tracks_from_json(prediction.instances[0])


def _assert_one_task_per_asset_project_frame(
    client: LabelStudioClient, catalog: Catalog, project: str, asset: Asset, tracks: VideoTracks
) -> list[dict[str, Any]]:
    videos = ls_tasks(client, catalog, f"{project} (videos)")
    frames = ls_tasks(client, catalog, f"{project} (video frames)")
    keys = task_key_frames(tracks, EVERY)
    per_frame = Counter(t["data"]["maskloop_frame_index"] for t in frames)
    assert len(videos) == 1 and videos[0]["data"]["maskloop_asset_id"] == asset.id
    assert sorted(per_frame) == keys and set(per_frame.values()) == {1}, f"frame tasks: {per_frame}"
    assert all(t["predictions"] for t in frames), "a frame task has no prediction"
    with catalog.session() as session:
        rows = session.execute(
            select(AnnotationProject.name, AnnotationTask.asset_id, AnnotationTask.frame_index).join(
                AnnotationProject, AnnotationProject.id == AnnotationTask.project_id
            )
        ).all()
        assert session.get(Asset, asset.id).status == "done"  # type: ignore[union-attr]
    assert Counter(rows) == Counter(
        [(f"{project} (videos)", asset.id, -1)] + [(f"{project} (video frames)", asset.id, k) for k in keys]
    )
    return frames


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)  # the catalog is not what is tested
def test_video_becomes_a_video_task_and_key_frame_image_tasks_with_one_brush_mask_per_track(
    prefect_api: str,
    flow_settings: Settings,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
    s3: Any,
) -> None:
    from flows.prelabel import prelabel_flow

    fill_bucket(images=0, videos=1, broken=0)
    project = f"fr-{bucket[-8:]}"
    result = prelabel_flow(_params(bucket, project), settings=flow_settings)
    catalog = Catalog(flow_settings.resolved_database_url)
    asset, tracks = _video(catalog)
    assert tracks.tracks, "the tiny model tracked nothing: the test proves nothing"
    frames = _assert_one_task_per_asset_project_frame(ls_client, catalog, project, asset, tracks)
    assert result.count("frame_tasks") == len(frames)
    assert result.count("video_frames") == len({f.frame_index for t in tracks.tracks for f in t.frames})

    for task in frames:
        index = task["data"]["maskloop_frame_index"]
        visible = {t.track_id: f for t in tracks.tracks for f in t.frames if f.frame_index == index}
        regions = task["predictions"][0]["result"]
        assert {r["meta"]["track_id"] for r in regions} == set(visible)
        assert sorted(r["id"] for r in regions) == sorted(f"track-{tid}-f{index}" for tid in visible)
        assert all(r["type"] == "brushlabels" and r["value"]["rle"] for r in regions)
        if visible:
            assert task["data"]["maskloop_time_s"] == pytest.approx(next(iter(visible.values())).time_s)
        body = s3.get_object(Bucket=bucket, Key=frame_key(flow_settings.frames_prefix, asset, index))["Body"].read()
        with Image.open(io.BytesIO(body)) as image:
            assert image.format == "JPEG" and image.size == (tracks.width, tracks.height)
        assert task["data"]["image"].startswith(flow_settings.s3_endpoint_url or "")


def test_importing_a_video_again_creates_no_second_video_or_frame_task(
    prefect_api: str,
    flow_settings: Settings,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
) -> None:
    from flows.prelabel import prelabel_flow
    from storage.prelabel.imports import import_predictions

    fill_bucket(images=0, videos=1, broken=0)
    project = f"fr-again-{bucket[-8:]}"
    params = _params(bucket, project)
    first = prelabel_flow(params, settings=flow_settings)
    catalog = Catalog(flow_settings.resolved_database_url)
    asset, tracks = _video(catalog)

    with Services(flow_settings) as services:  # the import stage run again on the same asset (a retried task)
        again = import_predictions(services, first.run_id, [asset.id], params, first.model_version)
    assert again.instances == 0 and again.frame_tasks == first.count("frame_tasks") and again.refreshed == 0
    assert prelabel_flow(params, settings=flow_settings).count("assets") == 0  # and the flow has nothing to do
    _assert_one_task_per_asset_project_frame(ls_client, catalog, project, asset, tracks)


@pytest.mark.parametrize(
    "crash_point",
    ["between-video-and-frame-tasks", "frame-tasks-posted-not-recorded"],
)
def test_run_killed_between_or_inside_the_two_views_reruns_to_exactly_one_task_per_frame(
    crash_point: str,
    prefect_api: str,
    flow_settings: Settings,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first run dies after the video task is in Label Studio and before any frame task is (or after Label
    Studio created the frame tasks and before the catalog recorded them); the rerun completes both views."""
    from flows.prelabel import prelabel_flow
    from storage.labelstudio import importer
    from storage.prelabel import imports

    settings = flow_settings.model_copy(update={"io_process": False})  # the crash is injected in this process
    fill_bucket(images=0, videos=1, broken=0)
    project = f"fr-crash-{crash_point[:5]}-{bucket[-6:]}"
    params = _params(bucket, project)
    if crash_point == "between-video-and-frame-tasks":

        def crash(*_args: Any, **_kwargs: Any) -> Any:
            raise SimulatedCrash("killed after the video task was imported")

        monkeypatch.setattr(imports, "video_frame_items", crash)
    else:
        record = importer._record_tasks

        def crash(catalog: Catalog, project_row: AnnotationProject, rows: Any) -> None:
            if project_row.name.endswith(" (video frames)"):
                raise SimulatedCrash("killed after Label Studio created the frame tasks")
            record(catalog, project_row, rows)

        monkeypatch.setattr(importer, "_record_tasks", crash)
    with pytest.raises(SimulatedCrash):
        prelabel_flow(params, settings=settings)
    catalog = Catalog(settings.resolved_database_url)
    asset, tracks = _video(catalog)
    with catalog.session() as session:
        assert session.get(Asset, asset.id).status != "done"  # type: ignore[union-attr]
    assert len(ls_tasks(ls_client, catalog, f"{project} (videos)")) == 1
    if crash_point == "frame-tasks-posted-not-recorded":  # Label Studio has them, the catalog does not
        assert len(ls_tasks(ls_client, catalog, f"{project} (video frames)")) == len(task_key_frames(tracks, EVERY))
        with catalog.session() as session:
            assert session.scalar(select(func.count(AnnotationTask.id))) == 1
    monkeypatch.undo()

    rerun = prelabel_flow(params, settings=settings)
    assert (rerun.count("done"), rerun.count("failed")) == (1, 0)
    _assert_one_task_per_asset_project_frame(ls_client, catalog, project, asset, tracks)


def test_flow_process_killed_after_the_video_task_resumes_to_both_views_without_loss_or_duplicates(
    prefect_api: str,
    flow_settings: Settings,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
) -> None:
    """``maskloop prelabel`` SIGKILLed (its process group) as soon as the catalog records the video task; the rerun
    imports whatever of the frame view is missing and nothing twice."""
    from flows.prelabel import prelabel_flow
    from tests.flows.test_prelabel import _kill_when, _spawn_prelabel

    fill_bucket(images=2, videos=1, broken=0)
    catalog = Catalog(flow_settings.resolved_database_url)
    source, project = f"s3://{bucket}/in/", f"fr-kill-{bucket[-8:]}"

    def video_task_recorded() -> bool:
        with catalog.session() as session:
            return bool(
                session.scalar(
                    select(func.count(AnnotationTask.id))
                    .join(Asset, Asset.id == AnnotationTask.asset_id)
                    .where(Asset.media_type == "video", AnnotationTask.frame_index == -1)
                )
            )

    _kill_when(_spawn_prelabel(flow_settings, prefect_api, source, project), video_task_recorded)
    with catalog.session() as session:
        video = session.scalar(select(Asset).where(Asset.media_type == "video"))
        assert video is not None and video.status != "done", "the kill came too late to prove anything"

    params = PrelabelParams(source=source, project=project, batch_size=1, strategy_params=LOOSE)
    assert prelabel_flow(params, settings=flow_settings).count("failed") == 0
    asset, tracks = _video(catalog)
    frames = ls_tasks(ls_client, catalog, f"{project} (video frames)")
    assert sorted(Counter(t["data"]["maskloop_frame_index"] for t in frames).items()) == [
        (k, 1) for k in task_key_frames(tracks, 10)
    ]
    assert len(ls_tasks(ls_client, catalog, f"{project} (images)")) == 2
    with catalog.session() as session:
        assert session.scalar(select(func.count(Asset.id)).where(Asset.status == "done")) == 3
        rows = session.execute(select(AnnotationTask.asset_id, AnnotationTask.frame_index)).all()
    assert len(rows) == len(set(rows)) == 2 + 1 + len(frames)


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)  # the catalog is not what is tested
def test_a_prelabelled_video_corrected_in_both_views_comes_back_as_youtube_vis_with_the_corrected_mask(
    prefect_api: str,
    flow_settings: Settings,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
    s3: Any,
    tmp_path: Any,
) -> None:
    """The two halves meet: the prelabel flow's video and key-frame tasks, accepted or corrected by a person (API),
    harvested by the harvest flow into a version, exported as YouTube-VIS: the redrawn mask comes back exactly, on
    its track and frame, and every other key-frame region comes back as a mask of its track."""
    import json

    import numpy as np
    from pycocotools import mask as mask_utils

    from flows.harvest import harvest_flow
    from flows.prelabel import prelabel_flow
    from storage.labelstudio.brush import mask_to_brush_rle
    from storage.params import HarvestParams
    from storage.version_export import export_version

    fill_bucket(images=0, videos=1, broken=0)
    project = f"rt-{bucket[-8:]}"
    prelabel_flow(_params(bucket, project), settings=flow_settings)
    catalog = Catalog(flow_settings.resolved_database_url)
    asset, tracks = _video(catalog)
    frames = _assert_one_task_per_asset_project_frame(ls_client, catalog, project, asset, tracks)
    (video_task,) = ls_tasks(ls_client, catalog, f"{project} (videos)")
    ls_client.create_annotation(video_task["id"], video_task["predictions"][0]["result"])  # boxes accepted

    corrected = np.zeros((tracks.height, tracks.width), bool)
    corrected[2 : tracks.height // 2, 3 : tracks.width // 2] = True
    target: tuple[int, int] | None = None
    expected_regions = 0
    for task in frames:
        results = json.loads(json.dumps(task["predictions"][0]["result"]))
        if results and target is None:  # the person redraws the first track's mask on the first key frame
            results[0]["value"]["rle"] = mask_to_brush_rle(corrected)
            target = (results[0]["meta"]["track_id"], task["data"]["maskloop_frame_index"])
        expected_regions += len(results)
        ls_client.create_annotation(task["id"], results)
    assert target is not None, "no key-frame task has a region: the test proves nothing"

    done = harvest_flow(
        HarvestParams(project=f"{project} (videos)", create_version=True, dest=f"s3://{bucket}/datasets"),
        settings=flow_settings,
    )
    assert done.harvest.frames is not None and done.harvest.frames.created == len(frames)
    assert done.version is not None
    exported = export_version(catalog, s3, done.version.version_id, tmp_path / "ytvis", fmt="youtube-vis")
    doc = json.loads(exported.labels.read_text())
    (video,) = doc["videos"]
    position = {index: i for i, index in enumerate(video["maskloop_frame_indices"])}
    masks = {
        (ann["maskloop_track_id"], video["maskloop_frame_indices"][i]): seg
        for ann in doc["annotations"]
        for i, seg in enumerate(ann["segmentations"])
        if seg is not None
    }
    assert len(masks) == expected_regions  # every key-frame region is a mask on its track and frame
    track_id, frame_index = target
    decoded = mask_utils.decode(masks[(track_id, frame_index)]).astype(bool)
    assert frame_index in position and np.array_equal(decoded, corrected)
    catalog.dispose()
