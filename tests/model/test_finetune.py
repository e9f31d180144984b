import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.errors import BadMediaError
from model.finetune import CocoSource, FinetuneConfig, SyntheticSource, finetune, run_recipe
from model.finetune.cli import main as cli_main
from model.finetune.cli import parse_synthetic
from model.finetune.data import BoxFillSource
from model.finetune.engine import prompt_warmup
from model.finetune.evaluate import prompt_iou
from model.finetune.losses import dice_loss, focal_loss, mask_iou, mask_losses
from model.finetune.modelio import build_model, load_model, write_card
from model.finetune.prompts import corrective_click, interior_point, jitter_box, mask_box, random_point
from model.finetune.recipes import shapes_tiny_model_config
from model.synthetic import SyntheticDomain, to_coco

SIZE = 64
DOMAIN = SyntheticDomain(size=SIZE, radius=(10, 20), n_objects=(1, 3))


def _square(size=16, lo=4, hi=12):
    m = np.zeros((size, size), bool)
    m[lo:hi, lo:hi] = True
    return m


# ------------------------------------------------------------------ losses
@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [
        (_square(), _square(), 1.0),
        (np.zeros((16, 16), bool), np.zeros((16, 16), bool), 1.0),  # empty vs empty
        (np.zeros((16, 16), bool), _square(), 0.0),
        (_square(lo=4, hi=8), _square(lo=4, hi=12), 16 / 64),
    ],
)
def test_mask_iou_table(pred, target, expected):
    logits = torch.from_numpy(np.where(pred, 5.0, -5.0)).float()
    assert float(mask_iou(logits, torch.from_numpy(target).float())) == pytest.approx(expected)


def test_focal_and_dice_are_small_for_confident_correct_logits_and_large_for_wrong_ones():
    target = torch.from_numpy(_square()).float()
    good = torch.where(target > 0, 10.0, -10.0)
    assert float(focal_loss(good, target)) < 1e-6 < float(focal_loss(-good, target))
    assert float(dice_loss(good, target)) < 0.01 < 0.9 < float(dice_loss(-good, target))


def test_mask_losses_train_only_the_best_of_several_candidates():
    target = torch.from_numpy(_square())[None].float()
    right = torch.where(target > 0, 10.0, -10.0)
    logits = torch.stack([-right[0], right[0], -right[0]])[None].requires_grad_(True)
    loss, stats = mask_losses(logits, torch.tensor([[0.0, 1.0, 0.0]]), target)
    assert stats["iou"] == pytest.approx(1.0)
    loss.backward()
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[0, 2].abs().sum() == 0


def test_mask_losses_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="logits"):
        mask_losses(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1), torch.zeros(3, 4, 4))


# ----------------------------------------------------------------- prompts
def test_interior_point_is_deep_inside_the_mask():
    mask = _square(32, 4, 28)
    x, y = interior_point(mask)
    assert mask[int(y), int(x)]
    assert 12 <= x <= 19 and 12 <= y <= 19


def test_interior_point_of_a_ring_lies_on_the_ring_not_in_the_hole():
    ring = SyntheticDomain(families=("ring",), n_objects=(1, 1), radius=(40, 40)).image(3).masks[0]
    x, y = interior_point(ring)
    assert ring[int(y), int(x)]


@pytest.mark.parametrize("fn", [interior_point, mask_box, lambda m: random_point(m, np.random.default_rng(0))])
def test_prompt_helpers_reject_empty_masks(fn):
    with pytest.raises(ValueError, match="empty"):
        fn(np.zeros((8, 8), bool))


def test_mask_box_is_tight_in_pixel_edges():
    assert mask_box(_square()).tolist() == [4, 4, 12, 12]


def test_jitter_box_stays_inside_the_image_and_keeps_positive_size():
    rng = np.random.default_rng(0)
    for _ in range(50):
        box = jitter_box(np.array([0, 0, 3, 3], np.float32), rng, 16, amount=0.5)
        assert (box >= 0).all() and (box <= 16).all()
        assert box[2] > box[0] and box[3] > box[1]


@pytest.mark.parametrize(
    ("pred", "target", "label"),
    [
        (np.zeros((16, 16), bool), _square(), 1),  # everything missed -> positive click in the object
        (_square(16, 0, 16), _square(), 0),  # spills everywhere -> negative click outside
        (_square(), _square(), 1),  # perfect -> positive click inside
    ],
)
def test_corrective_click_lands_in_the_error_region_with_the_right_label(pred, target, label):
    point, got = corrective_click(pred, target, np.random.default_rng(1))
    x, y = int(point[0]), int(point[1])
    assert got == label
    assert target[y, x] == bool(label)
    if not np.array_equal(pred, target):
        assert pred[y, x] != target[y, x]


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"freeze": ("backbone",)}, "freeze"),
        ({"steps": 0}, "steps"),
        ({"lr": 0.0}, "lr"),
        ({"box_fraction": 1.5}, "box_fraction"),
        ({"budget_s": -1.0}, "budget_s"),
        ({"corrective_rounds": -1}, "corrective_rounds"),
        ({"prompt_warmup_steps": -1}, "prompt_warmup_steps"),
        ({"model_config": None}, "exactly one"),
        ({"base": Path("x")}, "exactly one"),
    ],
)
def test_finetune_config_rejects_bad_values(tmp_path, kwargs, message):
    fields = {"out_dir": tmp_path, "data": SyntheticSource(DOMAIN), "model_config": shapes_tiny_model_config(SIZE)}
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**fields)


# -------------------------------------------------------------------- data
def test_synthetic_source_curriculum_starts_easy_and_reaches_the_full_domain():
    source = SyntheticSource(SyntheticDomain(n_objects=(1, 5)), curriculum_until=0.5, start_difficulty=0.2)
    early, late = source.domain_at(0.0), source.domain_at(0.6)
    assert early.difficulty == pytest.approx(0.2) and early.n_objects == (1, 1)
    assert late == source.domain


@pytest.mark.parametrize(("size", "objects"), [(64, 1), (64, 4), (256, 4), (32, 0)])
def test_box_fill_drills_are_blank_canvases_whose_objects_are_their_boxes(size, objects):
    image, masks = BoxFillSource(size=size, objects=objects).sample(np.random.default_rng(0), 0.0)
    assert image.shape == (size, size, 3) and (image == 128).all()
    assert masks.shape == (objects, size, size)
    for mask in masks:
        x0, y0, x1, y1 = mask_box(mask).astype(int)
        assert mask[y0:y1, x0:x1].all() and mask.sum() == (x1 - x0) * (y1 - y0)  # a filled rectangle


def test_coco_source_decodes_rle_and_polygons_and_resizes(tmp_path):
    samples = [DOMAIN.image(s) for s in range(2)]
    dataset, arrays = to_coco(samples)
    dataset["annotations"].append(
        {"id": 99, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 30, 2, 30, 30, 2, 30]], "iscrowd": 0}
    )
    source = CocoSource(dataset, arrays, image_size=32)
    assert len(source) == 2
    image, masks = source._items[0]
    assert image.shape == (32, 32, 3) and masks.shape[1:] == (32, 32)
    assert masks.shape[0] == samples[0].masks.shape[0] + 1


def test_coco_source_names_the_image_without_an_array():
    dataset, arrays = to_coco([DOMAIN.image(0)])
    with pytest.raises(BadMediaError, match="synthetic_000001.png"):
        CocoSource(dataset, {}, image_size=32)


def test_coco_source_rejects_a_dataset_without_usable_annotations():
    dataset, arrays = to_coco([DOMAIN.image(0)])
    dataset["annotations"] = []
    with pytest.raises(ValueError, match="no image"):
        CocoSource(dataset, arrays, image_size=32)


# ------------------------------------------------------------------ engine
def _tiny_config(tmp_path, **kw):
    dataset, arrays = to_coco([DOMAIN.image(s) for s in range(3)])
    source = CocoSource(dataset, arrays, image_size=SIZE, version="coco:tiny-test")
    fields = {
        "out_dir": tmp_path / "run",
        "data": source,
        "model_config": shapes_tiny_model_config(SIZE),
        "steps": 24,
        "batch_size": 2,
        "objects_per_image": 2,
        "lr": 2e-3,
        "warmup_steps": 1,
        "eval_images": 2,
        "eval_every_steps": 6,
        "eval_every_s": 1e9,
        "seed": 3,
        "num_threads": 1,
    }
    fields.update(kw)
    return FinetuneConfig(**fields)


def test_training_smoke_loss_falls_and_best_checkpoint_loads_with_a_model_card(tmp_path):
    result = finetune(_tiny_config(tmp_path))
    losses = [row["train_loss"] for row in result.history]
    assert result.steps == 24 and len(losses) == 4
    assert losses[-1] < 0.8 * losses[0]
    card = (result.best_dir / "README.md").read_text()
    assert "coco:tiny-test" in card and "**seed**: 3" in card and "**steps**" in card
    assert (result.best_dir / "model.safetensors").exists()
    log = [json.loads(line) for line in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [6, 12, 18, 24]
    model = load_model(result.best_dir)
    assert model.config.prompt_encoder_config.image_size == SIZE


def test_decoder_only_finetune_leaves_the_image_encoder_untouched(tmp_path):
    base = build_model(shapes_tiny_model_config(SIZE))
    base.save_pretrained(tmp_path / "base")
    config = _tiny_config(
        tmp_path, model_config=None, base=tmp_path / "base", freeze=("image_encoder",), steps=3, eval_every_steps=3
    )
    result = finetune(config)
    tuned = load_model(result.best_dir)
    before, after = base.state_dict(), tuned.state_dict()
    encoder = [k for k in before if k.startswith("vision_encoder.")]
    decoder = [k for k in before if k.startswith("mask_decoder.") and before[k].is_floating_point()]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)


def test_prompt_warmup_teaches_a_fresh_decoder_to_read_boxes_without_touching_the_encoder(tmp_path):
    torch.manual_seed(0)
    config = _tiny_config(tmp_path, prompt_warmup_steps=600, lr=1e-3, focal_weight=1.0, batch_size=4)
    model = build_model(shapes_tiny_model_config(SIZE))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    drills = [BoxFillSource(size=SIZE).sample(np.random.default_rng(seed), 0.0) for seed in range(4)]
    untrained = prompt_iou(model, drills)["box_iou"]
    result = prompt_warmup(model, config, np.random.default_rng(1), torch.device("cpu"), SIZE)
    after = model.state_dict()
    assert result["steps"] == 600
    # blank canvases: only a model that reads its box prompt can fill the right rectangle
    assert untrained < 0.1 and result["train_iou"] > 0.4
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vision_encoder."))


def test_cached_encoder_features_train_exactly_like_recomputed_ones(tmp_path):
    base = build_model(shapes_tiny_model_config(SIZE))
    base.save_pretrained(tmp_path / "base")
    runs = {}
    for cached in (False, True):
        config = _tiny_config(
            tmp_path / str(cached),
            model_config=None,
            base=tmp_path / "base",
            freeze=("image_encoder",),
            steps=6,
            eval_every_steps=3,
            cache_image_features=cached,
        )
        runs[cached] = finetune(config)
    assert [r["train_loss"] for r in runs[True].history] == pytest.approx(
        [r["train_loss"] for r in runs[False].history], rel=1e-5
    )
    a, b = load_model(runs[False].best_dir).state_dict(), load_model(runs[True].best_dir).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a if a[k].is_floating_point())


def test_feature_cache_needs_a_frozen_image_encoder(tmp_path):
    with pytest.raises(ValueError, match="cache_image_features needs freeze"):
        _tiny_config(tmp_path, cache_image_features=True)


def test_tied_positional_basis_survives_save_and_load(tmp_path):
    model = build_model(shapes_tiny_model_config(SIZE))
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert torch.equal(
        loaded.prompt_encoder.shared_embedding.positional_embedding, loaded.shared_image_embedding.positional_embedding
    )


def test_continue_recipe_starts_from_its_base_on_full_difficulty_scenes_with_a_lower_restarted_lr(tmp_path):
    from model.finetune.recipes import shapes_tiny_config, shapes_tiny_continue_config

    base = tmp_path / "stage1"
    build_model(shapes_tiny_model_config(SIZE)).save_pretrained(base)
    config = shapes_tiny_continue_config(tmp_path / "run", base=base)
    assert config.base == base and config.model_config is None and config.prompt_warmup_steps == 0
    assert config.data.curriculum_until == 0.0, "stage 2 trains on the full domain, not the easy start again"
    assert config.lr < shapes_tiny_config(tmp_path / "x").lr


def test_a_continued_run_keeps_its_base_curve_and_names_the_base_run_in_its_card(tmp_path):
    base = tmp_path / "stage1"
    torch.manual_seed(0)
    build_model(shapes_tiny_model_config(SIZE)).save_pretrained(base)
    base_curve = [{"step": 10.0, "minutes": 1.0, "box_iou": 0.25, "point_iou": 0.125}]
    card = {
        "model_id": "tiny-stage1",
        "steps": 10,
        "minutes": 1.0,
        "seed": 7,
        "metrics": {"box_iou": 0.25, "point_iou": 0.125},
    }
    write_card(base, card, base_curve)
    result = run_recipe(
        "shapes-tiny-continue",
        tmp_path / "run",
        base=base,
        data=SyntheticSource(DOMAIN),
        eval_data=SyntheticSource(DOMAIN),
        steps=2,
        batch_size=1,
        objects_per_image=2,
        eval_images=1,
        eval_every_steps=2,
        loss_size=None,
        num_threads=1,
    )
    record = json.loads((result.best_dir / "training.json").read_text())
    assert record["base_curve"] == base_curve and [r["step"] for r in record["curve"]] == [2.0]
    readme = (result.best_dir / "README.md").read_text()
    assert "Base training curve" in readme and "| 0.250 | 0.125 |" in readme
    assert "stage 1 (tiny-stage1" in readme and "10 steps in 1.0 min, seed 7" in readme
    before, after = load_model(base).state_dict(), load_model(result.best_dir).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())


def test_run_recipe_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="shapes-tiny"):
        run_recipe("no-such-recipe", tmp_path)


# --------------------------------------------------------------------- cli
def test_parse_synthetic_spec_sets_families_and_textures():
    domain = parse_synthetic("synthetic:families=ring+star:textures=solid", 64)
    assert domain.families == ("ring", "star") and domain.textures == ("solid",) and domain.size == 64


@pytest.mark.parametrize("spec", ["synthetic:colours=red", "coco:families=ring", "synthetic:families=blob"])
def test_parse_synthetic_rejects_bad_specs(spec):
    with pytest.raises(ValueError):
        parse_synthetic(spec, 64)


def test_cli_finetunes_a_checkpoint_on_synthetic_data_with_a_frozen_encoder(tmp_path, capsys):
    build_model(shapes_tiny_model_config(SIZE)).save_pretrained(tmp_path / "base")
    argv = [
        "--from",
        str(tmp_path / "base"),
        "--data",
        "synthetic:families=ring",
        "--freeze",
        "image_encoder",
        "--steps",
        "2",
        "--batch-size",
        "1",
        "--out",
        str(tmp_path / "out"),
        "--threads",
        "1",
    ]
    assert cli_main(argv) == 0
    assert (tmp_path / "out" / "best" / "model.safetensors").exists()
    assert "families=ring" in (tmp_path / "out" / "best" / "README.md").read_text()
    assert "2 steps" in capsys.readouterr().out


def test_cli_finetunes_from_a_coco_json_with_images_next_to_it(tmp_path):
    from PIL import Image

    dataset, arrays = to_coco([DOMAIN.image(s) for s in range(2)])
    for info, arr in zip(dataset["images"], arrays, strict=True):
        Image.fromarray(arr).save(tmp_path / info["file_name"])
    (tmp_path / "coco.json").write_text(json.dumps(dataset))
    build_model(shapes_tiny_model_config(SIZE)).save_pretrained(tmp_path / "base")
    argv = [
        "--from",
        str(tmp_path / "base"),
        "--data",
        str(tmp_path / "coco.json"),
        "--steps",
        "1",
        "--batch-size",
        "1",
        "--out",
        str(tmp_path / "out"),
    ]
    assert cli_main(argv) == 0
    assert "coco:coco.json" in (tmp_path / "out" / "best" / "README.md").read_text()


def test_cli_reports_an_unreadable_image_by_name(tmp_path):
    dataset, _ = to_coco([DOMAIN.image(0)])
    (tmp_path / "coco.json").write_text(json.dumps(dataset))
    (tmp_path / "synthetic_000001.png").write_bytes(b"not a png")
    build_model(shapes_tiny_model_config(SIZE)).save_pretrained(tmp_path / "base")
    with pytest.raises(BadMediaError, match="synthetic_000001.png"):
        cli_main(
            ["--from", str(tmp_path / "base"), "--data", str(tmp_path / "coco.json"), "--out", str(tmp_path / "o")]
        )


# ------------------------------------------------------------------- video
def test_video_clip_step_trains_the_memory_path_and_its_loss_falls():
    from model.finetune.video import clip_loss
    from tests.support.tiny_models import tiny_sam2_video_model

    torch.manual_seed(0)
    model = tiny_sam2_video_model(SIZE, present=True).train()
    clip = SyntheticDomain.scaled(SIZE, n_objects=(2, 2)).clip(0, n_frames=4)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for step in range(8):
        result = clip_loss(model, clip.frames, clip.masks)
        opt.zero_grad()
        result.loss.backward()
        if step == 0:  # gradients reach the memory encoder, memory attention and the object-pointer projection
            for prefix in ("memory_encoder.", "memory_attention.", "object_pointer_proj."):
                grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
                assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), prefix
        opt.step()
        losses.append(float(result.loss.detach()))
    assert result.objects == 2
    assert 0.0 <= result.j_propagated <= 1.0
    assert min(losses[-2:]) < 0.7 * losses[0]


@pytest.mark.parametrize(
    ("frames", "masks", "message"),
    [
        (np.zeros((2, 64, 64, 3), np.uint8), np.zeros((3, 1, 64, 64), bool), "expects"),
        (np.zeros((2, 64, 64, 3), np.uint8), np.zeros((2, 1, 64, 64), bool), "frame 0"),
    ],
)
def test_video_clip_loss_rejects_bad_clips(frames, masks, message):
    from model.finetune.video import clip_loss
    from tests.support.tiny_models import tiny_sam2_video_model

    with pytest.raises(ValueError, match=message):
        clip_loss(tiny_sam2_video_model(SIZE), frames, masks)


def test_torch_init_gives_tiny_models_pytorch_default_weight_scale_not_hf_0_02():
    def q_std(model):
        return float(model.mask_decoder.transformer.layers[0].self_attn.q_proj.weight.std())

    hf = build_model(shapes_tiny_model_config(SIZE), torch_init=False)
    torch_default = build_model(shapes_tiny_model_config(SIZE), torch_init=True)
    assert q_std(hf) == pytest.approx(0.02, rel=0.2)
    assert q_std(torch_default) > 0.05
