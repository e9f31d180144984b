"""Active-learning uncertainty signals, table-tested on hand-made masks and logits (with empty and degenerate rows)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model import al_scores as S
from model.instances import Instances, Prompt

H = W = 8


def _box_mask(y0: int, y1: int, x0: int, x1: int, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _logits(*values: np.ndarray) -> np.ndarray:
    return np.stack(values).astype(np.float32)


SQUARE_SHARP = np.where(_box_mask(2, 6, 2, 6), 5.0, -5.0)  # far from 0 everywhere: stable
# a ramp: 16 pixels above +1, 32 above -1 (half the low-threshold mask survives the high threshold)
RAMP = np.full((H, W), -5.0)
RAMP[2:6, 2:6] = 2.0
RAMP[6:8, 0:8] = 0.0  # 16 pixels between -1 and +1
ALL_LOW = np.full((H, W), -3.0)  # empty even at the low threshold
ALL_HIGH = np.full((H, W), 3.0)


@pytest.mark.parametrize(
    ("logits", "expected"),
    [
        pytest.param(_logits(SQUARE_SHARP), [1.0], id="sharp-square-is-stable"),
        pytest.param(_logits(RAMP), [0.5], id="half-the-mask-is-near-the-threshold"),
        pytest.param(_logits(ALL_LOW), [0.0], id="empty-at-low-threshold-scores-0"),
        pytest.param(_logits(ALL_HIGH), [1.0], id="whole-image-is-stable"),
        pytest.param(_logits(SQUARE_SHARP, ALL_LOW, RAMP), [1.0, 0.0, 0.5], id="rows-are-independent"),
        pytest.param(np.zeros((0, H, W), np.float32), [], id="no-instances"),
    ],
)
def test_stability_score_is_iou_of_masks_at_shifted_thresholds(logits: np.ndarray, expected: list[float]) -> None:
    np.testing.assert_allclose(S.stability_score(logits), expected, atol=1e-6)


def test_stability_score_matches_the_torch_version_the_segmenter_stores() -> None:
    import torch

    from model.preprocess import stability_scores

    logits = _logits(SQUARE_SHARP, RAMP, ALL_LOW, ALL_HIGH)
    np.testing.assert_allclose(S.stability_score(logits), stability_scores(torch.from_numpy(logits)).numpy())


def _mm(*masks: np.ndarray) -> np.ndarray:
    """(1, M, H, W) logits of M candidate masks for one prompt."""
    return np.stack([np.where(m, 4.0, -4.0) for m in masks])[None].astype(np.float32)


A = _box_mask(0, 4, 0, 4)  # 16 px
B = _box_mask(0, 4, 0, 8)  # 32 px, contains A
C = _box_mask(4, 8, 4, 8)  # disjoint from A
EMPTY = np.zeros((H, W), bool)


@pytest.mark.parametrize(
    ("logits", "expected"),
    [
        pytest.param(_mm(A, A, A), [0.0], id="identical-candidates-agree"),
        pytest.param(_mm(A, B, B), [1 - (0.5 + 0.5 + 1.0) / 3], id="nested-candidates"),
        pytest.param(_mm(A, C, C), [1 - (0 + 0 + 1.0) / 3], id="disjoint-candidates"),
        pytest.param(_mm(EMPTY, EMPTY, EMPTY), [0.0], id="all-empty-candidates-agree"),
        pytest.param(_mm(A, EMPTY, EMPTY), [1 - (0 + 0 + 1.0) / 3], id="one-non-empty"),
        pytest.param(np.zeros((0, 3, H, W), np.float32), [], id="no-prompts"),
    ],
)
def test_multimask_disagreement_is_one_minus_mean_pairwise_iou(logits: np.ndarray, expected: list[float]) -> None:
    np.testing.assert_allclose(S.multimask_disagreement(logits), expected, atol=1e-6)


def test_multimask_disagreement_of_a_single_candidate_is_unknown() -> None:
    assert np.isnan(S.multimask_disagreement(_mm(A))).all()


@pytest.mark.parametrize(
    ("box", "mask", "expected"),
    [
        pytest.param([0, 0, 4, 4], A, 1.0, id="box-is-the-mask-box"),
        pytest.param([0, 0, 8, 4], A, 0.5, id="box-twice-the-mask"),
        pytest.param([4, 4, 8, 8], A, 0.0, id="mask-outside-the-box"),
        pytest.param([0, 0, 4, 4], EMPTY, 0.0, id="empty-mask-scores-0"),
        pytest.param([2, 2, 2, 2], A, 0.0, id="degenerate-zero-area-box"),
        pytest.param([math.nan] * 4, A, math.nan, id="no-box-is-unknown"),
    ],
)
def test_box_mask_iou_compares_the_prompt_box_with_the_mask_box(
    box: list[float], mask: np.ndarray, expected: float
) -> None:
    got = S.box_mask_iou(np.array([box], np.float32), mask[None])
    np.testing.assert_allclose(got, [expected], atol=1e-6, equal_nan=True)


def test_box_mask_iou_needs_one_box_per_mask() -> None:
    with pytest.raises(ValueError, match="one box per mask"):
        S.box_mask_iou(np.zeros((2, 4)), A[None])


@pytest.mark.parametrize(
    ("scores", "threshold", "expected"),
    [
        pytest.param([0.35, 0.675, 1.0], 0.35, [0.0, 0.5, 1.0], id="scaled-above-the-threshold"),
        pytest.param([0.1], 0.35, [0.0], id="below-the-threshold-clips-to-0"),
        pytest.param([math.nan], 0.35, [math.nan], id="no-detector-score-is-unknown"),
        pytest.param([], 0.35, [], id="no-instances"),
    ],
)
def test_detector_margin(scores: list[float], threshold: float, expected: list[float]) -> None:
    np.testing.assert_allclose(S.detector_margin(np.array(scores), threshold), expected, atol=1e-6, equal_nan=True)


def _signals(pred, stab, agree, box, margin) -> S.InstanceSignals:  # noqa: ANN001
    return S.InstanceSignals(*(np.asarray(v, np.float32) for v in (pred, stab, agree, box, margin)))


@pytest.mark.parametrize(
    ("signals", "weights", "expected"),
    [
        pytest.param(_signals([0.9], [0.5], [math.nan], [math.nan], [math.nan]), None, [0.7], id="mean-of-known"),
        pytest.param(_signals([1.0], [0.0], [1.0], [0.0], [1.0]), None, [0.6], id="all-five"),
        pytest.param(
            _signals([1.0], [0.0], [math.nan], [math.nan], [math.nan]), {"stability": 3.0}, [0.25], id="weighted"
        ),
        pytest.param(
            _signals([math.nan], [math.nan], [math.nan], [math.nan], [math.nan]), None, [0.0], id="nothing-known"
        ),
        pytest.param(
            _signals([0.9], [0.5], [math.nan], [math.nan], [math.nan]), {"predicted_iou": 0.0}, [0.5], id="zero-weight"
        ),
        pytest.param(_signals([], [], [], [], []), None, [], id="no-instances"),
    ],
)
def test_instance_confidence_is_the_weighted_mean_of_known_signals(
    signals: S.InstanceSignals, weights: dict[str, float] | None, expected: list[float]
) -> None:
    np.testing.assert_allclose(S.instance_confidence(signals, weights), expected, atol=1e-6)


def test_instance_confidence_rejects_unknown_signal_names() -> None:
    with pytest.raises(ValueError, match="unknown signals"):
        S.instance_confidence(_signals([1.0], [1.0], [1.0], [1.0], [1.0]), {"entropy": 1.0})


@pytest.mark.parametrize(
    ("values", "how", "expected"),
    [
        pytest.param([0.9, 0.2, 0.6], "min", 0.2, id="weakest-instance"),
        pytest.param([0.9, 0.2, 0.7], "mean", 0.6, id="mean"),
        pytest.param([0.0, 1.0, 1.0, 1.0, 1.0], "p25", 1.0, id="p25"),
        pytest.param([], "min", 0.0, id="no-instance-means-look-here"),
        pytest.param([math.nan], "mean", 0.0, id="only-unknown"),
    ],
)
def test_image_confidence_aggregates_instances(values: list[float], how: str, expected: float) -> None:
    assert S.image_confidence(values, how) == pytest.approx(expected)  # type: ignore[arg-type]


def test_instance_signals_read_the_prompt_box_and_detector_score_from_instances() -> None:
    inst = Instances(
        masks=np.stack([A, C, EMPTY]),
        scores=[0.8, 0.6, 0.1],
        stability=[0.9, math.nan, 0.0],
        detector_scores=[0.675, math.nan, 0.2],
        prompts=[
            Prompt("text", {"box": [0, 0, 4, 4], "phrase": "a"}),
            Prompt("grid", {"point": [5, 5]}),
            Prompt("box", {"box": [0, 0, 2, 2]}),
        ],
    )
    sig = S.instance_signals(inst)
    np.testing.assert_allclose(sig.predicted_iou, [0.8, 0.6, 0.1], atol=1e-6)
    np.testing.assert_allclose(sig.stability, [0.9, math.nan, 0.0], atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(sig.box_agreement, [1.0, math.nan, 0.0], atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(sig.detector_margin, [0.5, math.nan, 0.0], atol=1e-6, equal_nan=True)
    assert np.isnan(sig.multimask_agreement).all()
    assert sig.to_json()["stability"] == [0.9, None, 0.0]


# -- video tracks ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("frames", "scores", "areas", "sampled", "drop", "jump", "gaps", "gap_frames"),
    [
        pytest.param([0, 1, 2], [0.9, 0.9, 0.9], [100, 100, 100], [0, 1, 2], 0.0, 0.0, 0, 0, id="steady"),
        pytest.param([0, 1, 2], [0.9, 0.5, 0.8], [100, 100, 100], [0, 1, 2], 0.4, 0.0, 0, 0, id="score-drop"),
        pytest.param([0, 1, 2], [0.9, 0.9, 0.9], [100, 25, 100], [0, 1, 2], 0.0, 0.75, 0, 0, id="area-jump"),
        pytest.param([0, 3, 4, 8], [0.9] * 4, [50] * 4, list(range(10)), 0.0, 0.0, 2, 5, id="two-reid-gaps"),
        pytest.param([0, 2, 4], [0.9] * 3, [50] * 3, [0, 2, 4], 0.0, 0.0, 0, 0, id="stride-is-not-a-gap"),
        pytest.param([0, 1, 2], [0.9] * 3, [50, 0, 50], [0, 1, 2], 0.0, 0.0, 1, 1, id="empty-mask-counts-as-absent"),
        pytest.param([5], [0.7], [30], [0, 5, 9], 0.0, 0.0, 0, 0, id="single-frame"),
        pytest.param([], [], [], [0, 1], 0.0, 0.0, 0, 0, id="empty-track"),
    ],
)
def test_track_signals(frames, scores, areas, sampled, drop, jump, gaps, gap_frames) -> None:  # noqa: ANN001
    sig = S.track_signals(frames, scores, areas, sampled)
    assert sig.score_drop == pytest.approx(drop)
    assert sig.area_jump == pytest.approx(jump)
    assert (sig.reid_gaps, sig.gap_frames) == (gaps, gap_frames)


def test_track_confidence_falls_with_drops_jumps_and_gaps_and_is_0_for_an_empty_track() -> None:
    steady = S.track_signals([0, 1, 2], [0.9] * 3, [100] * 3, [0, 1, 2])
    dropping = S.track_signals([0, 1, 2], [0.9, 0.3, 0.9], [100] * 3, [0, 1, 2])
    gappy = S.track_signals([0, 2], [0.9] * 2, [100] * 2, [0, 1, 2])
    assert steady.confidence == pytest.approx((0.9 + 1 + 1) / 3)
    assert dropping.confidence < steady.confidence
    assert gappy.confidence == pytest.approx(steady.confidence / 2)
    assert S.track_signals([], [], [], [0]).confidence == 0.0


def test_track_signals_reject_unordered_frames_and_ragged_inputs() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        S.track_signals([2, 1], [0.5, 0.5], [1, 1], [1, 2])
    with pytest.raises(ValueError, match="one score and area per frame"):
        S.track_signals([1, 2], [0.5], [1, 1], [1, 2])


def test_video_confidence_is_the_weakest_track_and_0_without_tracks() -> None:
    from model.masks import mask_to_rle
    from model.tracks import Track, TrackFrame, VideoTracks

    def frame(i: int, score: float, mask: np.ndarray) -> TrackFrame:
        return TrackFrame(i, i / 10, mask_to_rle(mask), (0.0, 0.0, 4.0, 4.0), score, 1.0)

    good = Track(1, "object", [frame(0, 0.9, A), frame(1, 0.9, A)])
    lost = Track(2, "object", [frame(0, 0.9, C), frame(2, 0.9, C)])
    video = VideoTracks(H, W, 10.0, 3, [0, 1, 2], [good, lost])
    conf, per_track = S.video_confidence(video)
    assert [s.reid_gaps for s in per_track] == [0, 1]
    assert conf == pytest.approx(per_track[1].confidence)
    assert S.video_confidence(VideoTracks(H, W, 10.0, 3, [0, 1, 2], []))[0] == 0.0


# -- weights learnt from corrections ---------------------------------------------------------------------------------
def _rows(n: int, **columns: np.ndarray) -> np.ndarray:
    mat = np.full((n, len(S.SIGNALS)), np.nan)
    for name, values in columns.items():
        mat[:, S.SIGNALS.index(name)] = values
    return mat


TRUE = np.linspace(0.0, 1.0, 10)


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        pytest.param({"box_agreement": TRUE}, {"box_agreement": 1.0}, id="a-perfect-ranker-gets-weight-1"),
        pytest.param(
            {"box_agreement": TRUE, "multimask_agreement": TRUE[::-1]},
            {"box_agreement": 1.0, "multimask_agreement": 0.0},
            id="an-inverted-signal-gets-0",
        ),
        pytest.param(
            {"box_agreement": TRUE, "stability": np.full(10, 0.5)}, {"box_agreement": 1.0}, id="a-constant-gets-0"
        ),
        pytest.param(
            {"predicted_iou": np.array([0, 1, 2, 3, 4, 5, 6, 7, 9, 8], float)},
            {"predicted_iou": pytest.approx(1 - 6 * 2 / (10 * 99), abs=1e-6)},  # 1 - 6 sum d^2 / n(n^2 - 1)
            id="rank-correlation",
        ),
    ],
)
def test_fit_weights_weighs_each_signal_by_how_well_it_ranks_true_iou(columns: dict, expected: dict) -> None:
    weights = S.fit_weights(_rows(10, **columns), TRUE)
    assert weights is not None
    assert {k: v for k, v in weights.items() if k in expected} == expected
    assert all(weights[k] == 0.0 for k in S.SIGNALS if k not in columns)


@pytest.mark.parametrize(
    ("mat", "true"),
    [
        pytest.param(_rows(5, box_agreement=TRUE[:5]), TRUE[:5], id="too-few-instances"),
        pytest.param(_rows(10, box_agreement=TRUE[::-1]), TRUE, id="nothing-correlates-positively"),
        pytest.param(_rows(10), TRUE, id="no-signal-known"),
        pytest.param(_rows(10, box_agreement=TRUE), np.full(10, 0.3), id="constant-truth"),
    ],
)
def test_fit_weights_keeps_the_defaults_when_the_corrections_say_nothing(mat: np.ndarray, true: np.ndarray) -> None:
    assert S.fit_weights(mat, true) is None


def test_fit_weights_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="fit_weights needs"):
        S.fit_weights(np.zeros((3, 2)), np.zeros(3))
