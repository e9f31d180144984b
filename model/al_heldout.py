"""Active learning, judged on corrections (pure: arrays, :class:`Instances` and a loaded segmenter in, numbers out).

- :func:`held_out` / :func:`split_held_out`: which corrected items a round keeps out of training, by a stable hash
  of each asset's content (an item never changes side between rounds, seeds or machines, so a later round never
  trains on what an earlier one held out);
- :func:`heldout_metrics` / :func:`evaluate`: a model re-segments held-out items from the prompts that pre-labelled
  them; mean mask IoU per human instance and accepted-unchanged rate per prediction against the people's masks;
- :func:`promotion`: whether the new model beats the old one by the margin;
- :func:`calibrate`: which uncertainty signals track the true IoU of a model's masks on corrected items.

Every comparison uses the one Hungarian matching of :func:`model.matching.match_masks`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from model.matching import match_masks

if TYPE_CHECKING:
    from model.instances import Instances

_SPLIT_SALT = b"maskloop-active-learning-holdout:"


class _Hashed(Protocol):
    @property
    def sha256(self) -> str: ...


H = TypeVar("H", bound=_Hashed)


# -- the held-out split ----------------------------------------------------------------------------------------------
def held_out(sha256: str, fraction: float) -> bool:
    """Whether an item (by its asset's content hash) is held out: stable across rounds, seeds and machines."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(_SPLIT_SALT + sha256.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_held_out(items: Sequence[H], fraction: float) -> tuple[list[H], list[H]]:
    """(train, held out) of ``items`` (anything with a ``sha256``), each in the items' order."""
    train = [i for i in items if not held_out(i.sha256, fraction)]
    test = [i for i in items if held_out(i.sha256, fraction)]
    return train, test


# -- held-out metrics ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeldOutMetrics:
    """``mean_iou`` per human instance (unmatched: 0), ``accepted_rate`` per prediction; NaN when there is none."""

    mean_iou: float
    accepted_rate: float
    accepted: int
    predicted: int
    human_instances: int

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


def heldout_metrics(predicted: Sequence[Instances], human: Sequence[Instances], accept_iou: float) -> HeldOutMetrics:
    """Mean mask IoU per human instance (Hungarian match on IoU, unmatched 0) and the accepted-unchanged rate per
    predicted instance (matched with IoU >= ``accept_iou`` and the same label, as the harvest counts it) of
    predicted vs human :class:`Instances`, one pair per image."""
    ious: list[float] = []
    accepted = predictions = 0
    for pred, hum in zip(predicted, human, strict=True):
        matching = match_masks(pred.masks, hum.masks)
        ious += matching.reference_iou().tolist()
        predictions += len(pred)
        pred_labels, human_labels = list(pred.labels or []), list(hum.labels or [])
        accepted += sum(
            matching.ious[p, h] >= accept_iou and pred_labels[p] == human_labels[h] for p, h in matching.pairs.items()
        )
    return HeldOutMetrics(
        mean_iou=float(np.mean(ious)) if ious else float("nan"),
        accepted_rate=accepted / predictions if predictions else float("nan"),
        accepted=int(accepted),
        predicted=predictions,
        human_instances=len(ious),
    )


def resegment_all(segmenter: Any, images: Sequence[np.ndarray], priors: Sequence[Instances]) -> list[Instances]:
    """Each image re-segmented by ``segmenter`` from the prompts of its prior instances."""
    from model.autoprompt import resegment

    return [resegment(segmenter, segmenter.embed(image), 0, prior) for image, prior in zip(images, priors, strict=True)]


def evaluate(
    segmenter: Any,
    images: Sequence[np.ndarray],
    priors: Sequence[Instances],
    human: Sequence[Instances],
    accept_iou: float,
) -> HeldOutMetrics:
    """``segmenter`` re-segments ``images`` from their ``priors``' prompts, measured against the ``human`` masks."""
    return heldout_metrics(resegment_all(segmenter, images, priors), human, accept_iou)


@dataclass(frozen=True)
class Promotion:
    """Old vs new on the held-out items: the numbers for the round's metrics, the verdict and, if not, why."""

    held_out: dict[str, Any]
    promoted: bool
    reason: str | None


def promotion(old: HeldOutMetrics, new: HeldOutMetrics, margin: float) -> Promotion:
    """The new model is promoted when its held-out mean IoU gain over the old one exceeds ``margin``."""
    gain = new.mean_iou - old.mean_iou
    numbers = {
        "old": old.to_json(),
        "new": new.to_json(),
        "iou_gain": gain,
        "accepted_rate_gain": new.accepted_rate - old.accepted_rate,
    }
    promoted = gain > margin  # NaN (nothing to compare on) is never a gain
    reason = None if promoted else f"held-out IoU gain {gain:+.4f} <= margin {margin}"
    return Promotion(numbers, promoted, reason)


# -- learning the signal weights from the corrections ----------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """The learnt signal weights (None: the corrections do not say; keep the defaults) and how many instances."""

    weights: dict[str, float] | None
    instances: int


def calibration_sample(count: int, max_items: int, seed: int) -> list[int]:
    """The positions of at most ``max_items`` of ``count`` corrected items (seeded, in order)."""
    if count <= max_items:
        return list(range(count))
    pick = np.random.default_rng([seed, 0xCA1]).choice(count, size=max_items, replace=False)
    return [int(i) for i in sorted(pick)]


def calibrate(
    segmenter: Any, images: Sequence[np.ndarray], priors: Sequence[Instances], human: Sequence[Instances]
) -> Calibration:
    """Which uncertainty signals track real quality for ``segmenter``: it re-segments corrected images from their
    prompts, each predicted instance's true IoU is its Hungarian match with the people's masks, and
    :func:`model.al_scores.fit_weights` turns the signals' rank correlations into weights."""
    from model import al_scores
    from model.autoprompt import resegment

    rows: list[np.ndarray] = []
    truth: list[float] = []
    for image, prior, hum in zip(images, priors, human, strict=True):
        emb = segmenter.embed(image)
        inst = resegment(segmenter, emb, 0, prior)
        if len(inst) == 0:
            continue
        truth += match_masks(inst.masks, hum.masks).pred_iou().tolist()
        rows.append(al_scores.decoder_signals(segmenter, emb, 0, inst).matrix())
    if not rows:
        return Calibration(None, 0)
    return Calibration(al_scores.fit_weights(np.concatenate(rows), np.asarray(truth)), len(truth))
