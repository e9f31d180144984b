"""SAM 2-family video models: :class:`Sam2Video` loads transformers' ``Sam2VideoModel`` or ``EdgeTamVideoModel``
(from a ``sam2_video``/``edgetam_video`` checkpoint, from an image-only ``sam2``/``edgetam`` checkpoint by converting
the config -- the memory modules are then untrained and a warning is logged -- or from Meta's SAM 2 ``.pt``) and
starts streaming sessions (:mod:`model.video_session`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.video_session import ObjectFrame, Sam2VideoSession

logger = logging.getLogger(__name__)

__all__ = [
    "ObjectFrame",
    "Sam2Video",
    "Sam2VideoSession",
    "TrackingDefaults",
    "resolve_dtype",
    "video_config_from_image_config",
]

TRACKING_KEY = "maskloop_video"
"""The ``config.json`` key holding a checkpoint's :class:`TrackingDefaults` (its model card says why)."""


@dataclass(frozen=True)
class TrackingDefaults:
    """How a checkpoint should be tracked (``config.json`` key :data:`TRACKING_KEY`; absent: SAM 2's defaults).

    ``max_key_frame_interval`` caps the tracker's key-frame interval (sampled frames between re-proposals);
    ``trust_memory`` false says the memory path is untrained, so the tracker follows objects by re-proposing on key
    frames and matching the proposals to its tracks instead of reading SAM 2's propagated masks."""

    max_key_frame_interval: int | None = None
    trust_memory: bool = True

    def __post_init__(self) -> None:
        if self.max_key_frame_interval is not None and self.max_key_frame_interval < 1:
            raise ValueError(f"max_key_frame_interval must be >= 1, got {self.max_key_frame_interval}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any], source: str = "config.json") -> TrackingDefaults:
        raw = config.get(TRACKING_KEY) or {}
        unknown = sorted(set(raw) - {"max_key_frame_interval", "trust_memory", "why"})
        if unknown:
            raise ValueError(
                f"{source}: unknown {TRACKING_KEY} keys {unknown}; expected max_key_frame_interval, trust_memory"
            )
        interval = raw.get("max_key_frame_interval")
        return cls(None if interval is None else int(interval), bool(raw.get("trust_memory", True)))


_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def video_config_from_image_config(image_config: Any, **memory: Any) -> Any:
    """Build a ``Sam2VideoConfig`` sharing the image model's encoder/prompt/decoder settings (memory at defaults
    sized to the image model's feature width and lowest-resolution feature map; ``memory`` overrides them, e.g.
    ``memory_attention_num_layers``)."""
    from transformers import Sam2VideoConfig

    vision = image_config.vision_config
    hidden = int(vision.fpn_hidden_size)
    return Sam2VideoConfig(
        vision_config=vision.to_dict(),
        prompt_encoder_config=image_config.prompt_encoder_config.to_dict(),
        mask_decoder_config=image_config.mask_decoder_config.to_dict(),
        image_size=int(image_config.prompt_encoder_config.image_size),
        memory_attention_hidden_size=hidden,
        memory_encoder_hidden_size=hidden,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_attention_rope_feat_sizes=list(vision.backbone_feature_sizes[-1]),
        **memory,
    )


def edgetam_video_config_from_image_config(image_config: Any, **memory: Any) -> Any:
    """Build an ``EdgeTamVideoConfig`` sharing an EdgeTAM image model's encoder/prompt/decoder settings (memory at
    EdgeTAM's defaults, its attention and encoder widths set to the image model's feature width, the memory RoPE to
    its lowest-resolution feature map, the perceiver's 2-D latents to 4x4 windows of it; ``memory`` overrides them).
    Memories stay 64 wide, as released: the image model's feature width must be a multiple of 64."""
    from transformers import EdgeTamVideoConfig

    vision = image_config.vision_config
    hidden = int(vision.fpn_hidden_size)
    if hidden % 64:
        raise ValueError(f"an EdgeTAM video model needs a feature width that is a multiple of 64, got {hidden}")
    feat = list(vision.backbone_feature_sizes[-1])
    # the perceiver pools the memory map in 4x4 windows (released: 64x64 -> 16x16 = 256 latents); keep the window
    windows = max(1, min(feat) // 4)
    settings: dict[str, Any] = {
        "memory_attention_hidden_size": hidden,
        "memory_encoder_hidden_size": hidden,
        "mask_downsampler_embed_dim": hidden,
        "memory_fuser_embed_dim": hidden,
        "memory_attention_rope_feat_sizes": feat,
        "perceiver_resampler_num_latents_2d": windows * windows,
        "memory_attention_rope_k_sizes": [windows, windows],
        **memory,
    }
    return EdgeTamVideoConfig(
        vision_config=vision.to_dict(),
        prompt_encoder_config=image_config.prompt_encoder_config.to_dict(),
        mask_decoder_config=image_config.mask_decoder_config.to_dict(),
        image_size=int(image_config.prompt_encoder_config.image_size),
        **settings,
    )


def _init_perceiver_latents(perceiver: Any) -> None:
    """Draw EdgeTAM's perceiver latents as its constructor does (standard normal): transformers 5.23 leaves them
    uninitialised (values up to 1e38, NaN downstream) when they are missing from an image-only checkpoint."""
    with torch.no_grad():
        for name in ("latents_1d", "latents_2d"):
            latents = getattr(perceiver, name, None)
            if latents is not None:
                latents.normal_()


@dataclass(frozen=True)
class _VideoKind:
    """How one family's checkpoints become a video model: the transformers class, the image-only ``model_type``
    whose config is converted (:func:`video_config_from_image_config` and its EdgeTAM twin) and the video one."""

    model_class: str
    image_type: str
    video_type: str
    from_image_config: Any


_VIDEO_KINDS = {
    "sam2": _VideoKind("Sam2VideoModel", "sam2", "sam2_video", video_config_from_image_config),
    "edgetam": _VideoKind("EdgeTamVideoModel", "edgetam", "edgetam_video", edgetam_video_config_from_image_config),
}
_BY_TYPE = {t: kind for kind in _VIDEO_KINDS.values() for t in (kind.image_type, kind.video_type)}


def source_is_image_only(path: Path) -> bool:
    """True when ``path`` holds an image-only ``sam2``/``edgetam`` checkpoint (its config says so)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    model_type = json.loads(config.read_text()).get("model_type")
    return any(model_type == kind.image_type for kind in _VIDEO_KINDS.values())


@contextlib.contextmanager
def quiet_load_report(quiet: bool = True) -> Iterator[None]:
    """Silence transformers' per-key load report while an image-only checkpoint becomes a video model: it lists
    every memory-module weight as missing (~60 lines), which the caller's one-line warning already says."""
    log = logging.getLogger("transformers.modeling_utils")
    level = log.level
    if quiet:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


class Sam2Video:
    """A loaded SAM 2 video model plus its run settings; :meth:`new_session` starts a streaming session."""

    def __init__(
        self,
        model: Any,
        model_id: str,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        tracking: TrackingDefaults | None = None,
    ) -> None:
        self.model = model.eval()
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.tracking = tracking or TrackingDefaults()

    @classmethod
    def from_config(
        cls,
        config: Any,
        model_id: str = "sam2_video:random",
        device: str = "cpu",
        dtype: str | torch.dtype = torch.float32,
        seed: int = 0,
    ) -> Sam2Video:
        """A randomly initialised model (tests, benchmarks)."""
        from transformers import Sam2VideoModel

        torch.manual_seed(seed)
        dt = resolve_dtype(dtype)
        model: Any = Sam2VideoModel(config)
        return cls(model.to(device=device, dtype=dt), model_id, device, dt)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | None = None, dtype: str | torch.dtype | None = None
    ) -> Sam2Video:
        """Load from a transformers-format directory (``sam2_video``, or image-only ``sam2`` whose config is
        converted) or a hub id (through :func:`model.loading.load_pretrained`: cache first, fast failure offline).

        ``device``/``dtype`` default as in :mod:`model.device` (cuda if present; bf16 on CUDA, float32 elsewhere);
        the weights are cast to ``dtype``.
        """
        import transformers
        from transformers import AutoConfig, Sam2VideoModel

        from model.device import resolve_dtype as default_dtype
        from model.device import select_device
        from model.loading import load_pretrained, sha256_of_files

        dev = select_device(device)
        dt = default_dtype(dtype, dev)
        source = Path(str(path)).expanduser()
        if source.suffix in {".pt", ".pth"}:
            return cls._from_meta_checkpoint(source, str(dev), dt)
        if not source.is_dir():
            loaded = load_pretrained(Sam2VideoModel, str(path))
            return cls(loaded.model.to(device=dev, dtype=dt), f"sam2_video:{loaded.model_version}", str(dev), dt)
        config = AutoConfig.from_pretrained(source, local_files_only=True)
        kind = _BY_TYPE.get(config.model_type)
        if kind is None:
            known = ", ".join(sorted(_BY_TYPE))
            raise ValueError(f"expected a video-capable checkpoint ({known}) at {source}, got {config.model_type!r}")
        if kind.model_class != "Sam2VideoModel":
            from model.families import get_family

            get_family(kind.image_type).check_requirements(str(source))
        model_class = getattr(transformers, kind.model_class)
        image_only = config.model_type == kind.image_type
        tracking = TrackingDefaults.from_config(json.loads((source / "config.json").read_text()), str(source))
        if image_only:
            # a checkpoint whose config already says its memory is untrained (shapes-tiny) is tracked by detection:
            # nothing to warn about
            log = logger.warning if tracking.trust_memory else logger.info
            log("%s is an image-only checkpoint: the video memory modules are untrained", source)
            config = kind.from_image_config(config)
        with quiet_load_report(source_is_image_only(source)):
            model: Any = model_class.from_pretrained(source, config=config, local_files_only=True)
        if image_only and hasattr(model, "spatial_perceiver"):
            _init_perceiver_latents(model.spatial_perceiver)
        weights = [p for p in source.iterdir() if p.suffix in (".safetensors", ".bin")]
        sha = sha256_of_files(weights)[:8]
        return cls(model.to(device=dev, dtype=dt), f"{kind.video_type}:{source.name}@{sha}", str(dev), dt, tracking)

    @classmethod
    def _from_meta_checkpoint(cls, source: Path, device: str, dtype: torch.dtype) -> Sam2Video:
        """A Meta ``.pt`` (``{"model": state_dict}``, image and memory weights in one file): the architecture comes
        from the Hiera size in the file name, every tensor is renamed (:mod:`model.convert`) and must be used."""
        from transformers import Sam2VideoModel

        from model.configs import hiera_size_from_name, sam2_architecture_config
        from model.convert import meta_to_hf_state_dict
        from model.errors import ModelNotAvailableError
        from model.loading import load_pretrained

        size = hiera_size_from_name(source.name)
        if size is None:
            raise ModelNotAvailableError(
                f"{source.name}: cannot tell the SAM 2 size from the file name; keep Meta's name (sam2.1_hiera_tiny.pt, "
                "sam2.1_hiera_small.pt, sam2.1_hiera_base_plus.pt, sam2.1_hiera_large.pt)"
            )
        config = video_config_from_image_config(sam2_architecture_config(size))
        loaded = load_pretrained(Sam2VideoModel, source, config=config, convert_state_dict=meta_to_hf_state_dict)
        return cls(loaded.model.to(device=device, dtype=dtype), f"sam2_video:{loaded.model_version}", device, dtype)

    @property
    def image_size(self) -> int:
        return int(self.model.config.image_size)

    def new_session(self, height: int, width: int, prune: bool = True, offload_state: bool = False) -> Sam2VideoSession:
        return Sam2VideoSession(self, height, width, prune=prune, offload_state=offload_state)
