"""Named training recipes. ``run_recipe("shapes-tiny", out_dir, budget_s=...)`` trains the offline demo model's image
parts from scratch; ``run_recipe("shapes-tiny-continue", out_dir, base=<that checkpoint>)`` continues that training
with a restarted learning rate (stage 2); ``run_recipe("shapes-tiny-video", out_dir, base=<a checkpoint>)`` trains
its video memory path with the image parts frozen."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.finetune.config import FinetuneConfig, FinetuneResult
from model.finetune.data import SyntheticSource
from model.finetune.modelio import read_card
from model.finetune.video_train import VideoFinetuneConfig
from model.synthetic import FAMILIES, TEXTURES, SyntheticDomain

SHAPES_TINY_SIZE = 256
SHAPES_TINY_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "shapes-tiny"
SHAPES_TINY_DESCRIPTION = (
    "Offline demo model for maskloop: a tiny SAM 2 (transformers `Sam2Model`) trained from scratch on the seeded "
    "synthetic shapes domain (`model.synthetic`). It segments the synthetic domain only; it is a stand-in that lets "
    "the whole pipeline run without downloading SAM 2 weights."
)


def shapes_tiny_model_config(image_size: int = SHAPES_TINY_SIZE) -> dict[str, Any]:
    """A ~1 M-parameter SAM 2 (Hiera 4 stages, 64-d FPN/decoder) for ``image_size`` inputs (multiple of 32)."""
    if image_size % 32:
        raise ValueError(f"shapes-tiny image_size must be a multiple of 32, got {image_size}")
    s = image_size
    dims = [24, 48, 96, 192]
    return {
        "vision_config": {
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": dims[0],
                "num_attention_heads": 1,
                "image_size": [s, s],
                "blocks_per_stage": [1, 2, 3, 1],
                "embed_dim_per_stage": dims,
                "num_attention_heads_per_stage": [1, 2, 4, 8],
                "window_size_per_stage": [8, 4, 8, 8],
                "global_attention_blocks": [4],
                "window_positional_embedding_background_size": [4, 4],
            },
            "backbone_channel_list": dims[::-1],
            "backbone_feature_sizes": [[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
            "fpn_hidden_size": 64,
        },
        "prompt_encoder_config": {"hidden_size": 64, "image_size": s, "patch_size": 16, "mask_input_channels": 16},
        "mask_decoder_config": {
            "hidden_size": 64,
            "mlp_dim": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "attention_downsample_rate": 1,  # full-width q/k: prompt and image positions match more sharply
            "iou_head_hidden_dim": 64,
        },
    }


def shapes_tiny_config(
    out_dir: Path, *, budget_s: float | None = None, seed: int = 0, **overrides: Any
) -> FinetuneConfig:
    domain = SyntheticDomain(size=SHAPES_TINY_SIZE, families=FAMILIES, textures=TEXTURES)
    fields: dict[str, Any] = {
        "out_dir": Path(out_dir),
        "data": SyntheticSource(domain, curriculum_until=0.3, start_difficulty=0.2),
        "eval_data": SyntheticSource(domain),
        "model_config": shapes_tiny_model_config(),
        "model_id": "maskloop/shapes-tiny",
        "steps": 200_000,
        "budget_s": budget_s,
        "batch_size": 4,
        "objects_per_image": 8,  # every object of a scene, several times: the decoder sees prompts contrasted
        "lr": 3e-4,
        "prompt_warmup_steps": 1500,  # box-fill drills first, or the model learns to ignore its prompts
        "min_lr_ratio": 0.05,
        "warmup_steps": 100,
        "focal_weight": 1.0,  # dice-dominated: SAM's 20x focal collapses to empty masks when training from scratch
        "corrective_rounds": 1,
        "loss_size": SHAPES_TINY_SIZE // 2,
        "eval_images": 12,
        "eval_every_s": 180.0,
        "seed": seed,
        "extra_card": {
            "description": SHAPES_TINY_DESCRIPTION,
            "recipe": "model.finetune.recipes: shapes-tiny",
        },
    }
    fields.update(overrides)
    return FinetuneConfig(**fields)


def shapes_tiny_continue_config(
    out_dir: Path, *, budget_s: float | None = None, seed: int = 1, base: Path | None = None, **overrides: Any
) -> FinetuneConfig:
    """Stage 2 of shapes-tiny: keep training ``base`` (a ``shapes-tiny`` checkpoint, default the shipped one) on
    full-difficulty scenes (no curriculum, no prompt warm-up) with a restarted learning rate: 1.2e-4 after a 200-step
    warm-up, cosine to 0.05x. Stage 1's curve flattened as its cosine schedule ran out, not because the model had
    stopped learning. The checkpoint is selected on 32 held-out images (stage 1 used 12: too few to rank
    checkpoints a point apart); a new seed draws new scenes and prompts."""
    base_path = Path(base) if base is not None else SHAPES_TINY_WEIGHTS
    domain = SyntheticDomain(size=SHAPES_TINY_SIZE, families=FAMILIES, textures=TEXTURES)
    fields: dict[str, Any] = {
        "base": base_path,
        "model_config": None,
        "data": SyntheticSource(domain),
        "prompt_warmup_steps": 0,
        "lr": 1.2e-4,
        "warmup_steps": 200,
        "eval_images": 32,
        "extra_card": {
            "description": SHAPES_TINY_DESCRIPTION,
            "base": f"stage 1 ({_run_summary(base_path)})",
            "recipe": "model.finetune.recipes: shapes-tiny (stage 1), then shapes-tiny-continue (stage 2, this run)",
        },
    }
    fields.update(overrides)
    return shapes_tiny_config(out_dir, budget_s=budget_s, seed=seed, **fields)


def _run_summary(checkpoint: Path) -> str:
    """One line on the run that made ``checkpoint``, from its model card: its base, steps, minutes, seed, warm-up and
    the prompt IoU on its own eval set."""
    card, _ = read_card(checkpoint)
    parts = [
        f"{card.get('model_id', checkpoint.name)}: {card.get('base', 'unknown base')}",
        f"{card.get('steps', '?')} steps in {card.get('minutes', '?')} min",
        f"seed {card.get('seed', '?')}",
    ]
    if "prompt warm-up" in card:
        parts.append(f"prompt warm-up {card['prompt warm-up']}")
    summary = ", ".join(parts)
    metrics = card.get("metrics", {})
    if {"box_iou", "point_iou"} <= set(metrics):
        summary += f"; box / point IoU on its own eval set {metrics['box_iou']:.3f} / {metrics['point_iou']:.3f}"
    return summary


def shapes_tiny_video_config(
    out_dir: Path, *, budget_s: float | None = None, seed: int = 0, base: Path | None = None, **overrides: Any
) -> VideoFinetuneConfig:
    """The memory path of shapes-tiny on 4-frame clips of the synthetic domain (``base``: the image checkpoint,
    default the shipped one). Memory attention is slimmed to the model's size: 2 layers, a 256-wide MLP (SAM 2's
    4 x 2048 costs ~4x the time per clip on a CPU here). The mask decoder trains too (at 0.1x lr), anchored by
    prompted images of the same domain. The mask loss is dice-dominated (focal weight 1), as in the image recipe:
    with SAM's 20x focal every variant tried left held-out J at 0.02-0.05. See docs/shapes-tiny-video.md."""
    domain = SyntheticDomain(size=SHAPES_TINY_SIZE, families=FAMILIES, textures=TEXTURES)
    fields: dict[str, Any] = {
        "out_dir": Path(out_dir),
        "base": Path(base) if base is not None else SHAPES_TINY_WEIGHTS,
        "domain": domain,
        "train_decoder": True,
        "image_data": SyntheticSource(domain),
        "frames": 4,
        "memory_config": {"memory_attention_num_layers": 2, "memory_attention_feed_forward_hidden_size": 256},
        "model_id": "maskloop/shapes-tiny",
        "steps": 200_000,
        "budget_s": budget_s,
        "lr": 1e-3,
        "decoder_lr_scale": 0.1,
        "focal_weight": 1.0,  # with SAM's 20 the propagated masks collapse to empty (train J 0.006 after 356 clips)
        "warmup_steps": 50,
        "mask_prompt_fraction": 0.5,
        "loss_size": SHAPES_TINY_SIZE // 2,
        "eval_clips": 6,
        "eval_frames": 8,
        "eval_every_s": 240.0,
        "seed": seed,
        "extra_card": {"video recipe": "model.finetune.recipes: shapes-tiny-video"},
    }
    fields.update(overrides)
    return VideoFinetuneConfig(**fields)


# recipes that start from a checkpoint (``base``; each has a default)
BASED_RECIPES = frozenset({"shapes-tiny-continue", "shapes-tiny-video"})
RECIPES: dict[str, Callable[..., FinetuneConfig | VideoFinetuneConfig]] = {
    "shapes-tiny": shapes_tiny_config,
    "shapes-tiny-continue": shapes_tiny_continue_config,
    "shapes-tiny-video": shapes_tiny_video_config,
}


def run_recipe(name: str, out_dir: Path | str, *, budget_s: float | None = None, **overrides: Any) -> FinetuneResult:
    """Train the named recipe into ``out_dir``; ``overrides`` replace ``FinetuneConfig`` (or, for a video recipe,
    ``VideoFinetuneConfig``) fields."""
    from model.finetune.engine import finetune
    from model.finetune.video_train import finetune_video

    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
    config = RECIPES[name](Path(out_dir), budget_s=budget_s, **overrides)
    return finetune_video(config) if isinstance(config, VideoFinetuneConfig) else finetune(config)
