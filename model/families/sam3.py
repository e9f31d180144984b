"""SAM 3 (Perception Encoder ViT + CLIP-style text encoder + DETR detector): every instance of a text concept per
image (strategy ``concept``), with per-instance confidence and an image-level presence score."""

from __future__ import annotations

import os
from typing import Any

from model.families.spec import FamilySpec


def _load(source: str | os.PathLike[str], device: Any = None, dtype: Any = None, **kwargs: Any) -> Any:
    from model.concept import ConceptSegmenter

    return ConceptSegmenter.from_pretrained(source, device=device, dtype=dtype, **kwargs)


def _architecture(size: str = "default") -> Any:
    from model.configs import sam3_architecture_config

    return sam3_architecture_config()


def _load_video(source: str | os.PathLike[str], device: Any = None) -> Any:
    from model.concept_video import ConceptVideo

    return ConceptVideo.from_pretrained(os.fspath(source), device=device)


SPEC = FamilySpec(
    name="sam3",
    title="SAM 3",
    model_types=frozenset({"sam3", "sam3_video"}),
    name_tokens=("sam3",),
    released=("facebook/sam3",),
    supports=frozenset({"concept", "video"}),
    image_class="Sam3Model",
    video_class="Sam3VideoModel",
    download=(
        "SAM 3 in transformers format: `hf download facebook/sam3` (a gated repository: accept its licence on the hub "
        "first; the sam3.pt file in it is not converted by maskloop, the config.json + model.safetensors are used)"
    ),
    load=_load,
    architecture_config=_architecture,
    sizes=("default",),
    load_video=_load_video,
)
