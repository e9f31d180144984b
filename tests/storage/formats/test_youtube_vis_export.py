"""The ``youtube-vis`` exporter (storage/formats/youtube_vis.write_youtube_vis) on a version's COCO: merged tracks come
out as per-frame RLE masks (None where box-only or absent) with their track ids, validated by pycocotools."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from model.masks import mask_to_rle
from storage.formats.coco import CocoSource, build_coco, validate_coco
from storage.formats.exporter import ExportSource
from storage.formats.registry import EXPORTERS
from storage.formats.video_tracks_merge import coco_records, merge_video_views
from storage.formats.youtube_vis import (
    NoVideosToExportError,
    VersionWithoutTracksError,
    coco_to_youtube_vis,
    write_youtube_vis,
)

H, W = 12, 16


def _mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


DOG_F2, CAT_F2, DOG_F5 = _mask(1, 5, 2, 7), _mask(6, 11, 8, 15), _mask(2, 6, 3, 9)
IMAGE_MASK = _mask(0, 4, 0, 4)


def _version_coco(polygons: bool = False, with_image: bool = True) -> dict:
    video = [
        {"region_id": "track-1", "label": "dog", "track_id": 1, "boxes": [[f, 1.0, 1.0, 6.0, 5.0] for f in range(6)]},
    ]
    frames = {
        2: [
            {"region_id": "track-1-f2", "label": "dog", "track_id": 1, "rle": mask_to_rle(DOG_F2)},
            {"region_id": "track-4-f2", "label": "cat", "track_id": 4, "rle": mask_to_rle(CAT_F2)},
        ],
        5: [{"region_id": "track-1-f5", "label": "dog", "track_id": 1, "rle": mask_to_rle(DOG_F5)}],
        7: [],  # an annotated key frame with nothing on it
    }
    merged = merge_video_views(video, frames, height=H, width=W)
    sources = [CocoSource(3, "s3://b/clip.mp4", W, H, -1, "video", coco_records(merged), merged.frames)]
    if with_image:
        rec = {"label": "cat", "rle": mask_to_rle(IMAGE_MASK), "box": [0.0, 0.0, 4.0, 4.0]}
        sources.append(CocoSource(1, "s3://b/a.png", W, H, -1, "image", [rec]))
    coco = build_coco(sources, ["cat", "dog"], polygons=polygons)
    validate_coco(coco)
    return coco


def _decode(seg: dict) -> np.ndarray:
    return mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode("ascii")}).astype(bool)


@pytest.mark.parametrize("polygons", [False, True], ids=["rle-version", "polygon-version"])
def test_youtube_vis_export_has_per_frame_masks_boxes_and_track_ids_that_round_trip(
    tmp_path: Path, polygons: bool
) -> None:
    coco = _version_coco(polygons)
    files = write_youtube_vis(ExportSource(("cat", "dog"), [], coco), tmp_path)
    assert [f.name for f in files] == ["ytvis.json"]
    assert files[0].summary == (
        "YouTube-VIS: 1 videos, 7 frames, 2 tracks, 3 masks, 4 box-only; frame images not written "
        "(JPEGImages/<video>/<frame>.jpg); 1 images left out (YouTube-VIS holds videos only)"
    )
    doc = json.loads((tmp_path / "ytvis.json").read_text())
    (video,) = doc["videos"]
    assert video["maskloop_frame_indices"] == [0, 1, 2, 3, 4, 5, 7] and video["length"] == 7
    assert video["file_names"][2] == "s3://b/clip.mp4/00002.jpg" and (video["width"], video["height"]) == (W, H)
    assert [c["name"] for c in doc["categories"]] == ["cat", "dog"]
    dog, cat = sorted(doc["annotations"], key=lambda a: a["maskloop_track_id"])
    assert (dog["maskloop_track_id"], dog["category_id"], cat["maskloop_track_id"], cat["category_id"]) == (1, 2, 4, 1)
    # dog: box-only on 0, 1, 3, 4; corrected masks on 2 and 5; absent on 7
    assert [s is not None for s in dog["segmentations"]] == [False, False, True, False, False, True, False]
    assert dog["maskloop_box_only"] == [True, True, False, True, True, False, None]
    assert dog["bboxes"][0] == [1.0, 1.0, 5.0, 4.0] and dog["bboxes"][6] is None
    assert np.array_equal(_decode(dog["segmentations"][2]), DOG_F2)
    assert np.array_equal(_decode(dog["segmentations"][5]), DOG_F5)
    assert dog["areas"][2] == DOG_F2.sum() and dog["bboxes"][2] == [2.0, 1.0, 5.0, 4.0]
    assert [s is not None for s in cat["segmentations"]] == [False, False, True, False, False, False, False]
    assert np.array_equal(_decode(cat["segmentations"][2]), CAT_F2)


def test_youtube_vis_refuses_images_only_versions_and_versions_without_track_ids(tmp_path: Path) -> None:
    with pytest.raises(NoVideosToExportError, match="no video frames; YouTube-VIS holds videos only"):
        write_youtube_vis(ExportSource(("cat", "dog"), [], _version_coco(with_image=True) | {"images": []}), tmp_path)
    images_only = build_coco(
        [
            CocoSource(
                1,
                "s3://b/a.png",
                W,
                H,
                -1,
                "image",
                [{"label": "cat", "rle": mask_to_rle(IMAGE_MASK), "box": [0, 0, 4, 4]}],
            )
        ],
        ["cat"],
    )
    with pytest.raises(NoVideosToExportError, match=r"export it as coco or yolo-seg"):
        coco_to_youtube_vis(images_only)
    old = build_coco(
        [CocoSource(2, "s3://b/v.mp4", W, H, -1, "video", [{"label": "dog", "boxes": [[0, 1, 1, 5, 5]]}])], ["dog"]
    )
    with pytest.raises(VersionWithoutTracksError, match="harvest the project again with --full"):
        coco_to_youtube_vis(old)
    with pytest.raises(ValueError, match="none was given"):
        write_youtube_vis(ExportSource(("dog",), [], None), tmp_path)


def test_youtube_vis_is_a_row_of_the_exporter_table() -> None:
    row = EXPORTERS["youtube-vis"]
    assert (row.write, row.labels, row.images_dir) == (write_youtube_vis, "ytvis.json", "JPEGImages")
