"""VideoTracks -> Label Studio ``videorectangle`` results (one region per track, keyframes per visible frame).

Label Studio's convention (also used by its ML backends): ``frame`` is 1-based, boxes are percent of the frame,
``enabled`` false on a keyframe ends the region's lifespan there, so the last visible keyframe before a gap (and the
track's last keyframe, unless the object is still visible on the clip's last sampled frame) has ``enabled`` false.
"""

from __future__ import annotations

from typing import Any

from model.tracks import Track, VideoTracks


def track_to_sequence(track: Track, tracks: VideoTracks) -> list[dict[str, Any]]:
    """Keyframes of one track; a keyframe is disabled when the object is not visible on the next sampled frame."""
    sampled = list(tracks.sampled_frames)
    next_sampled = {f: sampled[i + 1] for i, f in enumerate(sampled[:-1])}
    visible = {tf.frame_index for tf in track.frames}
    sequence = []
    for tf in track.frames:
        x1, y1, x2, y2 = tf.box
        nxt = next_sampled.get(tf.frame_index)
        sequence.append(
            {
                "frame": tf.frame_index + 1,
                "enabled": nxt is not None and nxt in visible,
                "rotation": 0,
                "x": 100.0 * x1 / tracks.width,
                "y": 100.0 * y1 / tracks.height,
                "width": 100.0 * (x2 - x1) / tracks.width,
                "height": 100.0 * (y2 - y1) / tracks.height,
                "time": tf.frame_index / tracks.fps,
            }
        )
    if sequence and track.frames[-1].frame_index == sampled[-1]:
        sequence[-1]["enabled"] = True  # still visible at the end of the clip
    return sequence


def to_ls_video_results(
    tracks: VideoTracks, from_name: str = "box", to_name: str = "video", label_key: str = "labels"
) -> list[dict[str, Any]]:
    """Label Studio prediction ``result`` list: one ``videorectangle`` per track with at least one visible frame.

    ``label_key`` is the value key for the label (``labels`` for a <Labels> tag controlling the video).
    """
    frames_count = tracks.frame_count or (max(tracks.sampled_frames, default=-1) + 1)
    results = []
    for track in tracks.tracks:
        if not track.frames:
            continue
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
                    "duration": frames_count / tracks.fps,
                    "sequence": track_to_sequence(track, tracks),
                    label_key: [track.label],
                },
            }
        )
    return results
