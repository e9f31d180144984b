"""Video decoding with PyAV: probe metadata and stream upright RGB frames, optionally sampled.

Frames are decoded one at a time (never the whole clip in memory). The display matrix (phone rotation) is
honoured: frames come out upright and :class:`VideoInfo` reports the upright size. Anything FFmpeg cannot use
(no video stream, no frames, truncated/corrupt data) raises :class:`model.errors.BadMediaError` naming the file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import BadMediaError

logger = logging.getLogger(__name__)

TRUNCATION_TOLERANCE = 2
"""Frames a stream may fall short of its declared count before :func:`iter_frames` calls it truncated."""


@dataclass(frozen=True)
class VideoInfo:
    """Metadata of a video file. ``width``/``height`` are upright (after ``rotation``).

    ``rotation`` is the counter-clockwise angle (0/90/180/270) applied to decoded frames to make them upright.
    ``frame_count`` comes from the container header, or from counting packets when the header has none.
    """

    path: str
    width: int
    height: int
    fps: float
    frame_count: int
    duration_s: float
    rotation: int
    codec: str
    variable_frame_rate: bool = False

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"VideoInfo size must be positive, got {self.width}x{self.height}")
        if not self.fps > 0:
            raise ValueError(f"VideoInfo.fps must be > 0, got {self.fps}")
        if self.frame_count < 0:
            raise ValueError(f"VideoInfo.frame_count must be >= 0, got {self.frame_count}")
        if self.rotation not in (0, 90, 180, 270):
            raise ValueError(f"VideoInfo.rotation must be one of 0/90/180/270, got {self.rotation}")


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame: ``index`` counts decoded frames from 0 (source numbering, before sampling)."""

    index: int
    time_s: float
    rgb: np.ndarray  # (H, W, 3) uint8, upright

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"VideoFrame.index must be >= 0, got {self.index}")
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3 or self.rgb.dtype != np.uint8:
            raise ValueError(f"VideoFrame.rgb must be (H, W, 3) uint8, got {self.rgb.shape} {self.rgb.dtype}")

    def __iter__(self) -> Iterator[object]:
        """Unpack as ``(frame_index, time_s, rgb)``."""
        return iter((self.index, self.time_s, self.rgb))


def normalise_rotation(degrees: float) -> int:
    """Round a display-matrix angle to the nearest multiple of 90 in [0, 360)."""
    if not math.isfinite(degrees):
        return 0
    return int(round(degrees / 90.0)) % 4 * 90


def upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Rotate an (H, W, C) frame counter-clockwise by ``rotation`` degrees (multiple of 90)."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=k)) if k else rgb


def _open(path: str | Path):  # noqa: ANN202 - av container type
    import av

    name = str(path)
    if not Path(name).is_file():
        raise BadMediaError(name, "file does not exist")
    try:
        container = av.open(name, mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise BadMediaError(name, f"not a readable media file ({exc.__class__.__name__}: {exc})") from exc
    if not container.streams.video:
        kinds: list[str] = sorted({str(s.type) for s in container.streams}) or ["none"]
        container.close()
        raise BadMediaError(name, f"has no video stream (streams: {', '.join(kinds)})")
    return container


def _stream_fps(stream) -> float:  # noqa: ANN001
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and float(rate) > 0:
            return float(rate)
    return 0.0


def probe_video(path: str | Path) -> VideoInfo:
    """Read a video's metadata; decodes only the first frame (to validate it and read the display rotation)."""
    import av

    name = str(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        first = None
        try:
            for frame in container.decode(stream):
                first = frame
                break
        except av.error.FFmpegError as exc:
            raise BadMediaError(name, f"first video frame cannot be decoded ({exc})") from exc
        if first is None:
            raise BadMediaError(name, "video stream has no frames")
        rotation = normalise_rotation(float(first.rotation))
        fps = _stream_fps(stream)
        duration_s = _duration_s(container, stream)
        frame_count = int(stream.frames or 0)
        if frame_count <= 0:
            frame_count = _count_packets(name)
        if fps <= 0:
            fps = frame_count / duration_s if duration_s > 0 else 1.0
        if duration_s <= 0:
            duration_s = frame_count / fps
        vfr = _is_variable_rate(stream)
        w, h = int(first.width), int(first.height)
        if rotation in (90, 270):
            w, h = h, w
        return VideoInfo(
            path=name,
            width=w,
            height=h,
            fps=fps,
            frame_count=frame_count,
            duration_s=duration_s,
            rotation=rotation,
            codec=str(stream.codec_context.name),
            variable_frame_rate=vfr,
        )
    finally:
        container.close()


def _duration_s(container, stream) -> float:  # noqa: ANN001
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000.0
    return 0.0


def _is_variable_rate(stream) -> bool:  # noqa: ANN001
    avg, base = stream.average_rate, stream.base_rate
    if avg is None or base is None or float(base) <= 0:
        return False
    return abs(float(avg) - float(base)) / float(base) > 0.01


def _count_packets(name: str) -> int:
    import av

    with av.open(name) as container:
        stream = container.streams.video[0]
        try:
            return sum(1 for p in container.demux(stream) if p.size)
        except av.error.FFmpegError:
            return 0


def iter_frames(
    path: str | Path,
    every: int = 1,
    target_fps: float | None = None,
    max_frames: int | None = None,
    strict: bool = True,
) -> Iterator[VideoFrame]:
    """Stream upright RGB frames of ``path``.

    Args:
        every: keep every ``every``-th decoded frame (0, every, 2*every, ...).
        target_fps: instead of ``every``, keep frames so the kept rate is at most ``target_fps`` (time based, so
            variable-frame-rate files are sampled by their timestamps).
        max_frames: stop after this many kept frames.
        strict: after the last frame, raise if the container declared more frames than could be decoded (a
            truncated upload); a shortfall of up to :data:`TRUNCATION_TOLERANCE` frames is accepted (edit lists).

    Raises:
        BadMediaError: the file is missing, has no video stream, has no frames, or its data is corrupt/truncated
            (raised when it is found: after the frames decoded so far were yielded).
    """
    import av

    if every < 1:
        raise ValueError(f"iter_frames: every must be >= 1, got {every}")
    if target_fps is not None and not target_fps > 0:
        raise ValueError(f"iter_frames: target_fps must be > 0, got {target_fps}")
    name = str(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = _stream_fps(stream) or 30.0
        start = stream.start_time if stream.start_time is not None else 0
        step = 1.0 / target_fps if target_fps is not None else 0.0
        next_time = 0.0
        kept = 0
        index = -1
        try:
            for frame in container.decode(stream):
                index += 1
                if frame.pts is not None and frame.time_base is not None:
                    time_s = float((frame.pts - start) * frame.time_base)
                else:
                    time_s = index / fps
                if target_fps is not None:
                    if time_s + 1e-6 < next_time:
                        continue
                    next_time += step
                    while next_time <= time_s + 1e-6:
                        next_time += step
                elif index % every:
                    continue
                rgb = frame.to_ndarray(format="rgb24")
                yield VideoFrame(
                    index=index, time_s=time_s, rgb=upright(rgb, normalise_rotation(float(frame.rotation)))
                )
                kept += 1
                if max_frames is not None and kept >= max_frames:
                    return
        except av.error.FFmpegError as exc:
            raise BadMediaError(name, f"video data is corrupt after frame {index} ({exc})") from exc
        if index < 0:
            raise BadMediaError(name, "video stream has no frames")
        declared = int(stream.frames or 0)
        if strict and declared and index + 1 < declared - TRUNCATION_TOLERANCE:
            raise BadMediaError(name, f"truncated: decoded {index + 1} of the {declared} frames the container declares")
    finally:
        container.close()


def write_video(
    path: str | Path,
    frames: Any,
    fps: int = 10,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    times_s: Any = None,
) -> Path:
    """Encode (H, W, 3) uint8 frames with PyAV. ``rotation`` sets the display matrix (counter-clockwise degrees, as
    :attr:`av.VideoFrame.rotation` reads it back); ``times_s`` gives explicit presentation times (variable rate)."""
    from fractions import Fraction

    import av

    path = Path(path)
    frames = list(frames)
    with av.open(str(path), mode="w") as container:
        stream: Any = container.add_stream(codec, rate=fps)
        h, w = (frames[0].shape[:2]) if frames else (16, 16)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if times_s is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if times_s is not None:
                frame.pts = int(round(times_s[i] * 1000))
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
