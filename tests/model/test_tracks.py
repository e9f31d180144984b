"""VideoTracks validation and its JSON form (what the catalog stores for a video prediction)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model.instances import Prompt
from model.masks import mask_to_rle
from model.tracks import Track, TrackFrame, VideoTracks, tracks_from_json, tracks_to_json


def _frame(i: int, box: tuple[float, float, float, float] = (1, 2, 5, 6)) -> TrackFrame:
    mask = np.zeros((8, 10), bool)
    mask[2:6, 1:5] = True
    return TrackFrame(i, i / 10, mask_to_rle(mask), box, 0.8, 0.9)


def test_tracks_survive_a_json_round_trip() -> None:
    video = VideoTracks(
        height=8,
        width=10,
        fps=10.0,
        frame_count=5,
        sampled_frames=[0, 2, 4],
        tracks=[Track(3, "cat", [_frame(0), _frame(4)], [Prompt("grid", {"xy": [1, 2]}, "m@1")]), Track(7, "dog", [])],
        model_id="m@1",
        key_frames=[0],
        params={"every": 2},
    )
    data = json.loads(json.dumps(tracks_to_json(video)))
    assert tracks_from_json(data) == video


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TrackFrame(-1, 0.0, {}, (0, 0, 1, 1), 1.0, 1.0), "frame_index"),
        (lambda: TrackFrame(0, 0.0, {}, (5, 0, 1, 1), 1.0, 1.0), "xyxy"),
        (lambda: Track(1, "", []), "label"),
        (lambda: Track(1, "x", [_frame(2), _frame(1)]), "increasing"),
        (lambda: VideoTracks(0, 10, 1.0, 1, [], []), "positive"),
        (lambda: VideoTracks(8, 10, 1.0, 1, [], [Track(1, "a"), Track(1, "b")]), "unique"),
    ],
)
def test_invalid_tracks_are_rejected_with_a_reason(make, message: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=message):
        make()
