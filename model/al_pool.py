"""Active learning, the pool side of the model work (pure: a loaded segmenter and arrays in, numbers out): how sure
the model is of a still-unannotated image, with its pooled image embedding for the diversity strategies, and, when
the round promoted a new model, that model's re-segmentation of the image's current pre-labels."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from model.al_scores import Aggregate
    from model.instances import Instances


@dataclass(frozen=True)
class ImageScore:
    """One pool image: its confidence (low: a person should look), the signals per instance (JSON), the pooled
    embedding (float32) and, when re-segmented, the new instances."""

    confidence: float
    signals: dict[str, Any]
    embedding: np.ndarray
    relabelled: Instances | None = None


def score_image(
    segmenter: Any,
    image: np.ndarray,
    prior: Instances,
    *,
    weights: Mapping[str, float] | None,
    aggregate: Aggregate,
    resegment_first: bool,
) -> ImageScore:
    """Score ``image`` by the decoder's uncertainty signals on its instances (``prior``, or with
    ``resegment_first`` the segmenter's re-segmentation of them), combined with ``weights`` (default: equal) and
    aggregated over the image with ``aggregate``."""
    from model import al_scores
    from model.autoprompt import resegment
    from model.diversity import pool_features

    emb = segmenter.embed(image)
    instances = resegment(segmenter, emb, 0, prior) if resegment_first else prior
    signals = al_scores.decoder_signals(segmenter, emb, 0, instances)
    confidence = al_scores.image_confidence(al_scores.instance_confidence(signals, weights), aggregate)
    vector = pool_features(emb.features[-1].cpu().numpy())[0].astype("<f4")
    return ImageScore(float(confidence), signals.to_json(), vector, instances if resegment_first else None)
