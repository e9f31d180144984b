"""Convert Meta's SAM 2 ``.pt`` checkpoints (``{"model": state_dict}``) to transformers' ``Sam2Model`` key naming.

The renaming follows transformers' ``convert_sam2_to_hf.py`` (``KEYS_TO_MODIFY_MAPPING`` + ``replace_keys``),
rewritten as an ordered table of anchored regular expressions. :func:`hf_to_meta_state_dict` is the inverse for the
image-model keys; tests use it to write a random transformers model as a Meta-named ``.pt`` and prove that
:func:`meta_to_hf_state_dict` restores every tensor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Feed-forward heads with three linear layers: Meta's layers.0/1/2 are transformers' proj_in/layers.0/proj_out.
_FF3 = r"(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head|object_pointer_proj)"
# Two-layer MLPs (Hiera blocks, two-way transformer layers): layers.0/1 are proj_in/proj_out.
_FF2 = r"(backbone\.blocks\.\d+\.mlp|transformer\.layers\.\d+\.mlp)"

_META_TO_HF: list[tuple[str, str]] = [
    (r"^image_encoder\.trunk\.", "vision_encoder.backbone."),
    (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
    (r"^image_encoder\.neck\.", "vision_encoder.neck."),
    (r"^sam_prompt_encoder\.", "prompt_encoder."),
    (r"^sam_mask_decoder\.", "mask_decoder."),
    (r"\.patch_embed\.proj\.", ".patch_embed.projection."),
    (r"\.pe_layer\.positional_encoding_gaussian_matrix$", ".shared_embedding.positional_embedding"),
    (r"\.mask_downscaling\.0\.", ".mask_embed.conv1."),
    (r"\.mask_downscaling\.1\.", ".mask_embed.layer_norm1."),
    (r"\.mask_downscaling\.3\.", ".mask_embed.conv2."),
    (r"\.mask_downscaling\.4\.", ".mask_embed.layer_norm2."),
    (r"\.mask_downscaling\.6\.", ".mask_embed.conv3."),
    (r"\.output_upscaling\.0\.", ".upscale_conv1."),
    (r"\.output_upscaling\.1\.", ".upscale_layer_norm."),
    (r"\.output_upscaling\.3\.", ".upscale_conv2."),
    (r"\.norm(?=\d|_final_attn|\.)", ".layer_norm"),
    (r"\.out_proj\.", ".o_proj."),
    (r"^no_mem_embed$", "no_memory_embedding"),
    # memory / video parts (kept for Sam2VideoModel; Sam2Model ignores them)
    (r"^no_mem_pos_enc$", "no_memory_positional_encoding"),
    (r"^maskmem_tpos_enc$", "memory_temporal_positional_encoding"),
    (r"^obj_ptr_tpos_proj\.", "temporal_positional_encoding_projection_layer."),
    (r"^no_obj_embed_spatial$", "occlusion_spatial_embedding_parameter"),
    (r"^obj_ptr_proj\.", "object_pointer_proj."),
    (r"^no_obj_ptr$", "no_object_pointer"),
    (r"\.pix_feat_proj\.", ".feature_projection."),
    (r"\.fuser\.", ".memory_fuser."),
    (r"\.dwconv\.", ".depthwise_conv."),
    (r"\.pwconv(\d)\.", r".pointwise_conv\1."),
    (r"\.gamma$", ".scale"),
    (r"^memory_encoder\.o_proj\.", "memory_encoder.projection."),
    (_FF2 + r"\.layers\.0\.", r"\1.proj_in."),
    (_FF2 + r"\.layers\.1\.", r"\1.proj_out."),
    (_FF3 + r"\.layers\.0\.", r"\1.proj_in."),
    (_FF3 + r"\.layers\.1\.", r"\1.layers.0."),
    (_FF3 + r"\.layers\.2\.", r"\1.proj_out."),
]
_COMPILED = [(re.compile(pattern), replacement) for pattern, replacement in _META_TO_HF]
_POINT_EMBED = re.compile(r"^prompt_encoder\.point_embed\.(\d+)\.weight$")
# Meta's memory mask downsampler is one Sequential of (conv, norm, GELU) * n + final conv: encoder.{3k} is layer k's
# conv, encoder.{3k+1} its norm, the last index the final conv (transformers names them layers.k.* / final_conv).
_DOWNSAMPLER = re.compile(r"^memory_encoder\.mask_downsampler\.encoder\.(\d+)\.(weight|bias)$")


def _rename_downsampler(keys: list[str]) -> dict[str, str]:
    indices = [int(m.group(1)) for m in map(_DOWNSAMPLER.match, keys) if m]
    if not indices:
        return {}
    last = max(indices)
    renamed = {}
    for key in keys:
        match = _DOWNSAMPLER.match(key)
        if not match:
            continue
        index, kind = int(match.group(1)), match.group(2)
        if index == last:
            renamed[key] = f"memory_encoder.mask_downsampler.final_conv.{kind}"
        elif index % 3 in (0, 1):
            part = "conv" if index % 3 == 0 else "layer_norm"
            renamed[key] = f"memory_encoder.mask_downsampler.layers.{index // 3}.{part}.{kind}"
        else:
            raise ValueError(f"SAM 2 checkpoint: unexpected weight {key} (mask downsampler activations have none)")
    return renamed


def meta_key_to_hf(key: str) -> str:
    """One Meta key renamed to transformers naming (point embeddings are merged separately)."""
    for pattern, replacement in _COMPILED:
        key = pattern.sub(replacement, key)
    return key.replace("point_embeddings.", "point_embed.")


def meta_to_hf_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Meta SAM 2 state dict (the ``"model"`` entry of the ``.pt``) to transformers naming.

    The four point embeddings are concatenated into ``prompt_encoder.point_embed.weight`` and the prompt encoder's
    Gaussian matrix is also used for ``shared_image_embedding`` (Meta stores it once).
    """
    import torch

    converted: dict[str, torch.Tensor] = {}
    point_embeds: dict[int, torch.Tensor] = {}
    downsampler = _rename_downsampler(list(state_dict))
    for key, value in state_dict.items():
        new_key = downsampler.get(key) or meta_key_to_hf(key)
        match = _POINT_EMBED.match(new_key)
        if match:
            point_embeds[int(match.group(1))] = value
        else:
            converted[new_key] = value
    if point_embeds:
        if sorted(point_embeds) != list(range(len(point_embeds))):
            raise ValueError(f"SAM 2 checkpoint: point embeddings must be numbered 0..n-1, got {sorted(point_embeds)}")
        converted["prompt_encoder.point_embed.weight"] = torch.cat([point_embeds[i] for i in sorted(point_embeds)])
    gaussian = converted.get("prompt_encoder.shared_embedding.positional_embedding")
    if gaussian is not None:
        converted["shared_image_embedding.positional_embedding"] = gaussian
    return converted


_HF_FF3_TO_META = {"proj_in": "layers.0", "layers.0": "layers.1", "proj_out": "layers.2"}
_HF_TO_META: list[tuple[str, str]] = [
    (r"^vision_encoder\.backbone\.", "image_encoder.trunk."),
    (r"^vision_encoder\.neck\.convs\.(\d+)\.(weight|bias)$", r"image_encoder.neck.convs.\1.conv.\2"),
    (r"^prompt_encoder\.", "sam_prompt_encoder."),
    (r"^mask_decoder\.", "sam_mask_decoder."),
    (r"\.patch_embed\.projection\.", ".patch_embed.proj."),
    (r"\.shared_embedding\.positional_embedding$", ".pe_layer.positional_encoding_gaussian_matrix"),
    (r"\.mask_embed\.conv1\.", ".mask_downscaling.0."),
    (r"\.mask_embed\.layer_norm1\.", ".mask_downscaling.1."),
    (r"\.mask_embed\.conv2\.", ".mask_downscaling.3."),
    (r"\.mask_embed\.layer_norm2\.", ".mask_downscaling.4."),
    (r"\.mask_embed\.conv3\.", ".mask_downscaling.6."),
    (r"\.upscale_conv1\.", ".output_upscaling.0."),
    (r"\.upscale_layer_norm\.", ".output_upscaling.1."),
    (r"\.upscale_conv2\.", ".output_upscaling.3."),
    (r"\.layer_norm(?=\d|_final_attn)", ".norm"),
    (r"\.o_proj\.", ".out_proj."),
    (r"^no_memory_embedding$", "no_mem_embed"),
    (r"(\.blocks\.\d+\.mlp|transformer\.layers\.\d+\.mlp)\.proj_in\.", r"\1.layers.0."),
    (r"(\.blocks\.\d+\.mlp|transformer\.layers\.\d+\.mlp)\.proj_out\.", r"\1.layers.1."),
]
_HF_COMPILED = [(re.compile(pattern), replacement) for pattern, replacement in _HF_TO_META]
_HF_FF3 = re.compile(
    r"(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)\.(proj_in|layers\.0|proj_out)\."
)


def hf_to_meta_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`meta_to_hf_state_dict` for the image model (``Sam2Model``) keys, in Meta's naming."""
    meta: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key == "shared_image_embedding.positional_embedding":
            continue  # Meta keeps one Gaussian matrix, in the prompt encoder
        if key == "prompt_encoder.point_embed.weight":
            for i in range(value.shape[0]):
                meta[f"sam_prompt_encoder.point_embeddings.{i}.weight"] = value[i : i + 1].clone()
            continue
        new_key = _HF_FF3.sub(lambda m: f"{m.group(1)}.{_HF_FF3_TO_META[m.group(2)]}.", key)
        for pattern, replacement in _HF_COMPILED:
            new_key = pattern.sub(replacement, new_key)
        meta[new_key] = value.clone()
    return meta
