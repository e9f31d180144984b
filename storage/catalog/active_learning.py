"""Active learning's side of the catalog: the round's items, its ``al_rounds`` row and the model registry.

One round works on one image project: its corrected items are the accepted annotations (per task the latest, or
those frozen into a dataset version), split into train and held out by content hash
(:func:`model.al_heldout.split_held_out`); its pool is the tasks nobody annotated or skipped yet. The models a round
compares and trains are :class:`ModelVersion` rows (name, checkpoint, parent, data version, metrics). Every number
of a round lands in ``al_rounds.metrics`` when it closes (:func:`recorded_round`). The pool's scores, embeddings and
selection records are in :mod:`storage.catalog.active_learning_pool`.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, select

from model.errors import MaskloopError
from storage.catalog.db import Catalog
from storage.catalog.models import (
    Annotation,
    AnnotationProject,
    AnnotationTask,
    Asset,
    DatasetVersionItem,
    Prediction,
    utcnow,
)
from storage.catalog.models_learning import ActiveLearningRound, ModelVersion

if TYPE_CHECKING:
    from model.instances import Instances
    from storage.params import ActiveLearningParams

REVIEW_VIEW_TITLE = "review next"


class NotAnImageProjectError(MaskloopError, ValueError):
    """Active learning asked for a project that does not hold image tasks."""

    def __init__(self, name: str, media_kind: str) -> None:
        super().__init__(
            f"project {name!r} holds {media_kind} tasks; active learning works on image projects "
            f"(run it on the project's ' (images)' one)"
        )


# -- what a round carries --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One task of the project: its asset, frame, the backend's task id, the prediction people saw (records), and
    for corrected items the people's final instances (records)."""

    asset_id: int
    frame_index: int
    external_task_id: int
    sha256: str
    height: int
    width: int
    model_version: str
    prediction: list[dict[str, Any]]
    human: list[dict[str, Any]] | None = None

    def prior(self) -> Instances:
        """The prediction people saw, as :class:`Instances` (its prompts are what a model re-segments)."""
        from model.instances import Instances

        return Instances.from_records(list(self.prediction), self.height, self.width)

    def human_instances(self) -> Instances:
        """The people's final masks (records without a mask are left out)."""
        from model.instances import Instances
        from model.masks import rles_to_masks

        recs = [r for r in self.human or [] if "rle" in r]
        if not recs:
            return Instances.empty(self.height, self.width)
        return Instances(masks=rles_to_masks([r["rle"] for r in recs]), labels=[str(r["label"]) for r in recs])


@dataclass(frozen=True)
class ModelRef:
    """A registered model: its ``ModelVersion`` row id, checkpoint, and ``name`` (``<model id>@<sha8>``)."""

    id: int
    uri: str
    name: str
    model_id: str
    checkpoint_sha256: str


@dataclass(frozen=True)
class RoundItems:
    """A round's corrected items split into train and held out, and its pool of still-unannotated tasks."""

    corrected: int
    train: list[Item]
    test: list[Item]
    pool: list[Item]

    @property
    def strategy_suffix(self) -> str:
        """The prompt strategy most of the pool was pre-labelled with ("prior" when none): a re-pre-label keeps it."""
        from storage.agreement import strategy_of

        suffixes = Counter(strategy_of(i.model_version) for i in self.pool if i.model_version)
        return (suffixes.most_common(1)[0][0] if suffixes else "") or "prior"


@dataclass
class RoundState:
    """What the flow carries between tasks: the round's ids, its models, and the metrics recorded as it goes."""

    round_id: int
    number: int
    project_id: int
    base: ModelRef  # the model pre-labelling the project now (the "old" model of the comparison)
    start: ModelRef  # the model fine-tuning starts from (the current one, or the project's initial one)
    strategy_suffix: str
    data_version_id: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    new: ModelRef | None = None
    promoted: bool = False


# -- the project and its items ---------------------------------------------------------------------------------------
def image_project(catalog: Catalog, name: str, *, backend: str, url: str) -> AnnotationProject:
    """The catalog's row of the image project ``name`` on the ``backend`` server at ``url``."""
    from storage.annotation import find_project

    row = find_project(catalog, name, backend=backend, url=url)
    if row.media_kind != "image":
        raise NotAnImageProjectError(name, row.media_kind)
    return row


def project_of(catalog: Catalog, project_id: int) -> AnnotationProject:
    with catalog.session() as session:
        row = session.get(AnnotationProject, project_id)
    if row is None:
        raise LookupError(f"annotation project row {project_id} does not exist in the catalog")
    return row


def _prediction_records(session: Any, task: AnnotationTask) -> tuple[str, list[dict[str, Any]]]:
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
            select(Asset, AnnotationTask, Annotation)
            .join(AnnotationTask, AnnotationTask.asset_id == Asset.id)
            .join(Annotation, Annotation.task_row_id == AnnotationTask.id)
            .where(AnnotationTask.project_id == project_id, Annotation.status == "accepted")
            .order_by(AnnotationTask.id, Annotation.id)
        )
        if data_version_id is not None:
            stmt = stmt.join(
                DatasetVersionItem,
                (DatasetVersionItem.annotation_id == Annotation.id)
                & (DatasetVersionItem.version_id == data_version_id),
            )
        latest: dict[int, tuple[Asset, AnnotationTask, Annotation]] = {}
        for asset, task, ann in session.execute(stmt).all():
            cur = latest.get(task.id)
            if cur is None or (ann.external_updated_at or ann.harvested_at, ann.id) >= (
                cur[2].external_updated_at or cur[2].harvested_at,
                cur[2].id,
            ):
                latest[task.id] = (asset, task, ann)
        out = []
        for asset, task, ann in latest.values():
            if not asset.sha256 or not asset.height or not asset.width:
                continue
            out.append(_item(session, asset, task, list(ann.instances or [])))
    return sorted(out, key=lambda i: (i.asset_id, i.frame_index))


def pool_items(catalog: Catalog, project_id: int) -> list[Item]:
    """Tasks nobody has annotated (or skipped) yet, with their current prediction."""
    with catalog.session() as session:
        done = select(Annotation.task_row_id)
        rows = session.execute(
            select(Asset, AnnotationTask)
            .join(AnnotationTask, AnnotationTask.asset_id == Asset.id)
            .where(AnnotationTask.project_id == project_id, AnnotationTask.id.not_in(done))
            .order_by(AnnotationTask.id)
        ).all()
        return [_item(session, asset, task) for asset, task in rows]


def _item(session: Any, asset: Asset, task: AnnotationTask, human: list[dict[str, Any]] | None = None) -> Item:
    """The task's item with the prediction people see on it (and their final instances, for corrected items)."""
    version, records = _prediction_records(session, task)
    height, width = int(asset.height or 0), int(asset.width or 0)
    return Item(
        asset.id, task.frame_index, task.external_task_id, asset.sha256 or "", height, width, version, records, human
    )


def round_items(catalog: Catalog, project_id: int, data_version_id: int | None, held_out_fraction: float) -> RoundItems:
    """The corrected items (of the dataset version when given) split by content hash, and the pool."""
    from model.al_heldout import split_held_out

    corrected = corrected_items(catalog, project_id, data_version_id)
    train, test = split_held_out(corrected, held_out_fraction)
    return RoundItems(len(corrected), train, test, pool_items(catalog, project_id))


def manifest_of(items: Sequence[Item]) -> str:
    """sha256 over the sorted (asset sha256, frame, final-instances hash) of a training split."""
    from storage.harvest import content_hash

    rows = sorted(f"{i.sha256}:{i.frame_index}:{content_hash(i.frame_index, i.human or [])}" for i in items)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


# -- the model registry ----------------------------------------------------------------------------------------------
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
) -> ModelRef:
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
        return ModelRef(int(row.id), uri, name, str(segmenter.model_id), str(segmenter.checkpoint_sha256))


def promoted_model_uri(catalog: Catalog, project_id: int) -> str | None:
    """The checkpoint of the model the project's last completed round promoted (None: no round promoted one)."""
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
    return str(uri) if uri else None


def initial_model(catalog: Catalog, project_id: int) -> ModelRef | None:
    """The model that pre-labelled the project before its first active-learning round (None: no round yet)."""
    with catalog.session() as session:
        row = session.scalar(
            select(ModelVersion)
            .join(ActiveLearningRound, ActiveLearningRound.base_model_id == ModelVersion.id)
            .where(ActiveLearningRound.project_id == project_id)
            .order_by(ActiveLearningRound.number)
            .limit(1)
        )
        if row is None:
            return None
        return ModelRef(int(row.id), str(row.uri), str(row.name), str(row.model_id), str(row.checkpoint_sha256))


# -- the round's row -------------------------------------------------------------------------------------------------
def start_round(
    catalog: Catalog,
    project_id: int,
    params: ActiveLearningParams,
    run_id: int | None,
    base: ModelRef,
    start: ModelRef,
    *,
    strategy_suffix: str,
    data_version_id: int | None = None,
) -> RoundState:
    """A new ``al_rounds`` row (number = last + 1 for the project) and the state the flow carries."""
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
                    base_model_id=base.id,
                    status="running",
                    metrics={"params": params.model_dump(mode="json")},
                )
                session.add(row)
                session.flush()
                round_id, number = int(row.id), int(row.number)
            return RoundState(round_id, number, project_id, base, start, strategy_suffix, data_version_id)
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
        row.new_model_id = state.new.id if state.new is not None else None
        row.promoted, row.data_version_id = state.promoted, state.data_version_id


@contextmanager
def recorded_round(catalog: Catalog, state: RoundState, started: float | None = None) -> Iterator[RoundState]:
    """Close the round's row when the block exits: ``completed``, or ``failed`` when it raises; its metrics get the
    wall time (``seconds``, since ``started`` when given)."""
    started = time.perf_counter() if started is None else started
    status = "failed"
    try:
        yield state
        status = "completed"
    finally:
        state.metrics["seconds"] = round(time.perf_counter() - started, 3)
        finish_round(catalog, state, status)


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
