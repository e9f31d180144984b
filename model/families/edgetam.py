"""EdgeTAM (RepViT-M1 image encoder + SAM 2 prompt encoder / mask decoder): the SAM 2 interface at a fraction of the
cost — points, boxes, mask prompts, everything, video. Its image encoder is a timm model, so it needs ``timm``."""

from __future__ import annotations

import os
from typing import Any

from model.families.spec import FamilySpec


def _load(source: str | os.PathLike[str], device: Any = None, dtype: Any = None, **kwargs: Any) -> Any:
    from model.segmenter import Segmenter

    return Segmenter.from_pretrained(source, device=device, dtype=dtype, family="edgetam", **kwargs)


def _architecture(size: str = "default") -> Any:
    from model.configs import edgetam_architecture_config

    return edgetam_architecture_config()


def _load_video(source: str | os.PathLike[str], device: Any = None) -> Any:
    from model.video_model import Sam2Video

    return Sam2Video.from_pretrained(os.fspath(source), device=device)


SPEC = FamilySpec(
    name="edgetam",
    title="EdgeTAM",
    model_types=frozenset({"edgetam", "edgetam_video"}),
    name_tokens=("edgetam",),
    released=("yonigozlan/EdgeTAM-hf",),
    supports=frozenset({"points", "boxes", "masks", "everything", "video"}),
    image_class="EdgeTamModel",
    video_class="EdgeTamVideoModel",
    download=(
        "EdgeTAM in transformers format: `hf download yonigozlan/EdgeTAM-hf` (Meta's edgetam.pt from "
        "facebook/EdgeTAM is not converted by maskloop: convert it with transformers' EdgeTAM conversion script)"
    ),
    load=_load,
    requires=("timm",),
    architecture_config=_architecture,
    sizes=("default",),
    load_video=_load_video,
)
