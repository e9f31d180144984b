"""Prefect tasks of the active-learning flow: thin boundaries around the plain functions of
:mod:`storage.catalog.active_learning` (items, rounds, models), :mod:`storage.catalog.active_learning_pool` (the
pool's scores and selection, the backend's review queue) and the model work of :mod:`model.al_heldout`,
:mod:`model.al_finetune` and :mod:`model.al_pool`. Model work is on the ``gpu`` tag; annotation-backend writes are
retried on transient errors."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from model import al_heldout
from storage.catalog import active_learning as rounds
from storage.catalog import active_learning_pool as pool_store
from storage.catalog.active_learning import Item, ModelRef, RoundItems, RoundState
from storage.params import ActiveLearningParams
from storage.services import Services
from storage.settings import Settings
from tasks.prelabel import _IO_RETRIES


def _segmenter(settings: Settings, uri: str) -> Any:
    """The segmenter at ``uri``, loaded once per process (:mod:`model.cache`)."""
    from model.cache import get_segmenter
    from tasks.models import device_of

    return get_segmenter(uri, device=device_of(settings))


def _images_of(services: Services, items: Sequence[Item]) -> list[Any]:
    images = pool_store.load_images(services, sorted({i.asset_id for i in items}))
    return [images[i.asset_id] for i in items]


@task(name="round-project", cache_policy=NO_CACHE)
def round_project(services: Services, name: str) -> tuple[int, bool]:
    """The catalog id of the image project ``name`` and whether it has any accepted corrections."""
    backend = services.annotation
    row = rounds.image_project(services.catalog, name, backend=backend.name, url=backend.url)
    return row.id, bool(rounds.corrected_items(services.catalog, row.id))


@task(name="open-round", cache_policy=NO_CACHE)
def open_round(
    services: Services, params: ActiveLearningParams, project_id: int, run_id: int, data_version_id: int | None
) -> tuple[RoundState, RoundItems]:
    """Number a new round: its base model (the last promoted, else ``--model``, else the model that pre-labelled
    the project, else the configured one), the model fine-tuning starts from, its items."""
    from storage.catalog.jobs import project_model
    from tasks.models import resolve_model_id

    catalog, settings = services.catalog, services.settings
    fallback = params.model_id or project_model(catalog, params.project) or settings.model_id
    base_uri = rounds.promoted_model_uri(catalog, project_id) or resolve_model_id(fallback)
    base = rounds.register_model(catalog, _segmenter(settings, base_uri), base_uri)
    start = (rounds.initial_model(catalog, project_id) if params.finetune_from == "initial" else None) or base
    items = rounds.round_items(catalog, project_id, data_version_id, params.held_out_fraction)
    state = rounds.start_round(
        catalog,
        project_id,
        params.with_model(settings.model_id),
        run_id,
        base,
        start,
        strategy_suffix=items.strategy_suffix,
        data_version_id=data_version_id,
    )
    return state, items


@dataclass(frozen=True)
class Finetuned:
    model: ModelRef
    metrics: dict[str, Any]


@task(name="finetune-model", cache_policy=NO_CACHE, tags=["gpu"])
def finetune_model(
    services: Services, state: RoundState, params: ActiveLearningParams, train: list[Item], test: list[Item]
) -> Finetuned:
    """Fine-tune the round's start model on ``train`` (evaluated on ``test`` inside the engine) and register it
    (its parent: the start model)."""
    from model.al_finetune import round_config
    from model.device import select_device
    from model.finetune import finetune

    started, settings = time.perf_counter(), services.settings
    images = pool_store.load_images(services, sorted({i.asset_id for i in [*train, *test]}))
    manifest = rounds.manifest_of(train)
    config = round_config(
        start_uri=state.start.uri,
        start_name=state.start.name,
        project_id=state.project_id,
        number=state.number,
        train=train,
        test=test,
        images=images,
        manifest=manifest,
        root=Path(params.models_dir) if params.models_dir else settings.data_dir / "models",
        knobs=params,
        device=str(select_device(None if settings.device == "auto" else settings.device)),
    )
    result = finetune(config)
    metrics: dict[str, Any] = {
        "steps": result.steps,
        "seconds": round(result.seconds, 3),
        "train_items": len(train),
        "held_out_items": len(test),
        "engine_eval": {k: v for k, v in result.best_metrics.items() if k in ("box_iou", "point_iou", "objects")},
    }
    model = rounds.register_model(
        services.catalog,
        _segmenter(settings, str(result.best_dir)),
        str(result.best_dir),
        parent_id=state.start.id,
        data_version_id=state.data_version_id,
        train_manifest=manifest,
        metrics=metrics,
        params=params.model_dump(mode="json", include={"steps", "lr", "batch_size", "freeze", "seed"}),
    )
    metrics["wall_seconds"] = round(time.perf_counter() - started, 3)
    metrics["model_version"] = model.name
    get_run_logger().info(
        "fine-tuned %s on %d items (%d held out): %d steps in %.1fs -> %s",
        state.start.name,
        len(train),
        len(test),
        result.steps,
        result.seconds,
        model.name,
    )
    return Finetuned(model, metrics)


@task(name="evaluate-models", cache_policy=NO_CACHE, tags=["gpu"])
def evaluate_models(
    services: Services, items: list[Item], uris: dict[str, str], accept_iou: float
) -> dict[str, al_heldout.HeldOutMetrics]:
    """Each model of ``uris`` (name -> checkpoint) re-segments ``items`` from their prediction's prompts; measured
    against the people's final instances."""
    images, priors = _images_of(services, items), [i.prior() for i in items]
    humans = [i.human_instances() for i in items]
    result = {
        name: al_heldout.evaluate(_segmenter(services.settings, uri), images, priors, humans, accept_iou)
        for name, uri in uris.items()
    }
    get_run_logger().info("held-out evaluation on %d items: %s", len(items), result)
    return result


@task(name="calibrate-weights", cache_policy=NO_CACHE, tags=["gpu"])
def calibrate_weights(
    services: Services, items: list[Item], uri: str, max_items: int, seed: int
) -> al_heldout.Calibration:
    """The uncertainty signals' weights learnt from (at most ``max_items`` of) the corrected ``items``."""
    items = [items[p] for p in al_heldout.calibration_sample(len(items), max_items, seed)]
    if not items:
        return al_heldout.Calibration(None, 0)
    images, priors = _images_of(services, items), [i.prior() for i in items]
    result = al_heldout.calibrate(
        _segmenter(services.settings, uri), images, priors, [i.human_instances() for i in items]
    )
    get_run_logger().info("signal weights learnt from %d corrected instances: %s", result.instances, result.weights)
    return result


@task(name="score-pool-batch", cache_policy=NO_CACHE, tags=["gpu"])
def score_pool_batch(
    services: Services,
    params: ActiveLearningParams,
    items: list[Item],
    uri: str,
    relabel_version: str | None,
    run_id: int | None,
    weights: dict[str, float] | None = None,
) -> list[pool_store.PoolScore]:
    """Score ``items`` with the model at ``uri``; with ``relabel_version`` re-pre-label them first (stored as new
    predictions under that version). Stores each asset's pooled image embedding."""
    from model.al_pool import score_image

    segmenter = _segmenter(services.settings, uri)
    scored = [
        score_image(
            segmenter,
            image,
            item.prior(),
            weights=weights,
            aggregate=params.aggregate,  # type: ignore[arg-type]
            resegment_first=relabel_version is not None,
        )
        for item, image in zip(items, _images_of(services, items), strict=True)
    ]
    scores = pool_store.record_pool_scores(
        services.catalog, items, scored, str(segmenter.model_version), relabel_version, run_id
    )
    get_run_logger().info(
        "scored %d pool items%s", len(scores), f" (re-pre-labelled as {relabel_version})" if relabel_version else ""
    )
    return scores


@task(name="select-review", cache_policy=NO_CACHE)
def select_review(
    services: Services,
    state: RoundState,
    params: ActiveLearningParams,
    scores: list[pool_store.PoolScore],
    model_version: str,
    versions: dict[int, str],
) -> pool_store.PoolSelection:
    """Order the pool with the round's strategy and record the selection (``versions``: asset id -> the model
    version of the prediction its task shows)."""
    return pool_store.select_and_record(services.catalog, state, params, scores, model_version, versions)


@task(name="import-relabels", **_IO_RETRIES)
def import_relabels(services: Services, project_id: int, asset_ids: list[int], version: str) -> int:
    project = rounds.project_of(services.catalog, project_id)
    refreshed = pool_store.import_relabels(services, project, asset_ids, version)
    get_run_logger().info("added %s predictions to %d existing tasks", version, refreshed)
    return refreshed


@dataclass(frozen=True)
class ReviewQueue:
    scores_written: int
    review_view_id: int | None


@task(name="write-task-scores", **_IO_RETRIES)
def write_task_scores(
    services: Services,
    project_id: int,
    versions: Mapping[int, str],
    task_scores: Mapping[int, float],
    clusters: Mapping[int, int],
    review_tasks: Sequence[int] | None,
) -> ReviewQueue:
    """Each task's score (and cluster) on the prediction it shows (``versions``: task id -> model version), and
    with ``review_tasks`` the "review next" view listing them."""
    project, backend = rounds.project_of(services.catalog, project_id), services.annotation
    updated = backend.write_scores(project, versions, task_scores, clusters)
    view = backend.review_view(project, review_tasks, rounds.REVIEW_VIEW_TITLE) if review_tasks is not None else None
    get_run_logger().info(
        "wrote %d task scores to %s%s", updated, backend.title, f"; review view {view}" if view else ""
    )
    return ReviewQueue(updated, view)
