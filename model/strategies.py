"""The auto-prompt strategies: a name -> :class:`StrategySpec` table, the one place that lists them.

A strategy turns decoded images into :class:`~model.instances.Instances` without a human click. Its spec says what
it needs (class names, a text detector, prior instances) and which ``--param`` names it takes; the CLI's choices, the
parameter validation, the model loading (a detector only when one is needed) and the video proposer all read this
table. Adding a strategy is one new module with its ``run`` function plus one line in :data:`STRATEGIES`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from model.concept import concept_params, run_concept

if TYPE_CHECKING:
    import numpy as np

    from model.instances import Instances


@dataclass(frozen=True)
class StrategyInputs:
    """What a strategy may use besides the images: the segmenter, and per its spec classes, detector, priors."""

    segmenter: Any
    classes: Sequence[str] = ()
    detector: Any = None
    priors: Sequence[Instances] | None = None


Runner = Callable[[StrategyInputs, list["np.ndarray"], Mapping[str, Any]], list["Instances"]]


@dataclass(frozen=True)
class StrategySpec:
    name: str
    help: str
    run: Runner
    params: Callable[[], frozenset[str]]  # the ``--param`` names it takes (a callable: no heavy import up front)
    needs_classes: bool = False
    needs_detector: bool = False
    needs_priors: bool = False

    def check(self, inputs: StrategyInputs, params: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming what is missing or not understood."""
        unknown = sorted(set(params) - self.params())
        if unknown:
            raise ValueError(f"strategy {self.name!r} does not take {unknown}; allowed: {sorted(self.params())}")
        if self.needs_classes and not inputs.classes:
            raise ValueError(f"strategy {self.name!r} needs classes=[...] (one or more class names), got none")
        if self.needs_detector and inputs.detector is None:
            raise ValueError(f"strategy {self.name!r} needs a text detector (model.cache.get_detector)")
        if self.needs_priors and inputs.priors is None:
            raise ValueError(f"strategy {self.name!r} needs priors=[Instances per image] (see priors_from_coco)")


def _everything_params() -> frozenset[str]:
    from model.everything import EverythingParams

    return frozenset(f.name for f in dataclasses.fields(EverythingParams))


def _run_everything(inputs: StrategyInputs, images: list[np.ndarray], params: Mapping[str, Any]) -> list[Instances]:
    from model.everything import EverythingParams, segment_everything

    return segment_everything(inputs.segmenter, images, EverythingParams(**params))


def _run_text(inputs: StrategyInputs, images: list[np.ndarray], params: Mapping[str, Any]) -> list[Instances]:
    from model.autoprompt import segment_text

    return segment_text(inputs.segmenter, inputs.detector, images, list(inputs.classes), **params)


def _run_prior(inputs: StrategyInputs, images: list[np.ndarray], params: Mapping[str, Any]) -> list[Instances]:
    from model.autoprompt import segment_priors

    return segment_priors(inputs.segmenter, images, list(inputs.priors or []), **params)


STRATEGIES: dict[str, StrategySpec] = {
    "everything": StrategySpec(
        "everything", "a point grid over the image (and crops)", _run_everything, _everything_params
    ),
    "text": StrategySpec(
        "text",
        "class names -> Grounding DINO boxes -> SAM 2 masks",
        _run_text,
        lambda: frozenset({"box_threshold", "text_threshold", "nms_thresh", "multimask", "prompt_batch"}),
        needs_classes=True,
        needs_detector=True,
    ),
    "prior": StrategySpec(
        "prior",
        "earlier instances' boxes/masks -> re-segmented masks",
        _run_prior,
        lambda: frozenset({"prompt", "multimask", "prompt_batch"}),
        needs_priors=True,
    ),
    "concept": StrategySpec("concept", "SAM 3: instances per class", run_concept, concept_params, needs_classes=True),
}


def strategy_spec(name: str) -> StrategySpec:
    spec = STRATEGIES.get(name)
    if spec is None:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    return spec
