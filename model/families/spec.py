"""What a model family is: how to recognise its checkpoints, which transformers classes build it, what it can do."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from model.errors import ModelDependencyError

# What a family's still-image model can do (``video`` is propagation through the tracker).
CAPABILITIES = frozenset({"points", "boxes", "masks", "everything", "concept", "video"})


@dataclass(frozen=True)
class FamilySpec:
    """One model family.

    ``model_types``: ``config.json`` ``model_type`` values of its transformers-format checkpoints.
    ``name_tokens``: lower-case substrings of a hub id or ``.pt`` file name that name the family (hub ids not in the
    local cache, Meta checkpoint files); the first family whose token matches wins, SAM 2 is the fallback.
    ``released``: hub ids of the released transformers-format checkpoints (named in ``ModelNotAvailableError``).
    ``download``: one sentence saying what to download, and from where, when a checkpoint is missing.
    ``load``: ``(source, device, dtype, **kwargs) -> segmenter`` — a :class:`~model.segmenter.Segmenter` for
    prompt families, a :class:`~model.concept.ConceptSegmenter` for concept families.
    ``requires``: import names beyond maskloop's own dependencies (``timm`` for EdgeTAM's RepViT encoder).
    ``meta_checkpoint``: maskloop converts Meta's ``.pt`` of this family (architecture from the file name).
    ``architecture_config``: the released architecture (random weights) by size, for ``.pt`` files and benchmarks.
    ``load_video``: ``(source, device) -> video model`` for :func:`model.tracker.track_video`; None: no video.
    """

    name: str
    title: str
    model_types: frozenset[str]
    name_tokens: tuple[str, ...]
    released: tuple[str, ...]
    supports: frozenset[str]
    image_class: str
    video_class: str
    download: str
    load: Callable[..., Any]
    requires: tuple[str, ...] = ()
    meta_checkpoint: bool = False
    architecture_config: Callable[[str], Any] | None = None
    sizes: tuple[str, ...] = ()
    load_video: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        unknown = self.supports - CAPABILITIES
        if unknown:
            raise ValueError(
                f"family {self.name!r}: unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}"
            )

    def check_requirements(self, source: str = "") -> None:
        """Raise :class:`ModelDependencyError` naming the packages this family needs that are not importable."""
        missing = [name for name in self.requires if importlib.util.find_spec(name) is None]
        if missing:
            what = f"{source!r} is a {self.title} checkpoint; " if source else ""
            raise ModelDependencyError(
                f"{what}{self.title} needs the Python package(s) {', '.join(missing)}, which are not installed: "
                f"`pip install {' '.join(missing)}` (timm also needs a torchvision built for the installed torch)"
            )

    def model_class(self) -> Any:
        """The transformers class that builds this family's still-image model."""
        import transformers

        self.check_requirements()
        return getattr(transformers, self.image_class)
