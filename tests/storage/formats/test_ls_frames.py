"""Pure converter VideoTracks -> key-frame image tasks with one brush region per track (storage/formats/ls_frames)."""

from __future__ import annotations

import numpy as np
import pytest

from model.masks import mask_to_rle
from model.tracks import Track, TrackFrame, VideoTracks
from storage.formats.ls_frames import frame_tasks, task_key_frames
from storage.labelstudio.brush import brush_rle_to_mask
from storage.labelstudio.config import LabelConfig, image_label_config

H, W = 12, 16


def _mask(x: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[2:6, x : x + 4] = True
    return mask


def _video(visible: dict[int, list[int]], sampled: list[int], fps: float = 10.0) -> VideoTracks:
    tracks = [
        Track(
            tid,
            "cat" if tid % 2 else "dog",
            [TrackFrame(i, i / fps, mask_to_rle(_mask(i % 10)), (i % 10, 2, i % 10 + 4, 6), 0.8, 1.0) for i in frames],
        )
        for tid, frames in visible.items()
    ]
    return VideoTracks(H, W, fps, max(sampled, default=0) + 1, sampled, tracks)


@pytest.mark.parametrize(
    ("visible", "sampled", "every", "expected"),
    [
        ({}, [], 3, []),  # no frames at all
        ({}, [0, 1, 2, 3, 4], 2, [0, 2, 4]),  # no tracks: the periodic frames only
        ({1: list(range(10))}, list(range(10)), 4, [0, 4, 8, 9]),  # starts at 0, ends at the last frame
        ({1: [3, 4, 5]}, list(range(10)), 100, [0, 3, 5]),  # starts at 3, ends at 5
        ({1: [0, 1, 5, 6]}, list(range(8)), 100, [0, 1, 5, 6]),  # ends at 1, re-appears at 5, ends at 6
        ({1: [4]}, list(range(8)), 100, [0, 4]),  # a single sighting
        ({1: [0, 2, 4, 6], 2: [4, 6]}, [0, 2, 4, 6], 1, [0, 2, 4, 6]),  # every sampled frame
        ({1: [0, 3], 2: [6]}, [0, 3, 6, 9], 100, [0, 3, 6]),  # sampled every 3rd source frame
    ],
    ids=["empty", "no-tracks", "whole-clip", "middle", "re-appears", "single", "every-1", "sampled"],
)
def test_task_key_frames_table(visible: dict, sampled: list[int], every: int, expected: list[int]) -> None:
    assert task_key_frames(_video(visible, sampled), every) == expected


def test_task_key_frames_reject_bad_every_and_unsampled_track_frames() -> None:
    with pytest.raises(ValueError, match="every must be"):
        task_key_frames(_video({}, [0]), 0)
    with pytest.raises(ValueError, match="not sampled frames"):
        task_key_frames(_video({1: [1]}, [0, 2]), 1)


def test_frame_tasks_link_to_the_video_and_carry_one_brush_region_per_track() -> None:
    video = _video({1: [0, 1, 2], 2: [2, 3]}, [0, 1, 2, 3])
    tasks = frame_tasks(video, asset_id=7, frame_url=lambda i: f"http://h/f{i}.png", every=100)
    assert [t.frame_index for t in tasks] == [0, 2, 3]
    third = tasks[1]
    assert third.data == {
        "image": "http://h/f2.png",
        "maskloop_asset_id": 7,
        "maskloop_frame_index": 2,
        "maskloop_time_s": pytest.approx(0.2),
    }
    assert [r["meta"]["track_id"] for r in third.results] == [1, 2]
    assert [r["value"]["brushlabels"] for r in third.results] == [["cat"], ["dog"]]
    assert np.array_equal(brush_rle_to_mask(third.results[0]["value"]["rle"], H, W), _mask(2))
    LabelConfig.parse(image_label_config(["cat", "dog"])).validate_results(third.results)
    assert len({r["id"] for t in tasks for r in t.results}) == sum(len(t.results) for t in tasks)


def test_frame_task_without_visible_tracks_is_empty_and_timed_by_the_source_rate() -> None:
    (task,) = frame_tasks(_video({}, [0, 5]), asset_id=1, frame_url=str, every=2)
    assert (task.frame_index, task.results, task.data["maskloop_time_s"]) == (0, [], 0.0)
