"""Prefect tasks of the active-learning flow: model work (fine-tune, evaluate, score a batch of the pool) on the
``gpu`` tag, Label Studio writes retried on transient errors. Bodies are in
:mod:`tasks.active_learning_ops` (items, splits, rounds, models), :mod:`tasks.al_training` and :mod:`tasks.al_scoring`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from storage.catalog import Catalog
from storage.settings import Settings
from tasks import active_learning_ops as ops
from tasks import al_scoring as scoring
from tasks import al_training as training
from tasks.prelabel import _IO_RETRIES


@task(name="finetune-model", cache_policy=NO_CACHE, tags=["gpu"])
def finetune_model(
    settings: Settings,
    catalog_url: str,
    state: ops.RoundState,
    params: ops.ActiveLearningParams,
    train: list[ops.Item],
    test: list[ops.Item],
) -> dict[str, Any]:
    with Catalog(catalog_url, migrate=False) as catalog:
        metrics = training.finetune_round(settings, catalog, state, params, train, test)
    get_run_logger().info(
        "fine-tuned %s on %d items (%d held out): %d steps in %.1fs -> %s",
        state.base_name,
        len(train),
        len(test),
        metrics["steps"],
        metrics["seconds"],
        metrics["model_version"],
    )
    return metrics


@task(name="evaluate-models", cache_policy=NO_CACHE, tags=["gpu"])
def evaluate_models(
    settings: Settings, catalog_url: str, items: list[ops.Item], uris: dict[str, str], accept_iou: float
) -> dict[str, dict[str, float | int]]:
    with Catalog(catalog_url, migrate=False) as catalog:
        result = training.evaluate_models(settings, catalog, items, uris, accept_iou)
    get_run_logger().info("held-out evaluation on %d items: %s", len(items), result)
    return result


@task(name="calibrate-weights", cache_policy=NO_CACHE, tags=["gpu"])
def calibrate_weights(
    settings: Settings, catalog_url: str, items: list[ops.Item], uri: str, max_items: int, seed: int
) -> dict[str, Any]:
    with Catalog(catalog_url, migrate=False) as catalog:
        result = training.calibrate_weights(settings, catalog, items, uri, max_items=max_items, seed=seed)
    get_run_logger().info(
        "signal weights learnt from %d corrected instances: %s", result["instances"], result["weights"]
    )
    return result


@task(name="score-pool-batch", cache_policy=NO_CACHE, tags=["gpu"])
def score_pool_batch(
    settings: Settings,
    catalog_url: str,
    state: ops.RoundState,
    params: ops.ActiveLearningParams,
    items: list[ops.Item],
    uri: str,
    relabel_version: str | None,
    run_id: int | None,
    weights: dict[str, float] | None = None,
) -> list[scoring.PoolScore]:
    with Catalog(catalog_url, migrate=False) as catalog:
        scores = scoring.score_pool(settings, catalog, state, params, items, uri, relabel_version, run_id, weights)
    get_run_logger().info(
        "scored %d pool items%s", len(scores), f" (re-pre-labelled as {relabel_version})" if relabel_version else ""
    )
    return scores


@task(name="import-relabels", **_IO_RETRIES)
def import_relabels(settings: Settings, catalog_url: str, project_id: int, asset_ids: list[int], version: str) -> int:
    from storage.catalog import LabelStudioProject

    with Catalog(catalog_url, migrate=False) as catalog:
        with catalog.session() as session:
            project = session.get(LabelStudioProject, project_id)
        assert project is not None
        refreshed = scoring.import_relabels(settings, catalog, project, asset_ids, version)
    get_run_logger().info("added %s predictions to %d existing Label Studio tasks", version, refreshed)
    return refreshed


@task(name="write-task-scores", **_IO_RETRIES)
def write_task_scores(
    settings: Settings,
    catalog_url: str,
    project_id: int,
    versions: Mapping[int, str],
    task_scores: Mapping[int, float],
    clusters: Mapping[int, int],
    review_tasks: Sequence[int] | None,
) -> dict[str, Any]:
    from storage.catalog import LabelStudioProject

    with Catalog(catalog_url, migrate=False) as catalog, catalog.session() as session:
        project = session.get(LabelStudioProject, project_id)
    assert project is not None
    updated = scoring.write_scores(settings, project, versions, task_scores, clusters)
    view = (
        scoring.review_view(settings, project, review_tasks, ops.REVIEW_VIEW_TITLE)
        if review_tasks is not None
        else None
    )
    get_run_logger().info("wrote %d task scores to Label Studio%s", updated, f"; review view {view}" if view else "")
    return {"scores_written": updated, "review_view_id": view}
