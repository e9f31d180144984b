"""VideoTracks -> Label Studio image tasks for a video's key frames, with one brush mask per track (pure; the import
stage uses it through :mod:`storage.prelabel.frames`, which writes the frames' JPEGs and imports the tasks).

Open-source Label Studio has no video masks, so the masks a video was tracked with reach a person as image tasks of
the video's key frames: every ``every``-th sampled frame plus every frame where a track starts, ends or re-appears.
Each task's ``data`` links it to the video task (same ``maskloop_asset_id``) and says which frame it is
(``maskloop_frame_index``, source numbering) and when (``maskloop_time_s``, presentation time); each region carries
its track id in ``meta`` (``track_id``, and ``text`` that the editor shows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from model.masks import rle_to_mask
from model.tracks import TrackFrame, VideoTracks
from storage.labelstudio.brush import mask_to_brush_rle

ASSET_KEY, FRAME_KEY, TIME_KEY = "maskloop_asset_id", "maskloop_frame_index", "maskloop_time_s"


@dataclass(frozen=True)
class FrameTask:
    """One key frame as a Label Studio image task: ``data`` and the prediction ``results``."""

    frame_index: int
    time_s: float
    data: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)


def task_key_frames(tracks: VideoTracks, every: int) -> list[int]:
    """Source indices of the frames to show: every ``every``-th sampled frame (from the first) and, per track, the
    sampled frames where it starts, re-appears after a gap, or is seen for the last time before a gap or the end."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    sampled = list(tracks.sampled_frames)
    keys = set(sampled[::every])
    for track in tracks.tracks:
        visible = {f.frame_index for f in track.frames}
        for i, index in enumerate(sampled):
            if index not in visible:
                continue
            before = sampled[i - 1] if i > 0 else None
            after = sampled[i + 1] if i + 1 < len(sampled) else None
            if before is None or before not in visible or after is None or after not in visible:
                keys.add(index)
    unknown = {f.frame_index for t in tracks.tracks for f in t.frames} - set(sampled)
    if unknown:
        raise ValueError(f"track frames {sorted(unknown)[:5]} are not sampled frames of the video")
    return sorted(keys)


def _region(track_id: int, label: str, frame: TrackFrame, tracks: VideoTracks, from_name: str, to_name: str) -> dict:
    mask = rle_to_mask(frame.rle)
    if mask.shape != (tracks.height, tracks.width):
        raise ValueError(
            f"track {track_id} frame {frame.frame_index}: mask is {mask.shape}, the video is "
            f"{(tracks.height, tracks.width)}"
        )
    return {
        "id": f"track-{track_id}-f{frame.frame_index}",
        "type": "brushlabels",
        "from_name": from_name,
        "to_name": to_name,
        "original_width": tracks.width,
        "original_height": tracks.height,
        "image_rotation": 0,
        "score": float(frame.score),
        "value": {"format": "rle", "rle": mask_to_brush_rle(mask), "brushlabels": [label]},
        "meta": {"track_id": track_id, "text": [f"track {track_id}"]},
    }


def frame_tasks(
    tracks: VideoTracks,
    asset_id: int,
    frame_url: Callable[[int], str],
    every: int = 10,
    *,
    data_key: str = "image",
    from_name: str = "brush",
    to_name: str = "image",
) -> list[FrameTask]:
    """One :class:`FrameTask` per key frame (:func:`task_key_frames`): ``frame_url(index)`` is where the frame's
    image is served; every track visible on the frame becomes one brush region (frames without a visible track
    still get a task, empty, so a person can add what the model missed)."""
    by_frame: dict[int, list[tuple[int, str, TrackFrame]]] = {}
    times: dict[int, float] = {}
    for track in tracks.tracks:
        for f in track.frames:
            by_frame.setdefault(f.frame_index, []).append((track.track_id, track.label, f))
            times[f.frame_index] = f.time_s
    tasks = []
    for index in task_key_frames(tracks, every):
        time_s = times.get(index, index / tracks.fps)
        results = [_region(tid, label, f, tracks, from_name, to_name) for tid, label, f in by_frame.get(index, [])]
        data = {data_key: frame_url(index), ASSET_KEY: asset_id, FRAME_KEY: index, TIME_KEY: time_s}
        tasks.append(FrameTask(index, time_s, data, results))
    return tasks
