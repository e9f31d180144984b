"""Harvest from a real Label Studio and versions on a real (moto) S3 server: people accept, move, delete, add and
relabel masks through the API; the agreement rows, versions, diffs and COCO exports must say exactly that."""

from __future__ import annotations

import hashlib
import io
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from model.instances import Instances
from model.masks import rle_to_mask
from storage.annotation.items import ImportItem, model_version_string
from storage.catalog import AgreementRow, Annotation, Asset, Catalog, DatasetVersion, Prediction
from storage.harvest import ProjectNotFoundError, harvest
from storage.labelstudio.annotations import iter_task_pages
from storage.labelstudio.backend import LabelStudioBackend
from storage.labelstudio.client import LabelStudioClient
from storage.labelstudio.convert import instances_to_results
from storage.labelstudio.importer import import_predictions
from storage.labelstudio.projects import ensure_project
from storage.s3 import presigned_get_url
from storage.settings import Settings
from storage.version_export import export_version, write_preview
from storage.version_reads import describe, diff_versions, list_versions
from storage.versions import create_version
from tests.support.settings_for import point_cli_at

pytestmark = pytest.mark.labelstudio

H, W = 48, 64
VERSION = model_version_string("facebook/sam2.1-hiera-tiny", "0123456789abcdef", "everything")
_names = itertools.count()


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


CAT1, DOG1 = _box(2, 22, 2, 22), _box(25, 45, 30, 60)
DOG1_MOVED = _box(25, 45, 34, 64)  # 20x26 overlap of 20x30 boxes: IoU 520 / 680
CAT2A, CAT2B, NEW2 = _box(0, 20, 0, 30), _box(25, 45, 0, 20), _box(20, 40, 40, 60)


def _put_image(s3: Any, bucket: str, key: str, seed: int) -> tuple[str, int]:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(buf, "PNG")
    body = buf.getvalue()
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    return hashlib.sha256(body).hexdigest(), len(body)


def _brush(masks: list[np.ndarray], labels: list[str], prefix: str) -> list[dict[str, Any]]:
    return instances_to_results(
        Instances(masks=np.stack(masks), labels=labels), to_name="image", brush_from="brush", id_prefix=prefix
    )


def _setup(
    catalog: Catalog,
    ls_client: LabelStudioClient,
    s3: Any,
    bucket: str,
    predictions: list[tuple[list[np.ndarray], list[str]]],
):  # noqa: ANN202
    """Assets in S3 + catalog, their predictions, imported into a fresh Label Studio project; returns (project, task ids)."""
    asset_ids = []
    with catalog.session() as session:
        for i, (masks, labels) in enumerate(predictions):
            sha, size = _put_image(s3, bucket, f"img/{i}.png", i)
            asset = Asset(
                bucket=bucket,
                key=f"img/{i}.png",
                etag=f"e{i}",
                size=size,
                media_type="image",
                width=W,
                height=H,
                sha256=sha,
                status="done",
            )
            session.add(asset)
            session.flush()
            inst = Instances(masks=np.stack(masks), labels=labels, scores=[0.9] * len(masks))
            session.add(
                Prediction(
                    asset_id=asset.id,
                    model_version=VERSION,
                    instances=inst.to_records(),
                    num_instances=len(masks),
                    score=0.9,
                )
            )
            asset_ids.append(asset.id)
    project = ensure_project(ls_client, catalog, f"harvest-{next(_names)}", "image", ["cat", "dog"])
    items = []
    with catalog.session() as session:
        for asset_id in asset_ids:
            pred = session.scalar(select(Prediction).where(Prediction.asset_id == asset_id))
            inst = Instances.from_records(pred.instances, H, W)
            items.append(
                ImportItem(
                    asset_id, presigned_get_url(s3, bucket, f"img/{asset_ids.index(asset_id)}.png"), inst, VERSION, 0.9
                )
            )
    import_predictions(ls_client, catalog, project, items)
    tasks = {t["data"]["maskloop_asset_id"]: t["id"] for t in ls_client.iter_tasks(project.external_project_id)}
    return project, [tasks[a] for a in asset_ids], asset_ids


def _agreement(catalog: Catalog) -> list[tuple]:
    with catalog.session() as session:
        rows = session.scalars(select(AgreementRow).order_by(AgreementRow.asset_id, AgreementRow.id)).all()
        return [
            (r.asset_id, r.outcome, r.pred_index, r.human_index, r.pred_label, r.human_label, round(r.iou, 4))
            for r in rows
        ]


def test_people_correct_predictions_and_versions_record_exactly_that(
    catalog: Catalog,
    ls_client: LabelStudioClient,
    settings: Settings,
    s3: Any,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    project, task_ids, assets = _setup(
        catalog,
        ls_client,
        s3,
        bucket,
        [([CAT1, DOG1], ["cat", "dog"]), ([CAT2A, CAT2B], ["cat", "cat"]), ([CAT1], ["cat"])],
    )
    # image 0: accept the cat unchanged, move the dog; image 1: relabel the first cat as dog, delete the second,
    # add a new cat; image 2: skipped.
    ls_client.create_annotation(task_ids[0], _brush([CAT1, DOG1_MOVED], ["cat", "dog"], "a"))
    ann1 = ls_client.create_annotation(task_ids[1], _brush([CAT2A, NEW2], ["dog", "cat"], "b"))
    ls_client.create_annotation(task_ids[2], [], was_cancelled=True)

    report = harvest(LabelStudioBackend(ls_client), catalog, project.name, s3=s3, page_size=2)
    assert (report.created, report.skipped, report.pages, report.invalid) == (3, 1, 2, {})
    assert _agreement(catalog) == [
        (assets[0], "accepted", 0, 0, "cat", "cat", 1.0),
        (assets[0], "modified", 1, 1, "dog", "dog", round(520 / 680, 4)),
        (assets[1], "relabelled", 0, 0, "cat", "dog", 1.0),
        (assets[1], "deleted", 1, None, "cat", None, 0.0),
        (assets[1], "added", None, 1, None, "cat", 0.0),
    ]
    with catalog.session() as session:
        statuses = sorted(a.status for a in session.scalars(select(Annotation)))
    assert statuses == ["accepted", "accepted", "skipped"]

    # incremental: a second harvest stores nothing new, and nothing was updated after the cursor
    again = harvest(LabelStudioBackend(ls_client), catalog, project.name, s3=s3)
    assert (again.created, again.updated) == (0, 0)
    assert list(iter_task_pages(ls_client, project.external_project_id, datetime.now(UTC) + timedelta(minutes=5))) == []

    dest = f"s3://{bucket}/datasets"
    first = create_version(catalog, s3, project, dest, tag="first")
    assert first.created and first.version.number == 1
    assert first.skipped == {f"s3://{bucket}/img/2.png": "skipped in Label Studio"}
    assert first.version.counts == {
        "images": 2,
        "videos": 0,
        "frames": 0,
        "instances": 4,
        "instances_per_class": {"cat": 2, "dog": 2},
    }
    assert first.version.model_versions == [VERSION]
    assert first.version.agreement["totals"] == {
        "accepted": 1,
        "modified": 1,
        "relabelled": 1,
        "deleted": 1,
        "added": 1,
    }
    noop = create_version(catalog, s3, project, dest)
    assert not noop.created and noop.version.id == first.version.id

    # the COCO export round-trips: annToMask equals the stored human masks
    from pycocotools.coco import COCO

    exported_to = export_version(catalog, s3, first.version.id, tmp_path / "export", images=True)
    coco = COCO(str(exported_to.labels))
    out_coco_text = exported_to.labels.read_text()
    with catalog.session() as session:
        stored = {}
        for ann in session.scalars(select(Annotation).where(Annotation.status == "accepted")):
            for r in ann.instances:
                stored[(ann.task_row_id, r["label"], r["rle"]["counts"])] = rle_to_mask(r["rle"])
    exported = [coco.annToMask(a).astype(bool) for a in coco.loadAnns(coco.getAnnIds())]
    assert len(exported) == 4
    for mask in exported:
        assert any(np.array_equal(mask, m) for m in stored.values())
    assert sorted(p.name for p in (tmp_path / "export" / "data").iterdir()) == sorted(
        img["file_name"] for img in coco.dataset["images"]
    )

    # COCOeval of the predictions against the version gives the agreement table's IoUs
    from pycocotools.cocoeval import COCOeval

    img_of = {img["maskloop_s3_uri"]: img["id"] for img in coco.dataset["images"]}
    cat_of = {c["name"]: c["id"] for c in coco.dataset["categories"]}
    with catalog.session() as session:
        pred0 = session.scalar(select(Prediction).where(Prediction.asset_id == assets[0]))
        dets = [
            {
                "image_id": img_of[f"s3://{bucket}/img/0.png"],
                "category_id": cat_of[r["label"]],
                "segmentation": r["rle"],
                "score": r["score"],
            }
            for r in pred0.instances
        ]
    evaluator = COCOeval(coco, coco.loadRes(dets), "segm")
    evaluator.params.imgIds = [img_of[f"s3://{bucket}/img/0.png"]]
    evaluator.evaluate()
    image_id = img_of[f"s3://{bucket}/img/0.png"]
    assert float(evaluator.ious[(image_id, cat_of["cat"])][0, 0]) == pytest.approx(1.0)
    assert float(evaluator.ious[(image_id, cat_of["dog"])][0, 0]) == pytest.approx(520 / 680)

    # change one annotation: a new version whose diff shows exactly that change
    ls_client.request(
        "PATCH",
        f"/api/annotations/{ann1['id']}/",
        json_body={"result": _brush([CAT2A, NEW2, CAT2B], ["dog", "cat", "dog"], "c")},
    )
    changed = harvest(LabelStudioBackend(ls_client), catalog, project.name, s3=s3)
    assert (changed.created, changed.updated) == (0, 1)
    second = create_version(catalog, s3, project, dest, tag="second")
    assert second.created and second.version.number == 2 and second.version.parent_id == first.version.id
    diff = diff_versions(catalog, first.version.id, second.version.id)
    assert (diff.added, diff.removed, diff.changed, diff.class_deltas) == (
        [],
        [],
        [f"s3://{bucket}/img/1.png"],
        {"dog": 1},
    )
    assert _agreement(catalog)[2:] == [
        (assets[1], "relabelled", 0, 0, "cat", "dog", 1.0),
        (assets[1], "relabelled", 1, 2, "cat", "dog", 1.0),
        (assets[1], "added", None, 1, None, "cat", 0.0),
    ]
    assert [v.number for v in list_versions(catalog, project.name)] == [1, 2]

    lines = describe(second.version)
    assert lines[0].endswith("v2 [second]") and any(
        "instances_per_class" not in line and "dog" in line for line in lines
    )
    preview = write_preview(catalog, s3, second.version.id, tmp_path / "preview.png")
    with Image.open(preview) as sheet:
        assert sheet.size[0] >= 420 and sheet.size[1] > 256
    print("\n".join(lines))
    print(f"preview: {preview}")

    # the same through the command line
    from flows.cli import main

    point_cli_at(monkeypatch, catalog.url, settings, tmp_path / "cli")
    capsys.readouterr()
    assert main(["versions", "list", "--dataset", project.name]) == 0
    assert [line.split()[2] for line in capsys.readouterr().out.splitlines()] == ["v1", "v2"]
    assert main(["versions", "diff", str(first.version.id), str(second.version.id)]) == 0
    out = capsys.readouterr().out
    assert f"changed: 1\n  s3://{bucket}/img/1.png" in out and "per-class deltas: dog +1" in out
    assert main(["versions", "show", str(second.version.id), "--preview", str(tmp_path / "cli.png")]) == 0
    assert "v2 [second]" in capsys.readouterr().out and (tmp_path / "cli.png").stat().st_size > 0
    assert (
        main(["versions", "export", str(first.version.id), "--format", "coco", "--out", str(tmp_path / "cli-export")])
        == 0
    )
    assert (tmp_path / "cli-export" / "labels.json").read_text() == out_coco_text
    assert main(["versions", "show", "999999"]) == 1


def test_bad_input_is_recorded_or_named(
    sqlite_catalog: Catalog, ls_client: LabelStudioClient, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = sqlite_catalog
    project, task_ids, assets = _setup(
        catalog, ls_client, s3, bucket, [([CAT1], ["cat"]), ([CAT1], ["cat"]), ([DOG1], ["dog"])]
    )
    bird = _brush([CAT1], ["cat"], "x")
    bird[0]["value"]["brushlabels"] = ["bird"]
    ls_client.create_annotation(task_ids[0], bird)  # a label the config does not have
    ls_client.create_annotation(task_ids[1], _brush([CAT1], ["cat"], "y"))
    s3.delete_object(Bucket=bucket, Key="img/1.png")  # asset deleted after annotation
    ls_client.create_annotation(task_ids[2], _brush([DOG1], ["dog"], "z"))

    report = harvest(LabelStudioBackend(ls_client), catalog, project.name, s3=s3)
    reasons = sorted(report.invalid.values())
    assert len(reasons) == 2
    assert "unknown label(s) ['bird']" in reasons[0] or "unknown label(s) ['bird']" in reasons[1]
    assert any(f"asset s3://{bucket}/img/1.png was deleted from S3" in r for r in reasons)

    with pytest.raises(ProjectNotFoundError, match="not in the catalog"):
        harvest(LabelStudioBackend(ls_client), catalog, "no-such-project")

    # a failed version creation leaves no version row and no S3 objects behind
    import storage.versions as versions

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("catalog went away")

    monkeypatch.setattr(versions, "_insert", boom)
    dest = f"s3://{bucket}/datasets"
    with pytest.raises(RuntimeError, match="went away"):
        create_version(catalog, s3, project, dest)
    with catalog.session() as session:
        assert session.scalars(select(DatasetVersion)).all() == []
    assert s3.list_objects_v2(Bucket=bucket, Prefix="datasets/").get("KeyCount", 0) == 0
    monkeypatch.undo()
    made = create_version(catalog, s3, project, dest)
    assert made.version.counts["instances_per_class"] == {"dog": 1}  # only the valid annotation is frozen

    # a Label Studio project that was deleted behind the catalog's back
    ls_client.request("DELETE", f"/api/projects/{project.external_project_id}/")
    with pytest.raises(ProjectNotFoundError, match="does not exist"):
        harvest(LabelStudioBackend(ls_client), catalog, project.name)
