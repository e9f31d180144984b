"""Auto-prompted multi-object tracking through whole clips.

Frames stream from :func:`model.video.iter_frames` into one SAM 2 session (:mod:`model.video_model`). On key frames
(the first sampled frame, every ``key_frame_interval`` sampled frames, scene cuts, and frames that carry priors) a
proposer (the image auto-prompters, or prior masks) suggests objects; each proposal is matched to the tracks SAM 2
currently sees by mask IoU so an object keeps one id. Unmatched proposals that overlap a lost track's last visible
mask re-prompt that track (same id); the rest start new tracks. Objects that leave and come back keep their id when
SAM 2's memory recovers them (no new proposal is created for a visible, matched object). Re-acquisition by position
is skipped on scene cuts.

A checkpoint whose memory path is untrained (``trust_memory`` false, from its ``config.json``: see
:class:`model.video_model.TrackingDefaults`) is tracked by detection instead: SAM 2's propagated masks would be
noise, so every key frame's proposals are associated into tracks (:mod:`model.video_detect`) and frames between
key frames are left to Label Studio's interpolation. Such checkpoints declare a short key-frame interval (1 for
``shapes-tiny``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model.instances import Instances, Prompt
from model.masks import mask_to_rle, masks_to_boxes
from model.tracks import Track, TrackFrame, VideoTracks
from model.video import iter_frames, probe_video
from model.video_assoc import greedy_match, mask_iou_matrix  # re-exported: callers import them from here
from model.video_cuts import SceneCutDetector

logger = logging.getLogger(__name__)

Proposer = Callable[[np.ndarray, int], Instances]
"""Proposes objects on one key frame: ``(rgb (H, W, 3) uint8, source frame index) -> Instances``."""

Refiner = Callable[[np.ndarray, np.ndarray], Instances]
"""Segments given boxes on one frame: ``(rgb, (K, 4) xyxy boxes) -> Instances`` with one mask per box."""


class ObjectFrameLike(Protocol):
    mask: np.ndarray
    score: float
    presence: float

    @property
    def visible(self) -> bool: ...


class TrackingSession(Protocol):
    def step(self, rgb: np.ndarray) -> Mapping[int, ObjectFrameLike]: ...

    def prompt(self, masks: dict[int, np.ndarray]) -> Mapping[int, ObjectFrameLike]: ...


class VideoModel(Protocol):
    model_id: str  # may also carry ``tracking`` (:class:`model.video_model.TrackingDefaults`)

    def new_session(self, height: int, width: int, prune: bool = True) -> TrackingSession: ...


def make_proposer(
    strategy: str,
    segmenter: Any = None,
    classes: list[str] | None = None,
    priors: Mapping[int, Instances] | None = None,
    text_detector: Any = None,
    autoprompt_params: Mapping[str, Any] | None = None,
) -> Proposer:
    """The key-frame proposer for ``strategy`` ("everything", "text", "prior"), via ``model.autoprompt.auto_segment``.

    ``priors`` maps source frame index -> prior :class:`Instances` (e.g. earlier annotations). With strategy
    "prior" and no ``segmenter`` the prior masks are the proposals as they are; with a segmenter they are
    re-segmented. Other strategies need ``segmenter`` (and "text" a ``text_detector`` and ``classes``).
    """
    priors = dict(priors or {})
    params = dict(autoprompt_params or {})
    if strategy == "prior":

        def propose_prior(rgb: np.ndarray, frame_index: int) -> Instances:
            prior = priors.get(frame_index)
            if prior is None:
                return Instances.empty(*rgb.shape[:2])
            if prior.image_size != rgb.shape[:2]:
                raise ValueError(f"prior for frame {frame_index} has size {prior.image_size}, frame is {rgb.shape[:2]}")
            if segmenter is None:
                return prior
            from model.autoprompt import auto_segment

            return auto_segment(segmenter, [rgb], "prior", priors=[prior], **params)[0]

        return propose_prior
    if segmenter is None:
        raise ValueError(f"strategy {strategy!r} needs an image segmenter (segmenter=...) to propose objects")

    def propose(rgb: np.ndarray, frame_index: int) -> Instances:
        from model.autoprompt import auto_segment

        return auto_segment(segmenter, [rgb], strategy, classes=classes, detector=text_detector, **params)[0]  # type: ignore[arg-type]

    return propose


@dataclass
class _TrackState:
    label: str
    prompts: list[Prompt] = field(default_factory=list)
    frames: list[TrackFrame] = field(default_factory=list)
    last_mask: np.ndarray | None = None
    last_step: int = -1  # key-frame number of the last sighting (detection mode)
    velocity: tuple[float, float] = (0.0, 0.0)  # centroid pixels per key frame (detection mode)
    colour: tuple[float, float, float] = (0.0, 0.0, 0.0)  # mean RGB of the last mask (detection mode)


@dataclass(frozen=True)
class TrackerParams:
    """Matching thresholds. ``match_iou``: a proposal is the same object as a visible track; ``reacquire_iou``: an
    unmatched proposal re-prompts a lost track whose last visible mask it overlaps; ``covered``: a proposal that
    lies this much inside visible tracks is a part of them, not a new object.

    ``trust_memory`` false tracks by detection (see the module doc): ``associate_iou`` is the least IoU of a
    proposal with a track's last (or motion-shifted) mask, ``max_lost`` how many key frames a track may go unseen
    and still be continued, ``dedupe_iou`` the IoU above which two proposals of one frame are one object; a track
    seen within ``coast_frames`` key frames but left without a proposal is re-segmented from its predicted box (kept
    when the refiner's score is >= ``coast_score``); an unmatched proposal joins a recent track whose predicted
    centroid is within ``link_distance`` object sizes (similar area and colour)."""

    key_frame_interval: int = 30
    match_iou: float = 0.5
    reacquire_iou: float = 0.3
    covered: float = 0.8
    scene_cut_threshold: float = 0.5
    max_objects: int = 50
    min_area: int = 16
    trust_memory: bool = True
    associate_iou: float = 0.2
    max_lost: int = 8
    dedupe_iou: float = 0.5
    coast_frames: int = 2
    coast_score: float = 0.5
    link_distance: float = 1.5

    def __post_init__(self) -> None:
        if self.key_frame_interval < 1:
            raise ValueError(f"key_frame_interval must be >= 1, got {self.key_frame_interval}")
        for name in ("match_iou", "reacquire_iou", "covered", "associate_iou", "dedupe_iou", "coast_score"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")
        if self.max_lost < 0:
            raise ValueError(f"max_lost must be >= 0, got {self.max_lost}")


class MultiObjectTracker:
    """Drives one tracking session over a stream of frames; :meth:`result` builds :class:`VideoTracks`."""

    def __init__(
        self,
        session: TrackingSession | None,  # None only for :class:`model.video_detect.DetectionTracker`
        proposer: Proposer,
        params: TrackerParams,
        is_key: Callable[[int], bool] = lambda index: False,
        refiner: Refiner | None = None,
    ) -> None:
        self.session = session
        self.proposer = proposer
        self.refiner = refiner
        self.params = params
        self.is_key = is_key
        self.tracks: dict[int, _TrackState] = {}
        self.key_frames: list[int] = []
        self.sampled: list[int] = []
        self._cuts = SceneCutDetector(params.scene_cut_threshold)
        self._since_key = 0

    def add_frame(self, index: int, time_s: float, rgb: np.ndarray) -> None:
        if self.session is None:
            raise ValueError("MultiObjectTracker needs a tracking session; DetectionTracker tracks without one")
        outs = dict(self.session.step(rgb))
        cut = self._cuts.update(rgb)
        first = not self.sampled
        self.sampled.append(index)
        if first or cut or self._since_key >= self.params.key_frame_interval or self.is_key(index):
            if cut:
                logger.info("scene cut at frame %d", index)
            self.key_frames.append(index)
            self._since_key = 0
            outs.update(self._discover(index, rgb, outs, reacquire=not cut))
        self._since_key += 1
        for obj_id, out in outs.items():
            if out.visible:
                self._record(obj_id, index, time_s, out)

    def _discover(
        self, index: int, rgb: np.ndarray, outs: Mapping[int, ObjectFrameLike], reacquire: bool = True
    ) -> Mapping[int, ObjectFrameLike]:
        """Propose objects on a key frame and prompt the new (or re-acquired) ones. Across a scene cut a lost
        track is not re-acquired by position: the same place in another shot is not the same object."""
        dets = self.proposer(rgb, index)
        keep = [i for i in range(len(dets)) if int(dets.masks[i].sum()) >= self.params.min_area]
        if not keep:
            return {}
        dets = dets[keep]
        visible_ids = [i for i, o in outs.items() if o.visible]
        h, w = rgb.shape[:2]
        visible = np.stack([outs[i].mask for i in visible_ids]) if visible_ids else np.zeros((0, h, w), bool)
        matched = {r for r, _ in greedy_match(mask_iou_matrix(dets.masks, visible), self.params.match_iou)}
        union = visible.any(axis=0) if len(visible_ids) else np.zeros((h, w), bool)
        lost_ids, lost_masks = [], []
        for i, state in self.tracks.items():
            if reacquire and i not in visible_ids and state.last_mask is not None:
                lost_ids.append(i)
                lost_masks.append(state.last_mask)
        lost = np.stack(lost_masks) if lost_ids else np.zeros((0, h, w), bool)
        rest = [r for r in range(len(dets)) if r not in matched]
        reacquired = dict(greedy_match(mask_iou_matrix(dets.masks[rest], lost), self.params.reacquire_iou))
        prompts: dict[int, np.ndarray] = {}
        for k, r in enumerate(rest):
            mask = dets.masks[r]
            prompt = dets.prompts[r]  # type: ignore[index]
            lineage = Prompt(prompt.kind, {**prompt.params, "frame_index": index}, prompt.model_id)
            if k in reacquired:
                obj_id = lost_ids[reacquired[k]]
            else:
                if (mask & union).sum() >= self.params.covered * mask.sum():
                    continue
                if len(self.tracks) >= self.params.max_objects:
                    logger.warning("frame %d: max_objects=%d reached, proposal dropped", index, self.params.max_objects)
                    continue
                obj_id = max(self.tracks, default=0) + 1
                self.tracks[obj_id] = _TrackState(label=dets.labels[r])  # type: ignore[index]
            self.tracks[obj_id].prompts.append(lineage)
            prompts[obj_id] = mask
            union |= mask
        return self.session.prompt(prompts) if prompts and self.session is not None else {}

    def _record(self, obj_id: int, index: int, time_s: float, out: ObjectFrameLike | Any) -> None:
        state = self.tracks.get(obj_id)
        if state is None:
            return
        box = masks_to_boxes(out.mask[None])[0]
        state.frames.append(
            TrackFrame(
                frame_index=index,
                time_s=float(time_s),
                rle=mask_to_rle(out.mask),
                box=tuple(float(v) for v in box),  # type: ignore[arg-type]
                score=float(out.score),
                presence=float(out.presence),
            )
        )
        state.last_mask = out.mask

    def result(
        self, height: int, width: int, fps: float, frame_count: int, model_id: str, params: Mapping[str, Any]
    ) -> VideoTracks:
        tracks = [
            Track(track_id=i, label=s.label, frames=s.frames, prompts=s.prompts) for i, s in sorted(self.tracks.items())
        ]
        return VideoTracks(
            height=height,
            width=width,
            fps=fps,
            frame_count=frame_count,
            sampled_frames=list(self.sampled),
            tracks=tracks,
            model_id=model_id,
            key_frames=list(self.key_frames),
            params=dict(params),
        )


def track_video(
    video_model: VideoModel,
    path: str | Path,
    strategy: str,
    classes: list[str] | None = None,
    priors: Mapping[int, Instances] | None = None,
    every: int = 1,
    key_frame_interval: int = 30,
    segmenter: Any = None,
    target_fps: float | None = None,
    text_detector: Any = None,
    autoprompt_params: Mapping[str, Any] | None = None,
    proposer: Proposer | None = None,
    max_frames: int | None = None,
    prune: bool = True,
    params: TrackerParams | None = None,
) -> VideoTracks:
    """Track auto-prompted objects through the video at ``path``.

    Args:
        video_model: a :class:`model.video_model.Sam2Video` (or anything with ``new_session`` and ``model_id``).
        strategy: the image auto-prompter used on key frames ("text", "everything", "prior", ...).
        priors: source frame index -> prior :class:`Instances`; frames with priors are key frames.
        every / target_fps: frame sampling (see :func:`model.video.iter_frames`).
        key_frame_interval: sampled frames between periodic key frames (scene cuts add more); a checkpoint's
            ``TrackingDefaults.max_key_frame_interval`` caps it (see :func:`default_params`).
        segmenter: the image :class:`model.segmenter.Segmenter` the auto-prompters run on.
        text_detector: the Grounding DINO :class:`model.detector.TextDetector` for strategy "text".
        autoprompt_params: extra keyword arguments of ``auto_segment`` for the strategy (e.g. ``points_per_side``).
        proposer: replaces the proposer built from the arguments above (any ``(rgb, frame_index) -> Instances``).
        prune: keep memory bounded (identical results; off only for comparisons).
        params: all matching thresholds; when given, its ``key_frame_interval`` wins over the argument.

    Raises:
        BadMediaError: the video cannot be decoded.
    """
    params = params or default_params(video_model, key_frame_interval)  # explicit params win
    info = probe_video(path)
    proposer = proposer or make_proposer(strategy, segmenter, classes, priors, text_detector, autoprompt_params)
    prior_frames = set(priors or {}) if strategy == "prior" else set()
    session = video_model.new_session(info.height, info.width, prune=prune) if params.trust_memory else None
    tracker: MultiObjectTracker
    if params.trust_memory:
        tracker = MultiObjectTracker(session, proposer, params, is_key=prior_frames.__contains__)
    else:
        from model.video_detect import DetectionTracker, make_refiner

        refiner = make_refiner(segmenter) if getattr(segmenter, "box_prompts", False) else None
        tracker = DetectionTracker(None, proposer, params, is_key=prior_frames.__contains__, refiner=refiner)
    for frame in iter_frames(path, every=every, target_fps=target_fps, max_frames=max_frames):
        tracker.add_frame(frame.index, frame.time_s, frame.rgb)
    lineage = {
        "strategy": strategy,
        "classes": list(classes or []),
        "autoprompt_params": dict(autoprompt_params or {}),
        "every": every,
        "target_fps": target_fps,
        "key_frame_interval": params.key_frame_interval,
        "match_iou": params.match_iou,
        "reacquire_iou": params.reacquire_iou,
        "scene_cut_threshold": params.scene_cut_threshold,
        "trust_memory": params.trust_memory,
        "source": str(path),
    }
    logger.info("tracked %d objects over %d frames of %s", len(tracker.tracks), len(tracker.sampled), path)
    result = tracker.result(info.height, info.width, info.fps, info.frame_count, video_model.model_id, lineage)
    result.duration_s = info.duration_s
    return result


def default_params(video_model: VideoModel, key_frame_interval: int = 30) -> TrackerParams:
    """Tracker parameters for ``video_model``: its checkpoint's :class:`~model.video_model.TrackingDefaults` cap the
    requested key-frame interval and say whether its memory can be trusted."""
    defaults = getattr(video_model, "tracking", None)
    interval, trust = key_frame_interval, True
    if defaults is not None:
        if defaults.max_key_frame_interval is not None:
            interval = min(interval, defaults.max_key_frame_interval)
        trust = defaults.trust_memory
    return TrackerParams(key_frame_interval=interval, trust_memory=trust)
