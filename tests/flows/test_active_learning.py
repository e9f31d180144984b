"""The active-learning loop end to end: two rounds on the synthetic domain with a simulated annotator who corrects the
pre-labels to ground truth through the real Label Studio API, once with ``uncertainty`` and once with ``random``
selection at the same budget and seeds.

Setup. The base model is the shipped ``shapes-tiny`` (copied first: a training run may rewrite it during the day)
after a short decoder-only fine-tune on the in-domain data (four shape families, three textures, a clean camera):
the model a team has after training on what it had so far. The pool is mostly in-domain images plus a minority
from a new, noisy camera (sensor noise 60 instead of 6), a shift this base model handles poorly. Pre-labels are
SAM 2 masks from detector boxes (the ground-truth boxes stand in for the detector).

Each arm: a bootstrap round (no corrections yet: score the pool and choose) → people correct the chosen tasks →
round 1 (fine-tune, compare on held-out corrections, re-pre-label if better, choose again) → people correct →
round 2. The test measures, on fixed held-out sets of shifted and in-domain images that no round trains on, the
mean mask IoU and the accepted-unchanged rate (IoU >= 0.9) of each round's fine-tuned model against the base.

Assertions are relative (the shipped weights improve during the day): uncertainty finds more shifted items than
random; the accepted-unchanged rate on held-out shifted items rises after fine-tuning; uncertainty beats random on
the IoU gain there. The round-by-round numbers are logged (``--log-cli-level=INFO``) and kept in the catalog.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from flows.active_learning import ActiveLearningResult
from model.finetune.prompts import mask_box
from model.instances import Instances
from model.synthetic import SyntheticDomain, SyntheticImage, to_coco
from storage.annotation.items import ImportItem, model_version_string
from storage.catalog import (
    ActiveLearningItem,
    ActiveLearningRound,
    AgreementRow,
    AnnotationTask,
    Asset,
    AssetEmbedding,
    Catalog,
    ModelVersion,
    Prediction,
)
from storage.labelstudio.client import LabelStudioClient
from storage.labelstudio.convert import instances_to_results, result_to_mask
from storage.labelstudio.importer import import_predictions
from storage.labelstudio.projects import ensure_project
from storage.labelstudio.server import LabelStudioServer
from storage.params import ActiveLearningParams
from storage.s3 import make_client, presigned_get_url
from storage.settings import Settings

pytestmark = pytest.mark.labelstudio

WEIGHTS = Path(__file__).resolve().parents[2] / "model" / "weights" / "shapes-tiny"
_COMMON: dict[str, Any] = {"n_objects": (1, 2), "difficulty": 0.0, "radius": (28.0, 56.0)}
_FAMILIES = ("ellipse", "rectangle", "triangle", "star")
_TEXTURES = ("solid", "stripes", "dots")
IN_DOMAIN = SyntheticDomain(families=_FAMILIES, textures=_TEXTURES, **_COMMON)
SHIFTED = SyntheticDomain(families=_FAMILIES, textures=_TEXTURES, noise=60.0, **_COMMON)  # a new, noisy camera
N_IN_DOMAIN, N_SHIFTED, BUDGET = 36, 12, 10
ACCEPT_IOU = 0.9
FLOW_PARAMS: dict[str, Any] = {
    "budget": BUDGET,
    "finetune_from": "initial",  # every round retrains the initial model on all corrections: arms stay comparable
    "steps": 200,
    "lr": 1e-3,  # 2e-3 undid what the (since retrained) base model knew in-domain: nothing was promoted
    "batch_size": 2,
    "held_out_fraction": 0.25,
    # The flow judges a new model on its own held-out corrections: 2-5 items here, too few to decide on (in the last
    # run the new models lost there by 0.03-0.14 IoU while gaining 0.14-0.20 on this test's 61 shifted objects).
    # Promote unless clearly worse, so the re-pre-label path runs; deployments keep the default margin of 0.
    "promote_margin": -0.2,
    "seed": 0,
    "num_threads": 1,
}


# -- the base model --------------------------------------------------------------------------------------------------
def _snapshot(dest: Path) -> Path:
    """A loadable copy of the shipped weights (retried: the training run may be replacing them right now)."""
    from model.segmenter import Segmenter

    for attempt in range(5):
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(WEIGHTS, dest)
        try:
            Segmenter.from_pretrained(dest, device="cpu")
            return dest
        except Exception:  # noqa: BLE001 - a half-written checkpoint; copy again
            time.sleep(2 + attempt)
    raise RuntimeError(f"could not copy a loadable checkpoint from {WEIGHTS}")


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """shapes-tiny after a short decoder-only fine-tune on in-domain images (the team's current model)."""
    from model.finetune import CocoSource, FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("base-model")
    shipped = _snapshot(root / "shapes-tiny")
    coco, arrays = to_coco([IN_DOMAIN.image(s) for s in range(500, 532)])
    config = FinetuneConfig(
        out_dir=root / "run",
        best_dir=root / "shapes-tiny-indomain",
        model_id="shapes-tiny-indomain",
        data=CocoSource(coco, arrays, image_size=256, version="in-domain"),
        base=shipped,
        freeze=("image_encoder", "prompt_encoder"),
        steps=300,
        lr=2e-3,
        warmup_steps=10,
        batch_size=2,
        objects_per_image=2,
        focal_weight=1.0,
        loss_size=128,
        corrective_rounds=0,
        eval_images=2,
        eval_every_s=1e9,
        num_threads=1,
        cache_image_features=True,
    )
    return finetune(config).best_dir


# -- measuring a model on fixed held-out images ---------------------------------------------------------------------
HELD_OUT_SHIFTED = [SHIFTED.image(30_000 + i) for i in range(40)]
HELD_OUT_IN_DOMAIN = [IN_DOMAIN.image(40_000 + i) for i in range(24)]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def measure(model_dir: str | Path, samples: list[SyntheticImage]) -> dict[str, float]:
    """Mean mask IoU and accepted-unchanged rate (IoU >= 0.9) of box-prompted masks, per object."""
    from model.segmenter import Segmenter

    seg = Segmenter.from_pretrained(model_dir, device="cpu")
    ious = []
    for sample in samples:
        inst = seg.predict(sample.image, boxes=np.stack([mask_box(m) for m in sample.masks]))[0]
        ious += [_iou(p, t) for p, t in zip(inst.masks, sample.masks, strict=True)]
    arr = np.array(ious)
    return {"iou": float(arr.mean()), "accepted": float((arr >= ACCEPT_IOU).mean()), "objects": float(arr.size)}


# -- one arm of the experiment -----------------------------------------------------------------------------------------
@dataclass
class Arm:
    strategy: str
    catalog_url: str
    project_name: str
    truth: dict[int, SyntheticImage] = field(default_factory=dict)  # asset id -> ground truth
    shifted_assets: set[int] = field(default_factory=set)
    results: list[ActiveLearningResult] = field(default_factory=list)  # flow results, bootstrap first
    annotated: list[dict[str, int]] = field(default_factory=list)  # per correction pass: kept / redrawn objects
    chosen_shifted: list[int] = field(default_factory=list)  # per selection: how many chosen items were shifted
    measured: list[dict[str, Any]] = field(default_factory=list)  # per fine-tuning round
    task_count_before: int = 0
    task_count_after: int = 0
    settings: Settings | None = None


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def _pool() -> list[tuple[str, SyntheticImage]]:
    items = [("in-domain", IN_DOMAIN.image(10_000 + i)) for i in range(N_IN_DOMAIN)]
    items += [("shifted", SHIFTED.image(20_000 + i)) for i in range(N_SHIFTED)]
    order = np.random.default_rng(7).permutation(len(items))
    return [items[i] for i in order]


def prelabel(arm: Arm, settings: Settings, client: LabelStudioClient, bucket: str, base: Path) -> None:
    """Assets in S3 and the catalog, pre-labelled by the base model from detector boxes, imported into Label Studio."""
    from model.autoprompt import segment_priors
    from model.segmenter import Segmenter
    from storage.prelabel.predict import task_score

    s3 = make_client(settings)
    seg = Segmenter.from_pretrained(base, device="cpu")
    version = model_version_string(seg.model_id, seg.checkpoint_sha256, "prior")
    pool = _pool()
    with Catalog(arm.catalog_url) as catalog:
        with catalog.session() as session:
            for i, (kind, sample) in enumerate(pool):
                body = _png(sample.image)
                key = f"{arm.strategy}/img{i:03d}.png"
                etag = s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')
                asset = Asset(
                    bucket=bucket,
                    key=key,
                    etag=etag,
                    size=len(body),
                    media_type="image",
                    width=sample.image.shape[1],
                    height=sample.image.shape[0],
                    sha256=hashlib.sha256(body).hexdigest(),
                    status="done",
                )
                session.add(asset)
                session.flush()
                arm.truth[asset.id] = sample
                if kind == "shifted":
                    arm.shifted_assets.add(asset.id)
            ids = list(arm.truth)
        priors = [Instances(masks=arm.truth[a].masks, labels=["object"] * len(arm.truth[a].masks)) for a in ids]
        predicted = segment_priors(seg, [arm.truth[a].image for a in ids], priors, prompt="box")
        with catalog.session() as session:
            for asset_id, inst in zip(ids, predicted, strict=True):
                session.add(
                    Prediction(
                        asset_id=asset_id,
                        model_version=version,
                        instances=inst.to_records(),
                        num_instances=len(inst),
                        score=task_score(inst.scores),
                    )
                )
        project = ensure_project(client, catalog, arm.project_name, "image", ["object"])
        with catalog.session() as session:
            rows = session.execute(select(Asset, Prediction).join(Prediction, Prediction.asset_id == Asset.id)).all()
            items = [
                ImportItem(
                    a.id,
                    presigned_get_url(s3, a.bucket, a.key),
                    Instances.from_records(p.instances, a.height, a.width),
                    version,
                    p.score,
                )
                for a, p in rows
            ]
        import_predictions(client, catalog, project, items)


def annotate(arm: Arm, client: LabelStudioClient, task_ids: list[int]) -> dict[str, int]:
    """The simulated annotator: per object, the shown prediction is kept when it is right (IoU >= 0.9 with the
    ground truth: accepted unchanged), otherwise redrawn as the ground truth; submitted through the API."""
    kept = redrawn = 0
    for task_id in task_ids:
        task = client.get_task(task_id)
        project = client.get_project(int(task["project"]))
        truth = arm.truth[int(task["data"]["maskloop_asset_id"])]
        h, w = truth.image.shape[:2]
        shown = [p for p in client.list_predictions(task_id) if p["model_version"] == project["model_version"]]
        shown_masks = [result_to_mask(r, h, w)[1] for r in (shown[-1]["result"] if shown else [])]
        final = []
        for target in truth.masks:
            best = max(shown_masks, key=lambda m: _iou(m, target), default=None)
            if best is not None and _iou(best, target) >= ACCEPT_IOU:
                final.append(best)
                kept += 1
            else:
                final.append(target)
                redrawn += 1
        inst = Instances(masks=np.stack(final), labels=["object"] * len(final))
        client.create_annotation(task_id, instances_to_results(inst, to_name="image", brush_from="brush"))
    return {"kept": kept, "redrawn": redrawn}


def run_arm(arm: Arm, settings: Settings, client: LabelStudioClient, bucket: str, base: Path, models: Path) -> None:
    from flows.active_learning import active_learning_flow

    dest = f"s3://{bucket}/datasets"
    prelabel(arm, settings, client, bucket, base)
    with Catalog(arm.catalog_url) as catalog, catalog.session() as session:
        arm.task_count_before = int(session.scalar(select(func.count(AnnotationTask.id))) or 0)
    baseline = {"shifted": measure(base, HELD_OUT_SHIFTED), "in_domain": measure(base, HELD_OUT_IN_DOMAIN)}
    arm.measured.append({"round": 0, "model": str(base), **baseline})
    for round_index in range(3):  # bootstrap (score and choose), then two fine-tuning rounds
        params = ActiveLearningParams(
            project=arm.project_name,
            strategy=arm.strategy,
            finetune=round_index > 0,
            dest=dest,
            models_dir=str(models / arm.strategy),
            **FLOW_PARAMS,
        )
        result = active_learning_flow(params, settings=settings)
        arm.results.append(result)
        chosen = result.chosen_tasks
        with Catalog(arm.catalog_url) as catalog, catalog.session() as session:
            assets = dict(
                session.execute(
                    select(AnnotationTask.external_task_id, AnnotationTask.asset_id).where(
                        AnnotationTask.external_task_id.in_(chosen)
                    )
                ).all()
            )
            model_dir = (
                session.scalar(select(ModelVersion.uri).where(ModelVersion.id == result.new_model_id))
                if result.new_model_id
                else None
            )
        arm.chosen_shifted.append(sum(assets[t] in arm.shifted_assets for t in chosen))
        if model_dir:
            arm.measured.append(
                {
                    "round": round_index,
                    "model": model_dir,
                    "promoted": result.promoted,
                    "shifted": measure(model_dir, HELD_OUT_SHIFTED),
                    "in_domain": measure(model_dir, HELD_OUT_IN_DOMAIN),
                    "flow_held_out": result.metrics.get("held_out"),
                    "confidence_weights": result.metrics.get("confidence_weights"),
                }
            )
        if round_index < 2:
            arm.annotated.append(annotate(arm, client, chosen))
    with Catalog(arm.catalog_url) as catalog, catalog.session() as session:
        arm.task_count_after = int(session.scalar(select(func.count(AnnotationTask.id))) or 0)


@pytest.fixture(scope="module")
def arms(
    prefect_api: str,
    label_studio_server: LabelStudioServer,
    ls_client: LabelStudioClient,
    s3_endpoint: str,
    s3_credentials: tuple[str, str],
    base_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Arm]]:
    root = tmp_path_factory.mktemp("active-learning")
    key, secret = s3_credentials
    settings = Settings(
        data_dir=root / "data",
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id=key,
        s3_secret_access_key=secret,
        label_studio_url=label_studio_server.url,
        label_studio_token=label_studio_server.token,
        model_id=str(base_model),
        device="cpu",
    )
    bucket = f"al-{uuid.uuid4().hex[:12]}"
    make_client(settings).create_bucket(Bucket=bucket)
    out: dict[str, Arm] = {}
    suffix = uuid.uuid4().hex[:6]
    for strategy in ("uncertainty", "random"):
        url = f"sqlite:///{root / f'{strategy}.sqlite'}"
        arm = Arm(strategy, url, f"al-{strategy}-{suffix}")
        arm_settings = Settings(**{**settings.model_dump(), "database_url": url})
        arm.settings = arm_settings
        run_arm(arm, arm_settings, ls_client, bucket, base_model, root / "models")
        out[strategy] = arm
    _report(out, root / "numbers.json")
    yield out


def _report(arms: dict[str, Arm], path: Path) -> None:
    """Log the round-by-round numbers (and keep them as JSON next to the catalogs)."""
    # looked up now, not at import: Prefect's logging setup disables the loggers that existed before it ran
    log = logging.getLogger("maskloop.tests.active_learning")
    numbers = {
        strategy: {
            "chosen_shifted_per_selection": arm.chosen_shifted,
            "rounds": [{k: v for k, v in row.items() if k != "model"} for row in arm.measured],
        }
        for strategy, arm in arms.items()
    }
    path.write_text(json.dumps(numbers, indent=1, default=str))
    for strategy, arm in arms.items():
        log.info("%s: shifted items among the %d chosen, per selection: %s", strategy, BUDGET, arm.chosen_shifted)
        for row in arm.measured:
            held = row.get("flow_held_out") or {}
            log.info(
                "%s round %s: held-out shifted IoU %.3f accepted %.3f | in-domain IoU %.3f accepted %.3f | "
                "promoted %s | flow held-out IoU %s -> %s",
                strategy,
                row["round"],
                row["shifted"]["iou"],
                row["shifted"]["accepted"],
                row["in_domain"]["iou"],
                row["in_domain"]["accepted"],
                row.get("promoted", "-"),
                held.get("old", {}).get("mean_iou"),
                held.get("new", {}).get("mean_iou"),
            )
    log.info("numbers: %s", path)


def _gain(arm: Arm, domain: str) -> float:
    return arm.measured[-1][domain]["iou"] - arm.measured[0][domain]["iou"]


def test_uncertainty_selection_puts_the_shifted_items_first_random_does_not(arms: dict[str, Arm]) -> None:
    unc, rnd = arms["uncertainty"], arms["random"]
    # the two selections people corrected before the last fine-tuning: the bootstrap one (the base model's signals,
    # equal weights) and the one after round 1 (weights learnt from the first corrections)
    assert sum(unc.chosen_shifted[:2]) > sum(rnd.chosen_shifted[:2])
    assert sum(unc.chosen_shifted[:2]) > 2 * BUDGET * N_SHIFTED / (N_SHIFTED + N_IN_DOMAIN)  # above the pool's share
    for result in unc.results[1:]:  # weights learnt from the corrections, or the defaults when they say nothing
        weights = result.metrics["confidence_weights"]
        assert weights["source"].startswith(("learnt from", "default"))
        assert weights["weights"] is None or all(w >= 0 for w in weights["weights"].values())


def test_fine_tuning_on_the_corrections_raises_the_accepted_unchanged_rate_on_held_out_items(
    arms: dict[str, Arm],
) -> None:
    unc = arms["uncertainty"]
    assert len(unc.measured) == 3  # base + two fine-tuned rounds
    assert unc.measured[-1]["shifted"]["accepted"] > unc.measured[0]["shifted"]["accepted"]
    assert unc.measured[-1]["shifted"]["iou"] > unc.measured[0]["shifted"]["iou"]


def test_uncertainty_beats_random_on_the_iou_gain_at_the_same_budget(arms: dict[str, Arm]) -> None:
    unc, rnd = arms["uncertainty"], arms["random"]
    assert [len(r.chosen_tasks) for r in unc.results] == [len(r.chosen_tasks) for r in rnd.results]
    assert _gain(unc, "shifted") > _gain(rnd, "shifted")


def test_a_promoted_model_re_pre_labels_the_same_tasks_under_its_own_model_version(
    arms: dict[str, Arm], ls_client: LabelStudioClient
) -> None:
    for arm in arms.values():
        assert arm.task_count_after == arm.task_count_before == N_IN_DOMAIN + N_SHIFTED  # nothing recreated
    promoted = [(arm, r) for arm in arms.values() for r in arm.results if r.promoted]
    assert promoted, "no round promoted its model in either arm"
    arm, result = promoted[-1]
    version = result.metrics["model_version"]
    assert version.endswith("/prior") and "-al" in version
    with Catalog(arm.catalog_url) as catalog, catalog.session() as session:
        project = session.scalar(select(AnnotationTask.project_id).limit(1))
        tasks = session.scalars(select(AnnotationTask).where(AnnotationTask.project_id == project)).all()
        relabelled = {t.external_task_id for t in tasks if t.last_model_version == version}
        stored = session.scalar(select(func.count(Prediction.id)).where(Prediction.model_version == version))
    assert relabelled and stored == len(relabelled) == result.metrics["relabelled"]
    some_task = next(iter(relabelled))
    assert version in {p["model_version"] for p in ls_client.list_predictions(some_task)}
    ls_project = ls_client.get_project(int(ls_client.get_task(some_task)["project"]))
    assert ls_project["model_version"] == version


def test_label_studio_serves_the_chosen_tasks_first_and_the_review_view_lists_them(
    arms: dict[str, Arm], ls_client: LabelStudioClient
) -> None:
    for arm in arms.values():
        last = arm.results[-1]
        chosen = last.chosen_tasks
        assert len(chosen) == BUDGET
        project_id = int(ls_client.get_task(chosen[0])["project"])
        view = last.metrics["pool"]["review_view_id"]
        assert sorted(ls_client.view_task_ids(project_id, view)) == sorted(chosen)
        ls_project = ls_client.get_project(project_id)
        scores = {}
        for pred in ls_client.list_project_predictions(project_id):
            if pred["model_version"] == ls_project["model_version"] and pred.get("score") is not None:
                scores[int(pred["task"])] = float(pred["score"])
        annotated = {t for r in arm.results[:-1] for t in r.chosen_tasks}
        pool = [t for t in scores if t not in annotated]
        assert len(pool) == N_IN_DOMAIN + N_SHIFTED - len(annotated)
        lowest = sorted(pool, key=lambda t: scores[t])[:BUDGET]
        assert set(lowest) == set(chosen)  # uncertainty sampling serves these first
        nxt = ls_client.request("GET", f"/api/projects/{project_id}/next/")
        assert int(nxt["id"]) in chosen


def test_every_round_is_recorded_in_the_catalog(arms: dict[str, Arm]) -> None:
    for arm in arms.values():
        with Catalog(arm.catalog_url) as catalog, catalog.session() as session:
            rounds = session.scalars(select(ActiveLearningRound).order_by(ActiveLearningRound.number)).all()
            assert [r.number for r in rounds] == [1, 2, 3]
            assert all(r.status == "completed" and r.strategy == arm.strategy for r in rounds)
            assert "finetune" not in rounds[0].metrics and rounds[0].metrics["finetune_skipped"] == "finetune=False"
            for r in rounds[1:]:
                m = r.metrics
                assert m["train_items"] + m["held_out_items"] == m["corrected_items"] > 0
                assert m["finetune"]["steps"] == FLOW_PARAMS["steps"]
                assert r.data_version_id is not None and r.new_model_id is not None
                new = session.get(ModelVersion, r.new_model_id)
                assert new is not None and new.parent_id == rounds[0].base_model_id  # retrained from the initial model
                assert new.data_version_id == r.data_version_id and new.train_manifest
                if m["held_out_items"]:
                    for side in ("old", "new"):
                        assert 0.0 <= m["held_out"][side]["mean_iou"] <= 1.0
                        assert 0.0 <= m["held_out"][side]["accepted_rate"] <= 1.0
                    assert r.promoted == (m["held_out"]["iou_gain"] > FLOW_PARAMS["promote_margin"])
            items = session.scalars(
                select(ActiveLearningItem).where(ActiveLearningItem.round_id == rounds[-1].id)
            ).all()
            assert len(items) == N_IN_DOMAIN + N_SHIFTED - 2 * BUDGET
            assert sum(i.chosen for i in items) == BUDGET
            assert all(set(i.signals) >= {"predicted_iou", "stability", "multimask_agreement"} for i in items)
            assert session.scalar(select(func.count(AssetEmbedding.id))) >= N_IN_DOMAIN + N_SHIFTED - BUDGET
            # the harvest measured how much people corrected: the agreement rows of the annotated tasks
            assert session.scalar(select(func.count(AgreementRow.id))) > 0


@pytest.mark.parametrize("strategy", ["hybrid", "diversity"])
def test_embedding_strategies_spread_the_review_over_clusters_and_write_them_to_label_studio(
    arms: dict[str, Arm], ls_client: LabelStudioClient, strategy: str
) -> None:
    from flows.active_learning import active_learning_flow

    arm = arms["random"]
    params = ActiveLearningParams(project=arm.project_name, strategy=strategy, finetune=False, budget=4, seed=1)
    result = active_learning_flow(params, settings=arm.settings)
    chosen = result.chosen_tasks
    assert len(chosen) == 4
    with Catalog(arm.catalog_url) as catalog, catalog.session() as session:
        items = session.scalars(select(ActiveLearningItem).where(ActiveLearningItem.round_id == result.round_id)).all()
    clusters = {i.external_task_id: i.cluster for i in items}
    assert all(c is not None for c in clusters.values())
    assert len({clusters[t] for t in chosen}) == 4  # one per cluster
    project_id = int(ls_client.get_task(chosen[0])["project"])
    version = ls_client.get_project(project_id)["model_version"]
    written = {
        int(p["task"]): p.get("cluster")
        for p in ls_client.list_project_predictions(project_id)
        if p["model_version"] == version and int(p["task"]) in clusters
    }
    assert written == clusters
