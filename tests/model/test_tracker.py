"""Tracking mechanics: id bookkeeping (with an oracle session), the real SAM 2 video session, memory pruning."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from model.instances import Instances, Prompt
from model.masks import rle_to_mask
from model.tracker import TrackerParams, greedy_match, mask_iou_matrix, track_video
from model.video import write_video
from model.video_model import ObjectFrame, Sam2Video
from tests.support.tiny_models import save_tiny_sam2_video, tiny_sam2_video_model

H, W, T = 48, 64, 30


def _square_clip() -> tuple[list[np.ndarray], np.ndarray]:
    """A bright square that moves right, leaves the frame on frames 10-19 and re-enters at its old place."""
    frames, masks = [], np.zeros((T, H, W), bool)
    for t in range(T):
        rgb = np.full((H, W, 3), 30, np.uint8)
        if not 10 <= t < 20:
            x = 8 + (t % 10)
            masks[t, 12:28, x : x + 16] = True
            rgb[masks[t]] = (220, 60, 60)
        frames.append(rgb)
    return frames, masks


class _OracleSession:
    """Stands in for SAM 2: an object keeps following the ground-truth mask it was prompted with, and is reported
    absent while that mask is empty (``recovers=False``: once absent, it stays lost)."""

    def __init__(self, gt: np.ndarray, recovers: bool = True) -> None:
        self.gt, self.recovers, self.t = gt, recovers, -1
        self.obj_to_gt: dict[int, int] = {}
        self.lost: set[int] = set()
        self.prompts: list[tuple[int, int]] = []

    def _out(self, obj_id: int) -> ObjectFrame:
        mask = self.gt[self.t, self.obj_to_gt[obj_id]]
        if not mask.any():
            self.lost.add(obj_id)
        if obj_id in self.lost and (not self.recovers or not mask.any()):
            return ObjectFrame(mask=np.zeros_like(mask), score=0.1, presence=0.0)
        return ObjectFrame(mask=mask, score=0.9, presence=0.95)

    def step(self, rgb: np.ndarray) -> Mapping[int, ObjectFrame]:
        self.t += 1
        return {i: self._out(i) for i in self.obj_to_gt}

    def prompt(self, masks: dict[int, np.ndarray]) -> Mapping[int, ObjectFrame]:
        for obj_id, mask in masks.items():
            self.prompts.append((self.t, obj_id))
            ious = mask_iou_matrix(mask[None], self.gt[self.t])[0]
            self.obj_to_gt[obj_id] = int(np.argmax(ious))
            self.lost.discard(obj_id)
        return {i: self._out(i) for i in masks}


@dataclass
class _OracleModel:
    gt: np.ndarray
    recovers: bool = True
    model_id: str = "oracle"
    session: _OracleSession | None = None

    def new_session(self, height: int, width: int, prune: bool = True) -> _OracleSession:
        self.session = _OracleSession(self.gt, self.recovers)
        return self.session


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    frames, masks = _square_clip()
    second = np.zeros((T, H, W), bool)
    second[15:, 34:44, 40:56] = True  # a second object enters at frame 15 and stays
    for t in range(15, T):
        frames[t][second[t]] = (60, 220, 60)
    path = write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames, fps=10)
    return path, np.stack([masks, second], axis=1)


def test_object_leaving_and_reentering_keeps_one_id_when_memory_recovers(clip: tuple[Path, np.ndarray]) -> None:
    path, gt = clip
    priors = {t: Instances(masks=gt[t][gt[t].reshape(2, -1).any(1)], labels=None) for t in (0, 15, 25)}
    model = _OracleModel(gt)
    result = track_video(model, path, "prior", priors=priors, key_frame_interval=5)
    assert [t.track_id for t in result.tracks] == [1, 2]
    square, newcomer = result.tracks
    assert [f.frame_index for f in square.frames] == [t for t in range(T) if not 10 <= t < 20]
    assert [f.frame_index for f in newcomer.frames] == list(range(15, T))
    assert model.session is not None and model.session.prompts == [(0, 1), (15, 2)]  # no re-prompt on re-entry
    assert result.key_frames == [0, 5, 10, 15, 20, 25]
    for f in square.frames:
        assert np.array_equal(rle_to_mask(f.rle), gt[f.frame_index, 0])


def test_lost_object_reappearing_at_its_last_place_is_reacquired_with_its_id(clip: tuple[Path, np.ndarray]) -> None:
    path, gt = clip
    priors = {t: Instances(masks=gt[t, :1], labels=["square"]) for t in (0, 25)}  # IoU 0.6 with frame 9's mask
    model = _OracleModel(gt[:, :1], recovers=False)
    result = track_video(model, path, "prior", priors=priors, key_frame_interval=100)
    assert len(result.tracks) == 1
    assert model.session is not None and model.session.prompts == [(0, 1), (25, 1)]
    assert [f.frame_index for f in result.tracks[0].frames] == list(range(10)) + list(range(25, T))
    assert [p.params["frame_index"] for p in result.tracks[0].prompts] == [0, 25]


def test_detection_inside_a_visible_track_does_not_start_a_new_track(clip: tuple[Path, np.ndarray]) -> None:
    path, gt = clip
    part = gt[0, 0].copy()
    part[:, :14] = False  # the right part of the square: IoU < 0.5 but fully covered by the track
    priors = {0: Instances(masks=gt[0, :1]), 1: Instances(masks=part[None])}
    result = track_video(_OracleModel(gt[:, :1]), path, "prior", priors=priors, max_frames=3)
    assert [t.track_id for t in result.tracks] == [1]


@pytest.mark.parametrize(("cut", "expected_ids"), [(False, [1]), (True, [1, 2])])
def test_scene_cut_prevents_reacquiring_a_lost_track_by_position(
    tmp_path: Path, cut: bool, expected_ids: list[int]
) -> None:
    gt = np.zeros((20, 2, H, W), bool)
    gt[:10, 0, 10:30, 10:30] = True  # object A in the first shot
    gt[10:, 1, 12:30, 12:30] = True  # object B at about the same place from frame 10
    frames = []
    for t in range(20):
        background = 200 if (cut and t >= 10) else 30
        rgb = np.full((H, W, 3), background, np.uint8)
        rgb[gt[t].any(axis=0)] = (220, 60, 60)
        frames.append(rgb)
    path = write_video(tmp_path / "shots.mp4", frames, fps=10)
    priors = {0: Instances(masks=gt[0, :1]), 10: Instances(masks=gt[10, 1:])}
    result = track_video(_OracleModel(gt), path, "prior", priors=priors, key_frame_interval=100)
    assert [t.track_id for t in result.tracks] == expected_ids
    assert result.key_frames == [0, 10]


@pytest.mark.parametrize(
    ("iou", "threshold", "expected"),
    [
        (np.zeros((0, 0)), 0.5, []),
        (np.array([[0.9, 0.6], [0.7, 0.2]]), 0.5, [(0, 0)]),
        (np.array([[0.9, 0.6], [0.7, 0.55]]), 0.5, [(0, 0), (1, 1)]),
        (np.array([[0.4]]), 0.5, []),
        (np.array([[0.6, 0.8]]), 0.5, [(0, 1)]),
    ],
)
def test_greedy_match_table(iou: np.ndarray, threshold: float, expected: list[tuple[int, int]]) -> None:
    assert greedy_match(iou, threshold) == expected


def test_mask_iou_matrix_values() -> None:
    a = np.zeros((2, 4, 4), bool)
    a[0, :2] = True
    b = np.zeros((2, 4, 4), bool)
    b[0, :1] = True
    assert mask_iou_matrix(a, b) == pytest.approx(np.array([[0.5, 0.0], [0.0, 0.0]]))


@pytest.mark.parametrize(
    "kwargs",
    [{"key_frame_interval": 0}, {"match_iou": 0.0}, {"reacquire_iou": 1.5}, {"covered": -1.0}, {"max_objects": 0}],
)
def test_tracker_params_reject_out_of_range_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TrackerParams(**kwargs)  # type: ignore[arg-type]


def test_prior_lineage_is_kept_on_the_track(clip: tuple[Path, np.ndarray]) -> None:
    path, gt = clip
    prior = Instances(masks=gt[0, :1], labels=["square"], prompts=[Prompt("prior", {"annotation_id": 7})])
    result = track_video(_OracleModel(gt[:, :1]), path, "prior", priors={0: prior}, max_frames=2)
    assert result.tracks[0].prompts == [Prompt("prior", {"annotation_id": 7, "frame_index": 0})]
    assert result.params["strategy"] == "prior" and result.model_id == "oracle"


def test_strategy_without_segmenter_is_rejected(clip: tuple[Path, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="needs an image segmenter"):
        track_video(_OracleModel(clip[1]), clip[0], "everything")


# -- the real transformers Sam2VideoModel (tiny, random weights) -------------------------------------------------


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory: pytest.TempPathFactory) -> Sam2Video:
    torch.set_num_threads(1)
    return Sam2Video.from_pretrained(save_tiny_sam2_video(tmp_path_factory.mktemp("sam2v")))


def test_track_video_with_real_model_reports_sampled_indices_times_and_scores(
    tiny_video: Sam2Video, clip: tuple[Path, np.ndarray]
) -> None:
    path, gt = clip
    priors = {0: Instances(masks=gt[0, :1], labels=["square"]), 16: Instances(masks=gt[16, 1:], labels=["box"])}
    result = track_video(tiny_video, path, "prior", priors=priors, every=2, key_frame_interval=4)
    assert result.sampled_frames == list(range(0, T, 2))
    assert result.key_frames == [0, 8, 16, 24]
    assert result.model_id.startswith("sam2_video:")
    assert (result.height, result.width, result.frame_count) == (H, W, T)
    assert [t.label for t in result.tracks][:2] == ["square", "box"]
    first = result.tracks[0].frames[0]
    assert (first.frame_index, first.score, first.presence) == (0, 1.0, pytest.approx(1.0, abs=1e-4))
    assert mask_iou_matrix(rle_to_mask(first.rle)[None], gt[0, :1])[0, 0] > 0.8  # the prompt, via low-res logits
    for track in result.tracks:
        for f in track.frames:
            assert f.frame_index % 2 == 0
            assert f.time_s == pytest.approx(f.frame_index / 10)
            assert 0.5 <= f.presence <= 1.0 and np.isfinite(f.score)


def _run_session(video: Sam2Video, prune: bool, n: int = 14) -> tuple[list[dict[int, ObjectFrame]], object]:
    rng = np.random.default_rng(0)
    session = video.new_session(H, W, prune=prune)
    outs = []
    for t in range(n):
        out = dict(session.step(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)))
        if t in (0, 5):
            mask = np.zeros((H, W), bool)
            mask[5 + t : 30, 10 + 2 * t : 40] = True
            out.update(session.prompt({t + 1: mask}))
        outs.append(out)
    return outs, session


def test_memory_pruning_gives_identical_masks_and_scores(tiny_video: Sam2Video) -> None:
    pruned, pruned_session = _run_session(tiny_video, prune=True)
    full, full_session = _run_session(tiny_video, prune=False)
    assert sum(int(o.mask.sum()) for out in full for o in out.values()) > 0  # masks are not trivially empty
    for a, b in zip(pruned, full, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(a[k].mask, b[k].mask)
            assert a[k].score == pytest.approx(b[k].score, abs=1e-6)
            assert a[k].presence == pytest.approx(b[k].presence, abs=1e-6)
    inner = pruned_session.session  # type: ignore[attr-defined]
    assert len(inner.processed_frames) == 1
    assert len(full_session.session.processed_frames) == 14  # type: ignore[attr-defined]
    for per_obj in inner.output_dict_per_obj.values():
        assert len(per_obj["non_cond_frame_outputs"]) <= pruned_session.history + 1  # type: ignore[attr-defined]
        assert all("high_res_masks" not in v for v in per_obj["non_cond_frame_outputs"].values())


@pytest.mark.parametrize("hidden_size", [64, 128])  # 64: memory as wide as the decoder (shapes-tiny's layout)
def test_video_model_loads_from_an_image_only_sam2_checkpoint_and_tracks_a_prompted_object(
    tmp_path: Path, hidden_size: int
) -> None:
    from transformers import Sam2Model

    from tests.support.tiny_models import tiny_sam2_config

    torch.manual_seed(0)
    image_model = Sam2Model(tiny_sam2_config(image_size=64, hidden_size=hidden_size))
    image_model.save_pretrained(tmp_path)
    video = Sam2Video.from_pretrained(tmp_path)
    assert video.model.config.model_type == "sam2_video"
    for name, value in image_model.state_dict().items():
        assert torch.equal(video.model.state_dict()[name], value), name
    session = video.new_session(32, 40)
    session.step(np.zeros((32, 40, 3), np.uint8))
    mask = np.zeros((32, 40), bool)
    mask[4:20, 4:20] = True
    assert session.prompt({1: mask})[1].mask.shape == (32, 40)
    for _ in range(2):  # later frames read the prompted frame's memory and object pointer
        assert session.step(np.zeros((32, 40, 3), np.uint8))[1].mask.shape == (32, 40)


def test_loading_an_image_only_checkpoint_as_video_says_so_in_one_line_not_a_per_key_report(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from tests.support.tiny_models import save_tiny_sam2

    save_tiny_sam2(tmp_path, image_size=64, hidden_size=128)
    capfd.readouterr()
    with caplog.at_level("WARNING", logger="model.video_model"):
        Sam2Video.from_pretrained(tmp_path, device="cpu")
    printed = "".join(capfd.readouterr())
    assert "LOAD REPORT" not in printed and "MISSING" not in printed, printed[:500]
    assert any("memory modules are untrained" in r.getMessage() for r in caplog.records)


def test_session_rejects_wrong_frame_size_and_prompt_before_first_frame() -> None:
    video = Sam2Video(tiny_sam2_video_model(), "tiny")
    session = video.new_session(H, W)
    with pytest.raises(ValueError, match="needs a frame first"):
        session.prompt({1: np.ones((H, W), bool)})
    with pytest.raises(ValueError, match="frame must be"):
        session.step(np.zeros((H + 1, W, 3), np.uint8))


@pytest.fixture(scope="module")
def shared_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny_models import save_tiny_sam2

    return save_tiny_sam2(tmp_path_factory.mktemp("sam2img"), image_size=64, hidden_size=128)


@pytest.mark.parametrize("strategy", ["everything", "prior"])
def test_image_and_video_models_from_one_checkpoint_track_end_to_end(
    shared_checkpoint: Path, clip: tuple[Path, np.ndarray], strategy: str
) -> None:
    from model.segmenter import Segmenter

    path, gt = clip
    segmenter = Segmenter.from_pretrained(shared_checkpoint, device="cpu")
    video = Sam2Video.from_pretrained(shared_checkpoint, device="cpu")
    calls: list[int] = []

    def counting(rgb: np.ndarray, frame_index: int) -> Instances:
        calls.append(frame_index)
        return proposer(rgb, frame_index)

    from model.tracker import make_proposer

    priors = {0: Instances(masks=gt[0, :1], labels=["square"])}
    params = (
        {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
        if strategy == "everything"
        else {}
    )
    proposer = make_proposer(strategy, segmenter, priors=priors, autoprompt_params=params)
    result = track_video(
        video,
        path,
        strategy,
        priors=priors,
        every=3,
        key_frame_interval=5,
        max_frames=8,
        segmenter=segmenter,
        proposer=counting,
    )
    assert calls == [0, 15]  # sampled frames 0, 3, ..., 21: key frames every 5 sampled frames
    assert result.sampled_frames == [0, 3, 6, 9, 12, 15, 18, 21]
    assert len(result.tracks) >= 1  # a random model still proposes (everything) / keeps the prior (prior)
    for track in result.tracks:
        assert track.prompts and track.prompts[0].kind in ("grid", "point", "prior", "box", "mask")
        assert {f.frame_index for f in track.frames} <= set(result.sampled_frames)


def test_track_video_on_audio_only_file_raises_bad_media(tmp_path: Path) -> None:
    from model.errors import BadMediaError
    from tests.support.media import write_audio_only

    path = write_audio_only(tmp_path / "a.m4a")
    with pytest.raises(BadMediaError, match="no video stream"):
        track_video(_OracleModel(np.zeros((1, 1, H, W), bool)), path, "prior", priors={})
