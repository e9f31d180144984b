"""Flow ``active-learning``: one round of pre-label → correct → fine-tune → re-pre-label → prioritise.

harvest the project's corrections → (optional) freeze them into a dataset version → fine-tune the current model on
the accepted annotations' train split (decoder-only by default) → register the new model version (parent, data
version, metrics) → old vs new on the held-out corrected items (mask IoU, accepted-unchanged rate) → if the new one
is better by more than ``promote_margin``, re-pre-label the still-unannotated tasks with it (new predictions with
the new model_version on the same tasks) → score the pool and write the task scores Label Studio's uncertainty
sampling serves (low first), optionally a "review next" view of the chosen tasks. Every number of the round is in
the catalog (``al_rounds.metrics``, ``al_round_items``); see :mod:`tasks.active_learning_ops`.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.context import get_run_context

from flows.prelabel import gpu_slot
from storage.agreement import strategy_of
from storage.catalog import Catalog
from storage.catalog.jobs import project_model
from storage.labelstudio.importer import model_version_string
from storage.settings import Settings
from tasks import active_learning_ops as ops
from tasks import al_scoring as scoring
from tasks import prelabel_ops
from tasks.active_learning import (
    calibrate_weights,
    evaluate_models,
    finetune_model,
    import_relabels,
    score_pool_batch,
    write_task_scores,
)
from tasks.harvest import freeze_version, harvest_annotations


@flow(name="active-learning")
def active_learning_flow(
    project: str,
    strategy: str = "uncertainty",
    budget: int = 50,
    finetune: bool = True,
    finetune_from: str = "current",
    model_id: str | None = None,
    steps: int = 300,
    lr: float = 1e-3,
    batch_size: int = 2,
    freeze: list[str] | None = None,
    box_fraction: float = 0.5,
    held_out_fraction: float = 0.25,
    min_train_items: int = 2,
    promote_margin: float = 0.0,
    accept_iou: float = 0.9,
    seed: int = 0,
    dest: str | None = None,
    dataset: str | None = None,
    models_dir: str | None = None,
    review_view: bool = True,
    confidence_weights: dict[str, float] | None = None,
    calibrate: bool = True,
    num_threads: int | None = None,
    gpu_limit: str | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """One active-learning round on ``project`` (catalog name, e.g. ``maskloop (images)``); returns its numbers.

    ``finetune_from``: ``current`` continues from the model pre-labelling the project now; ``initial`` retrains
    from the project's model before its first round on all corrections each time (no compounding across rounds).
    ``confidence_weights`` weigh the uncertainty signals (:data:`model.al_scores.SIGNALS`); without them and with
    ``calibrate`` the weights are learnt from the corrections (each signal's rank correlation with the true IoU of
    the scoring model's masks on corrected items), else equal. ``gpu_limit`` names a global concurrency limit (``gpu``) of which the round holds one slot for its model work.
    """
    settings = settings or Settings()
    logger = get_run_logger()
    params = ops.ActiveLearningParams(
        project=project,
        strategy=strategy,
        budget=budget,
        finetune=finetune,
        finetune_from=finetune_from,
        model_id=model_id or settings.model_id,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        freeze=tuple(freeze) if freeze is not None else ops.FREEZE_DECODER_ONLY,
        box_fraction=box_fraction,
        held_out_fraction=held_out_fraction,
        min_train_items=min_train_items,
        promote_margin=promote_margin,
        accept_iou=accept_iou,
        seed=seed,
        dest=dest,
        models_dir=models_dir,
        review_view=review_view,
        confidence_weights=tuple(sorted((confidence_weights or {}).items())),
        calibrate=calibrate,
        num_threads=num_threads,
    )
    catalog_url = settings.resolved_database_url
    catalog = Catalog(catalog_url)
    flow_run_id = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
    run_id = prelabel_ops.start_run(catalog, "active-learning", params.to_json(), flow_run_id)
    started = time.perf_counter()
    status, state = "failed", None
    lineage: tuple[str | None, str | None] = (None, None)
    try:
        harvested = harvest_annotations(settings, catalog_url, project)
        row = ops.project_row(catalog, settings.label_studio_url.rstrip("/"), project)
        data_version_id = None
        accepted = ops.corrected_items(catalog, row.id)
        if dest and accepted:
            version = freeze_version(settings, catalog_url, project, dest, dataset, None, False)
            data_version_id = int(version["version_id"])
        # last promoted model, else --model, else the model that pre-labelled the project, else MASKLOOP_MODEL_ID
        fallback = model_id or project_model(catalog, project) or params.model_id
        base_uri = ops.current_model_uri(catalog, row.id, fallback)
        base = ops.load_segmenter(settings, base_uri)
        base_id = ops.register_model(catalog, base, base_uri)
        start_id, start_uri, start_name = base_id, base_uri, str(base.model_version)
        initial = ops.initial_model(catalog, row.id) if params.finetune_from == "initial" else None
        if initial is not None:
            start_id, start_uri = initial
            start_name = str(ops.load_segmenter(settings, start_uri).model_version)
        round_id, number = ops.start_round(catalog, row.id, params, run_id, base_id)
        pool = ops.pool_items(catalog, row.id)
        suffixes = Counter(strategy_of(i.model_version) for i in pool if i.model_version)
        state = ops.RoundState(
            round_id=round_id,
            number=number,
            project_id=row.id,
            base_model_id=base_id,
            base_uri=base_uri,
            base_name=str(base.model_version),
            start_model_id=start_id,
            start_uri=start_uri,
            start_name=start_name,
            strategy_suffix=(suffixes.most_common(1)[0][0] if suffixes else "") or "prior",
            data_version_id=data_version_id,
        )
        items = ops.corrected_items(catalog, row.id, data_version_id)
        train, test = ops.split_items(items, params.held_out_fraction)
        state.metrics.update(
            {
                "round": number,
                "strategy": strategy,
                "base_model": state.base_name,
                "finetuned_from": state.start_name,
                "harvest": {k: harvested[k] for k in ("created", "updated", "unchanged", "skipped")},
                "corrected_items": len(items),
                "train_items": len(train),
                "held_out_items": len(test),
                "data_version_id": data_version_id,
            }
        )
        lineage = (str(base.model_id), str(base.checkpoint_sha256))
        with gpu_slot(gpu_limit):
            relabel, scores, scorer = _model_work(settings, catalog_url, state, params, train, test, pool, run_id)
        versions = {i.asset_id: (relabel or i.model_version) for i in pool}
        selection = scoring.select_and_record(catalog, state, params, scores, str(scorer.model_version), versions)
        if relabel:
            state.metrics["relabelled"] = import_relabels(
                settings, catalog_url, row.id, [i.asset_id for i in pool], relabel
            )
            state.metrics["model_version"] = relabel
        task_versions = {i.ls_task_id: (relabel or i.model_version) for i in pool}
        written = write_task_scores(
            settings,
            catalog_url,
            row.id,
            task_versions,
            selection["task_scores"],
            selection["clusters"],
            selection["chosen"] if params.review_view else None,
        )
        state.metrics["pool"] = {
            "items": selection["pool"],
            "mean_confidence": selection.get("mean_confidence"),
            "chosen_tasks": selection["chosen"],
            "scored_with": str(scorer.model_version),
            **written,
        }
        status = "completed"
    finally:
        elapsed = time.perf_counter() - started
        if state is not None:
            state.metrics["seconds"] = round(elapsed, 3)
            ops.finish_round(catalog, state, status)
        counts = {"round": state.number if state else None, "promoted": bool(state and state.promoted)}
        prelabel_ops.finish_run(catalog, run_id, status, counts, {"seconds": round(elapsed, 3)}, *lineage)
        catalog.dispose()
    assert state is not None
    held = state.metrics.get("held_out", {})
    create_table_artifact(
        [
            {
                "round": state.number,
                "strategy": strategy,
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
        description=f"active learning on {project}",
    )
    logger.info("active-learning round %d of %s: %s", state.number, project, state.metrics)
    return {
        "run_id": run_id,
        "round_id": state.round_id,
        "round": state.number,
        "promoted": state.promoted,
        "base_model_id": state.base_model_id,
        "new_model_id": state.new_model_id,
        "metrics": ops.jsonable(state.metrics),
        "chosen_tasks": list(state.metrics["pool"]["chosen_tasks"]),
    }


def _model_work(
    settings: Settings,
    catalog_url: str,
    state: ops.RoundState,
    params: ops.ActiveLearningParams,
    train: list[ops.Item],
    test: list[ops.Item],
    pool: list[ops.Item],
    run_id: int,
) -> tuple[str | None, list[scoring.PoolScore], Any]:
    """Fine-tune, compare old and new on the held-out items, promote, then score (and re-pre-label) the pool."""
    if not params.finetune:
        state.metrics["finetune_skipped"] = "finetune=False"
    elif len(train) < params.min_train_items:
        state.metrics["finetune_skipped"] = f"{len(train)} train items < min_train_items {params.min_train_items}"
    else:
        state.metrics["finetune"] = finetune_model(settings, catalog_url, state, params, train, test)
        if test:
            evaluation = evaluate_models(
                settings, catalog_url, test, {"old": state.base_uri, "new": str(state.new_uri)}, params.accept_iou
            )
            old, new = evaluation["old"], evaluation["new"]
            gain = float(new["mean_iou"]) - float(old["mean_iou"])
            state.metrics["held_out"] = {
                **evaluation,
                "iou_gain": gain,
                "accepted_rate_gain": float(new["accepted_rate"]) - float(old["accepted_rate"]),
            }
            state.promoted = gain > params.promote_margin
            state.metrics["promoted"] = state.promoted
            if not state.promoted:
                state.metrics["not_promoted"] = f"held-out IoU gain {gain:+.4f} <= margin {params.promote_margin}"
        else:
            state.metrics["not_promoted"] = "no held-out items to compare old and new on"
    model_uri = str(state.new_uri) if state.promoted else state.base_uri
    scorer = ops.load_segmenter(settings, model_uri)
    relabel = (
        model_version_string(scorer.model_id, scorer.checkpoint_sha256, state.strategy_suffix)
        if state.promoted
        else None
    )
    weights, source = params.weights, "explicit" if params.weights else "default (equal)"
    if weights is None and params.calibrate and train + test:
        learnt = calibrate_weights(
            settings, catalog_url, [*train, *test], model_uri, params.max_calibration_items, params.seed
        )
        if learnt["weights"] is not None:
            weights, source = learnt["weights"], f"learnt from {learnt['instances']} corrected instances"
    state.metrics["confidence_weights"] = {"source": source, "weights": weights}
    scores: list[scoring.PoolScore] = []
    for start in range(0, len(pool), params.score_batch):
        chunk = pool[start : start + params.score_batch]
        scores += score_pool_batch(settings, catalog_url, state, params, chunk, model_uri, relabel, run_id, weights)
    return relabel, scores, scorer
