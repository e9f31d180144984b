"""A video corrected in both Label Studio views comes back as a versioned YouTube-VIS export whose masks round-trip.

A 1 s, 10 fps clip with two tracks is imported as a video task (``videorectangle`` per track, a 25 fps project) and
three key-frame tasks (brush mask per track, frames 0, 5 and 9) into the real Label Studio. A person (the API)
moves track 1's box in the video task, redraws track 1's mask on frame 5, deletes track 2 on frame 9 and draws a new
object there. Harvesting the videos project harvests both views; the frozen version merges them; the YouTube-VIS
export, loaded back and decoded with pycocotools frame by frame, holds exactly the posted masks and boxes under the
same track ids.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from sqlalchemy import select

from model.masks import mask_to_rle, masks_to_boxes
from model.tracks import Track, TrackFrame, VideoTracks
from storage.annotation.items import ImportItem, model_version_string
from storage.catalog import Annotation, AnnotationTask, Asset, Catalog, DatasetVersionItem
from storage.formats.ls_frames import frame_tasks
from storage.harvest import harvest
from storage.labelstudio.backend import LabelStudioBackend
from storage.labelstudio.brush import mask_to_brush_rle
from storage.labelstudio.client import LabelStudioClient
from storage.labelstudio.importer import import_predictions
from storage.labelstudio.projects import ensure_project
from storage.settings import Settings
from storage.version_export import export_version
from storage.versions import create_version
from tests.support.settings_for import point_cli_at

pytestmark = pytest.mark.labelstudio

H, W, FPS, N = 48, 64, 10.0, 10
VERSION = model_version_string("maskloop/shapes-tiny", "0123456789abcdef", "everything")
_names = itertools.count()


def _mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _cat(i: int) -> np.ndarray:  # track 1 moves right 2 px a frame
    return _mask(4, 16, 4 + 2 * i, 20 + 2 * i)


DOG = _mask(30, 44, 40, 60)  # track 2 stands still
CAT_F5_CORRECTED = _mask(6, 20, 10, 34)
NEW_F9 = _mask(2, 10, 50, 62)  # drawn by the person on frame 9, no track id
CAT_BOX_CORRECTED = (6.4, 4.8, 22.4, 16.8)  # 10 %, 10 %, 25 % x 25 % of 64 x 48


def _tracks() -> VideoTracks:
    def frame(i: int, mask: np.ndarray) -> TrackFrame:
        box = tuple(float(v) for v in masks_to_boxes(mask[None])[0])
        return TrackFrame(i, i / FPS, mask_to_rle(mask), box, 0.9, 1.0)  # type: ignore[arg-type]

    return VideoTracks(
        height=H,
        width=W,
        fps=FPS,
        frame_count=N,
        sampled_frames=list(range(N)),
        duration_s=N / FPS,
        tracks=[
            Track(1, "cat", [frame(i, _cat(i)) for i in range(N)]),
            Track(2, "dog", [frame(i, DOG) for i in range(N)]),
        ],
    )


def _brush(region_id: str, mask: np.ndarray, label: str, track_id: int | None) -> dict[str, Any]:
    region: dict[str, Any] = {
        "id": region_id,
        "type": "brushlabels",
        "from_name": "brush",
        "to_name": "image",
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask_to_brush_rle(mask), "brushlabels": [label]},
    }
    if track_id is not None:
        region["meta"] = {"track_id": track_id, "text": [f"track {track_id}"]}
    return region


def _setup(catalog: Catalog, ls_client: LabelStudioClient, s3: Any, bucket: str) -> tuple[int, Any, Any]:
    body = b"not really a video, only its sha256 matters here"
    s3.put_object(Bucket=bucket, Key="clips/walk.mp4", Body=body)
    with catalog.session() as session:
        asset = Asset(
            bucket=bucket,
            key="clips/walk.mp4",
            etag="e1",
            size=len(body),
            media_type="video",
            width=W,
            height=H,
            frames=N,
            fps=FPS,
            sha256=hashlib.sha256(body).hexdigest(),
            status="done",
        )
        session.add(asset)
        session.flush()
        asset_id = asset.id
    name = f"vis-{next(_names)}"
    videos = ensure_project(ls_client, catalog, f"{name} (videos)", "video", ["cat", "dog"])
    frames = ensure_project(ls_client, catalog, f"{name} (video frames)", "image", ["cat", "dog"])
    tracks = _tracks()
    import_predictions(ls_client, catalog, videos, [ImportItem(asset_id, "http://127.0.0.1/walk.mp4", tracks, VERSION)])
    keyframes = frame_tasks(tracks, asset_id, lambda i: f"http://127.0.0.1/walk/{i}.png", every=5)
    assert [t.frame_index for t in keyframes] == [0, 5, 9]
    import_predictions(
        ls_client,
        catalog,
        frames,
        [ImportItem(asset_id, t.data["image"], t.results, VERSION, frame_index=t.frame_index) for t in keyframes],
    )
    return asset_id, videos, frames


def _task_ids(catalog: Catalog, project: Any) -> dict[int, int]:
    with catalog.session() as session:
        rows = session.scalars(select(AnnotationTask).where(AnnotationTask.project_id == project.id)).all()
        return {r.frame_index: r.external_task_id for r in rows}


def _decode(seg: dict[str, Any]) -> np.ndarray:
    return mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode("ascii")}).astype(bool)


def test_a_video_corrected_in_both_views_exports_as_youtube_vis_whose_masks_round_trip(
    catalog: Catalog,
    ls_client: LabelStudioClient,
    settings: Settings,
    s3: Any,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    asset_id, videos, frames = _setup(catalog, ls_client, s3, bucket)
    video_task = _task_ids(catalog, videos)[-1]
    frame_task = _task_ids(catalog, frames)
    assert sorted(frame_task) == [0, 5, 9]

    # the video task: the person moves track 1's box (one keyframe, lasting the clip); track 2 as predicted
    (prediction,) = ls_client.list_predictions(video_task)
    regions = {r["id"]: r for r in prediction["result"]}
    assert set(regions) == {"track-1", "track-2"}
    cat = json.loads(json.dumps(regions["track-1"]))
    cat.pop("origin", None)
    cat["value"]["sequence"] = [
        {"frame": 1, "enabled": True, "rotation": 0, "x": 10.0, "y": 10.0, "width": 25.0, "height": 25.0, "time": 0.0}
    ]
    ls_client.create_annotation(video_task, [cat, regions["track-2"]])
    # frame 0 accepted as predicted; frame 5: track 1 redrawn; frame 9: track 2 deleted, a new object drawn
    (pred0,) = ls_client.list_predictions(frame_task[0])
    assert {r["meta"]["track_id"] for r in pred0["result"]} == {1, 2}
    ls_client.create_annotation(frame_task[0], pred0["result"])
    ls_client.create_annotation(
        frame_task[5], [_brush("track-1-f5", CAT_F5_CORRECTED, "cat", 1), _brush("track-2-f5", DOG, "dog", 2)]
    )
    ls_client.create_annotation(
        frame_task[9], [_brush("track-1-f9", _cat(9), "cat", 1), _brush("person-1", NEW_F9, "dog", None)]
    )

    report = harvest(LabelStudioBackend(ls_client), catalog, videos.name, s3=s3)
    assert (report.created, report.invalid) == (1, {})
    assert report.frames is not None and (report.frames.project, report.frames.created) == (frames.name, 3)
    assert report.total("created") == 4 and report.to_json()["frames"]["created"] == 3
    with catalog.session() as session:
        stored = {
            (t.frame_index, r.get("track_id"))
            for t, a in session.execute(
                select(AnnotationTask, Annotation).join(Annotation, Annotation.task_row_id == AnnotationTask.id)
            )
            for r in a.instances
        }
    assert stored == {(-1, 1), (-1, 2), (0, 1), (0, 2), (5, 1), (5, 2), (9, 1), (9, None)}

    made = create_version(catalog, s3, videos, f"s3://{bucket}/datasets", tag="video")
    assert made.created and made.skipped == {}
    assert made.version.counts["videos"] == 1 and made.version.counts["frames"] == N
    assert made.version.counts["instances_per_class"] == {"cat": 1, "dog": 2}  # tracks
    with catalog.session() as session:
        items = sorted(
            i.frame_index
            for i in session.scalars(select(DatasetVersionItem).where(DatasetVersionItem.version_id == made.version.id))
        )
    assert items == [-1, 0, 5, 9]
    assert not create_version(catalog, s3, videos, f"s3://{bucket}/datasets").created  # unchanged: same version

    result = export_version(catalog, s3, made.version.id, tmp_path / "ytvis", fmt="youtube-vis")
    assert result.labels == tmp_path / "ytvis" / "ytvis.json"
    doc = json.loads(result.labels.read_text())
    (video,) = doc["videos"]
    assert video["maskloop_frame_indices"] == list(range(N)) and (video["width"], video["height"]) == (W, H)
    assert video["file_names"][5] == f"{asset_id}_walk.mp4/00005.jpg"
    assert video["maskloop_asset_id"] == asset_id and video["maskloop_s3_uri"] == f"s3://{bucket}/clips/walk.mp4"
    names = {c["id"]: c["name"] for c in doc["categories"]}
    by_track = {a["maskloop_track_id"]: a for a in doc["annotations"]}
    assert {t: names[a["category_id"]] for t, a in by_track.items()} == {1: "cat", 2: "dog", 3: "dog"}

    expected_masks = {1: {0: _cat(0), 5: CAT_F5_CORRECTED, 9: _cat(9)}, 2: {0: DOG, 5: DOG}, 3: {9: NEW_F9}}
    cat_box = [CAT_BOX_CORRECTED[0], CAT_BOX_CORRECTED[1], 16.0, 12.0]
    for track_id, ann in by_track.items():
        for i in range(N):
            seg, box = ann["segmentations"][i], ann["bboxes"][i]
            if i in expected_masks[track_id]:  # every frame's mask, decoded by pycocotools, is the posted one
                assert seg is not None and np.array_equal(_decode(seg), expected_masks[track_id][i]), (track_id, i)
                assert ann["areas"][i] == expected_masks[track_id][i].sum()
            else:
                assert seg is None
                if track_id == 1:  # the corrected video box, on every frame without a mask
                    assert box == pytest.approx(cat_box, abs=1e-3), i
                elif track_id == 2 and i != 9:  # as predicted; deleted on frame 9
                    assert box == pytest.approx([40.0, 30.0, 20.0, 14.0], abs=1e-3), i
                else:
                    assert box is None, (track_id, i)
    assert by_track[2]["bboxes"][9] is None and by_track[3]["maskloop_box_only"][9] is False

    # the same export through the command line, and its summary line
    from flows.cli import main

    point_cli_at(monkeypatch, catalog.url, settings, tmp_path / "cli")
    capsys.readouterr()
    out_dir = tmp_path / "cli-export"
    assert main(["versions", "export", str(made.version.id), "--format", "youtube-vis", "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    print(printed)
    assert "YouTube-VIS: 1 videos, 10 frames, 3 tracks, 6 masks, 14 box-only" in printed
    assert (out_dir / "ytvis.json").read_text() == result.labels.read_text()
