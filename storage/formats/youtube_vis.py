"""VideoTracks -> YouTube-VIS style COCO video instances (one annotation per track, per-frame lists)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from model.masks import rle_area
from model.tracks import VideoTracks


def categories_for(tracks: VideoTracks) -> dict[str, int]:
    """Category ids 1..K for the track labels, in sorted order."""
    return {name: i for i, name in enumerate(sorted({t.label for t in tracks.tracks}), start=1)}


def to_youtube_vis(
    tracks: VideoTracks,
    video_name: str,
    video_id: int = 1,
    categories: Mapping[str, int] | None = None,
    first_annotation_id: int = 1,
) -> dict[str, Any]:
    """One video's YouTube-VIS dict: ``videos`` (file_names of the sampled frames, ``length``), ``categories``,
    ``annotations`` whose ``segmentations``/``bboxes``/``areas`` have one entry per sampled frame (``None`` where
    the object is not visible). Boxes are COCO ``[x, y, w, h]``; masks compressed RLE.

    ``categories`` (label -> id) must cover every track label; by default :func:`categories_for`.
    """
    if not video_name:
        raise ValueError("to_youtube_vis: video_name must be non-empty")
    cats = dict(categories) if categories is not None else categories_for(tracks)
    missing = sorted({t.label for t in tracks.tracks} - set(cats))
    if missing:
        raise ValueError(f"to_youtube_vis: categories lack labels {missing}")
    frames = list(tracks.sampled_frames)
    position = {f: i for i, f in enumerate(frames)}
    annotations = []
    for k, track in enumerate(tracks.tracks):
        segs: list[Any] = [None] * len(frames)
        boxes: list[Any] = [None] * len(frames)
        areas: list[Any] = [None] * len(frames)
        for tf in track.frames:
            if tf.frame_index not in position:
                raise ValueError(f"track {track.track_id} has frame {tf.frame_index} that is not a sampled frame")
            i = position[tf.frame_index]
            x1, y1, x2, y2 = tf.box
            segs[i] = {"size": list(tf.rle["size"]), "counts": tf.rle["counts"]}
            boxes[i] = [x1, y1, x2 - x1, y2 - y1]
            areas[i] = rle_area(tf.rle)
        scores = [tf.score for tf in track.frames]
        annotations.append(
            {
                "id": first_annotation_id + k,
                "video_id": video_id,
                "category_id": cats[track.label],
                "track_id": track.track_id,
                "iscrowd": 0,
                "height": tracks.height,
                "width": tracks.width,
                "length": 1,
                "segmentations": segs,
                "bboxes": boxes,
                "areas": areas,
                "score": float(sum(scores) / len(scores)) if scores else 0.0,
            }
        )
    video = {
        "id": video_id,
        "width": tracks.width,
        "height": tracks.height,
        "length": len(frames),
        "fps": tracks.fps,
        "file_names": [f"{video_name}/{f:05d}.jpg" for f in frames],
        "frame_indices": frames,
    }
    return {
        "videos": [video],
        "categories": [{"id": i, "name": name} for name, i in sorted(cats.items(), key=lambda kv: kv[1])],
        "annotations": annotations,
    }
