"""The video memory-path training loop (model/finetune/video_train.py) on a tiny image checkpoint at 64 px."""

import json

import numpy as np
import pytest
import torch

from model.finetune.modelio import build_model, write_card
from model.finetune.recipes import run_recipe, shapes_tiny_model_config
from model.finetune.video import clip_loss
from model.finetune.video_train import VideoFinetuneConfig, finetune_video, load_video_model
from model.synthetic import SyntheticDomain

SIZE = 64
DOMAIN = SyntheticDomain(size=SIZE, radius=(10, 20), n_objects=(1, 2))
MEMORY = {"memory_attention_num_layers": 1, "memory_attention_feed_forward_hidden_size": 64}


@pytest.fixture(scope="module")
def image_checkpoint(tmp_path_factory):
    """An image-only ``sam2`` checkpoint (the shapes-tiny architecture at 64 px) with a model card."""
    path = tmp_path_factory.mktemp("image-ckpt")
    torch.manual_seed(0)
    build_model(shapes_tiny_model_config(SIZE)).save_pretrained(path)
    write_card(path, {"model_id": "tiny-image", "metrics": {"box_iou": 0.5}}, [{"step": 1.0, "box_iou": 0.5}])
    return path


def _config(tmp_path, base, **kw):
    fields = {
        "out_dir": tmp_path / "run",
        "base": base,
        "domain": DOMAIN,
        "frames": 3,
        "memory_config": MEMORY,
        "model_id": "tiny-video",
        "steps": 12,
        "lr": 3e-3,
        "warmup_steps": 1,
        "eval_clips": 2,
        "eval_frames": 3,
        "eval_every_steps": 6,
        "eval_every_s": 1e9,
        "seed": 1,
        "num_threads": 1,
    }
    fields.update(kw)
    return VideoFinetuneConfig(**fields)


def test_video_training_trains_the_memory_path_only_and_saves_a_video_checkpoint_both_loaders_read(
    tmp_path, image_checkpoint
):
    from model.segmenter import Segmenter
    from model.video_model import Sam2Video

    result = finetune_video(_config(tmp_path, image_checkpoint))
    assert result.steps == 12 and [int(r["step"]) for r in result.history] == [6, 12]
    config = json.loads((result.best_dir / "config.json").read_text())
    assert config["model_type"] == "sam2_video" and config["memory_attention_num_layers"] == 1

    base = Segmenter.from_pretrained(image_checkpoint, device="cpu").model.state_dict()
    image = Segmenter.from_pretrained(result.best_dir, device="cpu").model.state_dict()
    assert base.keys() == image.keys()
    changed = {k for k in base if not torch.equal(base[k], image[k])}
    assert changed and all(k.startswith("mask_decoder.pred_obj_score_head.") for k in changed), (
        "of the image parts only the object-score head (which image masks do not read) may change",
        sorted(changed)[:5],
    )

    trained, fresh = load_video_model(result.best_dir)
    assert not fresh, "a sam2_video checkpoint keeps its memory weights"
    start, _ = load_video_model(image_checkpoint, MEMORY)
    before, after = start.state_dict(), trained.state_dict()
    for prefix in ("memory_attention.", "memory_encoder.", "object_pointer_proj.", "mask_decoder.pred_obj_score_head."):
        keys = [k for k in before if k.startswith(prefix) and before[k].is_floating_point()]
        assert keys and any(not torch.equal(before[k], after[k]) for k in keys), prefix
    video = Sam2Video.from_pretrained(result.best_dir, device="cpu")
    assert video.model.config.memory_attention_num_layers == 1


def test_video_training_loss_falls(tmp_path, image_checkpoint):
    result = finetune_video(_config(tmp_path, image_checkpoint, steps=24, eval_every_steps=8))
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 3 and losses[-1] < 0.8 * losses[0], losses


def test_video_card_keeps_the_image_card_and_curve_and_adds_the_video_section(tmp_path, image_checkpoint):
    result = finetune_video(_config(tmp_path, image_checkpoint, steps=2, eval_every_steps=2))
    record = json.loads((result.best_dir / "training.json").read_text())
    assert record["card"]["metrics"] == {"box_iou": 0.5}, "the image metrics stay"
    assert record["curve"] == [{"step": 1.0, "box_iou": 0.5}] and len(record["video_curve"]) == 1
    assert set(record["card"]["video metrics"]) >= {"j_box", "j_mask"}
    readme = (result.best_dir / "README.md").read_text()
    assert "Video training curve" in readme and "Training curve (held-out prompt IoU)" in readme


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frames": 1}, "frames must be >= 2"),
        ({"eval_frames": 1}, "eval_frames must be >= 2"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"mask_prompt_fraction": 1.5}, r"mask_prompt_fraction must be in \[0, 1\]"),
        ({"budget_s": 0.0}, "budget_s must be > 0"),
        ({"train_decoder": True}, "train_decoder needs image_data"),
        ({"motion_until": 2.0}, r"motion_until must be in \[0, 1\]"),
    ],
)
def test_video_config_rejects_bad_values(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, tmp_path, **kwargs)


def test_load_video_model_rejects_a_checkpoint_that_is_not_sam2(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="expected a sam2 or sam2_video checkpoint"):
        load_video_model(tmp_path)


def test_mask_prompted_clip_has_no_frame0_loss_and_tracks_each_object_separately(image_checkpoint):
    model, _ = load_video_model(image_checkpoint, MEMORY)
    clip = DOMAIN.clip(4, n_frames=1)
    # one frame, mask prompt: frame 0's output is the given mask (at the decoder's low resolution), nothing to learn
    result = clip_loss(model.eval(), clip.frames, clip.masks, prompt="mask")
    assert float(result.loss) == 0.0 and result.j_first > 0.6
    with pytest.raises(ValueError, match="prompt must be 'box' or 'mask'"):
        clip_loss(model, clip.frames, clip.masks, prompt="points")


def test_the_video_recipe_builds_on_the_given_image_checkpoint(tmp_path, image_checkpoint):
    from model.finetune import SyntheticSource

    result = run_recipe(
        "shapes-tiny-video",
        tmp_path / "run",
        base=image_checkpoint,
        domain=DOMAIN,
        image_data=SyntheticSource(DOMAIN),
        image_eval=1,
        image_batch_size=1,
        image_tolerance=1.0,
        frames=2,
        eval_frames=2,
        eval_clips=1,
        steps=1,
        num_threads=1,
        loss_size=None,
    )
    assert result.steps == 1
    config = json.loads((result.best_dir / "config.json").read_text())
    assert config["memory_attention_num_layers"] == 2 and config["memory_attention_feed_forward_hidden_size"] == 256
    assert "box_iou" in result.best_metrics, "the recipe trains the decoder, anchored by images"
    assert np.isfinite(result.best_metrics["j_box"])


def test_an_image_finetune_of_a_video_checkpoint_keeps_its_trained_memory_path(tmp_path, image_checkpoint):
    from model.finetune import CocoSource, FinetuneConfig, finetune
    from model.synthetic import to_coco

    video_base = finetune_video(_config(tmp_path / "v", image_checkpoint, steps=2, eval_every_steps=2)).best_dir
    dataset, arrays = to_coco([DOMAIN.image(s) for s in range(2)])
    result = finetune(
        FinetuneConfig(
            out_dir=tmp_path / "img",
            data=CocoSource(dataset, arrays, image_size=SIZE, version="coco:t"),
            base=video_base,
            freeze=("image_encoder", "prompt_encoder"),
            steps=2,
            batch_size=1,
            objects_per_image=1,
            warmup_steps=1,
            eval_images=1,
            eval_every_steps=2,
            num_threads=1,
        )
    )
    assert json.loads((result.best_dir / "config.json").read_text())["model_type"] == "sam2_video"
    before, _ = load_video_model(video_base)
    after, fresh = load_video_model(result.best_dir)
    assert not fresh
    b, a = before.state_dict(), after.state_dict()
    memory = [k for k in b if k.startswith(("memory_attention.", "memory_encoder.", "object_pointer_proj."))]
    assert memory and all(torch.equal(b[k], a[k]) for k in memory), "the video memory path is carried over"
    decoder = [k for k in b if k.startswith("mask_decoder.transformer.") and b[k].is_floating_point()]
    assert any(not torch.equal(b[k], a[k]) for k in decoder), "the decoder did train"


def test_decoder_training_is_anchored_by_images_and_a_checkpoint_is_kept_only_while_image_iou_holds(
    tmp_path, image_checkpoint
):
    from model.finetune import SyntheticSource

    common = {"train_decoder": True, "image_data": SyntheticSource(DOMAIN), "image_eval": 2, "image_batch_size": 1}
    kept = finetune_video(_config(tmp_path / "a", image_checkpoint, steps=3, eval_every_steps=3, **common))
    assert {"box_iou", "point_iou", "j_box"} <= set(kept.best_metrics), "image IoU is tracked beside J"
    start, _ = load_video_model(image_checkpoint, MEMORY)
    after, _ = load_video_model(kept.best_dir)
    decoder = [k for k, v in start.state_dict().items() if k.startswith("mask_decoder.transformer.")]
    assert any(not torch.equal(start.state_dict()[k], after.state_dict()[k]) for k in decoder)

    # a tolerance below zero asks for better image IoU than the base's after 3 steps: nothing may be kept
    strict = finetune_video(
        _config(tmp_path / "b", image_checkpoint, steps=3, eval_every_steps=3, image_tolerance=-1.0, **common)
    )
    assert strict.best_metrics == {} and not (strict.best_dir / "model.safetensors").exists()


def test_masks_of_objects_scored_absent_still_get_a_gradient(image_checkpoint):
    """SAM 2 blanks the masks of objects whose score is <= 0; the loss reads the decoder's masks before that, so a
    fresh score head that starts negative does not cut the mask gradient."""
    model, _ = load_video_model(image_checkpoint, MEMORY)
    with torch.no_grad():
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(-100.0)  # every object scored absent
    clip = DOMAIN.clip(4, n_frames=3)
    result = clip_loss(model.train(), clip.frames, clip.masks, prompt="mask")
    assert result.j_propagated < 0.5, "the shown masks are blank (or the object is absent)"
    result.loss.backward()
    hyper = [p.grad for n, p in model.named_parameters() if n.startswith("mask_decoder.output_hypernetworks_mlps.")]
    assert hyper and any(g is not None and g.abs().sum() > 0 for g in hyper)
