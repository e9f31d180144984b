"""Pure table tests of storage/formats/video_tracks_merge: a video task's boxes and key-frame tasks' masks become one
set of tracks (per track, per frame: the corrected mask where a key-frame task has one, else the video box)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from model.masks import mask_to_rle, rle_to_mask
from storage.formats.video_tracks_merge import coco_records, merge_video_views, source_boxes

H, W = 8, 10


def _mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def _brush(mask: np.ndarray, label: str = "dog", track_id: int | None = None, rid: str = "r") -> dict[str, Any]:
    record: dict[str, Any] = {"region_id": rid, "label": label, "rle": mask_to_rle(mask)}
    if track_id is not None:
        record["track_id"] = track_id
    return record


def _video(frames: list[int], label: str = "dog", track_id: int | None = 1, rid: str = "track-1") -> dict[str, Any]:
    record: dict[str, Any] = {"region_id": rid, "label": label, "boxes": [[f, 1.0, 1.0, 5.0, 4.0] for f in frames]}
    if track_id is not None:
        record["track_id"] = track_id
    return record


def _summary(video: Any) -> dict[int, tuple[str, list[tuple[int, str]], bool]]:
    """track id -> (label, [(frame, "mask"|"box")], added)"""
    return {
        t.track_id: (t.label, [(f.frame_index, "box" if f.rle is None else "mask") for f in t.frames], t.added)
        for t in video.tracks
    }


A, B = _mask(1, 4, 1, 5), _mask(4, 8, 5, 10)

CASES = [
    ("nothing harvested", [], {}, {}, ()),
    (
        "no frame tasks: box-only track",
        [_video([0, 1, 2])],
        {},
        {1: ("dog", [(0, "box"), (1, "box"), (2, "box")], False)},
        (0, 1, 2),
    ),
    (
        "a frame task's mask replaces the box on its frame only",
        [_video([0, 1, 2])],
        {1: [_brush(A, track_id=1, rid="track-1-f1")]},
        {1: ("dog", [(0, "box"), (1, "mask"), (2, "box")], False)},
        (0, 1, 2),
    ),
    (
        "a frame-task track absent from the video task is a mask-only track with its own label",
        [_video([0, 1])],
        {1: [_brush(A, track_id=1, rid="track-1-f1"), _brush(B, "cat", track_id=7, rid="track-7-f1")]},
        {1: ("dog", [(0, "box"), (1, "mask")], False), 7: ("cat", [(1, "mask")], False)},
        (0, 1),
    ),
    (
        "a region deleted on a key frame removes the track's box there",
        [_video([0, 1, 2])],
        {1: []},
        {1: ("dog", [(0, "box"), (2, "box")], False)},
        (0, 1, 2),
    ),
    (
        "an annotated key frame with nothing on it is still listed",
        [],
        {4: []},
        {},
        (4,),
    ),
    (
        "regions without a track id get new ids after the largest, video task first",
        [_video([0], track_id=3, rid="track-3"), _video([1], "cat", track_id=None, rid="zz-person")],
        {2: [_brush(B, "cat", rid="person-f2")]},
        {3: ("dog", [(0, "box")], False), 4: ("cat", [(1, "box")], True), 5: ("cat", [(2, "mask")], True)},
        (0, 1, 2),
    ),
    (
        "a video region repeating a taken id becomes a new track",
        [_video([0], rid="a"), _video([1], "cat", rid="b")],
        {},
        {1: ("dog", [(0, "box")], False), 2: ("cat", [(1, "box")], True)},
        (0, 1),
    ),
    (
        "degenerate boxes are no instance and a track of only those is dropped",
        [
            {"region_id": "track-1", "label": "dog", "track_id": 1, "boxes": [[0, 1, 1, 5, 4], [1, 3, 3, 3, 6]]},
            {"region_id": "track-2", "label": "dog", "track_id": 2, "boxes": [[0, 2, 2, 2, 2]]},
        ],
        {},
        {1: ("dog", [(0, "box")], False)},
        (0,),
    ),
    (
        "a track only in frame tasks takes its most common label; a relabel on one frame does not relabel it",
        [_video([0, 1, 2])],
        {
            0: [_brush(A, "cat", track_id=1), _brush(B, "cat", track_id=9)],
            2: [_brush(A, track_id=1), _brush(B, "dog", track_id=9)],
            3: [_brush(B, "cat", track_id=9)],
        },
        {
            1: ("dog", [(0, "mask"), (1, "box"), (2, "mask")], False),
            9: ("cat", [(0, "mask"), (2, "mask"), (3, "mask")], False),
        },
        (0, 1, 2, 3),
    ),
]


@pytest.mark.parametrize(("name", "video", "frames", "expected", "listed"), CASES, ids=[c[0] for c in CASES])
def test_merge_table(name: str, video: list, frames: dict, expected: dict, listed: tuple) -> None:
    merged = merge_video_views(video, frames, height=H, width=W)
    assert _summary(merged) == expected
    assert merged.frames == listed


def test_a_mask_frame_carries_the_mask_and_its_box_and_two_regions_of_one_track_are_united() -> None:
    merged = merge_video_views(
        [_video([0, 1])], {1: [_brush(A, track_id=1, rid="x"), _brush(B, track_id=1, rid="y")]}, height=H, width=W
    )
    (track,) = merged.tracks
    frame = track.frames[1]
    assert frame.rle is not None and np.array_equal(rle_to_mask(frame.rle), A | B)
    assert frame.box == (1.0, 1.0, 10.0, 8.0)
    assert track.frames[0].box == (1.0, 1.0, 5.0, 4.0) and track.frames[0].rle is None
    (record,) = coco_records(merged)
    assert record["track_id"] == 1 and [b[0] for b in record["boxes"]] == [0, 1] and list(record["masks"]) == [1]


def test_video_boxes_move_from_project_frames_to_source_frames_by_time() -> None:
    rows = [[p, 0, 0, 2 + p, 2] for p in range(6)]  # project frames 0..5 at 25 fps (0.0 .. 0.2 s)
    # a 10 fps source: frame i at i/10 s is project frame round(2.5 i) -> 0, 3, 5
    assert {i: b[2] for i, b in source_boxes(rows, source_fps=10, project_fps=25).items()} == {0: 2, 1: 5, 2: 7}
    # a 50 fps source: frames 0..10 map to project frames round(i/2): 0, 1, 1, 2, 2, ...
    out = source_boxes(rows, source_fps=50, project_fps=25)
    assert sorted(out) == list(range(11)) and out[3][2] == 4  # frame 3 at 0.06 s: project frame 2 (round half up)
    assert sorted(source_boxes(rows, source_fps=50, project_fps=25, source_frames=4)) == [0, 1, 2, 3]
    assert sorted(source_boxes(rows, source_fps=None, project_fps=25)) == list(range(6))  # rates unknown: as they are
    assert source_boxes([], source_fps=10, project_fps=25) == {}


def test_a_mask_of_another_size_is_refused() -> None:
    with pytest.raises(ValueError, match=r"frame 2 region 'r': mask is \[4, 4\]"):
        merge_video_views([], {2: [_brush(np.ones((4, 4), bool), track_id=1)]}, height=H, width=W)
