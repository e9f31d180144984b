"""Active learning, the fine-tuning of a round (pure: what :func:`model.finetune.finetune` is asked to do): the
training data from people's corrections, the checkpoint's name and the engine's configuration."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from model.finetune import CocoSource, FinetuneConfig


class Corrected(Protocol):
    """A corrected image: its asset, size and the people's final instance records (COCO RLE + box)."""

    @property
    def asset_id(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def human(self) -> list[dict[str, Any]] | None: ...


class RoundKnobs(Protocol):
    """The fine-tuning settings of a round (:class:`storage.params.ActiveLearningParams` has them)."""

    @property
    def freeze(self) -> tuple[str, ...]: ...
    @property
    def steps(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def objects_per_image(self) -> int: ...
    @property
    def box_fraction(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def num_threads(self) -> int | None: ...


def coco_source(
    items: Sequence[Corrected], images: Mapping[int, np.ndarray], image_size: int, version: str
) -> CocoSource:
    """A :class:`model.finetune.CocoSource` of the items' final human instances."""
    from model.finetune import CocoSource

    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for n, item in enumerate(items, start=1):
        coco_images.append({"id": n, "file_name": f"asset-{item.asset_id}", "height": item.height, "width": item.width})
        for record in item.human or []:
            if "rle" not in record:
                continue
            x1, y1, x2, y2 = (float(v) for v in record["box"])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": n,
                    "category_id": 1,
                    "segmentation": record["rle"],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "iscrowd": 0,
                }
            )
    dataset = {"images": coco_images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    arrays = {n: images[item.asset_id] for n, item in enumerate(items, start=1)}
    return CocoSource(dataset, arrays, image_size=image_size, version=version)


def model_dir_name(base_name: str, number: int) -> str:
    """``<base model id>-al<round>``: the fine-tuned checkpoint's directory (its model id)."""
    stem = re.sub(r"-al\d+$", "", base_name.split("@", 1)[0]) or "model"
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', stem)}-al{number}"


def round_config(
    *,
    start_uri: str,
    start_name: str,
    project_id: int,
    number: int,
    train: Sequence[Corrected],
    test: Sequence[Corrected],
    images: Mapping[int, np.ndarray],
    manifest: str,
    root: Path,
    knobs: RoundKnobs,
    device: str,
) -> FinetuneConfig:
    """Fine-tune the checkpoint at ``start_uri`` (model version ``start_name``) on ``train``, evaluated once at the
    end on ``test``; the checkpoint goes to ``root/project-<id>/round-<n>/<base>-al<n>``."""
    from model.finetune import FinetuneConfig
    from model.finetune.modelio import image_size, load_model

    size = image_size(load_model(Path(start_uri)))
    data = coco_source(train, images, size, f"al:{project_id}:r{number}:{manifest[:12]}")
    eval_data = coco_source(test, images, size, "held-out") if test else None
    name = model_dir_name(start_name, number)
    out_dir = root / f"project-{project_id}" / f"round-{number}"
    return FinetuneConfig(
        out_dir=out_dir,
        best_dir=out_dir / name,
        data=data,
        eval_data=eval_data,
        eval_images=max(1, min(16, len(test) or len(train))),
        base=Path(start_uri),
        model_id=name,
        freeze=tuple(knobs.freeze),
        steps=knobs.steps,
        lr=knobs.lr,
        batch_size=knobs.batch_size,
        objects_per_image=knobs.objects_per_image,
        warmup_steps=max(1, min(50, knobs.steps // 10)),
        box_fraction=knobs.box_fraction,
        corrective_rounds=0,
        focal_weight=1.0,
        loss_size=size // 2,
        eval_every_s=1e9,  # one evaluation, at the end: the checkpoint is the trained model
        seed=knobs.seed + number,
        device=device,
        num_threads=knobs.num_threads,
        cache_image_features="image_encoder" in knobs.freeze,
        extra_card={"description": f"maskloop active-learning round {number} of project {project_id}"},
    )
