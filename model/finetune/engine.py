"""The training loop: sampled prompts + corrective clicks, focal/dice/IoU-head losses, time-aware LR schedule,
periodic held-out evaluation and best-checkpoint saving."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model.finetune.config import FinetuneConfig, FinetuneResult
from model.finetune.data import BoxFillSource
from model.finetune.evaluate import prompt_iou
from model.finetune.losses import mask_losses
from model.finetune.modelio import (
    build_model,
    decode,
    finish_features,
    image_features,
    image_size,
    load_model,
    read_card,
    save_checkpoint,
    to_pixel_values,
    write_card,
)
from model.finetune.prompts import corrective_click, jitter_box, mask_box, random_point
from model.finetune.schedule import cosine_lr, log_row, row_head, run_progress

logger = logging.getLogger(__name__)

_FREEZE_MODULES = {
    "image_encoder": "vision_encoder",
    "prompt_encoder": "prompt_encoder",
    "mask_decoder": "mask_decoder",
}


def finetune(config: FinetuneConfig) -> FinetuneResult:
    """Train per ``config``; returns where the best checkpoint is and the evaluation history."""
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 0x7A1])
    device = torch.device(config.device)
    if config.base is not None:
        model = load_model(config.base)
    else:
        assert config.model_config is not None
        model = build_model(
            config.model_config,
            tie_positional_embeddings=config.tie_positional_embeddings,
            torch_init=config.torch_init,
            align_prompt_attention=config.align_prompt_attention,
        )
    model.to(device).train()
    for name in config.freeze:
        for p in getattr(model, _FREEZE_MODULES[name]).parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"FinetuneConfig.freeze={config.freeze} leaves nothing to train")
    size = image_size(model)
    base_curve = read_card(config.base)[1] if config.base is not None else []
    clock = time.monotonic()
    warmup = prompt_warmup(model, config, rng, device, size) if config.prompt_warmup_steps else {}
    budget_s = None if config.budget_s is None else max(config.budget_s - (time.monotonic() - clock), 1e-3)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    cache = _EncoderCache(config.cache_max_images) if config.cache_image_features else None
    eval_source = config.eval_data if config.eval_data is not None else config.data
    eval_rng = np.random.default_rng([config.seed, 0xE7A1])
    eval_set = [eval_source.sample(eval_rng, 1.0) for _ in range(config.eval_images)]
    amp = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if config.amp and device.type == "cuda"
        else contextlib.nullcontext()
    )
    config.out_dir.mkdir(parents=True, exist_ok=True)
    log_path = config.out_dir / "metrics.jsonl"
    history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    best_score = config.best_to_beat
    start = time.monotonic()
    last_eval = start
    running: list[float] = []
    running_iou: list[float] = []
    step = 0

    def progress() -> float:
        return run_progress(step, config.steps, start, budget_s)

    def evaluate(lr: float) -> None:
        nonlocal best_score, best, last_eval
        metrics = prompt_iou(model, eval_set, str(device))
        row = {
            **row_head(step, start, lr, running),
            "train_iou": float(np.mean(running_iou)) if running_iou else float("nan"),
            **metrics,
        }
        running.clear()
        running_iou.clear()
        log_row(log_path, history, row)
        logger.info("step %d %.1f min: %s", step, row["minutes"], metrics)
        score = (metrics["box_iou"] + metrics["point_iou"]) / 2
        if score > best_score:
            best_score, best = score, dict(row)
            card = _card(config, row, size, warmup)
            save_checkpoint(model, config.best_path, card, history, memory_from=config.base, base_curve=base_curve)
        last_eval = time.monotonic()

    lr = config.lr
    while step < config.steps and progress() < 1.0:
        p = progress()
        lr = cosine_lr(config.lr, step, p, config.warmup_steps, config.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = [config.data.sample(rng, p) for _ in range(config.batch_size)]
        with amp:
            loss, stats = _step_loss(model, batch, config, rng, device, size, cache)
        _optimizer_step(opt, loss, params, config.grad_clip)
        step += 1
        running.append(float(loss.detach()))
        running_iou.append(stats["iou"])
        due_steps = config.eval_every_steps is not None and step % config.eval_every_steps == 0
        if due_steps or time.monotonic() - last_eval >= config.eval_every_s:
            evaluate(lr)
    if not history or history[-1]["step"] != step:
        evaluate(lr)
    if best:  # the card of the best checkpoint shows the whole run's curve
        write_card(config.best_path, _card(config, best, size, warmup), history, base_curve=base_curve)
    return FinetuneResult(
        out_dir=config.out_dir,
        best_dir=config.best_path,
        steps=step,
        seconds=time.monotonic() - start,
        best_metrics=best,
        history=history,
        data_version=config.data.version,
        seed=config.seed,
    )


def _optimizer_step(
    opt: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.nn.Parameter], grad_clip: float
) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()


def prompt_warmup(
    model: torch.nn.Module, config: FinetuneConfig, rng: np.random.Generator, device: torch.device, size: int
) -> dict[str, float]:
    """``config.prompt_warmup_steps`` steps of box-fill drills for the prompt encoder and mask decoder (image encoder
    untouched), with their own AdamW: 20-step warm-up, cosine to 5% of ``config.lr``. Returns steps, seconds and the
    mean train IoU of the last 50 steps."""
    drills = BoxFillSource(size=size)
    drill = replace(
        config,
        box_fraction=1.0,
        box_jitter=0.0,
        corrective_rounds=0,
        objects_per_image=drills.objects,
        freeze=("image_encoder",),
        cache_image_features=True,
    )
    encoder = {id(p) for p in model.vision_encoder.parameters()}  # type: ignore[union-attr]
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in encoder]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    cache = _EncoderCache(1)  # one blank canvas: the encoder runs once
    n, start = config.prompt_warmup_steps, time.monotonic()
    ious: list[float] = []
    for step in range(n):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(config.lr, step, step / n, 20, 0.05)
        batch = [drills.sample(rng, 0.0) for _ in range(config.batch_size)]
        loss, stats = _step_loss(model, batch, drill, rng, device, size, cache)
        _optimizer_step(opt, loss, params, config.grad_clip)
        ious = [*ious[-49:], stats["iou"]]
    result = {"steps": float(n), "seconds": time.monotonic() - start, "train_iou": float(np.mean(ious))}
    logger.info("prompt warm-up: %s", result)
    return result


def _step_loss(
    model: torch.nn.Module,
    batch: list[tuple[np.ndarray, np.ndarray]],
    config: FinetuneConfig,
    rng: np.random.Generator,
    device: torch.device,
    size: int,
    cache: _EncoderCache | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch: K objects per image, a box or a click each, then ``corrective_rounds`` extra clicks."""
    images, targets, owners = [], [], []
    for i, (image, masks) in enumerate(batch):
        images.append(image)
        keep = [m for m in masks if m.any()]
        if not keep:
            continue
        picks = rng.choice(len(keep), size=config.objects_per_image, replace=len(keep) < config.objects_per_image)
        targets += [keep[j] for j in picks]
        owners += [i] * len(picks)
    if not targets:
        raise ValueError("a training batch had no object with a non-empty mask")
    if cache is not None:
        feats = cache.features(model, images, device)
    else:
        feats = image_features(
            model, to_pixel_values(images, device), encoder_grad="image_encoder" not in config.freeze
        )
    target_np = np.stack(targets)
    target = torch.from_numpy(target_np).to(device).float()
    owner = torch.tensor(owners, dtype=torch.long, device=device)
    m = len(targets)
    is_box = rng.random(m) < config.box_fraction
    boxes = np.stack([jitter_box(mask_box(t), rng, size, config.box_jitter) for t in target_np])
    clicks: list[list[np.ndarray]] = [
        [] if b else [random_point(t, rng)] for b, t in zip(is_box, target_np, strict=True)
    ]
    click_labels: list[list[int]] = [[] if b else [1] for b in is_box]
    kw = {
        "focal_weight": config.focal_weight,
        "dice_weight": config.dice_weight,
        "iou_weight": config.iou_weight,
        "focal_alpha": config.focal_alpha,
    }
    loss_size = config.loss_size or size
    loss_target = target
    if loss_size != size:
        loss_target = (F.interpolate(target[:, None], size=(loss_size, loss_size), mode="area")[:, 0] >= 0.5).float()
    total = torch.zeros((), device=device)
    stats: dict[str, float] = {}
    prev_logits = torch.zeros((m, 1, feats[0].shape[-2], feats[0].shape[-1]), device=device)
    rounds = 1 + config.corrective_rounds
    for r in range(rounds):
        use_masks = r > 0 and rng.random() < config.mask_input_fraction
        round_logits = torch.zeros_like(prev_logits)
        round_loss = torch.zeros((), device=device)
        for group_is_box in (True, False):
            sel = np.nonzero(is_box == group_is_box)[0]
            if sel.size == 0:
                continue
            sel_t = torch.from_numpy(sel).to(device)
            pts = lbl = None
            if clicks[sel[0]]:
                pts = torch.from_numpy(np.stack([np.stack(clicks[j]) for j in sel])).to(device)
                lbl = torch.tensor([click_labels[j] for j in sel], dtype=torch.long, device=device)
            logits, iou = decode(
                model,
                feats,
                owner[sel_t],
                points=pts,
                labels=lbl,
                boxes=torch.from_numpy(boxes[sel]).to(device) if group_is_box else None,
                mask_inputs=prev_logits[sel_t].detach() if use_masks else None,
                multimask=(r == 0 and not group_is_box),
            )
            up = F.interpolate(logits.float(), size=(loss_size, loss_size), mode="bilinear", align_corners=False)
            loss, s = mask_losses(up, iou.float(), loss_target[sel_t], **kw)
            round_loss = round_loss + loss * (sel.size / m)
            chosen = logits[torch.arange(len(sel), device=device), iou.argmax(1)].detach().float()
            round_logits[sel_t] = chosen[:, None]
            for k, v in s.items():
                stats[f"{k}_r{r}"] = stats.get(f"{k}_r{r}", 0.0) + v * sel.size / m
        total = total + round_loss / rounds
        prev_logits = round_logits
        if r + 1 < rounds:
            pred = F.interpolate(round_logits, size=(size, size), mode="bilinear", align_corners=False)[:, 0] > 0
            pred_np = pred.cpu().numpy()
            for j in range(m):
                pt, lab = corrective_click(pred_np[j], target_np[j], rng)
                clicks[j].append(pt)
                click_labels[j].append(lab)
    stats["iou"] = stats.get("iou_r0", float("nan"))
    return total, stats


class _EncoderCache:
    """Frozen image-encoder outputs per distinct image (keyed by its bytes), least recently used evicted first."""

    def __init__(self, max_images: int) -> None:
        self.max_images = max_images
        self._store: OrderedDict[bytes, list[torch.Tensor]] = OrderedDict()

    def features(self, model: torch.nn.Module, images: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
        keys = [hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=16).digest() for im in images]
        missing: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if key not in self._store and key not in missing:
                missing[key] = i
        if missing:
            with torch.no_grad():
                pixels = to_pixel_values([images[i] for i in missing.values()], device)
                vision = model.vision_encoder(pixels, return_dict=True)  # type: ignore[operator]
            for j, key in enumerate(missing):
                self._store[key] = [f[j : j + 1].detach() for f in vision.fpn_hidden_states]
        for key in keys:
            self._store.move_to_end(key)
        raw = [torch.cat([self._store[k][level] for k in keys]) for level in range(len(self._store[keys[0]]))]
        while len(self._store) > self.max_images:
            self._store.popitem(last=False)
        return finish_features(model, raw)


def _card(config: FinetuneConfig, row: dict[str, float], size: int, warmup: dict[str, float]) -> dict[str, Any]:
    extra = {}
    if warmup:
        extra["prompt warm-up"] = (
            f"{int(warmup['steps'])} box-fill drill steps ({warmup['seconds']:.0f} s, final train IoU "
            f"{warmup['train_iou']:.2f}) before the main loop"
        )
    return {
        "model_id": config.model_id,
        "base": str(config.base) if config.base is not None else "none (trained from scratch)",
        "data_version": config.data.version,
        "seed": config.seed,
        "image_size": size,
        "steps": int(row["step"]),
        "minutes": round(row["minutes"], 1),
        "frozen": list(config.freeze) or "nothing",
        "batch": f"{config.batch_size} images x {config.objects_per_image} objects",
        "optimizer": f"AdamW lr {config.lr:g}, warm-up {config.warmup_steps} steps, cosine to {config.min_lr_ratio:g}x",
        "prompts": f"box {config.box_fraction:.0%} (jitter {config.box_jitter:g}) / click, "
        f"{config.corrective_rounds} corrective round(s)",
        "loss": f"{config.focal_weight:g} focal + {config.dice_weight:g} dice + {config.iou_weight:g} IoU-head MSE",
        **extra,
        **config.extra_card,
        "metrics": {k: row[k] for k in ("box_iou", "point_iou", "objects") if k in row},
    }
