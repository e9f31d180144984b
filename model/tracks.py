"""Video tracking results: per object a track (frame index -> mask RLE, box, score) plus lineage.

The video counterpart of :class:`model.instances.Instances`; converters to external formats live in ``storage/``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from model.instances import Prompt
from model.masks import RLE


@dataclass(frozen=True)
class TrackFrame:
    """One object in one (sampled) frame. ``box`` is xyxy in pixels of the original (rotated-upright) frame."""

    frame_index: int
    time_s: float
    rle: RLE
    box: tuple[float, float, float, float]
    score: float  # predicted IoU
    presence: float  # object-presence probability (0..1)

    def __post_init__(self) -> None:
        if self.frame_index < 0:
            raise ValueError(f"TrackFrame.frame_index must be >= 0, got {self.frame_index}")
        if len(self.box) != 4 or self.box[2] < self.box[0] or self.box[3] < self.box[1]:
            raise ValueError(f"TrackFrame.box must be xyxy with x2 >= x1, y2 >= y1, got {self.box}")


@dataclass
class Track:
    """One object followed through a clip; ``frames`` is sorted by frame index."""

    track_id: int
    label: str
    frames: list[TrackFrame] = field(default_factory=list)
    prompts: list[Prompt] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.label:
            raise ValueError("Track.label must be a non-empty string")
        indices = [f.frame_index for f in self.frames]
        if indices != sorted(set(indices)):
            raise ValueError(
                f"Track {self.track_id}: frames must have strictly increasing frame_index, got {indices[:10]}"
            )


@dataclass
class VideoTracks:
    """All tracks of one video. ``height``/``width`` are the upright frame size; ``fps`` the source frame rate."""

    height: int
    width: int
    fps: float
    frame_count: int
    sampled_frames: list[int]
    tracks: list[Track]
    model_id: str = ""
    key_frames: list[int] = field(default_factory=list)
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"VideoTracks size must be positive, got {self.height}x{self.width}")
        ids = [t.track_id for t in self.tracks]
        if len(ids) != len(set(ids)):
            raise ValueError(f"VideoTracks track ids must be unique, got {ids}")

    def track(self, track_id: int) -> Track:
        for t in self.tracks:
            if t.track_id == track_id:
                return t
        raise KeyError(track_id)

    @staticmethod
    def frames_of(tracks: Sequence[Track]) -> list[int]:
        return sorted({f.frame_index for t in tracks for f in t.frames})


def tracks_to_json(video: VideoTracks) -> dict[str, Any]:
    """A JSON-serialisable form of ``video`` (what the catalog stores for a video prediction)."""
    return {
        "height": video.height,
        "width": video.width,
        "fps": video.fps,
        "frame_count": video.frame_count,
        "sampled_frames": list(video.sampled_frames),
        "model_id": video.model_id,
        "key_frames": list(video.key_frames),
        "params": dict(video.params),
        "tracks": [
            {
                "track_id": t.track_id,
                "label": t.label,
                "prompts": [p.to_json() for p in t.prompts],
                "frames": [
                    {
                        "i": f.frame_index,
                        "t": f.time_s,
                        "rle": f.rle,
                        "box": list(f.box),
                        "score": f.score,
                        "presence": f.presence,
                    }
                    for f in t.frames
                ],
            }
            for t in video.tracks
        ],
    }


def _box4(values: Sequence[Any]) -> tuple[float, float, float, float]:
    box = tuple(float(v) for v in values)
    if len(box) != 4:
        raise ValueError(f"TrackFrame.box must be xyxy with x2 >= x1, y2 >= y1, got {box}")
    return box


def tracks_from_json(data: Mapping[str, Any]) -> VideoTracks:
    """Inverse of :func:`tracks_to_json`."""
    return VideoTracks(
        height=int(data["height"]),
        width=int(data["width"]),
        fps=float(data["fps"]),
        frame_count=int(data["frame_count"]),
        sampled_frames=[int(i) for i in data["sampled_frames"]],
        model_id=str(data.get("model_id", "")),
        key_frames=[int(i) for i in data.get("key_frames", [])],
        params=dict(data.get("params", {})),
        tracks=[
            Track(
                track_id=int(t["track_id"]),
                label=str(t["label"]),
                prompts=[Prompt.from_json(p) for p in t.get("prompts", [])],
                frames=[
                    TrackFrame(
                        int(f["i"]),
                        float(f["t"]),
                        dict(f["rle"]),
                        _box4(f["box"]),
                        float(f["score"]),
                        float(f["presence"]),
                    )
                    for f in t["frames"]
                ],
            )
            for t in data["tracks"]
        ],
    )
