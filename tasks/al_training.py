"""Active learning, the model side (plain functions): fine-tune the current model on a round's corrected items, compare
old and new on the held-out corrections, and learn the uncertainty signals' weights from the corrections."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from storage.catalog import (
    Catalog,
)
from storage.settings import Settings
from tasks.active_learning_ops import (
    ActiveLearningParams,
    Item,
    RoundState,
    load_images,
    load_segmenter,
    manifest_of,
    register_model,
)

log = logging.getLogger(__name__)


# -- fine-tuning ---------------------------------------------------------------------------------------------------
def coco_source(items: Sequence[Item], images: Mapping[int, np.ndarray], image_size: int, version: str) -> Any:
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


def finetune_round(
    settings: Settings,
    catalog: Catalog,
    state: RoundState,
    params: ActiveLearningParams,
    train: Sequence[Item],
    test: Sequence[Item],
) -> dict[str, Any]:
    """Fine-tune the round's start model on ``train`` (evaluated on ``test`` inside the engine) and register it
    (its parent: the start model)."""
    from model.device import select_device
    from model.finetune import FinetuneConfig, finetune
    from model.finetune.modelio import image_size, load_model

    started = time.perf_counter()
    images = load_images(settings, catalog, sorted({i.asset_id for i in [*train, *test]}))
    size = image_size(load_model(Path(state.start_uri)))
    manifest = manifest_of(train)
    data = coco_source(train, images, size, f"al:{state.project_id}:r{state.number}:{manifest[:12]}")
    eval_data = coco_source(test, images, size, "held-out") if test else None
    root = Path(params.models_dir) if params.models_dir else settings.data_dir / "models"
    name = model_dir_name(state.start_name, state.number)
    out_dir = root / f"project-{state.project_id}" / f"round-{state.number}"
    config = FinetuneConfig(
        out_dir=out_dir,
        best_dir=out_dir / name,
        data=data,
        eval_data=eval_data,
        eval_images=max(1, min(16, len(test) or len(train))),
        base=Path(state.start_uri),
        model_id=name,
        freeze=tuple(params.freeze),
        steps=params.steps,
        lr=params.lr,
        batch_size=params.batch_size,
        objects_per_image=params.objects_per_image,
        warmup_steps=max(1, min(50, params.steps // 10)),
        box_fraction=params.box_fraction,
        corrective_rounds=0,
        focal_weight=1.0,
        loss_size=size // 2,
        eval_every_s=1e9,  # one evaluation, at the end: the checkpoint is the trained model
        seed=params.seed + state.number,
        device=str(select_device(None if settings.device == "auto" else settings.device)),
        num_threads=params.num_threads,
        cache_image_features="image_encoder" in params.freeze,
        extra_card={"description": f"maskloop active-learning round {state.number} of project {state.project_id}"},
    )
    result = finetune(config)
    segmenter = load_segmenter(settings, str(result.best_dir))
    metrics = {
        "steps": result.steps,
        "seconds": round(result.seconds, 3),
        "train_items": len(train),
        "held_out_items": len(test),
        "engine_eval": {k: v for k, v in result.best_metrics.items() if k in ("box_iou", "point_iou", "objects")},
    }
    model_row = register_model(
        catalog,
        segmenter,
        str(result.best_dir),
        parent_id=state.start_model_id,
        data_version_id=state.data_version_id,
        train_manifest=manifest,
        metrics=metrics,
        params={k: v for k, v in params.to_json().items() if k in ("steps", "lr", "batch_size", "freeze", "seed")},
    )
    state.new_model_id, state.new_uri = model_row, str(result.best_dir)
    metrics["wall_seconds"] = round(time.perf_counter() - started, 3)
    metrics["model_version"] = str(segmenter.model_version)
    return metrics


# -- evaluation ----------------------------------------------------------------------------------------------------
def heldout_metrics(predicted: Sequence[Any], human: Sequence[Any], accept_iou: float) -> dict[str, float | int]:
    """Mean mask IoU per human instance (Hungarian match on IoU, unmatched 0) and the accepted-unchanged rate per
    predicted instance (matched with IoU >= ``accept_iou`` and the same label, as the harvest counts it) of
    predicted vs human :class:`Instances`, one pair per image."""
    from scipy.optimize import linear_sum_assignment

    from storage.agreement import iou_matrix, match_instances

    ious: list[float] = []
    accepted = predictions = 0
    for pred, hum in zip(predicted, human, strict=True):
        matrix = iou_matrix(pred.masks, hum.masks)
        best = np.zeros(len(hum))
        if matrix.size:
            rows, cols = linear_sum_assignment(matrix, maximize=True)
            best[cols] = matrix[rows, cols]
        ious += best.tolist()
        outcomes = match_instances(pred.masks, list(pred.labels), hum.masks, list(hum.labels), accept_iou=accept_iou)
        predictions += sum(o.pred_index is not None for o in outcomes)
        accepted += sum(o.outcome == "accepted" for o in outcomes)
    return {
        "mean_iou": float(np.mean(ious)) if ious else float("nan"),
        "accepted_rate": accepted / predictions if predictions else float("nan"),
        "accepted": accepted,
        "predicted": predictions,
        "human_instances": len(ious),
    }


def _instances(records: Sequence[Mapping[str, Any]], height: int, width: int) -> Any:
    from model.instances import Instances

    return Instances.from_records(list(records), height, width)


def _human_instances(records: Sequence[Mapping[str, Any]], height: int, width: int) -> Any:
    from model.instances import Instances
    from model.masks import rles_to_masks

    recs = [r for r in records if "rle" in r]
    if not recs:
        return Instances.empty(height, width)
    return Instances(masks=rles_to_masks([r["rle"] for r in recs]), labels=[str(r["label"]) for r in recs])


def evaluate_models(
    settings: Settings, catalog: Catalog, items: Sequence[Item], uris: Mapping[str, str], accept_iou: float
) -> dict[str, dict[str, float | int]]:
    """Each model of ``uris`` (name -> checkpoint) re-segments ``items`` from their prediction's prompts; metrics
    against the people's final instances (see :func:`heldout_metrics`)."""
    from model.autoprompt import resegment

    images = load_images(settings, catalog, sorted({i.asset_id for i in items}))
    humans = [_human_instances(i.human or [], i.height, i.width) for i in items]
    out: dict[str, dict[str, float | int]] = {}
    for name, uri in uris.items():
        segmenter = load_segmenter(settings, uri)
        preds = []
        for item in items:
            previous = _instances(item.prediction, item.height, item.width)
            emb = segmenter.embed(images[item.asset_id])
            preds.append(resegment(segmenter, emb, 0, previous))
        out[name] = heldout_metrics(preds, humans, accept_iou)
    return out


# -- learning the signal weights from the corrections ----------------------------------------------------------------
def calibrate_weights(
    settings: Settings, catalog: Catalog, items: Sequence[Item], uri: str, *, max_items: int = 200, seed: int = 0
) -> dict[str, Any]:
    """Which uncertainty signals track real quality for the model at ``uri``: it re-segments corrected items from
    their prompts, each predicted instance's true IoU is its Hungarian match with the people's masks, and
    :func:`model.al_scores.fit_weights` turns the signals' rank correlations into weights (None: keep defaults)."""
    from scipy.optimize import linear_sum_assignment

    from model import al_scores
    from model.autoprompt import resegment
    from storage.agreement import iou_matrix

    if len(items) > max_items:
        pick = np.random.default_rng([seed, 0xCA1]).choice(len(items), size=max_items, replace=False)
        items = [items[int(i)] for i in sorted(pick)]
    if not items:
        return {"weights": None, "instances": 0}
    segmenter = load_segmenter(settings, uri)
    images = load_images(settings, catalog, sorted({i.asset_id for i in items}))
    rows: list[np.ndarray] = []
    truth: list[float] = []
    for item in items:
        emb = segmenter.embed(images[item.asset_id])
        inst = resegment(segmenter, emb, 0, _instances(item.prediction, item.height, item.width))
        if len(inst) == 0:
            continue
        human = _human_instances(item.human or [], item.height, item.width)
        matrix = iou_matrix(inst.masks, human.masks)
        true = np.zeros(len(inst))
        if matrix.size:
            r, c = linear_sum_assignment(matrix, maximize=True)
            true[r] = matrix[r, c]
        rows.append(al_scores.decoder_signals(segmenter, emb, 0, inst).matrix())
        truth += true.tolist()
    if not rows:
        return {"weights": None, "instances": 0}
    weights = al_scores.fit_weights(np.concatenate(rows), np.asarray(truth))
    return {"weights": weights, "instances": len(truth)}
