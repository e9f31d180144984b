"""maskloop's segment-everything (default ``filter_at="original"``) against Meta's ``SAM2AutomaticMaskGenerator``
with the same grid and thresholds."""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from model.everything import EverythingParams, segment_everything
from model.segmenter import Segmenter
from tests.reference.harness import EVERYTHING, EVERYTHING_IMAGE, Reference, mask_iou, record, unpack


def _params() -> EverythingParams:
    return EverythingParams(
        points_per_side=EVERYTHING["points_per_side"],
        points_per_batch=EVERYTHING["points_per_batch"],
        pred_iou_thresh=EVERYTHING["pred_iou_thresh"],
        stability_score_thresh=EVERYTHING["stability_score_thresh"],
        stability_score_offset=EVERYTHING["stability_score_offset"],
        mask_threshold=EVERYTHING["mask_threshold"],
        nms_thresh=EVERYTHING["box_nms_thresh"],
    )


def test_everything_mode_matches_metas_generator_mask_for_mask(reference: Reference) -> None:
    seg = Segmenter.from_pretrained(reference.checkpoint, device="cpu", dtype="fp32")
    image = np.asarray(Image.open(EVERYTHING_IMAGE).convert("RGB"))
    started = time.perf_counter()
    ours = segment_everything(seg, [image], _params())[0]
    seconds = time.perf_counter() - started
    theirs = unpack(reference.meta["everything/0/masks"], image.shape[1])
    theirs_iou = reference.meta["everything/0/iou"]
    theirs_points = reference.meta["everything/0/points"]
    theirs_stab = reference.meta["everything/0/stability"]
    assert len(theirs) >= 20, f"Meta kept only {len(theirs)} masks: the comparison needs thresholds that keep more"
    our_points = np.array([p.params["point"] for p in ours.prompts], np.float32).reshape(-1, 2)
    # partners: the same grid point and the same predicted IoU (one of the point's three masks)
    ious, stab_diffs = [], []
    used: set[int] = set()
    for k in range(len(theirs)):
        close = np.abs(our_points - theirs_points[k]).max(axis=1) < 0.05
        close &= np.abs(ours.scores - theirs_iou[k]) < 1e-4
        candidates = [int(c) for c in np.flatnonzero(close) if int(c) not in used]
        if not candidates:
            ious.append(0.0)
            continue
        best = max(candidates, key=lambda c: mask_iou(ours.masks[c], theirs[k]))
        used.add(best)
        ious.append(mask_iou(ours.masks[best], theirs[k]))
        stab_diffs.append(abs(float(ours.stability[best]) - float(theirs_stab[k])))
    matched = float(np.mean(np.asarray(ious) >= 0.98))
    record(
        reference.size.name,
        "everything",
        EVERYTHING_IMAGE.name,
        meta_masks=len(theirs),
        maskloop_masks=len(ours),
        matched_at_098=round(matched, 4),
        min_iou=round(min(ious), 6),
        max_stability_diff=round(max(stab_diffs, default=0.0), 6),
        maskloop_s=round(seconds, 2),
        meta_s=round(reference.timings["everything_s"], 2),
    )
    assert len(ours) == len(theirs), f"maskloop kept {len(ours)} masks, Meta {len(theirs)}"
    assert matched >= 0.99, f"only {matched:.3f} of Meta's masks have a partner at IoU >= 0.98 (min {min(ious):.3f})"
