"""Pure converters VideoTracks -> YouTube-VIS COCO and Label Studio videorectangle."""

from __future__ import annotations

import numpy as np
import pytest

from model.masks import mask_to_rle, rle_to_mask
from model.tracks import Track, TrackFrame, VideoTracks
from storage.formats.ls_video import (
    Keyframe,
    project_frame,
    project_keyframes,
    to_ls_video_results,
    track_to_sequence,
)
from storage.formats.youtube_vis import to_youtube_vis

H, W = 20, 40


def _frame(
    index: int, x1: int = 4, y1: int = 2, x2: int = 14, y2: int = 12, fps: float = 10.0, time_s: float | None = None
) -> TrackFrame:
    mask = np.zeros((H, W), bool)
    mask[y1:y2, x1:x2] = True
    time = index / fps if time_s is None else time_s
    return TrackFrame(index, time, mask_to_rle(mask), (x1, y1, x2, y2), score=0.8, presence=0.9)


def _tracks(visible: list[int], sampled: list[int], label: str = "cat") -> VideoTracks:
    return VideoTracks(
        height=H,
        width=W,
        fps=10.0,
        frame_count=max(sampled, default=0) + 1,
        sampled_frames=sampled,
        tracks=[Track(track_id=3, label=label, frames=[_frame(i) for i in visible])],
    )


def test_youtube_vis_has_per_frame_lists_with_none_where_absent() -> None:
    out = to_youtube_vis(_tracks([0, 2, 6], [0, 2, 4, 6]), "clip")
    (video,) = out["videos"]
    assert video["length"] == 4 and video["file_names"] == [
        "clip/00000.jpg",
        "clip/00002.jpg",
        "clip/00004.jpg",
        "clip/00006.jpg",
    ]
    assert out["categories"] == [{"id": 1, "name": "cat"}]
    (ann,) = out["annotations"]
    assert ann["category_id"] == 1 and ann["video_id"] == 1 and ann["track_id"] == 3
    assert [s is None for s in ann["segmentations"]] == [False, False, True, False]
    assert ann["bboxes"][0] == [4, 2, 10, 10] and ann["areas"][0] == 100 and ann["areas"][2] is None
    assert rle_to_mask(ann["segmentations"][1]).sum() == 100


def test_youtube_vis_of_empty_tracks_and_missing_category() -> None:
    empty = VideoTracks(height=H, width=W, fps=10.0, frame_count=0, sampled_frames=[], tracks=[])
    out = to_youtube_vis(empty, "v")
    assert out["annotations"] == [] and out["videos"][0]["length"] == 0 and out["categories"] == []
    with pytest.raises(ValueError, match="lack labels"):
        to_youtube_vis(_tracks([0], [0]), "v", categories={"dog": 1})
    with pytest.raises(ValueError, match="not a sampled frame"):
        to_youtube_vis(_tracks([1], [0, 2]), "v")


@pytest.mark.parametrize(
    ("visible", "sampled", "enabled"),
    [
        ([0, 1, 2], [0, 1, 2], [True, True, True]),  # visible to the end
        ([0, 1], [0, 1, 2, 3], [True, False]),  # disappears after frame 1
        ([0, 1, 3], [0, 1, 2, 3], [True, False, True]),  # gap at 2, back at 3 until the end
        ([0, 2], [0, 2, 4], [True, False]),  # sampled every 2nd frame: frame 2 -> next sampled is 4
        ([5], [0, 5, 9], [False]),  # a single sighting
        ([], [0, 1], []),
    ],
)
def test_ls_sequence_disables_the_last_keyframe_before_a_gap(
    visible: list[int], sampled: list[int], enabled: list[bool]
) -> None:
    tracks = _tracks(visible, sampled)
    seq = track_to_sequence(tracks.tracks[0], tracks, framerate=10.0)  # a project at the clip's own rate
    assert [k["enabled"] for k in seq] == enabled
    assert [k["frame"] for k in seq] == [i + 1 for i in visible]


NTSC = 30000 / 1001  # 29.97 fps


def _timed_track(indices: list[int], times: list[float]) -> Track:
    return Track(
        track_id=1, label="cat", frames=[_frame(i, x1=i % 20, time_s=t) for i, t in zip(indices, times, strict=True)]
    )


@pytest.mark.parametrize(
    ("indices", "times", "sampled", "rate", "frames", "kept", "enabled"),
    [
        # 8 fps into a 25 fps project: frame i is shown at i/8 s -> project frame round(25 i / 8) + 1
        ([0, 1, 2, 3], [0, 1 / 8, 2 / 8, 3 / 8], [0, 1, 2, 3], 25.0, [1, 4, 7, 10], [0, 1, 2, 3], [True] * 4),
        ([0, 1, 2, 3], [0, 0.04, 0.08, 0.12], [0, 1, 2, 3, 4], 25.0, [1, 2, 3, 4], [0, 1, 2, 3], [True] * 3 + [False]),
        # 29.97 into 25: frames 3 and 4 both land on project frame 4 (0.12 s); frame 4 (0.1335 s) is nearer
        (
            [0, 1, 2, 3, 4, 5],
            [i / NTSC for i in range(6)],
            list(range(6)),
            25.0,
            [1, 2, 3, 4, 5],
            [0, 1, 2, 4, 5],
            [True] * 5,
        ),
        ([0, 1, 2, 3], [i / NTSC for i in range(4)], [0, 1, 2, 3], NTSC, [1, 2, 3, 4], [0, 1, 2, 3], [True] * 4),
        # 60 fps into 25: pairs of source frames share a project frame; the nearer one is kept
        ([0, 1, 2, 3, 4, 5], [i / 60 for i in range(6)], list(range(6)), 25.0, [1, 2, 3], [0, 2, 5], [True] * 3),
        # variable frame rate: the presentation times decide, not the indices
        ([0, 1, 2, 3, 4], [0.0, 0.05, 0.2, 0.21, 0.5], [0, 1, 2, 3, 4], 25.0, [1, 2, 6, 14], [0, 1, 2, 4], [True] * 4),
        # --video-every 3 on a 30 fps clip: indices 0, 3, 6, 9 at 0.0, 0.1, 0.2, 0.3 s
        ([0, 3, 6, 9], [0.0, 0.1, 0.2, 0.3], [0, 3, 6, 9], 25.0, [1, 4, 6, 9], [0, 3, 6, 9], [True] * 4),
        # a gap: sampled every 3rd frame, the object is missing on frame 6 -> frame 3's keyframe ends the lifespan
        ([0, 3, 9], [0.0, 0.1, 0.3], [0, 3, 6, 9], 25.0, [1, 4, 9], [0, 3, 9], [True, False, True]),
        ([], [], [0, 1, 2], 25.0, [], [], []),  # an empty track
        ([5], [5 / 8], [0, 5, 9], 25.0, [17], [5], [False]),  # a single sighting, not at the end
        ([9], [9 / 8], [0, 5, 9], 25.0, [29], [9], [True]),  # a single sighting on the last sampled frame
    ],
    ids=["8fps", "25fps", "29.97fps", "29.97-project", "60fps", "vfr", "every-3", "gap", "empty", "single", "last"],
)
def test_keyframes_are_placed_by_presentation_time_in_the_project_rate(
    indices: list[int],
    times: list[float],
    sampled: list[int],
    rate: float,
    frames: list[int],
    kept: list[int],
    enabled: list[bool],
) -> None:
    track = _timed_track(indices, times)
    keys = project_keyframes(track, sampled, rate)
    assert [k.frame for k in keys] == frames
    assert [k.box[0] for k in keys] == [float(i % 20) for i in kept]  # which source frame each keyframe shows
    assert [k.enabled for k in keys] == enabled
    for key in keys:
        assert abs(key.time_s - (key.frame - 1) / rate) <= 0.5 / rate + 1e-9  # shown within half a project frame


def test_keyframe_merge_keeps_the_later_frames_lifespan() -> None:
    """60 fps into 25: frames 0 and 1 share project frame 1; the object is gone after frame 1, so it must end."""
    track = _timed_track([0, 1], [0.0, 1 / 60])
    assert project_keyframes(track, [0, 1, 2], 25.0) == [Keyframe(1, 0.0, (0.0, 2.0, 14.0, 12.0), False)]


@pytest.mark.parametrize(
    ("time_s", "rate", "frame"),
    [(0.0, 25.0, 1), (0.02, 25.0, 2), (0.0199, 25.0, 1), (1.0, 8.0, 9), (1001 / 30000, NTSC, 2), (10.0, 60.0, 601)],
)
def test_project_frame_rounds_to_the_nearest_project_frame(time_s: float, rate: float, frame: int) -> None:
    assert project_frame(time_s, rate) == frame


@pytest.mark.parametrize(("time_s", "rate"), [(-0.1, 25.0), (float("nan"), 25.0), (1.0, 0.0)])
def test_project_frame_rejects_bad_times_and_rates(time_s: float, rate: float) -> None:
    with pytest.raises(ValueError):
        project_frame(time_s, rate)


def test_keyframes_reject_times_that_go_backwards() -> None:
    with pytest.raises(ValueError, match="frame times must increase"):
        project_keyframes(_timed_track([0, 1], [0.5, 0.1]), [0, 1], 25.0)


def test_ls_result_geometry_in_percent_and_time() -> None:
    (result,) = to_ls_video_results(_tracks([0, 3], [0, 1, 2, 3]), framerate=10.0)
    assert result["type"] == "videorectangle" and result["value"]["labels"] == ["cat"]
    assert result["value"]["framesCount"] == 4 and result["value"]["duration"] == pytest.approx(0.4)
    key = result["value"]["sequence"][1]
    assert key == {
        "frame": 4,
        "enabled": True,
        "rotation": 0,
        "x": 10.0,
        "y": 10.0,
        "width": 25.0,
        "height": 50.0,
        "time": pytest.approx(0.3),
    }


def test_ls_result_of_a_10fps_clip_in_the_default_25fps_project_is_counted_in_project_frames() -> None:
    tracks = _tracks([0, 3], [0, 1, 2, 3])
    tracks.duration_s = 0.4
    (result,) = to_ls_video_results(tracks)
    assert result["value"]["framesCount"] == 10 and result["value"]["duration"] == pytest.approx(0.4)
    assert [k["frame"] for k in result["value"]["sequence"]] == [1, 9]  # 0.0 s and 0.3 s at 25 fps


def test_ls_results_skip_tracks_without_frames() -> None:
    assert to_ls_video_results(_tracks([], [0, 1])) == []
