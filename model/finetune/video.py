"""A differentiable multi-frame training step for ``Sam2VideoModel``'s memory path.

The public session API wraps inference (no gradients, per-frame state), so this step calls the model's own pieces
directly, as SAM 2's training does: ``get_image_features`` for all frames, ``_single_frame_forward`` with a box
prompt on frame 0, then for each later frame ``memory_attention`` over the spatial memories
(``_encode_new_memory``) of the prompted frame and the last ``num_maskmem - 1`` frames plus the object pointers
(``_process_object_pointers``), and the mask loss on every frame. These are private transformers names (so the model is typed ``Any``): the step
is written against transformers 5.23 and pinned by ``tests/model/test_finetune.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model.finetune.losses import mask_iou, mask_losses
from model.finetune.modelio import to_pixel_values
from model.finetune.prompts import mask_box


@dataclass(frozen=True)
class ClipLoss:
    """Loss of one clip and its diagnostics: ``j_first`` (prompted frame) and ``j_propagated`` (later frames;
    an empty prediction of an absent object counts as 1, as in DAVIS)."""

    loss: torch.Tensor
    j_first: float
    j_propagated: float
    objects: int


def clip_loss(
    model: Any,
    frames: np.ndarray,
    masks: np.ndarray,
    *,
    loss_size: int | None = None,
    score_weight: float = 1.0,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    prompt: str = "box",
) -> ClipLoss:
    """``frames`` (T, S, S, 3) uint8 at the model's input size, ``masks`` (T, N, S, S) bool per-frame GT.

    Objects absent from frame 0 are skipped (nothing to prompt). ``prompt`` is how frame 0 is prompted: ``"box"``
    (the mask's box through the decoder, as a detector would) or ``"mask"`` (the ground-truth mask taken as frame
    0's output, as the video session does with mask prompts; no loss on frame 0 then). Mask losses apply where the
    object is visible; the object-score head is trained on every frame (objects leave and re-enter).
    """
    if prompt not in ("box", "mask"):
        raise ValueError(f"clip_loss prompt must be 'box' or 'mask', got {prompt!r}")
    if frames.ndim != 4 or masks.ndim != 4 or masks.shape[0] != frames.shape[0] or masks.shape[2:] != frames.shape[1:3]:
        raise ValueError(
            f"clip_loss expects frames (T, S, S, 3) and masks (T, N, S, S), got {frames.shape} {masks.shape}"
        )
    device = next(model.parameters()).device
    present0 = masks[0].reshape(masks.shape[1], -1).any(1)
    if not present0.any():
        raise ValueError("clip_loss needs at least one object visible on frame 0")
    gt = masks[:, present0]
    size = frames.shape[1]
    loss_size = loss_size or size
    target = torch.from_numpy(gt).to(device).float()
    if loss_size != size:
        target = (F.interpolate(target, size=(loss_size, loss_size), mode="area") >= 0.5).float()
    vision = model.get_image_features(to_pixel_values(list(frames), device), return_dict=True)
    feats, pos = vision.fpn_hidden_states, vision.fpn_position_encoding  # (HW, T, C) per level
    boxes = torch.from_numpy(np.stack([mask_box(m) for m in gt[0]])).to(device)[:, None]
    kw = {"focal_weight": focal_weight, "dice_weight": dice_weight, "iou_weight": iou_weight}
    # The decoder's masks before SAM 2 blanks those of objects it scores absent (-1024): the mask loss reads these,
    # or a fresh object-score head that starts at <= 0 would cut the masks' gradient until it happens to turn positive.
    decoded: list[torch.Tensor] = []
    hook = model.mask_decoder.register_forward_hook(lambda _module, _args, output: decoded.append(output[0]))
    try:
        return _clip_loop(model, gt, target, feats, pos, boxes, prompt, decoded, loss_size, score_weight, kw)
    finally:
        hook.remove()


def _clip_loop(
    model: Any,
    gt: np.ndarray,
    target: torch.Tensor,
    feats: list[torch.Tensor],
    pos: list[torch.Tensor],
    boxes: torch.Tensor,
    prompt: str,
    decoded: list[torch.Tensor],
    loss_size: int,
    score_weight: float,
    kw: dict[str, float],
) -> ClipLoss:
    """The frame loop of :func:`clip_loss` (``decoded`` collects the mask decoder's raw outputs)."""
    device = target.device
    t_len, n = gt.shape[0], gt.shape[1]
    sizes = model.backbone_feature_sizes
    channels = model.hidden_dim
    h, w = sizes[-1]
    memories: list[tuple[torch.Tensor, torch.Tensor]] = []
    pointers: list[torch.Tensor] = []
    total = torch.zeros((), device=device)
    j_first, j_prop = 0.0, []
    for t in range(t_len):
        cur = [f[:, t : t + 1].expand(-1, n, -1) for f in feats]
        high_res = [x.permute(1, 2, 0).reshape(n, x.size(2), *s) for x, s in zip(cur[:-1], sizes[:-1], strict=True)]
        if t == 0:
            pix = (cur[-1] + model.no_memory_embedding).permute(1, 2, 0).reshape(n, channels, h, w)
            if prompt == "mask":
                out = _mask_as_output(model, pix, high_res, torch.from_numpy(gt[0]).to(device)[:, None].float())
            else:
                out = model._single_frame_forward(
                    image_embeddings=[*high_res, pix], input_boxes=boxes, multimask_output=False
                )
        else:
            pix = _memory_conditioned(
                model, t, t_len, cur[-1], pos[-1][:, t : t + 1].expand(-1, n, -1), memories, pointers
            )
            out = model._single_frame_forward(image_embeddings=[*high_res, pix], multimask_output=False)
        logits = out.pred_masks.reshape(n, 1, *out.pred_masks.shape[-2:])
        if not (t == 0 and prompt == "mask"):
            logits_for_loss = decoded[-1].reshape(n, -1, *decoded[-1].shape[-2:])[:, :1]
        iou_pred = out.iou_scores.reshape(n, -1)[:, :1]
        score = out.object_score_logits.reshape(n)
        visible = target[t].flatten(1).any(1)
        # what SAM 2 shows: frames judged object-free carry its -1024 fill (clamped so J's threshold is plain)
        up = F.interpolate(logits.float(), size=(loss_size, loss_size), mode="bilinear", align_corners=False).clamp(
            min=-32
        )
        frame_loss = score_weight * F.binary_cross_entropy_with_logits(score.float(), visible.float())
        if t == 0 and prompt == "mask":
            frame_loss = torch.zeros((), device=device)  # the prompt is the output: nothing to learn on frame 0
        elif visible.any():
            raw = F.interpolate(
                logits_for_loss.float(), size=(loss_size, loss_size), mode="bilinear", align_corners=False
            )
            m_loss, _ = mask_losses(raw[visible], iou_pred[visible].float(), target[t][visible], **kw)
            frame_loss = frame_loss + m_loss
        total = total + frame_loss / t_len
        with torch.no_grad():
            shown = torch.where(score[:, None, None] > 0, up[:, 0], torch.full_like(up[:, 0], -1.0))
            j = mask_iou(shown, target[t])
        if t == 0:
            j_first = float(j.mean())
        else:
            j_prop += j.tolist()
        mem, mem_pos = model._encode_new_memory(
            current_vision_feats=cur[-1],
            pred_masks_high_res=out.high_res_masks.reshape(n, 1, *out.high_res_masks.shape[-2:]),
            object_score_logits=out.object_score_logits.reshape(n, 1, 1),
            is_mask_from_pts=(t == 0 and prompt == "box"),
        )
        memories.append((mem.float(), mem_pos))
        pointers.append(out.object_pointer.reshape(n, channels))
    return ClipLoss(total, j_first, float(np.mean(j_prop)) if j_prop else float("nan"), n)


def _mask_as_output(
    model: Any, pix: torch.Tensor, high_res: list[torch.Tensor], masks: torch.Tensor
) -> SimpleNamespace:
    """``_use_mask_as_output`` one object at a time, as the video session calls it (transformers 5.23 mixes up
    objects when it picks the best multimask token of a batch of several)."""
    outs = [
        model._use_mask_as_output(pix[i : i + 1], [h[i : i + 1] for h in high_res], masks[i : i + 1])
        for i in range(masks.shape[0])
    ]
    fields = ("pred_masks", "high_res_masks", "iou_scores", "object_score_logits")
    joined = {f: torch.cat([getattr(o, f) for o in outs]) for f in fields}
    joined["object_pointer"] = torch.cat([o.object_pointer.reshape(1, -1) for o in outs])
    return SimpleNamespace(**joined)


def _memory_conditioned(
    model: Any,
    t: int,
    t_len: int,
    current: torch.Tensor,
    current_pos: torch.Tensor,
    memories: list[tuple[torch.Tensor, torch.Tensor]],
    pointers: list[torch.Tensor],
) -> torch.Tensor:
    """Frame ``t``'s top-level features after memory attention (frame 0 is the conditioning frame)."""
    n, channels = current.shape[1], model.hidden_dim
    h, w = model.backbone_feature_sizes[-1]
    enc = model.memory_temporal_positional_encoding
    mem, mem_pos = [memories[0][0]], [memories[0][1] + enc[-1]]  # conditioning frame: temporal slot of offset 0
    for offset in range(model.num_maskmem - 1, 0, -1):
        prev = t - offset
        if prev >= 1:
            mem.append(memories[prev][0])
            mem_pos.append(memories[prev][1] + enc[offset - 1])
    max_ptr = min(t_len, model.config.max_object_pointers_in_encoder)
    offsets, tokens = [t], [pointers[0]]
    for d in range(1, max_ptr):
        if t - d < 1:
            break
        offsets.append(d)
        tokens.append(pointers[t - d])
    ptr, ptr_pos = model._process_object_pointers(offsets, tokens, max_ptr, n, channels, current.device)
    memory = torch.cat([*mem, ptr])
    memory_pos = torch.cat([*mem_pos, ptr_pos])
    fused = model.memory_attention(
        current_vision_features=current,
        current_vision_position_embeddings=current_pos,
        memory=memory,
        memory_posision_embeddings=memory_pos,
        num_object_pointer_tokens=ptr.shape[0],
    )
    return fused.squeeze(1).transpose(1, 2).reshape(n, channels, h, w)
