"""Active learning, the pool side (plain functions): score the still-unannotated tasks, select what people review next,
and write predictions, task scores and the "review next" view to Label Studio."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select

from storage.catalog import (
    ActiveLearningItem,
    Annotation,
    Asset,
    AssetEmbedding,
    Catalog,
    LabelStudioProject,
    LabelStudioTask,
    Prediction,
)
from storage.settings import Settings
from tasks.active_learning_ops import (
    ActiveLearningParams,
    Item,
    RoundState,
    load_images,
    load_segmenter,
)

log = logging.getLogger(__name__)


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
    from model.instances import Instances

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
        instances = Instances.from_records(list(item.prediction), item.height, item.width)
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
