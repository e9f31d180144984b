"""SAM 3 on video, tracked by detection: every sampled frame's concept instances (:mod:`model.concept`) associated
into stable track ids by :class:`model.video_detect.DetectionTracker` (mask IoU plus motion, as for checkpoints with
an untrained memory).

transformers' ``Sam3VideoModel`` couples SAM 3's detector to its own tracker, and its inference session stores every
added frame and every per-frame output (``processed_frames``, ``output_dict_per_obj``), as ``Sam2VideoModel``'s does;
pruning it would mean mirroring its private steps, as :mod:`model.video_session` does for SAM 2. maskloop's tracker
streams instead: it holds the tracks' current state and one RLE per recorded frame, never past frames, so memory
stays flat in clip length (``tests/model/test_concept_video.py`` watches every decoded frame).
A SAM 3 concept model has no box prompts, so a track no proposal matched is not re-segmented (no coasting): it
resumes when the detector finds it again.
"""

from __future__ import annotations

from typing import Any

from model.errors import ModelCapabilityError
from model.video_model import TrackingDefaults

__all__ = ["ConceptVideo"]

CONCEPT_TRACKING = TrackingDefaults(max_key_frame_interval=1, trust_memory=False)
"""Detect on every sampled frame; never read a propagated mask (there is none)."""


class ConceptVideo:
    """The video side of a SAM 3 checkpoint: what :func:`model.tracker.track_video` needs (``model_id``,
    ``tracking``), with the concept :class:`~model.concept.ConceptSegmenter` doing the work on each frame."""

    tracking = CONCEPT_TRACKING

    def __init__(self, segmenter: Any) -> None:
        self.segmenter = segmenter
        self.model_id = f"sam3_concept_video:{segmenter.model_version}"

    @classmethod
    def from_pretrained(cls, source: str, device: str | None = None) -> ConceptVideo:
        """The cached SAM 3 concept segmenter of ``source`` (:func:`model.cache.get_segmenter`) as a video model."""
        from model.cache import get_segmenter

        return cls(get_segmenter(source, device=device))

    def new_session(self, height: int, width: int, prune: bool = True) -> Any:
        raise ModelCapabilityError(
            f"{self.model_id} tracks by detection: it has no memory session; track it with "
            "model.tracker.track_video (its tracking defaults say so)"
        )
