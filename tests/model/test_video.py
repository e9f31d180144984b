"""Decoding: metadata, sampling, rotation, and bad media (all test videos are generated here with PyAV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.errors import BadMediaError
from model.video import iter_frames, normalise_rotation, probe_video, upright, write_video
from tests.support.media import write_audio_only

BEDROOM = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sam2_notebooks" / "videos" / "bedroom.mp4"


def _frames(n: int, h: int = 48, w: int = 64) -> list[np.ndarray]:
    out = []
    for i in range(n):
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[:8, :16] = 255  # a white patch in the top-left corner marks orientation
        rgb[..., 2] = (i * 20) % 256
        out.append(rgb)
    return out


def test_bedroom_decodes_to_200_frames_of_960x540() -> None:
    info = probe_video(BEDROOM)
    assert (info.width, info.height, info.frame_count, info.rotation) == (960, 540, 200, 0)
    assert info.fps == pytest.approx(30.0)
    assert info.duration_s == pytest.approx(200 / 30, abs=0.05)
    count = 0
    for frame in iter_frames(BEDROOM):
        assert frame.rgb.shape == (540, 960, 3) and frame.rgb.dtype == np.uint8
        count += 1
    assert count == 200


def test_every_kth_frame_keeps_source_indices_and_times(tmp_path: Path) -> None:
    path = write_video(tmp_path / "c.mp4", _frames(20), fps=10)
    frames = list(iter_frames(path, every=3))
    assert [f.index for f in frames] == [0, 3, 6, 9, 12, 15, 18]
    assert [f.time_s for f in frames] == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 1.8])
    index, time_s, rgb = frames[1]
    assert (index, rgb.shape) == (3, (48, 64, 3))


def test_target_fps_samples_by_timestamp(tmp_path: Path) -> None:
    path = write_video(tmp_path / "c.mp4", _frames(20), fps=10)
    frames = list(iter_frames(path, target_fps=2.5))
    assert [f.index for f in frames] == [0, 4, 8, 12, 16]


def test_variable_frame_rate_times_come_from_timestamps(tmp_path: Path) -> None:
    times = [0.0, 0.1, 0.15, 0.5, 0.55, 1.2]
    path = write_video(tmp_path / "vfr.mp4", _frames(len(times)), fps=10, times_s=times)
    frames = list(iter_frames(path))
    assert [f.time_s for f in frames] == pytest.approx(times, abs=2e-3)
    assert probe_video(path).variable_frame_rate
    assert [f.index for f in iter_frames(path, target_fps=2)] == [0, 3, 5]


def test_max_frames_stops_early(tmp_path: Path) -> None:
    path = write_video(tmp_path / "c.mp4", _frames(10))
    assert len(list(iter_frames(path, max_frames=4))) == 4


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_phone_video_comes_out_upright(tmp_path: Path, rotation: int) -> None:
    raw = _frames(3)
    path = write_video(tmp_path / "r.mp4", raw, rotation=rotation)
    info = probe_video(path)
    expected = upright(raw[0], rotation)
    assert info.rotation == rotation
    assert (info.height, info.width) == expected.shape[:2]
    first = next(iter(iter_frames(path))).rgb
    assert first.shape == expected.shape
    white = first.min(axis=2) > 200
    assert np.mean(white == (expected.min(axis=2) > 200)) > 0.97  # the marker is in the rotated corner


def test_odd_sized_video_keeps_its_size(tmp_path: Path) -> None:
    path = write_video(tmp_path / "odd.mkv", _frames(3, 479, 853), codec="ffv1", pix_fmt="yuv444p")
    info = probe_video(path)
    assert (info.width, info.height) == (853, 479)
    assert all(f.rgb.shape == (479, 853, 3) for f in iter_frames(path))


@pytest.mark.parametrize(
    ("degrees", "expected"), [(0.0, 0), (90.0, 90), (-90.0, 270), (180.0, 180), (-180.0, 180), (89.6, 90)]
)
def test_normalise_rotation_table(degrees: float, expected: int) -> None:
    assert normalise_rotation(degrees) == expected


def test_audio_only_file_is_bad_media(tmp_path: Path) -> None:
    path = write_audio_only(tmp_path / "a.m4a")
    with pytest.raises(BadMediaError, match="no video stream"):
        probe_video(path)
    with pytest.raises(BadMediaError, match="no video stream"):
        list(iter_frames(path))


def test_zero_frame_video_is_bad_media(tmp_path: Path) -> None:
    path = write_video(tmp_path / "empty.mp4", [])
    with pytest.raises(BadMediaError):
        probe_video(path)
    with pytest.raises(BadMediaError):
        list(iter_frames(path))


def test_truncated_mp4_is_bad_media(tmp_path: Path) -> None:
    good = write_video(tmp_path / "good.mp4", _frames(10)).read_bytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(BadMediaError) as err:
        probe_video(bad)
    assert err.value.name == str(bad)


def test_truncated_faststart_mp4_fails_after_the_decodable_frames(tmp_path: Path) -> None:
    import av

    path = tmp_path / "fs.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:  # index first, then data
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(30):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert probe_video(path).frame_count == 30  # the index survives, the data does not
    seen = []
    with pytest.raises(BadMediaError, match="truncated: decoded"):
        for frame in iter_frames(path):
            seen.append(frame.index)
    assert 0 < len(seen) < 30
    assert len(list(iter_frames(path, strict=False))) == len(seen)


def test_garbage_bytes_and_missing_file_are_bad_media(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    with pytest.raises(BadMediaError):
        probe_video(junk)
    with pytest.raises(BadMediaError, match="does not exist"):
        list(iter_frames(tmp_path / "missing.mp4"))


@pytest.mark.parametrize(("every", "target_fps"), [(0, None), (1, 0.0), (1, -2.0)])
def test_invalid_sampling_arguments_are_rejected(tmp_path: Path, every: int, target_fps: float | None) -> None:
    path = write_video(tmp_path / "c.mp4", _frames(2))
    with pytest.raises(ValueError):
        list(iter_frames(path, every=every, target_fps=target_fps))
