"""Tracking by detection for checkpoints whose video memory is untrained (``trust_memory`` false).

Unit tables for the pieces (:func:`dedupe`, :func:`shift_mask`, :func:`associate`, the per-checkpoint defaults) and
the whole mode on clips where the proposals are the ground truth (fast, exact), then the behaviour the issue asks for
on the demo clip with the shipped ``shapes-tiny``: every object tracked on >= 90 % of its frames.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.instances import Instances
from model.tracker import TrackerParams, default_params, track_video
from model.tracks import score_tracks
from model.video import write_video
from model.video_assoc import associate, dedupe, link_by_position, shift_mask
from model.video_detect import DetectionTracker
from model.video_model import TRACKING_KEY, TrackingDefaults

H, W = 40, 60
WEIGHTS = Path(__file__).resolve().parents[2] / "model" / "weights" / "shapes-tiny"


def _rect(x: int, y: int, w: int = 10, h: int = 8) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[max(0, y) : max(0, y + h), max(0, x) : max(0, x + w)] = True
    return mask


@pytest.mark.parametrize(
    ("masks", "order", "expected"),
    [
        ([], [], []),
        ([_rect(0, 0)], [0], [0]),
        ([_rect(0, 0), _rect(1, 0)], [0, 1], [0]),  # near-duplicate (IoU 0.82) of a better one
        ([_rect(0, 0), _rect(1, 0)], [1, 0], [1]),  # the order (score) decides which one stays
        ([_rect(0, 0, 20, 20), _rect(2, 2, 4, 4)], [0, 1], [0]),  # a part inside a kept object
        ([_rect(2, 2, 4, 4), _rect(0, 0, 20, 20)], [0, 1], [0, 1]),  # the whole after its part: a new object
        ([_rect(0, 0), _rect(30, 20)], [0, 1], [0, 1]),  # two objects
        ([np.zeros((H, W), bool), _rect(30, 20)], [0, 1], [1]),  # empty masks are never kept
    ],
)
def test_dedupe_table(masks: list[np.ndarray], order: list[int], expected: list[int]) -> None:
    stack = np.stack(masks) if masks else np.zeros((0, H, W), bool)
    assert dedupe(stack, np.asarray(order, np.int64), iou=0.5, covered=0.8) == expected


@pytest.mark.parametrize(
    ("dx", "dy", "expected"),
    [(0, 0, _rect(10, 10)), (5, -3, _rect(15, 7)), (-12, 0, _rect(-2, 10)), (2.6, 0.4, _rect(13, 10)), (99, 0, None)],
)
def test_shift_mask_moves_and_clips(dx: float, dy: float, expected: np.ndarray | None) -> None:
    out = shift_mask(_rect(10, 10), dx, dy)
    assert np.array_equal(out, np.zeros((H, W), bool) if expected is None else expected)


def test_associate_uses_the_motion_shifted_mask_when_the_object_moved_past_its_last_mask() -> None:
    last = np.stack([_rect(0, 10), _rect(40, 10)])
    predicted = np.stack([_rect(12, 10), _rect(40, 10)])  # track 0 moves 12 px per frame
    proposals = np.stack([_rect(40, 11), _rect(13, 10)])
    assert associate(proposals, last, predicted, threshold=0.2) == [(0, 1), (1, 0)] or sorted(
        associate(proposals, last, predicted, threshold=0.2)
    ) == [(0, 1), (1, 0)]
    assert associate(proposals, last, last, threshold=0.2) == [(0, 1)]  # without motion: only the still one
    assert associate(np.zeros((0, H, W), bool), last, predicted, 0.2) == []


def _moving_gt(t_count: int = 12, speed: int = 4) -> np.ndarray:
    """Two objects: A moves ``speed`` px per frame (width 10), hides on frames 5-6 and comes back on its path; B
    stays still."""
    gt = np.zeros((t_count, 2, H, W), bool)
    for t in range(t_count):
        if t not in (5, 6):
            gt[t, 0] = _rect(2 + speed * t, 4, 10, 8)
        gt[t, 1] = _rect(40, 28, 12, 10)
    return gt


def _run(gt: np.ndarray, params: TrackerParams, proposals=None) -> DetectionTracker:  # noqa: ANN001
    def propose(rgb: np.ndarray, index: int) -> Instances:
        masks = gt[index] if proposals is None else proposals(index)
        masks = masks[masks.reshape(len(masks), -1).any(1)]
        return Instances(masks=masks, labels=["obj"] * len(masks), scores=np.linspace(0.9, 0.8, len(masks)))

    tracker = DetectionTracker(None, propose, params)
    rgb = np.zeros((H, W, 3), np.uint8)
    for t in range(len(gt)):
        tracker.add_frame(t, t / 10, rgb)
    return tracker


def test_detection_mode_keeps_ids_through_motion_and_a_short_disappearance() -> None:
    gt = _moving_gt()
    tracker = _run(gt, TrackerParams(key_frame_interval=1, trust_memory=False))
    video = tracker.result(H, W, 10.0, len(gt), "m", {})
    assert [t.track_id for t in video.tracks] == [1, 2]
    assert [f.frame_index for f in video.tracks[0].frames] == [t for t in range(12) if t not in (5, 6)]
    assert len(video.tracks[0].prompts) == 2  # created on frame 0, re-acquired on frame 7
    scores = score_tracks(video, gt, list(range(12)))
    assert [(s.coverage, s.id_switches) for s in scores] == [(1.0, 0), (1.0, 0)]
    assert all(f.presence == 1.0 for t in video.tracks for f in t.frames)


def test_detection_mode_records_key_frames_only_and_a_track_lost_too_long_is_new() -> None:
    gt = _moving_gt(speed=2)
    tracker = _run(gt, TrackerParams(key_frame_interval=2, trust_memory=False, max_lost=0))
    video = tracker.result(H, W, 10.0, len(gt), "m", {})
    assert video.key_frames == [0, 2, 4, 6, 8, 10]
    assert {f.frame_index for t in video.tracks for f in t.frames} <= set(video.key_frames)
    # A is unseen on key frame 6 and max_lost=0: it comes back on 8 as a new track
    assert [[f.frame_index for f in t.frames] for t in video.tracks] == [[0, 2, 4], [0, 2, 4, 6, 8, 10], [8, 10]]


def test_detection_mode_drops_duplicate_and_part_proposals() -> None:
    gt = _moving_gt(4)

    def noisy(index: int) -> np.ndarray:
        part = np.zeros((H, W), bool)
        part[29:33, 42:46] = True  # inside B
        return np.stack([gt[index, 0], gt[index, 1], np.roll(gt[index, 1], 1, axis=1), part])

    video = _run(gt, TrackerParams(key_frame_interval=1, trust_memory=False), noisy).result(H, W, 10.0, 4, "m", {})
    assert len(video.tracks) == 2


@pytest.mark.parametrize(
    ("card", "requested", "expected"),
    [
        (None, 30, (30, True)),
        ({}, 30, (30, True)),
        ({"max_key_frame_interval": 1, "trust_memory": False}, 30, (1, False)),
        ({"max_key_frame_interval": 4}, 2, (2, True)),  # a cap, not a floor
    ],
)
def test_checkpoint_tracking_defaults_cap_the_interval(card: dict | None, requested: int, expected: tuple) -> None:
    class Model:
        model_id = "m"
        tracking = TrackingDefaults.from_config({} if card is None else {TRACKING_KEY: card})

    params = default_params(Model(), requested)
    assert (params.key_frame_interval, params.trust_memory) == expected


def test_tracking_defaults_reject_unknown_keys_and_bad_intervals() -> None:
    with pytest.raises(ValueError, match="unknown maskloop_video keys"):
        TrackingDefaults.from_config({TRACKING_KEY: {"interval": 2}})
    with pytest.raises(ValueError, match="max_key_frame_interval"):
        TrackingDefaults(max_key_frame_interval=0)


def test_shipped_shapes_tiny_declares_detection_tracking() -> None:
    card = json.loads((WEIGHTS / "config.json").read_text())
    assert TrackingDefaults.from_config(card) == TrackingDefaults(max_key_frame_interval=1, trust_memory=False)


# -- the demo clip with the shipped model -------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_clip_objects_are_each_tracked_on_at_least_90_percent_of_their_frames(tmp_path: Path) -> None:
    import torch

    from model.segmenter import Segmenter
    from model.synthetic import SyntheticDomain
    from model.tracker import make_proposer
    from model.video_model import Sam2Video

    torch.set_num_threads(2)
    clip = SyntheticDomain().clip(2026 + 1000, n_frames=24)  # flows.demo.sample_media's clip 0
    path = write_video(tmp_path / "demo.mp4", list(clip.frames), fps=8)
    segmenter = Segmenter.from_pretrained(WEIGHTS, device="cpu")
    video = Sam2Video.from_pretrained(WEIGHTS, device="cpu")
    proposer = make_proposer(
        "everything", segmenter, autoprompt_params={"pred_iou_thresh": 0.7, "stability_score_thresh": 0.9}
    )
    result = track_video(video, path, "everything", segmenter=segmenter, proposer=proposer)  # the tasks' defaults
    assert result.params["trust_memory"] is False and result.key_frames == list(range(24))
    scores = score_tracks(result, clip.masks, result.sampled_frames)
    assert len(scores) == clip.masks.shape[1]
    for n, s in enumerate(scores):
        assert s.coverage >= 0.9, f"object {n} ({clip.families[n]}): tracked on {s.covered}/{s.frames} frames: {s}"


def test_position_link_joins_a_fast_object_by_size_colour_and_predicted_place() -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[_rect(30, 10)] = (200, 30, 30)
    rgb[_rect(30, 25)] = (30, 30, 200)
    last = [_rect(2, 10)]  # 28 px left of the red proposal, no overlap
    red, blue = _rect(30, 10), _rect(30, 25)
    colour = [(200.0, 30.0, 30.0)]
    assert link_by_position([blue, red], [_rect(26, 10)], last, rgb, colour, max_distance=1.5) == [(1, 0)]
    assert link_by_position([red], [np.zeros((H, W), bool)], last, rgb, colour, 1.5) == []  # 3 sizes from its last
    assert link_by_position([blue], [_rect(30, 25)], last, rgb, colour, 1.5) == []  # wrong colour
    assert link_by_position([_rect(30, 10, 30, 20)], [_rect(30, 10)], last, rgb, colour, 1.5) == []  # 7x the area


def test_a_track_without_proposal_is_re_segmented_from_its_predicted_box() -> None:
    gt = _moving_gt(6)
    boxes_asked: list[np.ndarray] = []

    def refine(rgb: np.ndarray, boxes: np.ndarray) -> Instances:
        boxes_asked.append(boxes)
        t = len(boxes_asked) + 2  # asked on frames 3, 4 (A has no proposal there)
        return Instances(masks=gt[t, :1].repeat(len(boxes), 0), scores=np.full(len(boxes), 0.9, np.float32))

    def proposals(index: int) -> np.ndarray:
        return gt[index] if index not in (3, 4) else gt[index, 1:]

    tracker = DetectionTracker(
        None,
        lambda rgb, i: Instances(masks=proposals(i)[proposals(i).reshape(-1, H * W).any(1)]),
        TrackerParams(key_frame_interval=1, trust_memory=False),
        refiner=refine,
    )
    for t in range(6):
        tracker.add_frame(t, t / 10, np.zeros((H, W, 3), np.uint8))
    video = tracker.result(H, W, 10.0, 6, "m", {})
    assert [[f.frame_index for f in t.frames] for t in video.tracks] == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5]]
    assert [b.tolist() for b in boxes_asked[0]] == [[14.0, 4.0, 24.0, 12.0]]  # frame 2's box moved 4 px on
