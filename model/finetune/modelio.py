"""Building, loading and saving ``Sam2Model`` checkpoints (transformers format) and the pieces of its forward
that training needs with gradients (the public ``get_image_embeddings`` runs under ``no_grad``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# a transformers ``Sam2Model``: its submodules are reached by attribute, which ``torch.nn.Module`` types as
# ``Tensor | Module``, so the functions here take it untyped
Sam2Like = Any


def build_model(  # noqa: ANN201
    model_config: dict[str, Any],
    *,
    tie_positional_embeddings: bool = True,
    torch_init: bool = True,
    align_prompt_attention: bool = False,
):
    """A fresh ``Sam2Model`` from a ``Sam2Config`` dict. Tying copies the image-wide positional basis into the
    prompt encoder so point/box coordinates and image positions share one Fourier basis from step 0.

    ``torch_init`` re-initialises linear, convolution and embedding layers with PyTorch's defaults (as Meta's SAM 2
    code does) instead of transformers' N(0, 0.02): at tiny widths 0.02 leaves attention nearly uniform, and a
    model trained from scratch learns to ignore its prompts (it segments the most salient object whatever the box).
    ``align_prompt_attention`` starts every mask-decoder attention with equal query and key projections, so a prompt
    token's positional encoding already attends to the matching image positions (shared Fourier basis) at step 0
    (off by default: in one 6-minute CPU trial it did not beat ``torch_init`` alone).
    """
    from transformers import Sam2Config, Sam2Model

    model: Sam2Like = Sam2Model(Sam2Config(**model_config))
    if torch_init:
        for module in model.modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d | torch.nn.ConvTranspose2d | torch.nn.Embedding):
                module.reset_parameters()
    if tie_positional_embeddings:
        tie_positional_basis(model)
    if align_prompt_attention:
        with torch.no_grad():
            for attention in model.mask_decoder.modules():
                if hasattr(attention, "q_proj") and hasattr(attention, "k_proj"):
                    attention.k_proj.weight.copy_(attention.q_proj.weight)
                    attention.k_proj.bias.copy_(attention.q_proj.bias)
    return model


def tie_positional_basis(model: Sam2Like) -> None:
    with torch.no_grad():
        model.prompt_encoder.shared_embedding.positional_embedding.copy_(
            model.shared_image_embedding.positional_embedding
        )


def load_model(path: Path):  # noqa: ANN201
    from transformers import Sam2Model

    return Sam2Model.from_pretrained(str(path))


def image_size(model: Sam2Like) -> int:
    return int(model.config.prompt_encoder_config.image_size)


def to_pixel_values(images: list[np.ndarray], device: torch.device | str) -> torch.Tensor:
    """(S, S, 3) uint8 images -> normalised (B, 3, S, S) float tensor (SAM 2's ImageNet normalisation)."""
    batch = np.stack(images).astype(np.float32) / 255.0
    batch = (batch - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(device)


def image_features(model: Sam2Like, pixel_values: torch.Tensor, *, encoder_grad: bool) -> list[torch.Tensor]:
    """Multi-scale features (high-res first, NCHW) exactly as ``Sam2Model.forward`` feeds its mask decoder."""
    with torch.set_grad_enabled(encoder_grad and torch.is_grad_enabled()):
        vision = model.vision_encoder(pixel_values, return_dict=True)
    return finish_features(model, list(vision.fpn_hidden_states))


def finish_features(model: Sam2Like, fpn: list[torch.Tensor]) -> list[torch.Tensor]:
    """The mask decoder's inputs from the image encoder's FPN levels (trainable projections, no-memory embedding)."""
    feats = list(fpn)
    feats[0] = model.mask_decoder.conv_s0(feats[0])
    feats[1] = model.mask_decoder.conv_s1(feats[1])
    feats[-1] = feats[-1] + model.no_memory_embedding.view(1, -1, 1, 1)
    return feats


def decode(
    model: Sam2Like,
    feats: list[torch.Tensor],
    image_index: torch.Tensor,
    *,
    points: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    mask_inputs: torch.Tensor | None = None,
    multimask: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks for M prompts, one object each: ``points`` (M, P, 2) xy with ``labels`` (M, P), ``boxes`` (M, 4) xyxy,
    ``mask_inputs`` (M, 1, h, w) logits, all in input-pixel coordinates. Returns low-res logits (M, K, h, w) and
    predicted IoUs (M, K), K = 3 with ``multimask`` else 1."""
    emb = feats[-1][image_index]
    high_res = [f[image_index] for f in feats[:-1]]
    sparse, dense = model.prompt_encoder(
        input_points=None if points is None else points[:, None],
        input_labels=None if labels is None else labels[:, None],
        input_boxes=None if boxes is None else boxes[:, None],
        input_masks=mask_inputs,
    )
    if dense.shape[0] != emb.shape[0]:
        dense = dense.expand(emb.shape[0], -1, -1, -1)
    pos = model.get_image_wide_positional_embeddings().expand(emb.shape[0], -1, -1, -1)
    logits, iou, _, _ = model.mask_decoder(
        image_embeddings=emb,
        image_positional_embeddings=pos,
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        high_resolution_features=high_res,
    )
    return logits[:, 0], iou[:, 0]


def save_checkpoint(
    model: torch.nn.Module,
    path: Path,
    card: dict[str, Any],
    curve: list[dict[str, float]],
    memory_from: Path | None = None,
    base_curve: list[dict[str, float]] | None = None,
) -> None:
    """``save_pretrained`` (safetensors) plus ``training.json`` and a README.md model card.

    When ``memory_from`` is a ``sam2_video`` checkpoint (the run's base), the image model is saved inside a copy of
    it, so a fine-tune of the image parts keeps the base's trained video memory path (and stays a video checkpoint).
    """
    path.mkdir(parents=True, exist_ok=True)
    if memory_from is not None and _model_type(memory_from) == "sam2_video":
        from transformers import Sam2VideoModel

        video: Any = Sam2VideoModel.from_pretrained(str(memory_from), local_files_only=True)
        result = video.load_state_dict(model.state_dict(), strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{memory_from} does not fit the trained model: {sorted(result.unexpected_keys)[:5]}")
        video.save_pretrained(str(path), safe_serialization=True)
    else:
        model.save_pretrained(str(path), safe_serialization=True)  # type: ignore[operator]
    write_card(path, card, curve, base_curve=base_curve)


def _model_type(path: Path) -> str | None:
    config = Path(path) / "config.json"
    return str(json.loads(config.read_text()).get("model_type")) if config.is_file() else None


def write_card(
    path: Path,
    card: dict[str, Any],
    curve: list[dict[str, float]],
    video_curve: list[dict[str, float]] | None = None,
    base_curve: list[dict[str, float]] | None = None,
) -> None:
    """(Re)write ``training.json`` and README.md next to a saved checkpoint (e.g. with the full curve at the end).
    ``base_curve``: the image-training curve of the checkpoint this run continued from, kept as its first stage."""
    record: dict[str, Any] = {"card": card, "curve": curve}
    if video_curve:
        record["video_curve"] = video_curve
    if base_curve:
        record["base_curve"] = base_curve
    (path / "training.json").write_text(json.dumps(record, indent=1, default=str))
    (path / "README.md").write_text(model_card(card, curve, video_curve, base_curve))


def read_card(path: Path) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """The card and image-training curve saved next to a checkpoint (empty when it has none). The curve of a
    checkpoint that continued another's training is its own run's only (the earlier one is ``base_curve``)."""
    record = path / "training.json"
    if not record.is_file():
        return {}, []
    data = json.loads(record.read_text())
    return dict(data.get("card", {})), list(data.get("curve", []))


def model_card(
    card: dict[str, Any],
    curve: list[dict[str, float]],
    video_curve: list[dict[str, float]] | None = None,
    base_curve: list[dict[str, float]] | None = None,
) -> str:
    lines = [
        f"# {card.get('model_id', 'sam2-finetuned')}",
        "",
        str(
            card.get("description", "A transformers `Sam2Model` checkpoint trained with maskloop's fine-tuning engine.")
        ),
        "",
        "## Training",
        "",
    ]
    lines += [f"- **{k}**: {v}" for k, v in card.items() if k not in {"model_id", "description", "metrics", "notes"}]
    metrics = card.get("metrics", {})
    if metrics:
        lines += ["", "## Held-out metrics (this checkpoint)", ""]
        lines += [f"- **{k}**: {v:.4f}" if isinstance(v, float) else f"- **{k}**: {v}" for k, v in metrics.items()]
    for title, rows in (
        ("Training curve (held-out prompt IoU)", curve),
        ("Base training curve (the run this one continued; its own held-out set)", base_curve or []),
    ):
        if not rows:
            continue
        lines += [
            "",
            f"## {title}",
            "",
            "| minutes | step | lr | train loss | box IoU | point IoU |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            lines.append(
                f"| {row.get('minutes', 0):.1f} | {int(row.get('step', 0))} | {row.get('lr', 0):.2e} | "
                f"{row.get('train_loss', float('nan')):.4f} | {row.get('box_iou', float('nan')):.3f} | "
                f"{row.get('point_iou', float('nan')):.3f} |"
            )
    if video_curve:
        lines += [
            "",
            "## Video training curve (held-out J, frame 0 prompted by a box / by the mask)",
            "",
            "| minutes | step | lr | train loss | J (box) | J (mask) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for row in video_curve:
            lines.append(
                f"| {row.get('minutes', 0):.1f} | {int(row.get('step', 0))} | {row.get('lr', 0):.2e} | "
                f"{row.get('train_loss', float('nan')):.4f} | {row.get('j_box', float('nan')):.3f} | "
                f"{row.get('j_mask', float('nan')):.3f} |"
            )
    if card.get("notes"):
        lines += ["", "## Notes", "", str(card["notes"])]
    return "\n".join(lines) + "\n"
