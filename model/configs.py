"""Architecture configs of the released SAM 2 / 2.1 image models (Hiera-T/S/B+/L), EdgeTAM and SAM 3: for Meta
``.pt`` checkpoints (which carry no config) and for random-weight benchmark runs at real size."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import Sam2Config

# Hiera backbone hyper-parameters per size, as in transformers' convert_sam2_to_hf.get_config.
_HIERA: dict[str, dict[str, Any]] = {
    "tiny": {},
    "small": {"blocks_per_stage": [1, 2, 11, 2], "global_attention_blocks": [7, 10, 13]},
    "base-plus": {
        "hidden_size": 112,
        "embed_dim_per_stage": [112, 224, 448, 896],
        "num_attention_heads_per_stage": [2, 4, 8, 16],
        "blocks_per_stage": [2, 3, 16, 3],
        "global_attention_blocks": [12, 16, 20],
        "window_positional_embedding_background_size": [14, 14],
    },
    "large": {
        "hidden_size": 144,
        "embed_dim_per_stage": [144, 288, 576, 1152],
        "num_attention_heads_per_stage": [2, 4, 8, 16],
        "blocks_per_stage": [2, 6, 36, 4],
        "global_attention_blocks": [23, 33, 43],
        "window_positional_embedding_background_size": [7, 7],
        "window_size_per_stage": [8, 4, 16, 8],
    },
}
SIZES = tuple(_HIERA)


def hiera_size_from_name(name: str) -> str | None:
    """'tiny' / 'small' / 'base-plus' / 'large' from a model id or checkpoint file name, or None."""
    match = re.search(r"hiera[-_](tiny|small|base[-_]plus|large|t|s|b\+|l)\b", name.lower())
    if not match:
        return None
    token = match.group(1).replace("_", "-")
    return {"t": "tiny", "s": "small", "b+": "base-plus", "l": "large"}.get(token, token)


def sam2_architecture_config(size: str) -> Sam2Config:
    """The transformers ``Sam2Config`` of the released SAM 2 image model of ``size`` (1024 px input)."""
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2VisionConfig

    key = size.lower().replace("_", "-").removeprefix("hiera-")
    if key not in _HIERA:
        raise ValueError(f"SAM 2 size must be one of {list(_HIERA)}, got {size!r}")
    backbone = Sam2HieraDetConfig(**_HIERA[key])
    dims = list(backbone.embed_dim_per_stage or [])
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=list(reversed(dims)))
    return Sam2Config(vision_config=vision)


def edgetam_backbone_config() -> Any:
    """EdgeTAM's image encoder: timm's RepViT-M1, four feature levels. Named explicitly: transformers 5.23's default
    backbone for ``EdgeTamConfig()`` is a ResNet-50 (its default spells the key ``archirecture``)."""
    from transformers import TimmWrapperConfig

    return TimmWrapperConfig(
        architecture="repvit_m1", model_args={"in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]}
    )


def edgetam_architecture_config() -> Any:
    """The transformers ``EdgeTamConfig`` of the released EdgeTAM image model (RepViT-M1 through timm, 1024 px; the
    FPN, prompt encoder and mask decoder at transformers' defaults, which are the released ones)."""
    from transformers import EdgeTamConfig, EdgeTamVisionConfig

    return EdgeTamConfig(vision_config=EdgeTamVisionConfig(backbone_config=edgetam_backbone_config()))


def sam3_architecture_config() -> Any:
    """The transformers ``Sam3Config`` of the released SAM 3 image model (PE ViT-L/14 at 1008 px, 24-layer text
    encoder, 6+6-layer DETR, 200 queries): transformers' defaults are the released architecture."""
    from transformers import Sam3Config

    return Sam3Config()
