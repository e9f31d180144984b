"""The plain functions behind the active-learning tasks (no Prefect here, so they are tested and reused directly).

One round on one Label Studio image project:

1. the corrected items are the project's accepted annotations (optionally frozen into a dataset version first),
   split into train and held-out by a stable hash of each asset's content (an item never changes side between
   rounds, so a later round never trains on what an earlier one held out);
2. the current model (the project's last promoted model, else the configured one) is fine-tuned on the train split
   with :func:`model.finetune.finetune` (decoder-only by default) and registered as a :class:`ModelVersion`;
3. old and new model re-segment the held-out items from the prompts that pre-labelled them and are compared with
   the people's final masks: mean mask IoU and accepted-unchanged rate (IoU >= ``accept_iou``, same label);
4. if the new model is better by ``promote_margin`` it re-pre-labels the still-unannotated tasks (new predictions
   with the new ``model_version`` on the same Label Studio tasks);
5. the pool (still-unannotated tasks) is scored with segmentation-native uncertainty and pooled image embeddings
   (the signals weighed by how well each one ranked the scoring model's masks on the corrected items, unless
   weights are given), the selection strategy orders it, and the task scores (plus clusters) are written to Label Studio, whose
   uncertainty sampling serves low scores first; optionally a "review next" data-manager view lists the chosen tasks.

Every number lands in the round's ``al_rounds.metrics`` and the per-task ``al_round_items`` rows.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from storage.catalog import (
    ActiveLearningItem,
    ActiveLearningRound,
    Annotation,
    Asset,
    AssetEmbedding,
    Catalog,
    DatasetVersionItem,
    LabelStudioProject,
    LabelStudioTask,
    ModelVersion,
    Prediction,
)
from storage.catalog.models import utcnow
from storage.settings import Settings

log = logging.getLogger(__name__)

FREEZE_DECODER_ONLY = ("image_encoder", "prompt_encoder")
REVIEW_VIEW_TITLE = "review next"
_SPLIT_SALT = b"maskloop-active-learning-holdout:"


@dataclass(frozen=True)
class ActiveLearningParams:
    """What one active-learning round was asked to do (JSON-serialisable; recorded on the run and the round)."""

    project: str
    strategy: str = "uncertainty"
    budget: int = 50
    finetune: bool = True
    finetune_from: str = "current"
    model_id: str = ""
    steps: int = 300
    lr: float = 1e-3
    batch_size: int = 2
    objects_per_image: int = 2
    freeze: tuple[str, ...] = FREEZE_DECODER_ONLY
    box_fraction: float = 0.5
    held_out_fraction: float = 0.25
    min_train_items: int = 2
    promote_margin: float = 0.0
    accept_iou: float = 0.9
    seed: int = 0
    dest: str | None = None
    models_dir: str | None = None
    review_view: bool = True
    aggregate: str = "min"
    confidence_weights: tuple[tuple[str, float], ...] = ()
    calibrate: bool = True
    max_calibration_items: int = 200
    score_batch: int = 16
    num_threads: int | None = None

    def __post_init__(self) -> None:
        from model.selection import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise ValueError(f"active learning strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.budget < 0:
            raise ValueError(f"active learning budget must be >= 0, got {self.budget}")
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise ValueError(f"held_out_fraction must be in [0, 1), got {self.held_out_fraction}")
        if not 0.0 < self.accept_iou <= 1.0:
            raise ValueError(f"accept_iou must be in (0, 1], got {self.accept_iou}")
        if self.steps < 1 or self.batch_size < 1 or self.min_train_items < 1 or self.score_batch < 1:
            raise ValueError(
                "steps, batch_size, min_train_items and score_batch must be >= 1, got "
                f"{self.steps}, {self.batch_size}, {self.min_train_items}, {self.score_batch}"
            )
        if self.finetune_from not in ("current", "initial"):
            raise ValueError(f"finetune_from must be 'current' or 'initial', got {self.finetune_from!r}")
        if self.aggregate not in ("min", "mean", "p25"):
            raise ValueError(f"aggregate must be min, mean or p25, got {self.aggregate!r}")
        from model.al_scores import SIGNALS

        unknown = sorted({name for name, _ in self.confidence_weights} - set(SIGNALS))
        if unknown:
            raise ValueError(f"confidence_weights name unknown signals {unknown}; known: {list(SIGNALS)}")

    @property
    def weights(self) -> dict[str, float] | None:
        return dict(self.confidence_weights) or None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["freeze"] = list(self.freeze)
        data["confidence_weights"] = dict(self.confidence_weights)
        return data


@dataclass(frozen=True)
class Item:
    """One task of the project: its asset, frame, Label Studio task id, the prediction people saw (records), and
    for corrected items the people's final instances (records)."""

    asset_id: int
    frame_index: int
    ls_task_id: int
    sha256: str
    height: int
    width: int
    model_version: str
    prediction: list[dict[str, Any]]
    human: list[dict[str, Any]] | None = None


@dataclass
class RoundState:
    """What the flow carries between tasks (ids, paths and numbers only)."""

    round_id: int
    number: int
    project_id: int
    base_model_id: int  # the model pre-labelling the project now (the "old" model of the comparison)
    base_uri: str
    base_name: str
    start_model_id: int  # the model fine-tuning starts from (the current one, or the project's initial one)
    start_uri: str
    start_name: str
    strategy_suffix: str
    metrics: dict[str, Any] = field(default_factory=dict)
    new_model_id: int | None = None
    new_uri: str | None = None
    promoted: bool = False
    data_version_id: int | None = None


# -- split ---------------------------------------------------------------------------------------------------------
def held_out(sha256: str, fraction: float) -> bool:
    """Whether an item (by its asset's content hash) is held out: stable across rounds, seeds and machines."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(_SPLIT_SALT + sha256.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_items(items: Sequence[Item], fraction: float) -> tuple[list[Item], list[Item]]:
    train = [i for i in items if not held_out(i.sha256, fraction)]
    test = [i for i in items if held_out(i.sha256, fraction)]
    return train, test


def manifest_of(items: Sequence[Item]) -> str:
    """sha256 over the sorted (asset sha256, frame, final-instances hash) of a training split."""
    from storage.harvest import content_hash

    rows = sorted(f"{i.sha256}:{i.frame_index}:{content_hash(i.frame_index, i.human or [])}" for i in items)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


# -- models --------------------------------------------------------------------------------------------------------
def register_model(
    catalog: Catalog,
    segmenter: Any,
    uri: str,
    *,
    parent_id: int | None = None,
    data_version_id: int | None = None,
    train_manifest: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
) -> int:
    """The :class:`ModelVersion` row of ``segmenter`` (created on first sight; an existing row is returned)."""
    name = str(segmenter.model_version)
    with catalog.session() as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.name == name))
        if row is None:
            row = ModelVersion(
                name=name,
                model_id=str(segmenter.model_id),
                checkpoint_sha256=str(segmenter.checkpoint_sha256),
                uri=uri,
                parent_id=parent_id,
                data_version_id=data_version_id,
                train_manifest=train_manifest,
                metrics=dict(metrics or {}),
                params=dict(params or {}),
            )
            session.add(row)
            session.flush()
        return int(row.id)


def current_model_uri(catalog: Catalog, project_id: int, fallback: str) -> str:
    """The checkpoint of the model the project's last completed round promoted, else ``fallback`` (shipped names
    resolved to their directory)."""
    from tasks.models import resolve_model_id

    with catalog.session() as session:
        uri = session.scalar(
            select(ModelVersion.uri)
            .join(ActiveLearningRound, ActiveLearningRound.new_model_id == ModelVersion.id)
            .where(
                ActiveLearningRound.project_id == project_id,
                ActiveLearningRound.promoted.is_(True),
                ActiveLearningRound.status == "completed",
            )
            .order_by(ActiveLearningRound.number.desc())
            .limit(1)
        )
    return str(uri) if uri else resolve_model_id(fallback)


def initial_model(catalog: Catalog, project_id: int) -> tuple[int, str] | None:
    """(id, checkpoint) of the model that pre-labelled the project before its first active-learning round."""
    with catalog.session() as session:
        row = session.execute(
            select(ModelVersion.id, ModelVersion.uri)
            .join(ActiveLearningRound, ActiveLearningRound.base_model_id == ModelVersion.id)
            .where(ActiveLearningRound.project_id == project_id)
            .order_by(ActiveLearningRound.number)
            .limit(1)
        ).first()
    return (int(row[0]), str(row[1])) if row else None


def load_segmenter(settings: Settings, uri: str) -> Any:
    from model.cache import get_segmenter
    from tasks.models import device_of

    return get_segmenter(uri, device=device_of(settings))


# -- catalog reads -------------------------------------------------------------------------------------------------
def project_row(catalog: Catalog, url: str, name: str) -> LabelStudioProject:
    from storage.harvest import ProjectNotFoundError

    with catalog.session() as session:
        row = session.scalar(
            select(LabelStudioProject).where(LabelStudioProject.ls_url == url, LabelStudioProject.name == name)
        )
    if row is None:
        raise ProjectNotFoundError(name, f"not in the catalog for {url} (pre-label into it first)")
    if row.media_kind != "image":
        raise ValueError(f"active learning works on image projects; {name!r} holds {row.media_kind} tasks")
    return row


def _prediction_records(session: Any, task: LabelStudioTask) -> tuple[str, list[dict[str, Any]]]:
    version = task.last_model_version or ""
    pred = session.scalar(
        select(Prediction).where(
            Prediction.asset_id == task.asset_id,
            Prediction.frame_index == task.frame_index,
            Prediction.model_version == version,
        )
    )
    return version, list(pred.instances) if pred is not None else []


def corrected_items(catalog: Catalog, project_id: int, data_version_id: int | None = None) -> list[Item]:
    """The project's accepted annotations (per task the latest), or those of a frozen dataset version."""
    with catalog.session() as session:
        stmt = (
            select(Asset, LabelStudioTask, Annotation)
            .join(LabelStudioTask, LabelStudioTask.asset_id == Asset.id)
            .join(Annotation, Annotation.ls_task_row_id == LabelStudioTask.id)
            .where(LabelStudioTask.project_id == project_id, Annotation.status == "accepted")
            .order_by(LabelStudioTask.id, Annotation.id)
        )
        if data_version_id is not None:
            stmt = stmt.join(
                DatasetVersionItem,
                (DatasetVersionItem.annotation_id == Annotation.id)
                & (DatasetVersionItem.version_id == data_version_id),
            )
        latest: dict[int, tuple[Asset, LabelStudioTask, Annotation]] = {}
        for asset, task, ann in session.execute(stmt).all():
            cur = latest.get(task.id)
            if cur is None or (ann.ls_updated_at or ann.harvested_at, ann.id) >= (
                cur[2].ls_updated_at or cur[2].harvested_at,
                cur[2].id,
            ):
                latest[task.id] = (asset, task, ann)
        out = []
        for asset, task, ann in latest.values():
            if not asset.sha256 or not asset.height or not asset.width:
                continue
            version, records = _prediction_records(session, task)
            out.append(
                Item(
                    asset.id,
                    task.frame_index,
                    task.ls_task_id,
                    asset.sha256,
                    int(asset.height),
                    int(asset.width),
                    version,
                    records,
                    list(ann.instances or []),
                )
            )
    return sorted(out, key=lambda i: (i.asset_id, i.frame_index))


def pool_items(catalog: Catalog, project_id: int) -> list[Item]:
    """Tasks nobody has annotated (or skipped) yet, with their current prediction."""
    with catalog.session() as session:
        done = select(Annotation.ls_task_row_id)
        rows = session.execute(
            select(Asset, LabelStudioTask)
            .join(LabelStudioTask, LabelStudioTask.asset_id == Asset.id)
            .where(LabelStudioTask.project_id == project_id, LabelStudioTask.id.not_in(done))
            .order_by(LabelStudioTask.id)
        ).all()
        out = []
        for asset, task in rows:
            version, records = _prediction_records(session, task)
            out.append(
                Item(
                    asset.id,
                    task.frame_index,
                    task.ls_task_id,
                    asset.sha256 or "",
                    int(asset.height or 0),
                    int(asset.width or 0),
                    version,
                    records,
                )
            )
    return out


def load_images(settings: Settings, catalog: Catalog, asset_ids: Sequence[int]) -> dict[int, np.ndarray]:
    """Decoded images of ``asset_ids`` from the download cache (fetched from S3 when missing)."""
    from model.images import decode_image
    from storage.s3 import S3Object, download_many, make_client

    with catalog.session() as session:
        assets = list(session.scalars(select(Asset).where(Asset.id.in_(list(asset_ids)))))
    objects = [S3Object(a.bucket, a.key, a.etag, a.size, a.last_modified, a.media_type) for a in assets]  # type: ignore[arg-type]
    results = download_many(make_client(settings), objects, settings.cache_dir, settings.s3_max_concurrency)
    out: dict[int, np.ndarray] = {}
    for asset, result in zip(assets, results, strict=True):
        if result.path is None:
            raise FileNotFoundError(f"asset {asset.uri}: {result.error}")
        out[asset.id] = decode_image(result.path.read_bytes(), asset.uri)
    return out


# -- round bookkeeping ---------------------------------------------------------------------------------------------
def start_round(
    catalog: Catalog, project_id: int, params: ActiveLearningParams, run_id: int | None, base_model_id: int
) -> tuple[int, int]:
    """A new ``al_rounds`` row (number = last + 1 for the project); returns (round id, number)."""
    from sqlalchemy.exc import IntegrityError

    for _ in range(10):
        try:
            with catalog.session() as session:
                last = session.scalar(
                    select(func.max(ActiveLearningRound.number)).where(ActiveLearningRound.project_id == project_id)
                )
                row = ActiveLearningRound(
                    project_id=project_id,
                    number=int(last or 0) + 1,
                    run_id=run_id,
                    strategy=params.strategy,
                    budget=params.budget,
                    seed=params.seed,
                    base_model_id=base_model_id,
                    status="running",
                    metrics={"params": params.to_json()},
                )
                session.add(row)
                session.flush()
                return int(row.id), int(row.number)
        except IntegrityError:  # a concurrent round took the number
            continue
    raise RuntimeError(f"could not number a new active-learning round of project {project_id}")


def finish_round(catalog: Catalog, state: RoundState, status: str) -> None:
    with catalog.session() as session:
        row = session.get(ActiveLearningRound, state.round_id)
        if row is None:
            raise ValueError(f"active-learning round {state.round_id} does not exist")
        row.status, row.finished_at = status, utcnow()
        row.metrics = {**(row.metrics or {}), **jsonable(state.metrics)}
        row.new_model_id, row.promoted, row.data_version_id = state.new_model_id, state.promoted, state.data_version_id


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and NaN as None (JSON columns and flow results)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


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


# -- scoring the pool ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolScore:
    asset_id: int
    frame_index: int
    ls_task_id: int
    confidence: float
    signals: dict[str, Any]


def score_pool(
    settings: Settings,
    catalog: Catalog,
    state: RoundState,
    params: ActiveLearningParams,
    items: Sequence[Item],
    uri: str,
    relabel_version: str | None,
    run_id: int | None,
    weights: Mapping[str, float] | None = None,
) -> list[PoolScore]:
    """Score ``items`` with the model at ``uri`` (signals combined with ``weights``, default equal); with
    ``relabel_version`` first re-pre-label them (new :class:`Prediction` rows under that model version). Stores
    each asset's pooled image embedding."""
    from model import al_scores
    from model.autoprompt import resegment
    from model.diversity import pool_features

    segmenter = load_segmenter(settings, uri)
    images = load_images(settings, catalog, sorted({i.asset_id for i in items}))
    scores: list[PoolScore] = []
    predictions: list[Prediction] = []
    embeddings: list[AssetEmbedding] = []
    with catalog.session() as session:
        have = set(
            session.scalars(
                select(AssetEmbedding.asset_id).where(
                    AssetEmbedding.asset_id.in_([i.asset_id for i in items]),
                    AssetEmbedding.model_version == segmenter.model_version,
                )
            )
        )
        relabelled = set()
        if relabel_version:
            relabelled = set(
                session.scalars(
                    select(Prediction.asset_id).where(
                        Prediction.asset_id.in_([i.asset_id for i in items]),
                        Prediction.model_version == relabel_version,
                    )
                )
            )
    for item in items:
        image = images[item.asset_id]
        emb = segmenter.embed(image)
        instances = _instances(item.prediction, item.height, item.width)
        if relabel_version:
            instances = resegment(segmenter, emb, 0, instances)
            if item.asset_id not in relabelled:
                predictions.append(
                    Prediction(
                        asset_id=item.asset_id,
                        run_id=run_id,
                        model_version=relabel_version,
                        frame_index=item.frame_index,
                        instances=instances.to_records(),
                        num_instances=len(instances),
                    )  # type: ignore[arg-type]
                )
        signals = al_scores.decoder_signals(segmenter, emb, 0, instances)
        per_instance = al_scores.instance_confidence(signals, weights)
        confidence = al_scores.image_confidence(per_instance, params.aggregate)  # type: ignore[arg-type]
        if item.asset_id not in have:
            vector = pool_features(emb.features[-1].cpu().numpy())[0].astype("<f4")
            embeddings.append(
                AssetEmbedding(
                    asset_id=item.asset_id,
                    frame_index=item.frame_index,
                    model_version=segmenter.model_version,
                    dim=int(vector.shape[0]),
                    vector=vector.tobytes(),
                )
            )
            have.add(item.asset_id)
        scores.append(PoolScore(item.asset_id, item.frame_index, item.ls_task_id, float(confidence), signals.to_json()))
    with catalog.session() as session:
        session.add_all(predictions)
        session.add_all(embeddings)
    return scores


def load_embeddings(catalog: Catalog, asset_ids: Sequence[int], model_version: str) -> np.ndarray:
    with catalog.session() as session:
        rows: dict[int, bytes] = dict(
            session.execute(  # type: ignore[arg-type]
                select(AssetEmbedding.asset_id, AssetEmbedding.vector).where(
                    AssetEmbedding.asset_id.in_(list(asset_ids)), AssetEmbedding.model_version == model_version
                )
            ).all()
        )
    missing = [a for a in asset_ids if a not in rows]
    if missing:
        raise ValueError(f"no {model_version} embedding stored for assets {missing[:5]}")
    return np.stack([np.frombuffer(rows[a], dtype="<f4") for a in asset_ids])


def labelled_asset_ids(catalog: Catalog, project_id: int) -> list[int]:
    with catalog.session() as session:
        return sorted(
            set(
                session.scalars(
                    select(LabelStudioTask.asset_id)
                    .join(Annotation, Annotation.ls_task_row_id == LabelStudioTask.id)
                    .where(LabelStudioTask.project_id == project_id)
                )
            )
        )


def select_and_record(
    catalog: Catalog,
    state: RoundState,
    params: ActiveLearningParams,
    scores: Sequence[PoolScore],
    model_version: str,
    versions: Mapping[int, str],
) -> dict[str, Any]:
    """Order the pool with the round's strategy, store task scores on the predictions (``versions``: asset id ->
    the model version of the prediction that task shows) and the ``al_round_items`` rows."""
    from model.selection import select as select_pool

    if not scores:
        return {"pool": 0, "chosen": [], "task_scores": {}, "clusters": {}}
    confidence = np.array([s.confidence for s in scores], np.float64)
    asset_ids = [s.asset_id for s in scores]
    emb = labelled = None
    if params.strategy in ("diversity", "hybrid"):
        emb = load_embeddings(catalog, asset_ids, model_version)
        seen = [a for a in labelled_asset_ids(catalog, state.project_id) if a not in set(asset_ids)]
        if seen and params.strategy == "diversity":
            try:
                labelled = load_embeddings(catalog, seen, model_version)
            except ValueError:  # labelled before this model embedded them: coverage starts from scratch
                labelled = None
    chosen = select_pool(
        params.strategy,
        params.budget,
        confidence=confidence,
        embeddings=emb,
        labelled_embeddings=labelled,
        seed=params.seed + state.number,
    )
    ranks = chosen.rank_of()
    picked = set(chosen.chosen)
    with catalog.session() as session:
        preds = {
            (p.asset_id, p.frame_index): p
            for p in session.scalars(
                select(Prediction).where(
                    Prediction.asset_id.in_(asset_ids), Prediction.model_version.in_(sorted(set(versions.values())))
                )
            )
            if versions.get(p.asset_id) == p.model_version
        }
        for pos, s in enumerate(scores):
            pred = preds.get((s.asset_id, s.frame_index))
            if pred is not None:
                pred.score = float(chosen.task_scores[pos])
            session.add(
                ActiveLearningItem(
                    round_id=state.round_id,
                    asset_id=s.asset_id,
                    frame_index=s.frame_index,
                    ls_task_id=s.ls_task_id,
                    model_version=versions.get(s.asset_id, ""),
                    confidence=s.confidence,
                    task_score=float(chosen.task_scores[pos]),
                    rank=int(ranks[pos]),
                    cluster=None if chosen.clusters is None else int(chosen.clusters[pos]),
                    chosen=pos in picked,
                    signals=s.signals,
                )
            )
    return {
        "pool": len(scores),
        "chosen": [scores[p].ls_task_id for p in chosen.chosen],
        "chosen_assets": [scores[p].asset_id for p in chosen.chosen],
        "task_scores": {scores[p].ls_task_id: float(chosen.task_scores[p]) for p in range(len(scores))},
        "clusters": {}
        if chosen.clusters is None
        else {scores[p].ls_task_id: int(chosen.clusters[p]) for p in range(len(scores))},
        "mean_confidence": float(confidence.mean()),
    }


# -- Label Studio writes -------------------------------------------------------------------------------------------
def import_relabels(
    settings: Settings, catalog: Catalog, project: LabelStudioProject, asset_ids: Sequence[int], version: str
) -> int:
    """Add the new model version's stored predictions to the existing tasks of ``asset_ids`` (never new tasks)."""
    from model.instances import Instances
    from storage.labelstudio.importer import ImportItem, import_predictions
    from storage.s3 import make_client, presigned_get_url

    if not asset_ids:
        return 0
    s3 = make_client(settings)
    with catalog.session() as session:
        pairs = session.execute(
            select(Asset, Prediction)
            .join(Prediction, Prediction.asset_id == Asset.id)
            .where(Asset.id.in_(list(asset_ids)), Prediction.model_version == version)
        ).all()
    items = [
        ImportItem(
            asset.id,
            presigned_get_url(s3, asset.bucket, asset.key, settings.presign_ttl_s),
            Instances.from_records(pred.instances, asset.height or 0, asset.width or 0),
            version,
            pred.score,
            pred.frame_index,
        )
        for asset, pred in pairs
    ]
    with _client(settings) as client:
        report = import_predictions(client, catalog, project, items)
    if report.created:
        raise RuntimeError(f"re-pre-labelling created {report.created} new Label Studio tasks; it must only refresh")
    return report.refreshed


def write_scores(
    settings: Settings,
    project: LabelStudioProject,
    versions: Mapping[int, str],
    task_scores: Mapping[int, float],
    clusters: Mapping[int, int],
) -> int:
    """PATCH the prediction each task shows (``versions``: task id -> model version) with its task score (and
    cluster), which Label Studio's uncertainty sampling orders by; returns how many predictions were updated."""
    updated = 0
    with _client(settings) as client:
        for pred in client.list_project_predictions(project.ls_project_id):
            task = int(pred.get("task") or 0)
            if task not in task_scores or pred.get("model_version") != versions.get(task):
                continue
            fields: dict[str, Any] = {"score": float(task_scores[task])}
            if task in clusters:
                fields["cluster"] = int(clusters[task])
            client.update_prediction(int(pred["id"]), **fields)
            updated += 1
    return updated


def review_view(settings: Settings, project: LabelStudioProject, task_ids: Sequence[int], title: str) -> int:
    """A data-manager tab ``title`` listing exactly ``task_ids`` (lowest task score first); updated if it exists."""
    data = {
        "title": title,
        "filters": {
            "conjunction": "and",
            "items": [
                {
                    "filter": "filter:tasks:id",
                    "operator": "in_list",
                    "type": "Number",
                    "value": [int(t) for t in task_ids],
                }
            ],
        },
        "ordering": ["tasks:predictions_score"],
    }
    with _client(settings) as client:
        for view in client.list_views(project.ls_project_id):
            if (view.get("data") or {}).get("title") == title:
                client.update_view(int(view["id"]), project.ls_project_id, data)
                return int(view["id"])
        return int(client.create_view(project.ls_project_id, data)["id"])


def _client(settings: Settings) -> Any:
    from storage.labelstudio.client import LabelStudioClient

    if settings.label_studio_token is None:
        raise ValueError("Label Studio token is not configured (MASKLOOP_LABEL_STUDIO_TOKEN, or `maskloop stack up`)")
    return LabelStudioClient(settings.label_studio_url, settings.label_studio_token.get_secret_value())
