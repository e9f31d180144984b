"""Which models a pre-label worker runs, loaded once per process through :mod:`model.cache`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.params import PrelabelParams
from storage.prelabel.predict import Predictor
from storage.settings import Settings

SHIPPED_MODELS = {"maskloop/shapes-tiny": Path(__file__).resolve().parent.parent / "model" / "weights" / "shapes-tiny"}


def resolve_model_id(model_id: str) -> str:
    """Names of models shipped in the repo map to their directory; anything else is passed on unchanged."""
    shipped = SHIPPED_MODELS.get(model_id)
    return str(shipped) if shipped is not None else model_id


def model_identity(model_id: str) -> tuple[str, str]:
    """``(model id, checkpoint sha256)`` that loading ``model_id`` would record, from the weight files alone."""
    from model.loading import checkpoint_identity

    return checkpoint_identity(resolve_model_id(model_id))


def device_of(settings: Settings) -> str | None:
    return None if settings.device == "auto" else settings.device


@dataclass
class Models:
    """The image segmenter, plus the video model and text detector built only when a batch needs them."""

    settings: Settings
    model_id: str
    strategy: str
    segmenter: Any

    @classmethod
    def load(cls, settings: Settings, model_id: str, strategy: str) -> Models:
        from model.cache import get_segmenter

        if settings.cpu_threads is not None:
            import torch

            torch.set_num_threads(settings.cpu_threads)
        return cls(settings, model_id, strategy, get_segmenter(resolve_model_id(model_id), device=device_of(settings)))

    @property
    def detector(self) -> Any:
        from model.strategies import strategy_spec

        if not strategy_spec(self.strategy).needs_detector:
            return None
        from model.cache import get_detector

        return get_detector(resolve_model_id(self.settings.detector_id), device=device_of(self.settings))

    @property
    def video(self) -> Any:
        from model.cache import get_video_model

        return get_video_model(resolve_model_id(self.model_id), device=str(self.segmenter.device))

    def predictor(self, params: PrelabelParams) -> Predictor:
        """The model as the predict stage sees it: ``params``' strategy on images, and on videos a tracker whose
        key frames that strategy proposes."""
        from model.autoprompt import auto_segment
        from model.tracker import make_proposer, track_video

        classes = list(params.classes) or None
        extra: dict[str, Any] = dict(params.strategy_params)

        def images(batch: list[Any]) -> list[Any]:
            return auto_segment(
                self.segmenter, batch, params.strategy, classes=classes, detector=self.detector, **extra
            )

        def video(path: Path) -> Any:
            proposer = make_proposer(
                params.strategy,
                segmenter=self.segmenter,
                classes=classes,
                text_detector=self.detector,
                autoprompt_params=extra,
            )
            return track_video(
                self.video,
                path,
                params.strategy,
                classes=classes,
                every=params.video_every,
                target_fps=params.video_target_fps,
                key_frame_interval=params.key_frame_interval,
                segmenter=self.segmenter,
                proposer=proposer,
                max_frames=params.video_max_frames,
            )

        return Predictor(images, video)
