"""Video tracking results: per object a track (frame index -> mask RLE, box, score) plus lineage.

The video counterpart of :class:`model.instances.Instances`; converters to external formats live in ``storage/``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.instances import Prompt
from model.masks import RLE, rle_to_mask


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
    """All tracks of one video. ``height``/``width`` are the upright frame size; ``fps`` the source frame rate;
    ``duration_s`` the decoder's duration (0: unknown). Frame times (``TrackFrame.time_s``) are presentation times
    from the start of the stream, so they stay right for variable-frame-rate files and sampled frames."""

    height: int
    width: int
    fps: float
    frame_count: int
    sampled_frames: list[int]
    tracks: list[Track]
    model_id: str = ""
    key_frames: list[int] = field(default_factory=list)
    params: Mapping[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0

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
        "duration_s": video.duration_s,
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
        duration_s=float(data.get("duration_s", 0.0)),
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


@dataclass(frozen=True)
class ObjectScore:
    """How one ground-truth object was tracked: ``frames`` it is visible on, ``covered`` of them with a track mask at
    IoU >= the threshold, ``j`` the mean IoU of its main track (the one covering it most) over all its frames (0 where
    that track is absent), ``id_switches`` how often the covering track id changes between covered frames."""

    frames: int
    covered: int
    j: float
    id_switches: int
    main_track: int | None

    @property
    def coverage(self) -> float:
        return self.covered / self.frames if self.frames else 1.0


def score_tracks(video: VideoTracks, gt: Any, frame_indices: Sequence[int], iou: float = 0.5) -> list[ObjectScore]:
    """Score ``video`` against ground truth ``gt`` (T, N, H, W) bool: object n's mask on source frame
    ``frame_indices[t]``. Objects empty on every listed frame are skipped."""
    masks = np.asarray(gt, bool)
    if masks.ndim != 4 or masks.shape[0] != len(frame_indices):
        raise ValueError(f"gt must be (T, N, H, W) with T = {len(frame_indices)} frames, got {masks.shape}")
    by_frame: dict[int, list[tuple[int, Any]]] = {}
    for track in video.tracks:
        for f in track.frames:
            by_frame.setdefault(f.frame_index, []).append((track.track_id, f))
    scores = []
    for n in range(masks.shape[1]):
        ious: list[dict[int, float]] = []
        for t, index in enumerate(frame_indices):
            g = masks[t, n]
            if not g.any():
                continue
            row = {}
            for track_id, f in by_frame.get(index, []):
                m = rle_to_mask(f.rle)
                union = int((m | g).sum())
                row[track_id] = int((m & g).sum()) / union if union else 0.0
            ious.append(row)
        if not ious:
            continue
        best = [max(row.items(), key=lambda kv: kv[1]) if row else (None, 0.0) for row in ious]
        hits = [tid for tid, v in best if tid is not None and v >= iou]
        main = max(set(hits), key=hits.count) if hits else None
        j = sum(row.get(main, 0.0) for row in ious) / len(ious) if main is not None else 0.0
        switches = sum(1 for a, b in zip(hits, hits[1:], strict=False) if a != b)
        scores.append(ObjectScore(len(ious), len(hits), j, switches, main))
    return scores
