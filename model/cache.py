"""An explicit, keyed, per-process model cache so a worker loads each checkpoint once.

The only module-level state in ``model/``: keys are (model id or path, device, dtype, config fingerprint).
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from model.concept import ConceptSegmenter
    from model.detector import TextDetector
    from model.segmenter import Segmenter

_LOCK = threading.Lock()
_SEGMENTERS: dict[tuple[str, str, str, str], Segmenter | ConceptSegmenter] = {}
_DETECTORS: dict[tuple[str, str], TextDetector] = {}


def _key_part(value: Any) -> str:
    return "auto" if value is None else str(value)


def get_segmenter(
    model_id: str | os.PathLike[str],
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **kwargs: Any,
) -> Segmenter | ConceptSegmenter:
    """The cached segmenter for (model_id, device, dtype, kwargs), loading it on first use through its family
    (:func:`model.families.family_of`): a :class:`Segmenter` for SAM 2 / EdgeTAM, a
    :class:`~model.concept.ConceptSegmenter` for SAM 3."""
    from model.families import family_of

    key = (str(model_id), _key_part(device), _key_part(dtype), repr(sorted((k, repr(v)) for k, v in kwargs.items())))
    with _LOCK:
        segmenter = _SEGMENTERS.get(key)
        if segmenter is None:
            spec = family_of(model_id, cache_dir=kwargs.get("cache_dir"))
            segmenter = spec.load(model_id, device=device, dtype=dtype, **kwargs)
            _SEGMENTERS[key] = segmenter
        return segmenter


def get_detector(
    model_id: str | os.PathLike[str], device: str | torch.device | None = None, **kwargs: Any
) -> TextDetector:
    """The cached Grounding DINO :class:`~model.detector.TextDetector` for (model_id, device)."""
    from model.detector import TextDetector

    key = (str(model_id), _key_part(device))
    with _LOCK:
        detector = _DETECTORS.get(key)
        if detector is None:
            detector = TextDetector.from_pretrained(model_id, device=device, **kwargs)
            _DETECTORS[key] = detector
        return detector


def clear_cache() -> None:
    """Drop every cached model (tests; freeing GPU memory between jobs)."""
    with _LOCK:
        _SEGMENTERS.clear()
        _DETECTORS.clear()
        _VIDEO_MODELS.clear()


def cached_keys() -> list[tuple[str, ...]]:
    with _LOCK:
        return [*_SEGMENTERS, *_DETECTORS]


_VIDEO_MODELS: dict[tuple[str, str], Any] = {}


def get_video_model(model_id: str | os.PathLike[str], device: str = "cpu") -> Any:
    """The cached video model for (model_id, device), loading it on first use through its family: a
    :class:`~model.video_model.Sam2Video` for SAM 2 / EdgeTAM, a :class:`~model.concept_video.ConceptVideo` for
    SAM 3 (tracking by detection)."""
    from model.families import family_of

    key = (str(model_id), str(device))
    spec = family_of(model_id)
    if spec.load_video is None:
        from model.errors import ModelCapabilityError

        raise ModelCapabilityError(f"{model_id!r} is a {spec.title} checkpoint, which does not track video")
    with _LOCK:
        video = _VIDEO_MODELS.get(key)
    if video is None:  # loaded outside the lock: a SAM 3 video model takes the segmenter from this cache
        video = spec.load_video(os.fspath(model_id), device=str(device))
        with _LOCK:
            video = _VIDEO_MODELS.setdefault(key, video)
    return video
