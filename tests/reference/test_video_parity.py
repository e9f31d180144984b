"""maskloop's streaming video session (``Sam2Video.from_pretrained`` on Meta's ``.pt``) against Meta's
``SAM2VideoPredictor`` on a DAVIS clip: a point and a mask prompt on frame 0, a box prompt added mid-clip."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from model.video_model import Sam2Video
from tests.reference.conftest import get_reference
from tests.reference.harness import SIZES, Reference, clip_frames, clip_mask, mask_iou, record, unpack

PRUNE_CHECK_FRAMES = 6  # shorter than the memory window (num_maskmem = 7)


@dataclass(frozen=True)
class Tracked:
    masks: np.ndarray  # (frames, objects, H, W) in the order of Meta's objects, then the late ones
    present: np.ndarray  # (frames, objects); False before a late object's frame
    seconds_per_frame: float


def _track(reference: Reference, frames: int, prune: bool) -> Tracked:
    video = Sam2Video.from_pretrained(reference.checkpoint, device="cpu", dtype="fp32")
    spec = reference.spec["video"]
    objects = spec["objects"] + spec["late"]
    paths = clip_frames()[:frames]
    height, width = clip_mask(0).shape
    session = video.new_session(height, width, prune=prune)
    masks = np.zeros((len(paths), len(objects), height, width), bool)
    present = np.zeros((len(paths), len(objects)), bool)
    slot = {obj["id"]: k for k, obj in enumerate(objects)}
    started = time.perf_counter()
    for t, path in enumerate(paths):
        out = session.step(np.asarray(Image.open(path).convert("RGB")))
        for obj in objects:
            if obj.get("frame", 0) != t:
                continue
            if obj.get("mask"):
                out.update(session.prompt({obj["id"]: np.asarray(Image.open(obj["mask"])) > 0}))
            elif obj.get("box"):
                out.update(session.prompt(boxes={obj["id"]: np.asarray(obj["box"])}))
            else:
                out.update(session.prompt(points={obj["id"]: (np.asarray(obj["points"]), np.asarray(obj["labels"]))}))
        for obj_id, frame in out.items():
            masks[t, slot[obj_id]] = frame.mask
            present[t, slot[obj_id]] = frame.presence >= 0.5
    return Tracked(masks, present, (time.perf_counter() - started) / len(paths))


_RUNS: dict[tuple[str, int, bool], Tracked] = {}


def tracked(reference: Reference, frames: int, prune: bool = True) -> Tracked:
    key = (reference.size.name, frames, prune)
    if key not in _RUNS:
        _RUNS[key] = _track(reference, frames, prune)
    return _RUNS[key]


@pytest.fixture(scope="module")
def tiny() -> Reference:
    return get_reference(SIZES[0])


def test_video_masks_match_meta_frame_by_frame_for_objects_prompted_on_frame_0(tiny: Reference) -> None:
    ours = tracked(tiny, len(clip_frames()))
    theirs = unpack(tiny.meta["video/masks"], ours.masks.shape[-1])
    n_first = theirs.shape[1]
    per_object = {}
    for k in range(n_first):
        ious = [mask_iou(ours.masks[t, k], theirs[t, k]) for t in range(len(theirs))]
        per_object[k] = ious
        record(
            tiny.size.name,
            "video",
            f"object {k + 1}",
            mean_iou=round(float(np.mean(ious)), 6),
            min_iou=round(min(ious), 6),
            frames=len(ious),
            maskloop_s_per_frame=round(ours.seconds_per_frame, 2),
            meta_s_per_frame=round(tiny.timings["video_s_per_frame"], 2),
        )
    for k, ious in per_object.items():
        assert np.mean(ious) >= 0.99, f"object {k + 1}: mean IoU {np.mean(ious):.4f} with Meta, per frame {ious}"
    assert np.array_equal(ours.present[:, :n_first], tiny.meta["video/present"]), "object-absent frames differ"


def test_video_object_added_mid_clip_matches_meta_on_its_frames(tiny: Reference) -> None:
    ours = tracked(tiny, len(clip_frames()))
    n_first = len(tiny.spec["video"]["objects"])
    for j, late in enumerate(tiny.spec["video"]["late"]):
        start = late["frame"]
        theirs = unpack(tiny.meta[f"video/late/{late['id']}/masks"], ours.masks.shape[-1])
        ious = [mask_iou(ours.masks[start + t, n_first + j], theirs[t]) for t in range(len(theirs))]
        record(
            tiny.size.name,
            "video",
            f"object {late['id']} (from frame {start})",
            mean_iou=round(float(np.mean(ious)), 6),
            min_iou=round(min(ious), 6),
            frames=len(ious),
        )
        assert not ours.masks[:start, n_first + j].any(), "a late object has masks before its prompt"
        assert np.mean(ious) >= 0.99, f"late object {late['id']}: mean IoU {np.mean(ious):.4f}, per frame {ious}"
        present = tiny.meta[f"video/late/{late['id']}/present"]
        assert np.array_equal(ours.present[start:, n_first + j], present), "object-absent frames differ"


def test_memory_pruning_changes_nothing_on_a_clip_shorter_than_the_memory_window(tiny: Reference) -> None:
    pruned = tracked(tiny, len(clip_frames()), prune=True)
    full = tracked(tiny, PRUNE_CHECK_FRAMES, prune=False)
    assert np.array_equal(pruned.masks[:PRUNE_CHECK_FRAMES], full.masks)
    assert np.array_equal(pruned.present[:PRUNE_CHECK_FRAMES], full.present)
