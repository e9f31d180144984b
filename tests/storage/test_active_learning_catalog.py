"""Active learning's side of the catalog, on SQLite and PostgreSQL: a round's items, its numbered and closed row,
the model registry, the pool's embeddings and re-pre-labels, and the selection records."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pytest
from sqlalchemy import select

from model.al_pool import ImageScore
from model.instances import Instances
from model.masks import mask_to_rle
from storage.catalog import (
    ActiveLearningItem,
    ActiveLearningRound,
    Annotation,
    AnnotationProject,
    AnnotationTask,
    Asset,
    AssetEmbedding,
    Catalog,
    Prediction,
)
from storage.catalog import active_learning as rounds
from storage.catalog import active_learning_pool as pool_store
from storage.params import ActiveLearningParams

SHOWN = "base@00000000/prior"


@dataclass(frozen=True)
class _Segmenter:
    name: str

    @property
    def model_version(self) -> str:
        return f"{self.name}@{'ab' * 4}"

    model_id = property(lambda self: self.name)
    checkpoint_sha256 = property(lambda self: "ab" * 32)


def _mask(y0: int, y1: int) -> np.ndarray:
    m = np.zeros((8, 8), bool)
    m[y0:y1, :4] = True
    return m


def _record(mask: np.ndarray) -> dict:
    return {"label": "object", "rle": mask_to_rle(mask), "box": [0, 0, 4, 4]}


@pytest.fixture()
def project(catalog: Catalog) -> int:
    """An image project of five tasks: 1 and 2 accepted (2 corrected twice), 3 skipped, 4 and 5 in the pool."""
    with catalog.session() as session:
        row = AnnotationProject(
            backend_url="http://ls",
            name="p (images)",
            external_project_id=7,
            media_kind="image",
            label_config="<View/>",
        )
        session.add(row)
        session.flush()
        for n in range(1, 6):
            sha = hashlib.sha256(str(n).encode()).hexdigest()
            asset = Asset(
                bucket="b", key=f"{n}.png", etag="e", size=1, media_type="image", sha256=sha, height=8, width=8
            )
            session.add(asset)
            session.flush()
            shown = Instances(masks=_mask(0, n)[None], labels=["object"]).to_records()
            session.add(Prediction(asset_id=asset.id, model_version=SHOWN, instances=shown))
            task = AnnotationTask(
                asset_id=asset.id, project_id=row.id, external_task_id=100 + n, last_model_version=SHOWN
            )
            session.add(task)
            session.flush()
            for k, status in enumerate({1: ["accepted"], 2: ["accepted", "accepted"], 3: ["skipped"]}.get(n, [])):
                session.add(
                    Annotation(
                        task_row_id=task.id,
                        external_annotation_id=10 * n + k,
                        status=status,
                        content_hash=f"h{n}{k}",
                        instances=[_record(_mask(0, n + k))],
                    )
                )
        return int(row.id)


def test_corrected_items_are_the_latest_accepted_annotation_per_task_and_the_pool_the_untouched_tasks(
    catalog: Catalog, project: int
) -> None:
    corrected = rounds.corrected_items(catalog, project)
    assert [i.external_task_id for i in corrected] == [101, 102]
    assert corrected[1].human_instances().masks[0].sum() == _mask(0, 3).sum()  # the second correction of task 102
    assert len(corrected[0].prior()) == 1 and corrected[0].model_version == SHOWN
    pool = rounds.pool_items(catalog, project)
    assert [i.external_task_id for i in pool] == [104, 105] and all(i.human is None for i in pool)
    items = rounds.round_items(catalog, project, None, 0.5)
    assert (items.corrected, len(items.train) + len(items.test), items.pool) == (2, 2, pool)
    assert items.strategy_suffix == "prior"


def test_a_video_project_is_refused_naming_it(catalog: Catalog) -> None:
    with catalog.session() as session:
        session.add(
            AnnotationProject(
                backend="label-studio",
                backend_url="http://ls",
                name="p (videos)",
                external_project_id=8,
                media_kind="video",
                label_config="<View/>",
            )
        )
    with pytest.raises(rounds.NotAnImageProjectError, match=r"'p \(videos\)' holds video tasks"):
        rounds.image_project(catalog, "p (videos)", backend="label-studio", url="http://ls/")


def test_rounds_are_numbered_per_project_and_closed_completed_or_failed(catalog: Catalog, project: int) -> None:
    params = ActiveLearningParams(project="p (images)", model_id="base")
    base = rounds.register_model(catalog, _Segmenter("base"), "/m/base")
    assert rounds.register_model(catalog, _Segmenter("base"), "/m/elsewhere").id == base.id  # one row per name
    first = rounds.start_round(catalog, project, params, None, base, base, strategy_suffix="prior")
    with rounds.recorded_round(catalog, first):
        first.metrics["pool"] = {"mean": np.float32(0.5), "nan": float("nan")}
    second = rounds.start_round(catalog, project, params, None, base, base, strategy_suffix="prior")
    with pytest.raises(RuntimeError, match="boom"), rounds.recorded_round(catalog, second):
        raise RuntimeError("boom")
    assert (first.number, second.number) == (1, 2)
    with catalog.session() as session:
        rows = session.scalars(select(ActiveLearningRound).order_by(ActiveLearningRound.number)).all()
        assert [r.status for r in rows] == ["completed", "failed"]
        assert rows[0].metrics["pool"] == {"mean": 0.5, "nan": None} and rows[0].metrics["seconds"] >= 0
        assert rows[0].metrics["params"]["model_id"] == "base"


def test_the_promoted_model_of_the_last_completed_round_is_current_and_the_first_base_is_initial(
    catalog: Catalog, project: int
) -> None:
    params = ActiveLearningParams(project="p (images)")
    base = rounds.register_model(catalog, _Segmenter("base"), "/m/base")
    assert rounds.promoted_model_uri(catalog, project) is None and rounds.initial_model(catalog, project) is None
    for name, status in (("al1", "completed"), ("al2", "failed")):
        state = rounds.start_round(catalog, project, params, None, base, base, strategy_suffix="prior")
        state.new = rounds.register_model(catalog, _Segmenter(name), f"/m/{name}", parent_id=base.id)
        state.promoted = True
        rounds.finish_round(catalog, state, status)
    assert rounds.promoted_model_uri(catalog, project) == "/m/al1"  # a failed round promotes nothing
    assert rounds.initial_model(catalog, project) == base


def _score(confidence: float, relabelled: Instances | None = None) -> ImageScore:
    return ImageScore(confidence, {"stability": [confidence]}, np.arange(4, dtype=np.float32) + confidence, relabelled)


def test_pool_scores_store_each_embedding_and_re_pre_label_once_and_the_selection_records_every_item(
    catalog: Catalog, project: int
) -> None:
    params = ActiveLearningParams(project="p (images)", strategy="hybrid", budget=1)
    base = rounds.register_model(catalog, _Segmenter("base"), "/m/base")
    state = rounds.start_round(catalog, project, params, None, base, base, strategy_suffix="prior")
    pool = rounds.pool_items(catalog, project)
    new = Instances(masks=_mask(0, 2)[None], labels=["object"])
    for _ in range(2):  # a retried batch adds nothing
        scores = pool_store.record_pool_scores(
            catalog, pool, [_score(0.2, new), _score(0.9, new)], "scorer@1", "new@1/prior", None
        )
    with catalog.session() as session:
        assert len(session.scalars(select(AssetEmbedding)).all()) == 2
        assert len(session.scalars(select(Prediction).where(Prediction.model_version == "new@1/prior")).all()) == 2
    assert [s.external_task_id for s in scores] == [104, 105]
    versions = {i.asset_id: "new@1/prior" for i in pool}
    selection = pool_store.select_and_record(catalog, state, params, scores, "scorer@1", versions)
    assert selection.pool == 2 and len(selection.chosen) == 1 and set(selection.clusters) == {104, 105}
    with catalog.session() as session:
        items = session.scalars(select(ActiveLearningItem).where(ActiveLearningItem.round_id == state.round_id)).all()
        assert {i.external_task_id for i in items} == {104, 105} and sum(i.chosen for i in items) == 1
        scored = session.scalars(select(Prediction).where(Prediction.model_version == "new@1/prior")).all()
        assert {p.score for p in scored} == set(selection.task_scores.values())


def test_an_empty_pool_selects_nothing(catalog: Catalog, project: int) -> None:
    params = ActiveLearningParams(project="p (images)")
    base = rounds.register_model(catalog, _Segmenter("base"), "/m/base")
    state = rounds.start_round(catalog, project, params, None, base, base, strategy_suffix="prior")
    assert pool_store.select_and_record(catalog, state, params, [], "m", {}) == pool_store.PoolSelection()


def test_manifest_depends_on_the_corrections_not_their_order(catalog: Catalog, project: int) -> None:
    a, b = rounds.corrected_items(catalog, project)
    assert rounds.manifest_of([a, b]) == rounds.manifest_of([b, a])
    assert rounds.manifest_of([a, b]) != rounds.manifest_of([a])
