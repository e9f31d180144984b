"""Flow ``active-learning``: one round of pre-label → correct → fine-tune → re-pre-label → prioritise.

harvest the project's corrections → (optional) freeze them into a dataset version → fine-tune the current model on
the accepted annotations' train split (decoder-only by default) → register the new model version (parent, data
version, metrics) → old vs new on the held-out corrected items (mask IoU, accepted-unchanged rate) → if the new one
is better by more than ``promote_margin``, re-pre-label the still-unannotated tasks with it (new predictions with
the new model_version on the same tasks) → score the pool and write the task scores the annotation backend serves
its review queue by (low first), optionally a "review next" view of the chosen tasks. Every number of the round is
in the catalog (``al_rounds.metrics``, ``al_round_items``); see :mod:`storage.catalog.active_learning`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.context import get_run_context

from flows.prelabel import gpu_slot
from model.al_heldout import promotion
from storage.annotation.items import model_version_string
from storage.catalog.active_learning import RoundItems, RoundState, jsonable, recorded_round
from storage.catalog.active_learning_pool import PoolScore
from storage.catalog.runs import recorded_run
from storage.params import ActiveLearningParams
from storage.services import Services
from storage.settings import Settings
from tasks.active_learning import (
    calibrate_weights,
    evaluate_models,
    finetune_model,
    import_relabels,
    open_round,
    round_project,
    score_pool_batch,
    select_review,
    write_task_scores,
)
from tasks.harvest import freeze_version, harvest_annotations


@dataclass(frozen=True)
class ActiveLearningResult:
    """What a round did: its run and round, whether it promoted a new model, the tasks people should review next
    (in order) and every number of the round (as stored in ``al_rounds.metrics``)."""

    run_id: int
    round_id: int
    round: int
    promoted: bool
    base_model_id: int
    new_model_id: int | None
    chosen_tasks: list[int]
    metrics: dict[str, Any]


@flow(name="active-learning")
def active_learning_flow(params: ActiveLearningParams, settings: Settings | None = None) -> ActiveLearningResult:
    """One active-learning round on ``params.project`` (catalog name, e.g. ``maskloop (images)``).

    ``finetune_from``: ``current`` continues from the model pre-labelling the project now; ``initial`` retrains
    from the project's model before its first round on all corrections each time (no compounding across rounds).
    ``confidence_weights`` weigh the uncertainty signals (:data:`model.al_scores.SIGNALS`); without them and with
    ``calibrate`` the weights are learnt from the corrections (each signal's rank correlation with the true IoU of
    the scoring model's masks on corrected items), else equal. ``gpu_limit`` names a global concurrency limit
    (``gpu``) of which the round holds one slot for its model work.
    """
    settings = settings or Settings()
    started = time.perf_counter()
    flow_run_id = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
    recorded = params.with_model(settings.model_id).model_dump(mode="json")
    services = Services(settings)
    with services, recorded_run(services.catalog, "active-learning", recorded, flow_run_id, {"round": None}) as run:
        run.counts["promoted"] = False
        harvested = harvest_annotations(services, params.project)
        project_id, has_corrections = round_project(services, params.project)
        data_version_id = None
        if params.dest and has_corrections:
            data_version_id = freeze_version(
                services, params.project, params.dest, params.dataset, None, False
            ).version_id
        state, items = open_round(services, params, project_id, run.id, data_version_id)
        run.counts["round"] = state.number
        run.lineage = (state.base.model_id, state.base.checkpoint_sha256)
        with recorded_round(services.catalog, state, started):
            state.metrics.update(
                {
                    "round": state.number,
                    "strategy": params.strategy,
                    "base_model": state.base.name,
                    "finetuned_from": state.start.name,
                    "harvest": {
                        "created": harvested.created,
                        "updated": harvested.updated,
                        "unchanged": harvested.unchanged,
                        "skipped": harvested.skipped,
                    },
                    "corrected_items": items.corrected,
                    "train_items": len(items.train),
                    "held_out_items": len(items.test),
                    "data_version_id": data_version_id,
                }
            )
            with gpu_slot(params.gpu_limit):
                relabel, scores, scored_with = _model_work(services, state, params, items, run.id)
            run.counts["promoted"] = state.promoted
            pool = items.pool
            versions = {i.asset_id: (relabel or i.model_version) for i in pool}
            selection = select_review(services, state, params, scores, scored_with, versions)
            if relabel:
                assets = [i.asset_id for i in pool]
                state.metrics["relabelled"] = import_relabels(services, project_id, assets, relabel)
                state.metrics["model_version"] = relabel
            queue = write_task_scores(
                services,
                project_id,
                {i.external_task_id: (relabel or i.model_version) for i in pool},
                selection.task_scores,
                selection.clusters,
                selection.chosen if params.review_view else None,
            )
            state.metrics["pool"] = {
                "items": selection.pool,
                "mean_confidence": selection.mean_confidence,
                "chosen_tasks": selection.chosen,
                "scored_with": scored_with,
                "scores_written": queue.scores_written,
                "review_view_id": queue.review_view_id,
            }
    _report(params, state)
    return ActiveLearningResult(
        run_id=run.id,
        round_id=state.round_id,
        round=state.number,
        promoted=state.promoted,
        base_model_id=state.base.id,
        new_model_id=state.new.id if state.new is not None else None,
        chosen_tasks=list(state.metrics["pool"]["chosen_tasks"]),
        metrics=jsonable(state.metrics),
    )


def _model_work(
    services: Services, state: RoundState, params: ActiveLearningParams, items: RoundItems, run_id: int
) -> tuple[str | None, list[PoolScore], str]:
    """Fine-tune, compare old and new on the held-out items, promote, then score (and re-pre-label) the pool.
    Returns the re-pre-label's model version (None: not promoted), the pool's scores and the scoring model."""
    train, test, pool = items.train, items.test, items.pool
    if not params.finetune:
        state.metrics["finetune_skipped"] = "finetune=False"
    elif len(train) < params.min_train_items:
        state.metrics["finetune_skipped"] = f"{len(train)} train items < min_train_items {params.min_train_items}"
    else:
        finetuned = finetune_model(services, state, params, train, test)
        state.new, state.metrics["finetune"] = finetuned.model, finetuned.metrics
        if test:
            evaluation = evaluate_models(
                services, test, {"old": state.base.uri, "new": finetuned.model.uri}, params.accept_iou
            )
            verdict = promotion(evaluation["old"], evaluation["new"], params.promote_margin)
            state.metrics["held_out"], state.promoted = verdict.held_out, verdict.promoted
            state.metrics["promoted"] = state.promoted
            if verdict.reason:
                state.metrics["not_promoted"] = verdict.reason
        else:
            state.metrics["not_promoted"] = "no held-out items to compare old and new on"
    scorer = state.new if state.promoted and state.new is not None else state.base
    relabel = (
        model_version_string(scorer.model_id, scorer.checkpoint_sha256, state.strategy_suffix)
        if state.promoted
        else None
    )
    weights, source = params.weights, "explicit" if params.weights else "default (equal)"
    if weights is None and params.calibrate and train + test:
        learnt = calibrate_weights(services, [*train, *test], scorer.uri, params.max_calibration_items, params.seed)
        if learnt.weights is not None:
            weights, source = learnt.weights, f"learnt from {learnt.instances} corrected instances"
    state.metrics["confidence_weights"] = {"source": source, "weights": weights}
    scores: list[PoolScore] = []
    for start in range(0, len(pool), params.score_batch):
        chunk = pool[start : start + params.score_batch]
        scores += score_pool_batch(services, params, chunk, scorer.uri, relabel, run_id, weights)
    return relabel, scores, scorer.name


def _report(params: ActiveLearningParams, state: RoundState) -> None:
    """The round's table artifact and log line."""
    held = state.metrics.get("held_out", {})
    create_table_artifact(
        [
            {
                "round": state.number,
                "strategy": params.strategy,
                "train": state.metrics["train_items"],
                "held_out": state.metrics["held_out_items"],
                "old_iou": held.get("old", {}).get("mean_iou"),
                "new_iou": held.get("new", {}).get("mean_iou"),
                "old_accepted": held.get("old", {}).get("accepted_rate"),
                "new_accepted": held.get("new", {}).get("accepted_rate"),
                "promoted": state.promoted,
                "pool": state.metrics["pool"]["items"],
            }
        ],
        key="active-learning-round",
        description=f"active learning on {params.project}",
    )
    get_run_logger().info("active-learning round %d of %s: %s", state.number, params.project, state.metrics)
