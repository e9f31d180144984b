"""The second view of a video: its key frames as image tasks with brush masks (open-source Label Studio has no video
masks, so this is where a person corrects SAM 2's tracked masks).

For each imported video with tracks, the key frames (:func:`storage.formats.ls_frames.task_key_frames`: every k-th
sampled frame and every frame where a track starts, ends or re-appears) are decoded from the download cache (fetched
again when the cache lost the file), written as JPEGs to ``<settings.frames_prefix>/<video sha256>/<frame:06d>.jpg``
in the video's bucket (same key on a rerun: idempotent) and imported into ``<project> (video frames)``, one task per
(video asset, source frame index), through the same catalog-backed importer as the other views (idempotent and
resumable). Each task's data links it to the video task: ``maskloop_asset_id``, ``maskloop_frame_index`` and
``maskloop_time_s``; each region is one track (``meta.track_id``).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from storage.annotation import ImportItem
from storage.annotation.projects import view_project
from storage.catalog import Asset
from storage.formats.ls_frames import TIME_KEY, frame_tasks
from storage.prelabel.fetch import local_path, s3_object_of
from storage.s3 import PERMANENT_S3_CODES, download, presigned_get_url, put_bytes
from storage.services import Services

if TYPE_CHECKING:
    import numpy as np

    from model.tracks import VideoTracks

log = logging.getLogger(__name__)

JPEG_QUALITY = 90


def frames_project_name(project: str) -> str:
    """The Label Studio project of a pre-label project's video key frames."""
    return view_project(project, "frames")


def frame_key(prefix: str, asset: Asset, frame_index: int) -> str:
    """Where a video's frame JPEG lives in its bucket: by the video's content (sha256), so a rerun, or the same clip
    under another key, writes the same object."""
    folder = asset.sha256 or f"asset-{asset.id}"
    return f"{prefix}/{folder}/{frame_index:06d}.jpg"


@dataclass
class FrameImport:
    """What the frame view of a batch holds: its tasks' items, how many tracked frames had masks, and the videos
    whose frames could not be made (asset id -> reason; ``transient``: S3 or the network, worth another run)."""

    items: list[ImportItem] = field(default_factory=list)
    video_frames: int = 0  # sampled frames of these videos with at least one track's mask
    failed: dict[int, str] = field(default_factory=dict)
    transient: set[int] = field(default_factory=set)


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decode_frames(path: Path, indices: Iterable[int]) -> dict[int, np.ndarray]:
    """The upright RGB frames ``indices`` (source numbering) of the video at ``path``, decoded in one pass that stops
    after the last of them. Raises ``KeyError`` naming the frames the file does not have."""
    from model.video import iter_frames

    wanted = set(indices)
    frames: dict[int, np.ndarray] = {}
    if not wanted:
        return frames
    last = max(wanted)
    for frame in iter_frames(path, strict=False):
        if frame.index in wanted:
            frames[frame.index] = frame.rgb
        if frame.index >= last:
            break
    missing = sorted(wanted - set(frames))
    if missing:
        raise KeyError(f"{path} has no frames {missing[:5]}")
    return frames


def _video_file(services: Services, asset: Asset) -> Path:
    path = local_path(services.settings, asset)
    if path.exists():
        return path
    return download(services.s3, s3_object_of(asset), services.settings.cache_dir)  # the cache lost it: fetch again


def video_frame_items(
    services: Services,
    videos: Sequence[tuple[Asset, VideoTracks, float | None]],
    every: int,
    model_version: str,
) -> FrameImport:
    """Decode, upload and describe the key frames of ``videos`` (asset, tracks, task score): one
    :class:`ImportItem` per key frame of each video with tracks (``every``: :func:`frame_tasks`). A video whose
    frames cannot be decoded or written fails alone (``failed``), the others go on."""
    from botocore.exceptions import BotoCoreError, ClientError

    from model.errors import BadMediaError

    out = FrameImport()
    for asset, tracks, score in videos:
        if not tracks.tracks:
            continue
        try:
            items = _frame_items(services, asset, tracks, every, model_version, score)
        except (BadMediaError, KeyError, ValueError) as error:
            out.failed[asset.id] = f"{asset.uri}: key frames for the '(video frames)' view failed ({error})"
            continue
        except (ClientError, BotoCoreError, OSError) as error:
            out.failed[asset.id] = f"{asset.uri}: key frames could not be read or written in S3 ({error})"
            code = str(error.response.get("Error", {}).get("Code", "")) if isinstance(error, ClientError) else ""
            if code not in PERMANENT_S3_CODES:
                out.transient.add(asset.id)
            continue
        out.items.extend(items)
        out.video_frames += len({f.frame_index for t in tracks.tracks for f in t.frames})
        log.info("%s: %d key frames as image tasks", asset.uri, len(items))
    return out


def _frame_items(
    services: Services, asset: Asset, tracks: VideoTracks, every: int, model_version: str, score: float | None
) -> list[ImportItem]:
    settings = services.settings
    keys: dict[int, str] = {}

    def url_of(index: int) -> str:
        keys[index] = frame_key(settings.frames_prefix, asset, index)
        return presigned_get_url(services.s3, asset.bucket, keys[index], settings.presign_ttl_s)

    tasks = frame_tasks(tracks, asset.id, url_of, every)
    rgb = decode_frames(_video_file(services, asset), keys)
    for index, key in sorted(keys.items()):
        if rgb[index].shape[:2] != (tracks.height, tracks.width):
            raise ValueError(
                f"frame {index} decodes at {rgb[index].shape[:2]}, its tracks are {(tracks.height, tracks.width)}"
            )
        put_bytes(services.s3, asset.bucket, key, encode_jpeg(rgb[index]), "image/jpeg")
    return [
        ImportItem(
            asset.id,
            task.data["image"],
            task.results,
            model_version,
            score,
            frame_index=task.frame_index,
            extra_data={TIME_KEY: task.time_s},
        )
        for task in tasks
    ]
