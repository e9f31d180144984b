"""Pure: harvested video regions keep their track ids (video task and key-frame tasks), and the id is part of the
annotation's content hash for video regions only."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from storage.annotation.items import MediaSize
from storage.harvest import content_hash
from storage.labelstudio.annotations import annotation_records, track_id_of
from storage.labelstudio.brush import mask_to_brush_rle
from storage.labelstudio.config import LabelConfig, image_label_config, video_label_config

H, W = 8, 10


@pytest.mark.parametrize(
    ("region", "expected"),
    [
        ({"id": "track-3"}, 3),
        ({"id": "track-12-f40"}, 12),
        ({"id": "track-3", "meta": {"track_id": 5}}, 5),  # meta wins over the id
        ({"id": "Xk3_ab", "meta": {"track_id": "7", "text": ["track 7"]}}, 7),
        ({"id": "Xk3_ab", "meta": {"text": ["a note"]}}, None),  # drawn by a person
        ({"id": "track-x"}, None),
        ({"id": "my-track-3"}, None),
        ({"id": "track-3", "meta": {"track_id": -1}}, 3),  # not an id: fall back to the region id
        ({"id": "Xk3_ab", "meta": {"track_id": True}}, None),
        ({}, None),
    ],
    ids=lambda v: str(v),
)
def test_track_id_of_table(region: dict[str, Any], expected: int | None) -> None:
    assert track_id_of(region) == expected


def _brush(rid: str, meta: dict[str, Any] | None) -> dict[str, Any]:
    mask = np.zeros((H, W), bool)
    mask[1:4, 2:6] = True
    region: dict[str, Any] = {
        "id": rid,
        "type": "brushlabels",
        "from_name": "brush",
        "to_name": "image",
        "original_width": W,
        "original_height": H,
        "value": {"format": "rle", "rle": mask_to_brush_rle(mask), "brushlabels": ["cat"]},
    }
    if meta is not None:
        region["meta"] = meta
    return region


def test_key_frame_brush_records_carry_their_track_id_and_a_person_drawn_region_has_none() -> None:
    config = LabelConfig.parse(image_label_config(["cat"]))
    records, empty = annotation_records(
        config,
        "image",
        [_brush("track-4-f9", {"track_id": 4, "text": ["track 4"]}), _brush("track-6-f9", None), _brush("p1", None)],
        MediaSize(H, W, 20),
    )
    assert empty == 0
    assert [(r["region_id"], r.get("track_id")) for r in records] == [
        ("track-4-f9", 4),
        ("track-6-f9", 6),
        ("p1", None),
    ]


def test_video_records_carry_the_track_id_of_the_region() -> None:
    config = LabelConfig.parse(video_label_config(["cat"]))
    key = {"frame": 1, "enabled": True, "x": 10.0, "y": 10.0, "width": 20.0, "height": 20.0}
    regions = [
        {
            "id": rid,
            "type": "videorectangle",
            "from_name": "box",
            "to_name": "video",
            "value": {"framesCount": 2, "sequence": [key], "labels": ["cat"]},
        }
        for rid in ("track-2", "Ab9")
    ]
    records, _ = annotation_records(config, "video", regions, MediaSize(H, W, 2))
    assert [(r["region_id"], r.get("track_id"), len(r["boxes"])) for r in records] == [
        ("track-2", 2, 2),
        ("Ab9", None, 2),
    ]


def test_content_hash_counts_a_video_regions_track_id_and_leaves_image_hashes_alone() -> None:
    rle = {"size": [H, W], "counts": "abc"}
    image = [{"region_id": "a0", "label": "cat", "rle": rle}]
    assert content_hash(-1, image) == content_hash(-1, [{"label": "cat", "rle": rle}])
    frame_1 = [{"region_id": "track-1-f3", "label": "cat", "rle": rle, "track_id": 1}]
    frame_2 = [{"region_id": "track-1-f3", "label": "cat", "rle": rle, "track_id": 2}]
    assert content_hash(3, frame_1) != content_hash(3, frame_2) != content_hash(3, image)
    boxes = [[0, 1.0, 1.0, 4.0, 4.0]]
    assert content_hash(-1, [{"label": "cat", "boxes": boxes, "track_id": 1}]) != content_hash(
        -1, [{"label": "cat", "boxes": boxes, "track_id": 2}]
    )
