"""Training the video memory path of a SAM 2 checkpoint on clips (``Sam2VideoModel``; SAM 2's recipe: short clips,
a prompt on the first frame, the loss on the propagated frames).

``finetune_video(VideoFinetuneConfig) -> FinetuneResult``: by default only the memory modules train (memory
encoder, memory attention, object-pointer projections, temporal encodings, mask downsampler, object-score head);
the image encoder, prompt encoder and mask decoder keep the image model's weights, so image quality is unchanged.
With ``train_decoder`` the mask decoder trains too (it must learn to segment from memory without a prompt, which an
image-only model never did); ``image_data`` batches of prompted images are then added to every step's loss so it
keeps its prompted skill, and a checkpoint is only kept while held-out box and point IoU stay within
``image_tolerance`` of the base's. The checkpoint is saved as a ``sam2_video`` model, which ``Segmenter`` (image)
and ``Sam2Video`` both load.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.finetune.config import FinetuneConfig, FinetuneResult
from model.finetune.data import ImageSource
from model.finetune.engine import _optimizer_step, _step_loss
from model.finetune.evaluate import prompt_iou
from model.finetune.modelio import read_card, write_card
from model.finetune.schedule import cosine_lr, log_row, row_head, run_progress
from model.finetune.video import clip_loss
from model.synthetic import SyntheticDomain

logger = logging.getLogger(__name__)

# the image parts (kept from the image model unless ``train_image_parts``)
IMAGE_MODULES = ("vision_encoder", "prompt_encoder", "mask_decoder", "shared_image_embedding", "no_memory_embedding")
# trained with the memory path although it sits in the mask decoder: the object-score MLP reads the decoder's
# object token after the fact (image masks do not depend on it), and tracking hides objects it scores absent
OBJECT_SCORE_HEAD = "mask_decoder.pred_obj_score_head."


@dataclass
class VideoFinetuneConfig:
    """One run on clips of ``domain`` (``frames`` per clip, prompts on frame 0: a box or the mask, ``mask_prompt_
    fraction`` of the time a mask). ``base`` is a ``sam2`` (image-only: memory modules start from PyTorch's default
    initialisation) or ``sam2_video`` checkpoint. Stops at ``steps`` or ``budget_s``; linear warm-up then cosine
    decay to ``min_lr_ratio``; the mask decoder at ``decoder_lr_scale`` times that. ``memory_config`` overrides ``Sam2VideoConfig`` memory settings when ``base`` is
    image-only (e.g. ``memory_attention_num_layers``). ``focal_weight`` weighs focal against dice in the mask loss
    (SAM 2's 20 for fine-tuning; a memory path trained from scratch needs a dice-dominated loss, as the image recipe
    does). ``motion_until`` > 0 is a curriculum: clips start still
    (only memory tells the objects apart, so the memory path must be read) and reach full motion at that fraction
    of the run. The best checkpoint by held-out J on ``eval_clips`` clips goes to ``best_dir``
    (default ``out_dir / "best"``) once it beats ``best_to_beat``."""

    out_dir: Path
    base: Path
    domain: SyntheticDomain = field(default_factory=SyntheticDomain)
    frames: int = 6
    memory_config: dict[str, Any] = field(default_factory=dict)
    model_id: str = "sam2-video-finetuned"
    train_image_parts: bool = False
    train_decoder: bool = False
    image_data: ImageSource | None = None
    image_batch_size: int = 2
    image_objects: int = 8
    image_eval: int = 12
    image_tolerance: float = 0.02
    decoder_lr_scale: float = 0.1
    motion_until: float = 0.0
    steps: int = 1000
    budget_s: float | None = None
    lr: float = 5e-4
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    mask_prompt_fraction: float = 0.5
    focal_weight: float = 20.0
    loss_size: int | None = None
    eval_clips: int = 6
    eval_frames: int = 8
    eval_every_s: float = 300.0
    eval_every_steps: int | None = None
    seed: int = 0
    device: str = "cpu"
    num_threads: int | None = None
    best_to_beat: float = -1.0
    best_dir: Path | None = None
    extra_card: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out_dir, self.base = Path(self.out_dir), Path(self.base)
        if self.best_dir is not None:
            self.best_dir = Path(self.best_dir)
        for name in ("steps", "eval_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"VideoFinetuneConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("frames", "eval_frames"):
            if getattr(self, name) < 2:
                raise ValueError(
                    f"VideoFinetuneConfig.{name} must be >= 2 (a prompted and a propagated frame), "
                    f"got {getattr(self, name)}"
                )
        if self.lr <= 0:
            raise ValueError(f"VideoFinetuneConfig.lr must be > 0, got {self.lr}")
        for name in ("mask_prompt_fraction", "min_lr_ratio", "motion_until"):
            if not (0.0 <= getattr(self, name) <= 1.0):
                raise ValueError(f"VideoFinetuneConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.budget_s is not None and self.budget_s <= 0:
            raise ValueError(f"VideoFinetuneConfig.budget_s must be > 0 or None, got {self.budget_s}")
        if self.train_decoder and self.image_data is None:
            raise ValueError(
                "VideoFinetuneConfig.train_decoder needs image_data (prompted images keep its image skill)"
            )

    @property
    def best_path(self) -> Path:
        return self.best_dir if self.best_dir is not None else self.out_dir / "best"


def load_video_model(path: Path, memory_config: dict[str, Any] | None = None) -> tuple[Any, bool]:
    """``Sam2VideoModel`` from a ``sam2_video`` or image-only ``sam2`` directory; True when the memory modules are
    new (then re-initialised with PyTorch's defaults: transformers' N(0, 0.02) is too small at tiny widths)."""
    from transformers import AutoConfig, Sam2VideoModel

    from model.video_model import quiet_load_report, video_config_from_image_config

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    fresh = config.model_type == "sam2"
    if fresh:
        config = video_config_from_image_config(config, **(memory_config or {}))
    elif config.model_type != "sam2_video":
        raise ValueError(f"expected a sam2 or sam2_video checkpoint at {path}, got {config.model_type!r}")
    with quiet_load_report(fresh):
        model = Sam2VideoModel.from_pretrained(path, config=config, local_files_only=True)
    if fresh:
        torch.manual_seed(0)
        for name, module in model.named_children():
            if name in IMAGE_MODULES:
                continue
            for sub in module.modules():
                if isinstance(sub, torch.nn.Linear | torch.nn.Conv2d | torch.nn.ConvTranspose2d | torch.nn.Embedding):
                    sub.reset_parameters()
    return model, fresh


def clip_set(domain: SyntheticDomain, seeds: range | list[int], frames: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(frames, masks) of each seed's clip, keeping clips with an object on frame 0."""
    out = []
    for seed in seeds:
        clip = domain.clip(int(seed), n_frames=frames)
        if clip.masks[0].reshape(clip.masks.shape[1], -1).any(1).any():
            out.append((clip.frames, clip.masks))
    return out


def finetune_video(config: VideoFinetuneConfig) -> FinetuneResult:
    """Train per ``config``; returns where the best checkpoint is and the held-out J history."""
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 0x71D])
    device = torch.device(config.device)
    model, fresh = load_video_model(config.base, config.memory_config)
    model.to(device).train()
    if not config.train_image_parts:
        for name in IMAGE_MODULES:
            part = getattr(model, name)
            for p in part.parameters() if isinstance(part, torch.nn.Module) else [part]:
                p.requires_grad_(False)
        for name, p in model.named_parameters():
            if name.startswith(OBJECT_SCORE_HEAD) or (config.train_decoder and name.startswith("mask_decoder.")):
                p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    decoder = {
        id(p)
        for n, p in model.named_parameters()
        if n.startswith("mask_decoder.") and not n.startswith(OBJECT_SCORE_HEAD)
    }
    groups = [
        {"params": [p for p in params if id(p) not in decoder], "scale": 1.0},
        {"params": [p for p in params if id(p) in decoder], "scale": config.decoder_lr_scale},
    ]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, weight_decay=config.weight_decay)
    # held-out clips: seeds far from the training stream's
    eval_set = clip_set(config.domain, range(1_500_000_000, 1_500_000_000 + config.eval_clips), config.eval_frames)
    image_cfg = _image_step_config(config)
    image_eval = []
    if config.image_data is not None:
        eval_rng = np.random.default_rng([config.seed, 0xE7A1])
        image_eval = [config.image_data.sample(eval_rng, 1.0) for _ in range(config.image_eval)]
    size = int(model.config.image_size)
    floor: dict[str, float] = {}
    if image_eval:
        base = prompt_iou(model, image_eval, str(device))
        floor = {k: base[k] - config.image_tolerance for k in ("box_iou", "point_iou")}
        logger.info("base image IoU %s; checkpoints must stay above %s", base, floor)
    amp = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )
    config.out_dir.mkdir(parents=True, exist_ok=True)
    log_path = config.out_dir / "metrics.jsonl"
    history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    best_score = config.best_to_beat
    start = last_eval = time.monotonic()
    running: list[float] = []
    running_j: list[float] = []
    step = 0

    def progress() -> float:
        return run_progress(step, config.steps, start, config.budget_s)

    def evaluate(lr: float) -> None:
        nonlocal best_score, best, last_eval
        row = {
            **row_head(step, start, lr, running),
            "train_j": float(np.nanmean(running_j)) if running_j else float("nan"),
            **video_j(model, eval_set),
            **(prompt_iou(model, image_eval, str(device)) if image_eval else {}),
        }
        running.clear()
        running_j.clear()
        log_row(log_path, history, row)
        logger.info("step %d %.1f min: %s", step, row["minutes"], {k: float(f"{v:.4g}") for k, v in row.items()})
        score = (row["j_box"] + row["j_mask"]) / 2
        image_ok = all(row[k] >= v for k, v in floor.items())
        if score > best_score and image_ok:
            best_score, best = score, dict(row)
            _save(model, config, row, history, fresh)
        last_eval = time.monotonic()

    lr = config.lr
    while step < config.steps and progress() < 1.0:
        lr = cosine_lr(config.lr, step, progress(), config.warmup_steps, config.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr * group["scale"]
        motion = min(1.0, progress() / config.motion_until) if config.motion_until > 0 else 1.0
        clip = config.domain.clip(int(rng.integers(1 << 30)), n_frames=config.frames, motion=motion)
        frames, masks = clip.frames, clip.masks
        if not masks[0].any():
            continue
        prompt = "mask" if rng.random() < config.mask_prompt_fraction else "box"
        with amp:
            result = clip_loss(
                model, frames, masks, loss_size=config.loss_size, prompt=prompt, focal_weight=config.focal_weight
            )
            loss = result.loss
            if image_cfg is not None:
                assert config.image_data is not None
                batch = [config.image_data.sample(rng, 1.0) for _ in range(config.image_batch_size)]
                loss = loss + _step_loss(model, batch, image_cfg, rng, device, size)[0]
        _optimizer_step(opt, loss, params, config.grad_clip)
        step += 1
        running.append(float(loss.detach()))
        running_j.append(result.j_propagated)
        due_steps = config.eval_every_steps is not None and step % config.eval_every_steps == 0
        if due_steps or time.monotonic() - last_eval >= config.eval_every_s:
            evaluate(lr)
    if not history or history[-1]["step"] != step:
        evaluate(lr)
    if best:
        _write_card(config, best, history, fresh)
    model.eval()
    return FinetuneResult(
        out_dir=config.out_dir,
        best_dir=config.best_path,
        steps=step,
        seconds=time.monotonic() - start,
        best_metrics=best,
        history=history,
        data_version=config.domain.version + f":clips={config.frames}",
        seed=config.seed,
    )


def _image_step_config(config: VideoFinetuneConfig) -> FinetuneConfig | None:
    """The prompted-image loss settings (the shapes-tiny image recipe's) when the decoder trains."""
    if not config.train_decoder or config.image_data is None:
        return None
    return FinetuneConfig(
        out_dir=config.out_dir,
        data=config.image_data,
        base=config.base,
        freeze=("image_encoder", "prompt_encoder"),
        batch_size=config.image_batch_size,
        objects_per_image=config.image_objects,
        focal_weight=1.0,
        corrective_rounds=1,
        loss_size=config.loss_size,
    )


def video_j(model: torch.nn.Module, clips: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Mean J over the propagated frames of ``clips``, frame 0 prompted with boxes (``j_box``) and with masks
    (``j_mask``); eval mode, no gradients."""
    was_training = model.training
    model.eval()
    out: dict[str, list[float]] = {"box": [], "mask": []}
    with torch.no_grad():
        for frames, masks in clips:
            for prompt in out:
                out[prompt].append(clip_loss(model, frames, masks, prompt=prompt).j_propagated)
    model.train(was_training)
    return {"j_box": float(np.mean(out["box"])), "j_mask": float(np.mean(out["mask"])), "clips": float(len(clips))}


def _save(
    model: torch.nn.Module,
    config: VideoFinetuneConfig,
    row: dict[str, float],
    curve: list[dict[str, float]],
    fresh: bool,
) -> None:
    path = config.best_path
    path.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    model.save_pretrained(str(path), safe_serialization=True)  # type: ignore[operator]
    model.train(was_training)
    _write_card(config, row, curve, fresh)


def _write_card(config: VideoFinetuneConfig, row: dict[str, float], curve: list[dict[str, float]], fresh: bool) -> None:
    """The base checkpoint's card and image curve, plus this run's video section and curve."""
    base_card, base_curve = read_card(config.base)
    write_card(config.best_path, {**base_card, **_card(config, row, fresh)}, base_curve, curve)


def _card(config: VideoFinetuneConfig, row: dict[str, float], fresh: bool) -> dict[str, Any]:
    card: dict[str, Any] = {
        "model_id": config.model_id,
        "video base": str(config.base),
        "video data_version": config.domain.version,
        "video seed": config.seed,
        "video training": (
            f"{int(row['step'])} clips of {config.frames} frames ({row['minutes']:.1f} min), frame 0 prompted by a "
            f"mask {config.mask_prompt_fraction:.0%} / box; "
            + (
                "all parts trained"
                if config.train_image_parts
                else "memory path and mask decoder trained (with prompted-image batches), encoders frozen"
                if config.train_decoder
                else "image parts frozen, memory path trained"
            )
            + ("; memory modules started from PyTorch's default initialisation" if fresh else "")
        ),
        "video loss": f"{config.focal_weight:g} focal + 1 dice + IoU-head MSE on propagated frames, object-score BCE",
        "video optimizer": f"AdamW lr {config.lr:g}, warm-up {config.warmup_steps} steps, cosine to "
        f"{config.min_lr_ratio:g}x",
        **config.extra_card,
        "video metrics": {
            "j_box": round(row["j_box"], 4),
            "j_mask": round(row["j_mask"], 4),
            **{k: round(row[k], 4) for k in ("box_iou", "point_iou") if k in row},
            "held-out clips": int(row["clips"]),
            "frames per clip": config.eval_frames,
        },
    }
    return card
