"""maskloop's SAM 2 fine-tuning engine (pure torch): ``finetune(FinetuneConfig) -> FinetuneResult`` and recipes."""

from model.finetune.config import FinetuneConfig, FinetuneResult
from model.finetune.data import BoxFillSource, CocoSource, ImageSource, SyntheticSource
from model.finetune.engine import finetune
from model.finetune.recipes import RECIPES, run_recipe

__all__ = [
    "RECIPES",
    "BoxFillSource",
    "CocoSource",
    "FinetuneConfig",
    "FinetuneResult",
    "ImageSource",
    "SyntheticSource",
    "finetune",
    "run_recipe",
]
