"""VideoTracks -> Label Studio ``videorectangle`` results (one region per track, keyframes placed by time).

Label Studio counts a video in frames of the project's rate: the labeling config's ``<Video framerate="R">`` is one
number for every task of the project, whatever the files' own rates. Its editor shows 1-based frame ``n`` at
``(n - 1) / R`` seconds and draws a box between two keyframes by linear interpolation of their frame numbers
(``VideoRectangleRegion.getShape``), so the keyframes must be written in the project's frames.

**Policy** (stated in the README's video section): a tracked frame presented at ``t`` seconds (its decoded
timestamp from the start of the stream: constant or variable rate, any ``--video-every`` / ``--video-fps``
sampling) becomes project frame ``round(t * R) + 1``. When several tracked frames land on one project frame (a
source faster than the project), the one nearest in time to that frame is kept. ``enabled`` false on a keyframe
ends the region's lifespan there: the last visible keyframe before a gap (and the track's last keyframe, unless the
object is still visible on the clip's last sampled frame) has ``enabled`` false. Boxes are percent of the frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from model.tracks import Track, VideoTracks

DEFAULT_FRAMERATE = 25.0
"""The frame rate of a video project whose labeling config does not say (``video_label_config``'s default)."""


def project_frame(time_s: float, framerate: float) -> int:
    """The 1-based Label Studio frame that shows presentation time ``time_s`` in a project at ``framerate``."""
    if not framerate > 0:
        raise ValueError(f"Label Studio framerate must be > 0, got {framerate}")
    if not math.isfinite(time_s) or time_s < 0:
        raise ValueError(f"frame time must be a finite number of seconds >= 0, got {time_s}")
    return int(math.floor(time_s * framerate + 0.5 + 1e-9)) + 1


@dataclass(frozen=True)
class Keyframe:
    """One keyframe in project frames: ``frame`` 1-based, ``box`` xyxy pixels, ``enabled`` continues the region."""

    frame: int
    time_s: float
    box: tuple[float, float, float, float]
    enabled: bool


def project_keyframes(track: Track, sampled_frames: Sequence[int], framerate: float) -> list[Keyframe]:
    """The keyframes of ``track`` in a project at ``framerate`` (see the module's policy).

    ``sampled_frames`` are the source frame indices the tracker looked at, in order: a keyframe stays enabled when
    the object is visible on the next sampled frame too."""
    sampled = list(sampled_frames)
    next_sampled = {f: sampled[i + 1] for i, f in enumerate(sampled[:-1])}
    visible = {tf.frame_index for tf in track.frames}
    last_sampled = sampled[-1] if sampled else None
    keys: list[Keyframe] = []
    for tf in track.frames:
        nxt = next_sampled.get(tf.frame_index)
        enabled = (nxt is not None and nxt in visible) or tf.frame_index == last_sampled
        frame = project_frame(tf.time_s, framerate)
        key = Keyframe(frame, tf.time_s, tf.box, enabled)
        if keys and keys[-1].frame == frame:  # a faster source: keep the frame nearest the project frame's time
            at = (frame - 1) / framerate
            previous = keys[-1]
            nearest = key if abs(tf.time_s - at) < abs(previous.time_s - at) else previous
            keys[-1] = Keyframe(frame, nearest.time_s, nearest.box, enabled)  # the later frame says what follows
        elif keys and frame < keys[-1].frame:
            raise ValueError(
                f"track {track.track_id}: frame {tf.frame_index} at {tf.time_s:.3f} s comes before the previous "
                f"keyframe's time {keys[-1].time_s:.3f} s; frame times must increase with the frame index"
            )
        else:
            keys.append(key)
    return keys


def track_to_sequence(track: Track, tracks: VideoTracks, framerate: float = DEFAULT_FRAMERATE) -> list[dict[str, Any]]:
    """Label Studio ``sequence`` of one track in a project at ``framerate``."""
    sequence = []
    for key in project_keyframes(track, tracks.sampled_frames, framerate):
        x1, y1, x2, y2 = key.box
        sequence.append(
            {
                "frame": key.frame,
                "enabled": key.enabled,
                "rotation": 0,
                "x": 100.0 * x1 / tracks.width,
                "y": 100.0 * y1 / tracks.height,
                "width": 100.0 * (x2 - x1) / tracks.width,
                "height": 100.0 * (y2 - y1) / tracks.height,
                "time": (key.frame - 1) / framerate,  # as the editor writes it: the project frame's own time
            }
        )
    return sequence


def video_duration_s(tracks: VideoTracks) -> float:
    """The clip's duration: the decoder's when known, else frame count over the source rate."""
    if tracks.duration_s > 0:
        return tracks.duration_s
    frames = tracks.frame_count or (max(tracks.sampled_frames, default=-1) + 1)
    return frames / tracks.fps


def to_ls_video_results(
    tracks: VideoTracks,
    from_name: str = "box",
    to_name: str = "video",
    label_key: str = "labels",
    framerate: float = DEFAULT_FRAMERATE,
) -> list[dict[str, Any]]:
    """Label Studio prediction ``result`` list: one ``videorectangle`` per track with at least one visible frame,
    its keyframes in frames of the project's ``framerate`` (the ``<Video framerate>`` of its labeling config).

    ``label_key`` is the value key for the label (``labels`` for a <Labels> tag controlling the video).
    """
    duration = video_duration_s(tracks)
    results = []
    for track in tracks.tracks:
        if not track.frames:
            continue
        sequence = track_to_sequence(track, tracks, framerate)
        frames_count = max(round(duration * framerate), max(k["frame"] for k in sequence))
        scores = [tf.score for tf in track.frames]
        results.append(
            {
                "id": f"track-{track.track_id}",
                "from_name": from_name,
                "to_name": to_name,
                "type": "videorectangle",
                "origin": "prediction",
                "score": float(sum(scores) / len(scores)),
                "value": {
                    "framesCount": frames_count,
                    "duration": duration,
                    "sequence": sequence,
                    label_key: [track.label],
                },
            }
        )
    return results
