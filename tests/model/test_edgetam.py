"""EdgeTAM through the SAM 2 ``Segmenter`` interface (points, boxes, mask prompts, everything) on a small random
EdgeTamModel, and the clear error when its encoder's package (timm) is missing.

The model tests need ``timm`` (EdgeTAM's RepViT encoder is a timm model) and a torchvision that loads against the
installed torch; where either is missing they skip, saying so."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.autoprompt import auto_segment
from model.cache import clear_cache, get_segmenter
from model.errors import ModelDependencyError
from model.segmenter import Segmenter


def _timm_usable() -> str | None:
    try:
        import timm  # noqa: F401
    except Exception as exc:  # ImportError, or torchvision failing to load against this torch
        return f"EdgeTAM needs timm (+ a torchvision for this torch): {exc.__class__.__name__}: {exc}"
    return None


needs_timm = pytest.mark.skipif(_timm_usable() is not None, reason=str(_timm_usable()))


def test_edgetam_without_timm_names_the_package_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "edgetam-dir"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "edgetam"}))
    (path / "model.safetensors").write_bytes(b"x")
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "timm" else real(name, *args)

    monkeypatch.setattr("model.families.spec.importlib.util.find_spec", find_spec)
    with pytest.raises(ModelDependencyError, match=r"edgetam-dir.*EdgeTAM checkpoint.*pip install timm"):
        get_segmenter(path, device="cpu")


@pytest.fixture(scope="module")
def edgetam(tmp_path_factory: pytest.TempPathFactory) -> Segmenter:
    from tests.support.tiny_models import save_tiny_edgetam

    clear_cache()
    return Segmenter.from_pretrained(
        save_tiny_edgetam(tmp_path_factory.mktemp("edgetam") / "tiny-edgetam"), device="cpu"
    )


def _image(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@needs_timm
def test_edgetam_loads_as_a_segmenter_with_lineage(edgetam: Segmenter) -> None:
    assert type(edgetam.model).__name__ == "EdgeTamModel"
    assert edgetam.model_version.startswith("tiny-edgetam@")
    assert edgetam.input_size == 256 and edgetam.mask_input_size == (64, 64)


@needs_timm
def test_edgetam_points_boxes_and_masks_give_one_mask_per_prompt(edgetam: Segmenter) -> None:
    image = _image(0, 150, 220)
    emb = edgetam.embed(image)
    boxes = np.array([[5, 5, 60, 70], [30, 20, 200, 140]], np.float32)
    points = np.array([[[40, 40]], [[150, 100]]], np.float32)
    by_box = edgetam.predict(emb, boxes=boxes)[0]
    by_point = edgetam.predict(emb, points=points, multimask=True)[0]
    by_mask = edgetam.predict(emb, mask_inputs=edgetam.decode(emb, boxes=boxes).logits[:, 0].numpy())[0]
    for inst in (by_box, by_point, by_mask):
        assert len(inst) == 2 and inst.masks.shape == (2, 150, 220)
        assert np.all(np.isfinite(inst.scores))
    assert [p.kind for p in by_box.prompts or []] == ["box", "box"]


@needs_timm
def test_edgetam_batched_prompts_equal_one_by_one(edgetam: Segmenter) -> None:
    image = _image(1, 120, 160)
    emb = edgetam.embed(image)
    boxes = np.array([[5, 5, 60, 70], [30, 20, 150, 110], [0, 0, 160, 120]], np.float32)
    batched = edgetam.decode(emb, boxes=boxes)
    single = [edgetam.decode(emb, boxes=boxes[i : i + 1]) for i in range(3)]
    for i, one in enumerate(single):
        assert np.allclose(batched.logits[i].numpy(), one.logits[0].numpy(), atol=1e-4)


@needs_timm
def test_everything_strategy_runs_on_edgetam(edgetam: Segmenter) -> None:
    images = [_image(2, 96, 128), _image(3, 64, 64)]
    out = auto_segment(
        edgetam, images, "everything", points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    assert [i.masks.shape[1:] for i in out] == [(96, 128), (64, 64)]
    assert all(p.model_id == edgetam.model_version for inst in out for p in inst.prompts or [])


# -- video: EdgeTamVideoModel through the same streaming session and tracker as SAM 2 -----------------------------


@pytest.fixture(scope="module")
def edgetam_video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny_models import save_tiny_edgetam

    # memories are 64 wide (as released), so the video model needs a feature width that is a multiple of 64
    return save_tiny_edgetam(tmp_path_factory.mktemp("edgetam-video") / "tiny-edgetam", image_size=128, hidden_size=64)


def _square_clip(frames: int, h: int = 48, w: int = 64) -> tuple[list[np.ndarray], np.ndarray]:
    """A bright square moving right on a dark background, and its masks."""
    rgb = np.zeros((frames, h, w, 3), np.uint8)
    masks = np.zeros((frames, h, w), bool)
    for t in range(frames):
        masks[t, 12:32, 4 + t : 24 + t] = True
        rgb[t][masks[t]] = 220
    return list(rgb), masks


@needs_timm
def test_edgetam_checkpoint_loads_as_a_video_model_keeping_its_image_weights(edgetam_video_dir: Path) -> None:
    import torch
    from transformers import EdgeTamModel

    from model.video_model import Sam2Video

    video = Sam2Video.from_pretrained(edgetam_video_dir, device="cpu")
    assert type(video.model).__name__ == "EdgeTamVideoModel"
    assert video.model_id.startswith("edgetam_video:tiny-edgetam@")
    image_state = EdgeTamModel.from_pretrained(edgetam_video_dir).state_dict()
    video_state = video.model.state_dict()
    shared = [k for k in image_state if k in video_state]
    assert len(shared) > 100
    assert all(torch.equal(video_state[k], image_state[k]) for k in shared)


@needs_timm
def test_edgetam_video_session_tracks_a_prompted_object_with_memory_flat_in_clip_length(
    edgetam_video_dir: Path,
) -> None:
    from model.video_model import Sam2Video

    video = Sam2Video.from_pretrained(edgetam_video_dir, device="cpu")
    frames, masks = _square_clip(24)  # longer than the memory bank reads (16 frames back, object pointers)

    def run(prune: bool) -> tuple[list[dict[int, Any]], Any]:
        session = video.new_session(48, 64, prune=prune)
        outs = [session.step(frames[0]) | session.prompt({1: masks[0]})]
        outs += [session.step(frame) for frame in frames[1:]]
        return outs, session

    pruned, pruned_session = run(True)
    full, full_session = run(False)
    assert all(set(out) == {1} and out[1].mask.shape == (48, 64) for out in pruned)
    for a, b in zip(pruned, full, strict=True):  # pruning drops only what the memory bank no longer reads
        assert np.array_equal(a[1].mask, b[1].mask)
        assert a[1].score == pytest.approx(b[1].score, abs=1e-6)
    inner = pruned_session.session
    assert len(inner.processed_frames) == 1 and len(full_session.session.processed_frames) == 24
    stored = inner.output_dict_per_obj[0]["non_cond_frame_outputs"]
    assert len(stored) <= pruned_session.history + 1 < 23
    assert len(full_session.session.output_dict_per_obj[0]["non_cond_frame_outputs"]) == 23
    assert all(v.get("maskmem_features") is not None for v in stored.values())  # memories were encoded


@needs_timm
def test_track_video_runs_edgetam_end_to_end_with_a_prior_mask(edgetam_video_dir: Path, tmp_path: Path) -> None:
    from model.instances import Instances
    from model.tracker import track_video
    from model.video import write_video
    from model.video_model import Sam2Video

    frames, masks = _square_clip(12)
    path = write_video(tmp_path / "clip.mp4", frames, fps=10)
    video = Sam2Video.from_pretrained(edgetam_video_dir, device="cpu")
    result = track_video(video, path, "prior", priors={0: Instances(masks=masks[:1], labels=["square"])}, every=1)
    assert result.model_id.startswith("edgetam_video:")
    assert [t.label for t in result.tracks] == ["square"]
    assert result.tracks[0].frames[0].frame_index == 0
    assert result.sampled_frames == list(range(12))
