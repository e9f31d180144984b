"""One set of tracks per video from its two Label Studio views (pure).

A video reaches people twice: the video task (one ``videorectangle`` region per track, boxes interpolated between
keyframes, in frames of the Label Studio project's rate) and the key-frame image tasks (one brush mask per track
and key frame, in the video's own frame numbering). The harvest keeps each region's ``track_id``
(:func:`storage.labelstudio.annotations.track_id_of`); :func:`merge_video_views` makes the version's tracks:

* **Frame numbering.** Everything is in source frames (the decoder's frame index, as the key-frame tasks are). A
  video-task box at 0-based project frame ``p`` covers the source frames ``i`` that Label Studio shows as that
  project frame: ``p == round(i / source_fps * project_fps)`` (the time policy of :mod:`storage.formats.ls_video`,
  with ``i / source_fps`` standing in for the frame's presentation time: exact for constant-rate files). Without
  both rates the frame numbers are taken as they are.
* **Per track, per frame**: the corrected mask of the key-frame task of that frame where there is one (its box is
  the mask's box), else the video task's box (box only: no mask).
* **A key-frame task is the word on its frame**: a track the video task has on a harvested key frame but the
  frame task does not (the person deleted the region there) is absent on that frame. Frames whose task was not
  annotated keep the video task's boxes.
* **Track ids** come from the regions. A region without one (drawn by a person) becomes a track of its own, with a
  new id after the largest id of the video, in order: video-task regions by region id, then key-frame regions by
  (frame, region id) (``MergedTrack.added``); a person who draws the same new object on two key frames gets two
  tracks. A video-task region repeating an id already taken gets a new id too. Two regions of one key-frame task
  with the same track id are one object: their masks are united.
* **Labels**: a track's label is its video-task region's; a track only in key-frame tasks takes its most common
  label there (ties: the earliest frame's). A key-frame task that relabels one frame of a track does not relabel
  the track.
* Boxes squeezed to nothing (``x2 <= x1`` or ``y2 <= y1``) are no instance; tracks left without frames are dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from model.masks import RLE, mask_to_rle, masks_to_boxes, rle_to_mask
from storage.formats.ls_video import project_frame

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class MergedFrame:
    """One track on one source frame: ``box`` xyxy pixels; ``rle`` the corrected mask, None where only the video
    task's box is known."""

    frame_index: int
    box: Box
    rle: RLE | None = None


@dataclass(frozen=True)
class MergedTrack:
    track_id: int
    label: str
    frames: tuple[MergedFrame, ...]
    added: bool = False  # the id was given by the merge: a region a person drew without a track id


@dataclass(frozen=True)
class MergedVideo:
    """A video's tracks. ``frames`` are the source frames listed: where some track is, and every harvested
    key-frame task's frame (also when a person left it empty)."""

    height: int
    width: int
    frames: tuple[int, ...]
    tracks: tuple[MergedTrack, ...] = field(default_factory=tuple)


def source_boxes(
    rows: Sequence[Sequence[float]],
    *,
    source_fps: float | None,
    project_fps: float | None,
    source_frames: int | None = None,
) -> dict[int, Box]:
    """A video-task region's ``[project frame (0-based), x1, y1, x2, y2]`` rows as source frame -> box (see the
    module's frame numbering). ``source_frames`` (the clip's frame count, when known) bounds the frames."""
    by_project = {int(r[0]): (float(r[1]), float(r[2]), float(r[3]), float(r[4])) for r in rows}
    by_project = {p: b for p, b in by_project.items() if b[2] > b[0] and b[3] > b[1]}
    if not by_project:
        return {}
    if not (source_fps and source_fps > 0 and project_fps and project_fps > 0):
        out = dict(sorted(by_project.items()))
    else:
        out = {}
        last = max(by_project)
        i = 0
        while True:
            p = project_frame(i / source_fps, project_fps) - 1
            if p > last:
                break
            if p in by_project:
                out[i] = by_project[p]
            i += 1
    if source_frames:
        out = {i: b for i, b in out.items() if i < source_frames}
    return out


def _check_size(rle: RLE, height: int, width: int, where: str) -> None:
    if [int(v) for v in rle["size"]] != [height, width]:
        raise ValueError(f"{where}: mask is {list(rle['size'])}, the video is {[height, width]}")


def _mask_box(rle: RLE) -> Box:
    b = masks_to_boxes(rle_to_mask(rle)[None])[0]
    return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))


def merge_video_views(
    video_records: Sequence[Mapping[str, Any]],
    frame_records: Mapping[int, Sequence[Mapping[str, Any]]],
    *,
    height: int,
    width: int,
    source_fps: float | None = None,
    project_fps: float | None = None,
    source_frames: int | None = None,
) -> MergedVideo:
    """The video's tracks from the video task's records (``label``, ``boxes`` rows in project frames, optional
    ``track_id``; empty when it has no accepted annotation) and the harvested key-frame tasks' records (source
    frame -> ``label``, ``rle``, optional ``track_id``, ``region_id``). Raises ``ValueError`` for a mask that is
    not ``height`` x ``width``."""
    if height <= 0 or width <= 0:
        raise ValueError(f"video size must be positive, got {width}x{height}")
    known = [int(r["track_id"]) for r in video_records if r.get("track_id") is not None]
    known += [int(r["track_id"]) for rs in frame_records.values() for r in rs if r.get("track_id") is not None]
    next_id = max(known, default=-1) + 1
    labels: dict[int, str] = {}
    boxes: dict[int, dict[int, Box]] = {}
    masks: dict[int, dict[int, RLE]] = {}
    frame_labels: dict[int, list[str]] = {}
    added: set[int] = set()
    order: list[int] = []

    def new_track(tid: int | None, taken: bool) -> int:
        nonlocal next_id
        if tid is None or taken:
            tid, next_id = next_id, next_id + 1
            added.add(tid)
        if tid not in boxes:
            boxes[tid], masks[tid], frame_labels[tid] = {}, {}, []
            order.append(tid)
        return tid

    for r in sorted(video_records, key=lambda r: str(r.get("region_id", ""))):
        given = r.get("track_id")
        tid = new_track(None if given is None else int(given), given is not None and int(given) in labels)
        labels[tid] = str(r["label"])
        boxes[tid] = source_boxes(
            r.get("boxes") or [], source_fps=source_fps, project_fps=project_fps, source_frames=source_frames
        )
    for frame in sorted(frame_records):
        present: set[int] = set()
        for r in sorted(frame_records[frame], key=lambda r: str(r.get("region_id", ""))):
            given = r.get("track_id")
            tid = new_track(None if given is None else int(given), False)
            rle = r["rle"]
            _check_size(rle, height, width, f"frame {frame} region {r.get('region_id', '?')!r}")
            if frame in masks[tid]:  # the same object drawn as two regions: one mask
                rle = mask_to_rle(rle_to_mask(masks[tid][frame]) | rle_to_mask(rle))
            masks[tid][frame] = rle
            frame_labels[tid].append(str(r["label"]))
            present.add(tid)
        for tid, track_boxes in boxes.items():
            if tid not in present:
                track_boxes.pop(frame, None)  # deleted on this key frame
    tracks = []
    for tid in sorted(order):
        label = labels.get(tid)
        if label is None:
            counts = Counter(frame_labels[tid])
            top = max(counts.values(), default=0)
            label = next((lab for lab in frame_labels[tid] if counts[lab] == top), None)
        frames = tuple(
            MergedFrame(i, _mask_box(masks[tid][i]), masks[tid][i])
            if i in masks[tid]
            else MergedFrame(i, boxes[tid][i])
            for i in sorted(set(boxes[tid]) | set(masks[tid]))
        )
        if frames and label:
            tracks.append(MergedTrack(tid, label, frames, tid in added))
    listed = sorted({f.frame_index for t in tracks for f in t.frames} | {int(f) for f in frame_records})
    return MergedVideo(height, width, tuple(listed), tuple(tracks))


def coco_records(video: MergedVideo) -> list[dict[str, Any]]:
    """The tracks as :class:`storage.formats.coco.CocoSource` video records: ``label``, ``track_id``, ``boxes``
    rows ``[frame, x1, y1, x2, y2]`` (every frame of the track) and ``masks`` (frame -> RLE, where corrected)."""
    return [
        {
            "label": t.label,
            "track_id": t.track_id,
            "boxes": [[f.frame_index, *f.box] for f in t.frames],
            "masks": {f.frame_index: f.rle for f in t.frames if f.rle is not None},
        }
        for t in video.tracks
    ]
