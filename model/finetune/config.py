"""Configuration and result of a fine-tuning run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.finetune.data import ImageSource

FREEZABLE = ("image_encoder", "prompt_encoder", "mask_decoder")


@dataclass
class FinetuneConfig:
    """One fine-tuning run of a transformers ``Sam2Model``.

    ``base`` is a checkpoint directory (``save_pretrained`` layout) or None to start from ``model_config`` (a
    ``Sam2Config`` dict) with fresh weights. Training stops at ``steps`` or after ``budget_s`` seconds, whichever
    comes first; the learning-rate schedule (linear warm-up, cosine decay to ``min_lr_ratio``) follows that
    progress. Mask losses are computed at ``loss_size`` pixels (default: the input size). The best checkpoint by
    held-out prompt IoU goes to ``best_dir`` (default ``out_dir / "best"``), only once the mean of box and point
    IoU exceeds ``best_to_beat`` (so a run can train into a directory that already holds a good checkpoint).
    ``cache_image_features`` (needs a frozen ``image_encoder``) memoises the encoder's output per distinct training
    image (up to ``cache_max_images``): for a fixed dataset such as a :class:`~model.finetune.data.CocoSource`,
    decoder-only steps then skip the encoder (about 2x faster on CPU); fresh synthetic images never hit the cache.
    ``prompt_warmup_steps`` (from scratch) first trains the prompt encoder and mask decoder that many steps on
    :class:`~model.finetune.data.BoxFillSource` drills (box in, filled box out), so the decoder reads its prompts
    before it meets real scenes; without it a from-scratch model learns to ignore them.
    """

    out_dir: Path
    data: ImageSource
    base: Path | None = None
    model_config: dict[str, Any] | None = None
    model_id: str = "sam2-finetuned"
    freeze: tuple[str, ...] = ()
    steps: int = 1000
    budget_s: float | None = None
    batch_size: int = 4
    objects_per_image: int = 4
    lr: float = 3e-4
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    box_fraction: float = 0.5
    box_jitter: float = 0.1
    corrective_rounds: int = 1
    mask_input_fraction: float = 0.5
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    focal_alpha: float = 0.25
    loss_size: int | None = None
    eval_data: ImageSource | None = None
    eval_images: int = 16
    eval_every_s: float = 300.0
    eval_every_steps: int | None = None
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    num_threads: int | None = None
    tie_positional_embeddings: bool = True
    torch_init: bool = True
    align_prompt_attention: bool = False
    prompt_warmup_steps: int = 0
    cache_image_features: bool = False
    cache_max_images: int = 4096
    best_to_beat: float = -1.0
    best_dir: Path | None = None
    extra_card: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.best_dir is not None:
            self.best_dir = Path(self.best_dir)
        if self.base is not None:
            self.base = Path(self.base)
        if (self.base is None) == (self.model_config is None):
            raise ValueError(
                "FinetuneConfig needs exactly one of base (a checkpoint dir) or model_config, got "
                f"base={self.base!r}, model_config={'set' if self.model_config else None}"
            )
        bad = [f for f in self.freeze if f not in FREEZABLE]
        if bad:
            raise ValueError(f"FinetuneConfig.freeze entries must be in {FREEZABLE}, got {bad}")
        if self.prompt_warmup_steps < 0:
            raise ValueError(f"FinetuneConfig.prompt_warmup_steps must be >= 0, got {self.prompt_warmup_steps}")
        for name in ("steps", "batch_size", "objects_per_image", "eval_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"FinetuneConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"FinetuneConfig.lr must be > 0, got {self.lr}")
        for name in ("box_fraction", "mask_input_fraction", "min_lr_ratio"):
            if not (0.0 <= getattr(self, name) <= 1.0):
                raise ValueError(f"FinetuneConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.corrective_rounds < 0:
            raise ValueError(f"FinetuneConfig.corrective_rounds must be >= 0, got {self.corrective_rounds}")
        if self.loss_size is not None and self.loss_size < 8:
            raise ValueError(f"FinetuneConfig.loss_size must be >= 8 or None (input size), got {self.loss_size}")
        if self.cache_image_features and "image_encoder" not in self.freeze:
            raise ValueError("FinetuneConfig.cache_image_features needs freeze to include 'image_encoder'")
        if self.cache_max_images < 1:
            raise ValueError(f"FinetuneConfig.cache_max_images must be >= 1, got {self.cache_max_images}")
        if self.budget_s is not None and self.budget_s <= 0:
            raise ValueError(f"FinetuneConfig.budget_s must be > 0 or None, got {self.budget_s}")

    @property
    def best_path(self) -> Path:
        return self.best_dir if self.best_dir is not None else self.out_dir / "best"


@dataclass(frozen=True)
class FinetuneResult:
    """What a run produced: ``best_dir`` holds the best checkpoint (transformers format + README.md model card)."""

    out_dir: Path
    best_dir: Path
    steps: int
    seconds: float
    best_metrics: dict[str, float]
    history: list[dict[str, float]]
    data_version: str
    seed: int
