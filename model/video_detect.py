"""Tracking by detection, for checkpoints whose video memory path is untrained (``TrackingDefaults.trust_memory``
false, e.g. ``shapes-tiny``): SAM 2's propagated masks would be noise, so only key frames are recorded, from the
proposer's de-duplicated proposals matched into stable track ids (:mod:`model.video_assoc`); a recent track that no
proposal matched is re-segmented from its predicted box by the image model (``refiner``). Frames between key frames
are left to Label Studio's interpolation; ``shapes-tiny`` declares key frames on every sampled frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.instances import Instances, Prompt
from model.masks import masks_to_boxes
from model.tracker import MultiObjectTracker, Refiner, _TrackState
from model.video_assoc import (
    associate,
    centroid,
    dedupe,
    link_by_position,
    mask_iou_matrix,
    mean_colour,
    overlaps,
    predict_mask,
)

logger = logging.getLogger(__name__)

__all__ = ["DetectionTracker", "Refiner", "make_refiner"]


def make_refiner(segmenter: Any) -> Refiner:
    """Box prompts on the image ``segmenter``, the best of its three masks per box (detection mode's coasting)."""

    def refine(rgb: np.ndarray, boxes: np.ndarray) -> Instances:
        return segmenter.predict(rgb, boxes=np.asarray(boxes, np.float32), multimask=True)[0]

    return refine


@dataclass(frozen=True)
class _Detection:
    """A proposal recorded as a track frame (detection mode): present, scored by the proposer."""

    mask: np.ndarray
    score: float
    presence: float = 1.0

    @property
    def visible(self) -> bool:
        return bool(self.mask.any())


class DetectionTracker(MultiObjectTracker):
    """:class:`MultiObjectTracker` without a session: every key frame's proposals, associated into tracks."""

    def add_frame(self, index: int, time_s: float, rgb: np.ndarray) -> None:
        """Detection mode (see the module doc): only key frames are recorded. Proposals are matched to the tracks
        by mask IoU (last or motion-shifted mask); a recent track left without a proposal is re-segmented from its
        predicted box (``refiner``); proposals still unmatched join a recent track of similar size and colour close
        to where it was heading, or start a new track."""
        cut = self._cuts.update(rgb)
        first = not self.sampled
        self.sampled.append(index)
        key = first or cut or self._since_key >= self.params.key_frame_interval or self.is_key(index)
        self._since_key += 1
        if not key:
            return
        if cut:
            logger.info("scene cut at frame %d", index)
        step = len(self.key_frames)  # detection mode counts time in key frames
        self.key_frames.append(index)
        self._since_key = 1
        p = self.params
        dets = self.proposer(rgb, index)
        scores = np.asarray(dets.scores if dets.scores is not None else np.ones(len(dets)), np.float64)
        big = [i for i in range(len(dets)) if int(dets.masks[i].sum()) >= p.min_area]
        order = np.asarray(big, np.int64)[np.argsort(-scores[big], kind="stable")] if big else np.zeros(0, np.int64)
        keep = dedupe(dets.masks, order, p.dedupe_iou, p.covered)
        empty = np.zeros((0, *rgb.shape[:2]), bool)
        masks = dets.masks[keep] if keep else empty
        alive = [
            i
            for i, s in self.tracks.items()
            if not cut and s.last_mask is not None and step - s.last_step <= p.max_lost + 1
        ]
        states = [self.tracks[i] for i in alive]
        last_masks = [s.last_mask for s in states if s.last_mask is not None]
        last = np.stack(last_masks) if last_masks else empty
        moved = [predict_mask(m, s.velocity, step - s.last_step) for m, s in zip(last_masks, states, strict=True)]
        predicted = np.stack(moved) if moved else empty
        taken: dict[int, np.ndarray] = {}  # track id -> its mask on this frame
        pairs = dict(associate(masks, last, predicted, p.associate_iou))
        for k, j in pairs.items():
            if step - states[j].last_step > 1:  # re-acquired after a gap: the proposal is part of the lineage
                states[j].prompts.append(self._lineage(dets, keep[k], index))
            self._take(alive[j], step, index, time_s, rgb, masks[k], float(scores[keep[k]]), taken)
        rest = [k for k in range(len(keep)) if k not in pairs and not overlaps(masks[k], list(taken.values()), p)]
        free = [j for j, i in enumerate(alive) if i not in taken]
        links = link_by_position(
            [masks[k] for k in rest],
            [predicted[j] for j in free],
            [last_masks[j] for j in free],
            rgb,
            [states[j].colour for j in free],
            p.link_distance,
        )
        for n, j in links:
            k = rest[n]
            if step - states[free[j]].last_step > 1:
                states[free[j]].prompts.append(self._lineage(dets, keep[k], index))
            self._take(alive[free[j]], step, index, time_s, rgb, masks[k], float(scores[keep[k]]), taken)
        if self.refiner is not None:
            self._coast(alive, predicted, step, index, time_s, rgb, taken)
        linked = {n for n, _ in links}
        for n, k in enumerate(rest):
            if n in linked or overlaps(masks[k], list(taken.values()), p):
                continue
            if len(self.tracks) >= p.max_objects:
                logger.warning("frame %d: max_objects=%d reached, proposal dropped", index, p.max_objects)
                continue
            obj_id = max(self.tracks, default=0) + 1
            self.tracks[obj_id] = _TrackState(label=dets.labels[keep[k]], prompts=[self._lineage(dets, keep[k], index)])  # type: ignore[index]
            self._take(obj_id, step, index, time_s, rgb, masks[k], float(scores[keep[k]]), taken)

    @staticmethod
    def _lineage(dets: Instances, r: int, index: int) -> Prompt:
        prompt = dets.prompts[r]  # type: ignore[index]
        return Prompt(prompt.kind, {**prompt.params, "frame_index": index}, prompt.model_id)

    def _take(
        self,
        obj_id: int,
        step: int,
        index: int,
        time_s: float,
        rgb: np.ndarray,
        mask: np.ndarray,
        score: float,
        taken: dict[int, np.ndarray],
    ) -> None:
        state = self.tracks[obj_id]
        if state.last_mask is not None and step > state.last_step >= 0:
            (x0, y0), (x1, y1) = centroid(state.last_mask), centroid(mask)
            gap = step - state.last_step
            state.velocity = ((x1 - x0) / gap, (y1 - y0) / gap)
        self._record(obj_id, index, time_s, _Detection(mask, score))
        state.last_step = step
        state.colour = mean_colour(rgb, mask)
        taken[obj_id] = mask

    def _coast(
        self,
        alive: list[int],
        predicted: np.ndarray,
        step: int,
        index: int,
        time_s: float,
        rgb: np.ndarray,
        taken: dict[int, np.ndarray],
    ) -> None:
        """Re-segment recent tracks that no proposal matched from their predicted boxes; keep a mask only where it
        is plausibly the same object (score, size, overlap with the prediction) and not another track's."""
        p = self.params
        todo = [
            j
            for j, i in enumerate(alive)
            if i not in taken and step - self.tracks[i].last_step <= p.coast_frames and predicted[j].any()
        ]
        if not todo or self.refiner is None:
            return
        out = self.refiner(rgb, masks_to_boxes(predicted[todo]))
        for n, j in enumerate(todo):
            mask, score = out.masks[n], float(out.scores[n]) if out.scores is not None else 1.0
            state = self.tracks[alive[j]]
            area, last_area = int(mask.sum()), int(state.last_mask.sum())  # type: ignore[union-attr]
            if score < p.coast_score or not (0.4 * last_area <= area <= 2.5 * last_area):
                continue
            if mask_iou_matrix(mask[None], predicted[j][None])[0, 0] < p.associate_iou:
                continue
            if overlaps(mask, list(taken.values()), p):
                continue
            self._take(alive[j], step, index, time_s, rgb, mask, score, taken)
