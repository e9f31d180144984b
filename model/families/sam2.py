"""SAM 2 / 2.1 (Hiera tiny, small, base-plus, large): points, boxes, mask prompts, everything, video."""

from __future__ import annotations

import os
from typing import Any

from model.families.spec import FamilySpec


def _load(source: str | os.PathLike[str], device: Any = None, dtype: Any = None, **kwargs: Any) -> Any:
    from model.segmenter import Segmenter

    return Segmenter.from_pretrained(source, device=device, dtype=dtype, family="sam2", **kwargs)


def _architecture(size: str) -> Any:
    from model.configs import sam2_architecture_config

    return sam2_architecture_config(size)


def _load_video(source: str | os.PathLike[str], device: Any = None) -> Any:
    from model.video_model import Sam2Video

    return Sam2Video.from_pretrained(os.fspath(source), device=device)


SPEC = FamilySpec(
    name="sam2",
    title="SAM 2",
    model_types=frozenset({"sam2", "sam2_video"}),
    name_tokens=("sam2",),
    released=tuple(
        f"facebook/{family}-hiera-{size}"
        for family in ("sam2.1", "sam2")
        for size in ("tiny", "small", "base-plus", "large")
    ),
    supports=frozenset({"points", "boxes", "masks", "everything", "video"}),
    image_class="Sam2Model",
    video_class="Sam2VideoModel",
    download=(
        "a SAM 2 checkpoint: `hf download facebook/sam2.1-hiera-tiny` (or -small / -base-plus / -large), or Meta's "
        "sam2.1_hiera_<size>.pt"
    ),
    load=_load,
    meta_checkpoint=True,
    architecture_config=_architecture,
    sizes=("tiny", "small", "base-plus", "large"),
    load_video=_load_video,
)
