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

Every number lands in the round's ``al_rounds.metrics`` and the per-task ``al_round_items`` rows. This module holds
the items, splits, round records and model registry; steps 2-3 are in :mod:`tasks.al_training`, 4-5 in
:mod:`tasks.al_scoring`.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import func, select

from storage.catalog import (
    ActiveLearningRound,
    Annotation,
    Asset,
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
