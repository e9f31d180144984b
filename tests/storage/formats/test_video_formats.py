"""Pure converters VideoTracks -> YouTube-VIS COCO and Label Studio videorectangle."""

from __future__ import annotations

import numpy as np
import pytest

from model.masks import mask_to_rle, rle_to_mask
from model.tracks import Track, TrackFrame, VideoTracks
from storage.formats.ls_video import to_ls_video_results, track_to_sequence
from storage.formats.youtube_vis import to_youtube_vis

H, W = 20, 40


def _frame(index: int, x1: int = 4, y1: int = 2, x2: int = 14, y2: int = 12, fps: float = 10.0) -> TrackFrame:
    mask = np.zeros((H, W), bool)
    mask[y1:y2, x1:x2] = True
    return TrackFrame(index, index / fps, mask_to_rle(mask), (x1, y1, x2, y2), score=0.8, presence=0.9)


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
    seq = track_to_sequence(tracks.tracks[0], tracks)
    assert [k["enabled"] for k in seq] == enabled
    assert [k["frame"] for k in seq] == [i + 1 for i in visible]


def test_ls_result_geometry_in_percent_and_time() -> None:
    (result,) = to_ls_video_results(_tracks([0, 3], [0, 1, 2, 3]))
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


def test_ls_results_skip_tracks_without_frames() -> None:
    assert to_ls_video_results(_tracks([], [0, 1])) == []
