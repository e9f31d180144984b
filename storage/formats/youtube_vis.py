"""YouTube-VIS video instances (one annotation per track, per-frame lists): from a model's VideoTracks
(:func:`to_youtube_vis`), and the ``youtube-vis`` exporter of a dataset version (:func:`write_youtube_vis`), whose
tracks are the version's merged video views (:mod:`storage.formats.video_tracks_merge`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from model.errors import MaskloopError
from model.masks import rle_area
from model.tracks import VideoTracks
from storage.formats.exporter import ExportedFile, ExportSource


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


# -- the ``youtube-vis`` exporter: a version's frozen COCO -> one YouTube-VIS document ---------------------------
YTVIS_FILE = "ytvis.json"
FRAMES_DIR = "JPEGImages"  # YouTube-VIS keeps frames as JPEGImages/<video>/<frame>.jpg; maskloop does not write them


class NoVideosToExportError(MaskloopError, ValueError):
    """A version without video frames exported as YouTube-VIS."""


class VersionWithoutTracksError(MaskloopError, ValueError):
    """A version frozen before video annotations kept their track ids."""


def _video_name(file_name: str) -> str:
    return file_name.split("#frame=", 1)[0]


def coco_to_youtube_vis(coco: Mapping[str, Any]) -> dict[str, Any]:
    """The YouTube-VIS document of a version's COCO (as :func:`storage.formats.export_layout.plan_export` names it):
    one ``videos`` entry per video asset (``file_names`` ``<video file>/<frame:05d>.jpg`` of its listed source
    frames, ``length``, ``width``, ``height``, ``maskloop_frame_indices``, ``maskloop_asset_id``,
    ``maskloop_s3_uri``, ``maskloop_sha256``), the version's ``categories``, and one annotation per track with one
    entry per listed frame in ``segmentations`` (compressed RLE; None where the track is absent or known only as
    a box), ``bboxes`` (``[x, y, w, h]``, None where absent), ``areas`` (mask pixels, the box's area where box-only,
    None where absent), ``maskloop_box_only`` (True where only the box is known) and ``maskloop_track_id``.

    Images (not video frames) are left out. Raises :class:`NoVideosToExportError` when there is no video and
    :class:`VersionWithoutTracksError` for a video annotation without ``maskloop_track_id``."""
    from storage.formats.coco import load_coco

    frames_of: dict[int, list[Mapping[str, Any]]] = {}
    for image in coco.get("images", []):
        if int(image.get("maskloop_frame_index", -1)) >= 0:
            frames_of.setdefault(int(image["maskloop_asset_id"]), []).append(image)
    if not frames_of:
        raise NoVideosToExportError(
            "this version has no video frames; YouTube-VIS holds videos only (export it as coco or yolo-seg)"
        )
    index = load_coco(coco)
    videos: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for video_id, (asset_id, images) in enumerate(sorted(frames_of.items()), start=1):
        images = sorted(images, key=lambda i: int(i["maskloop_frame_index"]))
        first = images[0]
        name = _video_name(str(first["file_name"]))
        height, width, length = int(first["height"]), int(first["width"]), len(images)
        frames = [int(i["maskloop_frame_index"]) for i in images]
        videos.append(
            {
                "id": video_id,
                "width": width,
                "height": height,
                "length": length,
                "file_names": [f"{name}/{f:05d}.jpg" for f in frames],
                "maskloop_frame_indices": frames,
                "maskloop_asset_id": asset_id,
                "maskloop_s3_uri": first.get("maskloop_s3_uri", name),
                "maskloop_sha256": first.get("maskloop_sha256"),
            }
        )
        tracks: dict[int, dict[str, Any]] = {}
        for position, image in enumerate(images):
            for ann in index.loadAnns(index.getAnnIds(imgIds=[image["id"]])):
                if ann.get("maskloop_track_id") is None:
                    raise VersionWithoutTracksError(
                        f"{name} frame {image['maskloop_frame_index']}: annotation {ann['id']} has no track id (the "
                        "version was frozen before tracks were kept); harvest the project again with --full and "
                        "create a new version"
                    )
                tid = int(ann["maskloop_track_id"])
                track = tracks.setdefault(
                    tid,
                    {
                        "category_id": int(ann["category_id"]),
                        "segmentations": [None] * length,
                        "bboxes": [None] * length,
                        "areas": [None] * length,
                        "maskloop_box_only": [None] * length,
                    },
                )
                box_only = bool(ann.get("maskloop_box_only"))
                if box_only:
                    track["areas"][position] = float(ann["area"])
                else:
                    rle = index.annToRLE(ann)
                    counts = rle["counts"]
                    track["segmentations"][position] = {
                        "size": [int(v) for v in rle["size"]],
                        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
                    }
                    track["areas"][position] = float(ann["area"])
                track["bboxes"][position] = [float(v) for v in ann["bbox"]]
                track["maskloop_box_only"][position] = box_only
        for tid in sorted(tracks):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "video_id": video_id,
                    "iscrowd": 0,
                    "height": height,
                    "width": width,
                    "length": 1,
                    "maskloop_track_id": tid,
                    **tracks[tid],
                }
            )
    return {
        "info": dict(coco.get("info") or {}),
        "licenses": [],
        "videos": videos,
        "categories": [dict(c) for c in coco.get("categories", [])],
        "annotations": annotations,
    }


def validate_youtube_vis(data: Mapping[str, Any]) -> None:
    """Check a YouTube-VIS document: per-frame lists as long as the video, known categories, and every frame's
    segmentation decoding with pycocotools to a non-empty mask of the video's size whose area is the stored one.
    Raises ``ValueError`` naming the first bad entry."""
    from pycocotools import mask as mask_utils

    videos = {v["id"]: v for v in data.get("videos", [])}
    categories = {c["id"] for c in data.get("categories", [])}
    for video in videos.values():
        if len(video["file_names"]) != video["length"]:
            raise ValueError(f"video {video['id']}: {len(video['file_names'])} file names for length {video['length']}")
    for ann in data.get("annotations", []):
        video = videos.get(ann["video_id"])
        if video is None:
            raise ValueError(f"annotation {ann['id']} refers to missing video {ann['video_id']}")
        if ann["category_id"] not in categories:
            raise ValueError(f"annotation {ann['id']} has unknown category {ann['category_id']}")
        for key in ("segmentations", "bboxes", "areas"):
            if len(ann[key]) != video["length"]:
                raise ValueError(f"annotation {ann['id']}: {len(ann[key])} {key} for {video['length']} frames")
        for i, seg in enumerate(ann["segmentations"]):
            if seg is None:
                continue
            mask = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode("ascii")})
            if mask.shape != (video["height"], video["width"]) or not mask.any():
                raise ValueError(f"annotation {ann['id']} frame {i}: mask is {mask.shape}, empty or of another size")
            if int(mask.sum()) != round(float(ann["areas"][i])):
                raise ValueError(f"annotation {ann['id']} frame {i}: area {ann['areas'][i]} but {int(mask.sum())} px")
            if ann["bboxes"][i] is None:
                raise ValueError(f"annotation {ann['id']} frame {i}: a mask without a box")


def write_youtube_vis(source: ExportSource, out_dir: Path) -> list[ExportedFile]:
    """The exporter of the table's ``youtube-vis`` row: ``ytvis.json`` from the version's frozen COCO
    (:func:`coco_to_youtube_vis`), validated after reading the written file back. Frame images are not written."""
    if source.coco is None:
        raise ValueError(f"the YouTube-VIS exporter reads a version's frozen COCO, and none was given for {out_dir}")
    document = coco_to_youtube_vis(source.coco)
    path = out_dir / YTVIS_FILE
    path.write_text(json.dumps(document))
    validate_youtube_vis(json.loads(path.read_text()))
    images = sum(1 for i in source.coco.get("images", []) if int(i.get("maskloop_frame_index", -1)) < 0)
    frames = sum(v["length"] for v in document["videos"])
    masks = sum(s is not None for a in document["annotations"] for s in a["segmentations"])
    boxes = sum(b is not None for a in document["annotations"] for b in a["bboxes"]) - masks
    summary = (
        f"YouTube-VIS: {len(document['videos'])} videos, {frames} frames, {len(document['annotations'])} tracks, "
        f"{masks} masks, {boxes} box-only; frame images not written ({FRAMES_DIR}/<video>/<frame>.jpg)"
    )
    if images:
        summary += f"; {images} images left out (YouTube-VIS holds videos only)"
    return [ExportedFile(YTVIS_FILE, summary)]
