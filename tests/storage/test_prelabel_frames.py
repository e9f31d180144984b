"""The pieces of the video key-frame view that need no annotation server: frame keys, decoding and JPEG encoding, the
extra task data, the frames prefix setting, and discovery never listing what maskloop wrote into a bucket."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from model.masks import mask_to_rle
from model.tracks import Track, TrackFrame, VideoTracks
from model.video import write_video
from storage.annotation import ImportItem
from storage.catalog import Asset
from storage.labelstudio.payload import task_json as _task_json
from storage.prelabel.frames import decode_frames, encode_jpeg, frame_key, frames_project_name, video_frame_items
from storage.s3 import list_objects
from storage.services import Services
from storage.settings import Settings


def test_frame_key_is_the_video_content_hash_and_the_zero_padded_frame() -> None:
    asset = Asset(id=7, sha256="ab" * 32, bucket="b", key="in/clip.mp4")
    assert frame_key(".maskloop/frames", asset, 12) == f".maskloop/frames/{'ab' * 32}/000012.jpg"
    assert frame_key("p", Asset(id=7, sha256=None), 3) == "p/asset-7/000003.jpg"
    assert frames_project_name("demo") == "demo (video frames)"


def test_decode_frames_returns_exactly_the_asked_source_frames_in_one_pass(tmp_path: Path) -> None:
    shades = [np.full((32, 48, 3), 20 * i, dtype=np.uint8) for i in range(8)]
    path = write_video(tmp_path / "grey.mp4", shades, fps=8)
    frames = decode_frames(path, [1, 5])
    assert sorted(frames) == [1, 5]
    for index, rgb in frames.items():
        assert rgb.shape == (32, 48, 3) and abs(float(rgb.mean()) - 20 * index) < 6
    with pytest.raises(KeyError, match=r"no frames \[9\]"):
        decode_frames(path, [2, 9])


def test_encode_jpeg_keeps_the_frame_size() -> None:
    body = encode_jpeg(np.zeros((30, 50, 3), dtype=np.uint8))
    with Image.open(io.BytesIO(body)) as image:
        assert image.format == "JPEG" and image.size == (50, 30)


def test_extra_data_goes_into_the_task_data_below_the_importers_own_keys() -> None:
    item = ImportItem(
        3, "http://s3/f.jpg", [], "m@1/everything", frame_index=4, extra_data={"maskloop_time_s": 0.5, "image": "x"}
    )
    data = json.loads(_task_json(item, [], "image"))["data"]
    assert data == {
        "image": "http://s3/f.jpg",
        "maskloop_asset_id": 3,
        "maskloop_frame_index": 4,
        "maskloop_model_version": "m@1/everything",
        "maskloop_time_s": 0.5,
    }


@pytest.mark.parametrize("extra", [{"": 1}, {"k": [1]}, {"k": {"a": 1}}])
def test_extra_data_must_be_named_json_scalars(extra: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="extra_data"):
        ImportItem(1, "http://x", [], "m", extra_data=extra)


def test_frames_prefix_is_a_plain_key_prefix(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path, frames_prefix="/.maskloop/frames/").frames_prefix == ".maskloop/frames"
    for bad in ("", "/", "a/../b", "a//b", "frames", ".maskloopy/frames"):
        with pytest.raises(ValidationError, match="frames_prefix"):
            Settings(data_dir=tmp_path, frames_prefix=bad)


def test_discovery_never_lists_the_frames_maskloop_wrote_into_the_bucket(s3: Any, bucket: str) -> None:
    for key in ("a.jpg", "in/b.mp4", ".maskloop/frames/ab/000000.jpg", "in/.maskloop/c.jpg"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    assert sorted(o.key for o in list_objects(s3, bucket)) == ["a.jpg", "in/.maskloop/c.jpg", "in/b.mp4"]


def _tracks(height: int, width: int, frames: int) -> VideoTracks:
    mask = np.zeros((height, width), dtype=bool)
    mask[4:12, 6:20] = True
    track = Track(7, "object", [TrackFrame(i, i / 8, mask_to_rle(mask), (6, 4, 20, 12), 0.9, 1.0) for i in (2, 3)])
    return VideoTracks(height, width, 8.0, frames, list(range(frames)), [track])


def test_key_frames_are_uploaded_as_jpegs_and_a_video_that_is_gone_fails_alone(
    settings: Settings, s3: Any, bucket: str, tmp_path: Path
) -> None:
    shades = [np.full((32, 48, 3), 20 * i, dtype=np.uint8) for i in range(6)]
    s3.put_object(Bucket=bucket, Key="in/a.mp4", Body=write_video(tmp_path / "a.mp4", shades, fps=8).read_bytes())
    etag = s3.head_object(Bucket=bucket, Key="in/a.mp4")["ETag"].strip('"')
    here = Asset(id=1, bucket=bucket, key="in/a.mp4", etag=etag, size=0, media_type="video", sha256="aa" * 32)
    gone = Asset(id=2, bucket=bucket, key="in/gone.mp4", etag="x", size=1, media_type="video", sha256="bb" * 32)
    with Services(settings) as services:
        out = video_frame_items(services, [(here, _tracks(32, 48, 6), 0.5), (gone, _tracks(32, 48, 6), 0.5)], 4, "m")
    # every 4th frame (0, 4) and where track 7 starts (2) and ends (3); the lost video is named, not retried for ever
    assert [(i.asset_id, i.frame_index) for i in out.items] == [(1, 0), (1, 2), (1, 3), (1, 4)]
    assert out.video_frames == 2 and list(out.failed) == [2] and "in/gone.mp4" in out.failed[2] and not out.transient
    by_frame = {i.frame_index: i for i in out.items}
    assert [r["meta"]["track_id"] for r in by_frame[2].results] == [7] and by_frame[0].results == []
    assert by_frame[3].extra_data == {"maskloop_time_s": 3 / 8}
    for index in (0, 2, 3, 4):
        body = s3.get_object(Bucket=bucket, Key=frame_key(settings.frames_prefix, here, index))["Body"].read()
        with Image.open(io.BytesIO(body)) as image:
            assert image.size == (48, 32) and abs(float(np.asarray(image).mean()) - 20 * index) < 6
