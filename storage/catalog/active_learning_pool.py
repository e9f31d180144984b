"""Active learning's pool in the catalog and the annotation backend: the images a round's model work reads, the
pool's scores, pooled embeddings and re-pre-labels, the selection of what people review next (``al_round_items``
rows, scores on the predictions), and the re-pre-labels sent to the existing tasks of the backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from storage.catalog.active_learning import Item, RoundState
from storage.catalog.db import Catalog
from storage.catalog.models import Annotation, AnnotationTask, Asset, Prediction
from storage.catalog.models_learning import ActiveLearningItem, AssetEmbedding

if TYPE_CHECKING:
    from model.al_pool import ImageScore
    from storage.catalog.models import AnnotationProject
    from storage.params import ActiveLearningParams
    from storage.services import Services


def load_images(services: Services, asset_ids: Sequence[int]) -> dict[int, np.ndarray]:
    """Decoded images of ``asset_ids`` from the download cache (fetched from S3 when missing)."""
    from model.images import decode_image
    from storage.s3 import S3Object, download_many

    settings = services.settings
    with services.catalog.session() as session:
        assets = list(session.scalars(select(Asset).where(Asset.id.in_(list(asset_ids)))))
    objects = [S3Object(a.bucket, a.key, a.etag, a.size, a.last_modified, a.media_type) for a in assets]  # type: ignore[arg-type]
    results = download_many(services.s3, objects, settings.cache_dir, settings.s3_max_concurrency)
    out: dict[int, np.ndarray] = {}
    for asset, result in zip(assets, results, strict=True):
        if result.path is None:
            raise FileNotFoundError(f"asset {asset.uri}: {result.error}")
        out[asset.id] = decode_image(result.path.read_bytes(), asset.uri)
    return out


# -- the pool's scores -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolScore:
    asset_id: int
    frame_index: int
    external_task_id: int
    confidence: float
    signals: dict[str, Any]


def record_pool_scores(
    catalog: Catalog,
    items: Sequence[Item],
    scored: Sequence[ImageScore],
    model_version: str,
    relabel_version: str | None,
    run_id: int | None,
) -> list[PoolScore]:
    """Store what scoring ``items`` found: each asset's pooled embedding under ``model_version`` and, with
    ``relabel_version``, the re-pre-labels as new :class:`Prediction` rows (each once: a retried batch adds none)."""
    asset_ids = [i.asset_id for i in items]
    with catalog.session() as session:
        have = set(
            session.scalars(
                select(AssetEmbedding.asset_id).where(
                    AssetEmbedding.asset_id.in_(asset_ids), AssetEmbedding.model_version == model_version
                )
            )
        )
        relabelled: set[int] = set()
        if relabel_version:
            relabelled = set(
                session.scalars(
                    select(Prediction.asset_id).where(
                        Prediction.asset_id.in_(asset_ids), Prediction.model_version == relabel_version
                    )
                )
            )
        for item, score in zip(items, scored, strict=True):
            if relabel_version and score.relabelled is not None and item.asset_id not in relabelled:
                session.add(
                    Prediction(
                        asset_id=item.asset_id,
                        run_id=run_id,
                        model_version=relabel_version,
                        frame_index=item.frame_index,
                        instances=score.relabelled.to_records(),
                        num_instances=len(score.relabelled),
                    )  # type: ignore[arg-type]
                )
                relabelled.add(item.asset_id)
            if item.asset_id not in have:
                session.add(
                    AssetEmbedding(
                        asset_id=item.asset_id,
                        frame_index=item.frame_index,
                        model_version=model_version,
                        dim=int(score.embedding.shape[0]),
                        vector=score.embedding.astype("<f4").tobytes(),
                    )
                )
                have.add(item.asset_id)
    return [
        PoolScore(i.asset_id, i.frame_index, i.external_task_id, s.confidence, s.signals)
        for i, s in zip(items, scored, strict=True)
    ]


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
                    select(AnnotationTask.asset_id)
                    .join(Annotation, Annotation.task_row_id == AnnotationTask.id)
                    .where(AnnotationTask.project_id == project_id)
                )
            )
        )


# -- the selection -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolSelection:
    """What people review next: the chosen task ids in review order, each pool task's score (low: first) and
    cluster (embedding strategies), and the pool's mean confidence (None for an empty pool)."""

    pool: int = 0
    chosen: list[int] = field(default_factory=list)
    chosen_assets: list[int] = field(default_factory=list)
    task_scores: dict[int, float] = field(default_factory=dict)
    clusters: dict[int, int] = field(default_factory=dict)
    mean_confidence: float | None = None


def select_and_record(
    catalog: Catalog,
    state: RoundState,
    params: ActiveLearningParams,
    scores: Sequence[PoolScore],
    model_version: str,
    versions: Mapping[int, str],
) -> PoolSelection:
    """Order the pool with the round's strategy, store task scores on the predictions (``versions``: asset id ->
    the model version of the prediction that task shows) and the ``al_round_items`` rows."""
    from model.selection import select as select_pool

    if not scores:
        return PoolSelection()
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
                    external_task_id=s.external_task_id,
                    model_version=versions.get(s.asset_id, ""),
                    confidence=s.confidence,
                    task_score=float(chosen.task_scores[pos]),
                    rank=int(ranks[pos]),
                    cluster=None if chosen.clusters is None else int(chosen.clusters[pos]),
                    chosen=pos in picked,
                    signals=s.signals,
                )
            )
    return PoolSelection(
        pool=len(scores),
        chosen=[scores[p].external_task_id for p in chosen.chosen],
        chosen_assets=[scores[p].asset_id for p in chosen.chosen],
        task_scores={scores[p].external_task_id: float(chosen.task_scores[p]) for p in range(len(scores))},
        clusters={}
        if chosen.clusters is None
        else {scores[p].external_task_id: int(chosen.clusters[p]) for p in range(len(scores))},
        mean_confidence=float(confidence.mean()),
    )


# -- re-pre-labels into the backend's existing tasks -----------------------------------------------------------------
def import_relabels(services: Services, project: AnnotationProject, asset_ids: Sequence[int], version: str) -> int:
    """Add the new model version's stored predictions to the existing tasks of ``asset_ids`` (never new tasks);
    returns how many tasks got it."""
    from model.instances import Instances
    from storage.annotation.items import ImportItem
    from storage.s3 import presigned_get_url

    if not asset_ids:
        return 0
    with services.catalog.session() as session:
        pairs = session.execute(
            select(Asset, Prediction)
            .join(Prediction, Prediction.asset_id == Asset.id)
            .where(Asset.id.in_(list(asset_ids)), Prediction.model_version == version)
        ).all()
    items = [
        ImportItem(
            asset.id,
            presigned_get_url(services.s3, asset.bucket, asset.key, services.settings.presign_ttl_s),
            Instances.from_records(pred.instances, asset.height or 0, asset.width or 0),
            version,
            pred.score,
            pred.frame_index,
        )
        for asset, pred in pairs
    ]
    report = services.annotation.import_predictions(services.catalog, project, items)
    if report.created:
        raise RuntimeError(f"re-pre-labelling created {report.created} new annotation tasks; it must only refresh")
    return report.refreshed
