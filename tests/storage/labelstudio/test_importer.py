"""Bulk pre-label import, idempotency, crash reconciliation and prediction refresh on a real Label Studio."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from model.instances import Instances
from model.masks import mask_to_rle
from model.tracks import Track, TrackFrame, VideoTracks
from storage.annotation.items import EncodedInstances, ImportItem, model_version_string
from storage.catalog import AnnotationTask, Catalog
from storage.labelstudio import importer
from storage.labelstudio.brush import brush_rle_to_mask
from storage.labelstudio.client import LabelStudioClient
from storage.labelstudio.importer import import_predictions
from storage.labelstudio.payload import batch_indices as _batches
from storage.labelstudio.projects import ensure_project

pytestmark = pytest.mark.labelstudio

_names = itertools.count()
V1 = model_version_string("facebook/sam2.1-hiera-tiny", "0123456789abcdef", "grid32")
V2 = model_version_string("facebook/sam2.1-hiera-tiny", "fedcba9876543210", "grid32")


def _name(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def _instances(seed: int, label: str = "cat", h: int = 480, w: int = 640) -> Instances:
    mask = np.zeros((1, h, w), bool)
    y, x = 20 + seed % 200, 30 + (seed * 7) % 300
    mask[0, y : y + 120, x : x + 160] = True
    return Instances(masks=mask, labels=[label], scores=[0.8])


def _items(asset_ids: list[int], version: str = V1) -> list[ImportItem]:
    return [
        ImportItem(a, f"http://127.0.0.1:9/img/{a}.jpg", _instances(a), version, task_score=0.01 * (a % 100))
        for a in asset_ids
    ]


def _catalog_rows(catalog: Catalog) -> list[AnnotationTask]:
    with catalog.session() as session:
        return list(session.query(AnnotationTask).all())


def test_bulk_import_of_500_tasks_with_brush_predictions_then_rerun_imports_nothing(
    ls_client: LabelStudioClient, ls_catalog: Catalog, make_assets: Callable[..., list[int]]
) -> None:
    project = ensure_project(ls_client, ls_catalog, _name("bulk"), "image", ["cat", "dog"])
    ids = make_assets(500)
    report = import_predictions(ls_client, ls_catalog, project, _items(ids), max_batch_tasks=200)
    assert (report.created, report.skipped, report.refreshed, report.batches) == (500, 0, 0, 3)
    ls_project = ls_client.get_project(project.external_project_id)
    assert ls_project["task_number"] == 500
    assert ls_project["model_version"] == V1
    rows = _catalog_rows(ls_catalog)
    assert len(rows) == 500 and {r.last_model_version for r in rows} == {V1}
    row = next(r for r in rows if r.asset_id == ids[123])
    task = ls_client.get_task(row.external_task_id)
    assert task["data"]["maskloop_asset_id"] == ids[123] and task["data"]["image"].endswith(f"/{ids[123]}.jpg")
    (pred,) = ls_client.list_predictions(row.external_task_id)
    assert pred["model_version"] == V1 and pred["score"] == pytest.approx(0.01 * (ids[123] % 100))
    (region,) = pred["result"]
    np.testing.assert_array_equal(brush_rle_to_mask(region["value"]["rle"], 480, 640), _instances(ids[123]).masks[0])
    assert region["score"] == pytest.approx(0.8)

    rerun = import_predictions(ls_client, ls_catalog, project, _items(ids), max_batch_tasks=200)
    assert (rerun.created, rerun.skipped, rerun.refreshed) == (0, 500, 0)
    assert ls_client.get_project(project.external_project_id)["task_number"] == 500


def test_crash_between_post_and_commit_is_reconciled_without_duplicates(
    ls_client: LabelStudioClient,
    ls_catalog: Catalog,
    make_assets: Callable[..., list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = ensure_project(ls_client, ls_catalog, _name("crash"), "image", ["cat"])
    ids = make_assets(30)
    real_record = importer._record_tasks
    calls = {"n": 0}

    def crash_after_first_batch(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # second batch: POSTed to Label Studio, process dies before the catalog commit
            raise KeyboardInterrupt("simulated crash")
        real_record(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(importer, "_record_tasks", crash_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        import_predictions(ls_client, ls_catalog, project, _items(ids), max_batch_tasks=10)
    monkeypatch.setattr(importer, "_record_tasks", real_record)
    assert len(_catalog_rows(ls_catalog)) == 10
    assert ls_client.get_project(project.external_project_id)["task_number"] == 20

    report = import_predictions(ls_client, ls_catalog, project, _items(ids), max_batch_tasks=10)
    assert (report.reconciled, report.created, report.skipped) == (10, 10, 20)
    assert ls_client.get_project(project.external_project_id)["task_number"] == 30
    tasks = list(ls_client.iter_tasks(project.external_project_id))
    assert sorted(t["data"]["maskloop_asset_id"] for t in tasks) == sorted(ids)
    assert {r.external_task_id for r in _catalog_rows(ls_catalog)} == {t["id"] for t in tasks}


def test_lost_response_is_retried_after_reconciling_so_nothing_is_duplicated(
    ls_client: LabelStudioClient,
    ls_catalog: Catalog,
    make_assets: Callable[..., list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = ensure_project(ls_client, ls_catalog, _name("lost"), "image", ["cat"])
    ids = make_assets(12)
    real_post = ls_client.import_tasks_counted
    calls = {"n": 0}

    def post_then_lose_response(project_id: int, body: bytes) -> tuple[list[int], int]:
        calls["n"] += 1
        posted = real_post(project_id, body)
        if calls["n"] == 1:
            raise httpx.ReadTimeout("simulated: Label Studio committed but the response was lost")
        return posted

    monkeypatch.setattr(ls_client, "import_tasks_counted", post_then_lose_response)
    report = import_predictions(ls_client, ls_catalog, project, _items(ids), max_batch_tasks=5, backoff_s=0.01)
    assert report.created + report.reconciled == 12 and report.reconciled == 5
    assert ls_client.get_project(project.external_project_id)["task_number"] == 12
    assert len(_catalog_rows(ls_catalog)) == 12


def test_tasks_that_label_studio_created_without_their_prediction_get_it_added(
    ls_client: LabelStudioClient,
    ls_catalog: Catalog,
    make_assets: Callable[..., list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Label Studio on SQLite retries an import that met 'database is locked' after the first try took the
    predictions out of the tasks, and creates them bare (seen in the scale-out test with two workers). Simulated
    here by sending the first batch without predictions, as the retry does."""
    project = ensure_project(ls_client, ls_catalog, _name("bare"), "image", ["cat"])
    ids = make_assets(6)
    real_post = ls_client.import_tasks_counted
    calls = {"n": 0}

    def first_batch_loses_its_predictions(project_id: int, body: bytes) -> tuple[list[int], int]:
        calls["n"] += 1
        if calls["n"] == 1:
            body = json.dumps([{"data": t["data"]} for t in json.loads(body)]).encode()
        return real_post(project_id, body)

    monkeypatch.setattr(ls_client, "import_tasks_counted", first_batch_loses_its_predictions)
    report = import_predictions(ls_client, ls_catalog, project, _items(ids), max_batch_tasks=4)
    assert (report.created, report.restored) == (6, 4)
    tasks = list(ls_client.iter_tasks(project.external_project_id, all_fields=True))
    assert len(tasks) == 6 and all(len(t["predictions"]) == 1 for t in tasks)
    assert import_predictions(ls_client, ls_catalog, project, _items(ids)).skipped == 6, "nothing twice"


def test_new_model_version_adds_predictions_and_keeps_tasks_and_human_annotations(
    ls_client: LabelStudioClient, ls_catalog: Catalog, make_assets: Callable[..., list[int]]
) -> None:
    project = ensure_project(ls_client, ls_catalog, _name("refresh"), "image", ["cat", "dog"])
    ids = make_assets(3)
    import_predictions(ls_client, ls_catalog, project, _items(ids, V1))
    before = {r.asset_id: r.external_task_id for r in _catalog_rows(ls_catalog)}
    human = ls_client.create_annotation(before[ids[0]], [{**_fixed_result("dog"), "id": "human1"}])

    report = import_predictions(ls_client, ls_catalog, project, _items(ids, V2))
    assert (report.created, report.refreshed, report.skipped) == (0, 3, 0)
    after = {r.asset_id: r.external_task_id for r in _catalog_rows(ls_catalog)}
    assert after == before
    assert ls_client.get_project(project.external_project_id)["task_number"] == 3
    task = ls_client.get_task(before[ids[0]])
    assert [a["id"] for a in task["annotations"]] == [human["id"]]
    assert task["annotations"][0]["result"][0]["value"]["brushlabels"] == ["dog"]
    assert sorted(p["model_version"] for p in ls_client.list_predictions(before[ids[0]])) == sorted([V1, V2])
    assert {r.last_model_version for r in _catalog_rows(ls_catalog)} == {V2}
    assert ls_client.get_project(project.external_project_id)["model_version"] == V2
    assert import_predictions(ls_client, ls_catalog, project, _items(ids, V2)).skipped == 3


def _fixed_result(label: str) -> dict:
    from storage.labelstudio.convert import instances_to_results

    return instances_to_results(_instances(5, label))[0]


def test_video_tracks_import_as_videorectangle_predictions(
    ls_client: LabelStudioClient, ls_catalog: Catalog, make_assets: Callable[..., list[int]]
) -> None:
    # a 24 fps clip in a 12 fps project: keyframes land where Label Studio draws their time, not at their index
    project = ensure_project(ls_client, ls_catalog, _name("video"), "video", ["person", "dog"], framerate=12)
    (asset,) = make_assets(1, media_type="video", width=64, height=48)
    mask = np.zeros((48, 64), bool)
    mask[10:20, 5:25] = True
    frames = [TrackFrame(i, i / 24, mask_to_rle(mask), (5.0, 10.0, 25.0, 20.0), 0.9, 1.0) for i in (0, 4, 8)]
    tracks = VideoTracks(48, 64, 24.0, 9, [0, 4, 8], [Track(3, "person", frames)], model_id="sam2")
    report = import_predictions(ls_client, ls_catalog, project, [(asset, "http://127.0.0.1:9/v.mp4", tracks, V1, 0.3)])
    assert report.created == 1
    (row,) = _catalog_rows(ls_catalog)
    task = ls_client.get_task(row.external_task_id)
    assert task["data"]["video"] == "http://127.0.0.1:9/v.mp4"
    (pred,) = ls_client.list_predictions(row.external_task_id)
    (region,) = pred["result"]
    assert (
        region["type"] == "videorectangle" and region["from_name"] == "box" and region["value"]["labels"] == ["person"]
    )
    assert [k["frame"] for k in region["value"]["sequence"]] == [1, 3, 5]  # t = 0, 1/6, 1/3 s at 12 fps
    assert region["value"]["sequence"][0]["x"] == pytest.approx(100 * 5 / 64)


def test_unknown_label_is_rejected_before_anything_is_sent(
    ls_client: LabelStudioClient, ls_catalog: Catalog, make_assets: Callable[..., list[int]]
) -> None:
    project = ensure_project(ls_client, ls_catalog, _name("invalid"), "image", ["cat"])
    ids = make_assets(3)
    items = _items(ids[:2]) + [ImportItem(ids[2], "http://127.0.0.1:9/x.jpg", _instances(1, "zebra"), V1)]
    with pytest.raises(ValueError, match=f"asset {ids[2]} .*unknown label.*zebra"):
        import_predictions(ls_client, ls_catalog, project, items)
    wrong_tag = [{**_fixed_result("cat"), "from_name": "mask"}]
    with pytest.raises(ValueError, match="from_name 'mask'"):
        import_predictions(ls_client, ls_catalog, project, [(ids[0], "http://127.0.0.1:9/x.jpg", wrong_tag, V1, None)])
    assert ls_client.get_project(project.external_project_id)["task_number"] == 0
    assert _catalog_rows(ls_catalog) == []


@pytest.mark.parametrize(
    ("sizes", "max_bytes", "max_tasks", "expected"),
    [
        ([], 100, 10, []),
        ([10, 10, 10], 100, 10, [[0, 1, 2]]),
        ([40, 40, 40], 100, 10, [[0, 1], [2]]),
        ([5] * 5, 1000, 2, [[0, 1], [2, 3], [4]]),
    ],
)
def test_batches_are_bounded_by_payload_bytes_and_task_count(
    sizes: list[int], max_bytes: int, max_tasks: int, expected: list[list[int]]
) -> None:
    assert _batches([b"x" * n for n in sizes], max_bytes, max_tasks) == expected


def test_a_single_task_over_the_payload_limit_is_rejected() -> None:
    with pytest.raises(ValueError, match="over the batch limit"):
        _batches([b"x" * 200], 100, 10)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1, "", [], "v"), "media_url"),
        ((1, "u", [], ""), "model_version"),
        ((1, "u", [], "v", None, -2), "frame_index"),
    ],
)
def test_import_item_validates_fields(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImportItem(*args)


def test_duplicate_items_in_one_call_are_rejected(
    ls_client: LabelStudioClient, ls_catalog: Catalog, make_assets: Callable[..., list[int]]
) -> None:
    project = ensure_project(ls_client, ls_catalog, _name("dupe"), "image", ["cat"])
    (a,) = make_assets(1)
    with pytest.raises(ValueError, match="more than once"):
        import_predictions(ls_client, ls_catalog, project, _items([a, a]))


def test_encoded_instances_land_in_label_studio_with_the_prediction_their_decoded_instances_get(
    ls_client: LabelStudioClient, ls_catalog: Catalog, make_assets: Callable[..., list[int]]
) -> None:
    project = ensure_project(ls_client, ls_catalog, _name("encoded"), "image", ["cat"], rectangles=True)
    decoded, encoded = make_assets(2)
    records = _instances(decoded).to_records()
    items = [
        ImportItem(decoded, "http://127.0.0.1:9/a.jpg", Instances.from_records(records, 480, 640), V1, 0.5),
        ImportItem(encoded, "http://127.0.0.1:9/b.jpg", EncodedInstances(records, 480, 640), V1, 0.5),
    ]
    assert import_predictions(ls_client, ls_catalog, project, items).created == 2
    tasks = {r.asset_id: r.external_task_id for r in _catalog_rows(ls_catalog) if r.project_id == project.id}
    (from_decoded,), (from_encoded,) = (ls_client.list_predictions(tasks[a]) for a in (decoded, encoded))
    assert from_encoded["result"] == from_decoded["result"]
    assert {r["type"] for r in from_encoded["result"]} == {"brushlabels", "rectanglelabels"}
    brush = next(r for r in from_encoded["result"] if r["type"] == "brushlabels")
    np.testing.assert_array_equal(brush_rle_to_mask(brush["value"]["rle"], 480, 640), _instances(decoded).masks[0])


def test_concurrent_imports_into_one_project_create_each_task_once_and_patch_the_version_once(
    ls_client: LabelStudioClient,
    ls_catalog: Catalog,
    make_assets: Callable[..., list[int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two batches imported at the same time (the flow overlaps its imports): the project lock keeps one import's
    posted-but-unrecorded tasks from being reconciled by the other; the model version is PATCHed once, not per batch."""
    from concurrent.futures import ThreadPoolExecutor

    project = ensure_project(ls_client, ls_catalog, _name("overlap"), "image", ["cat"])
    patches: list[dict[str, object]] = []
    real_update = ls_client.update_project
    monkeypatch.setattr(ls_client, "update_project", lambda pid, **f: patches.append(f) or real_update(pid, **f))
    ids = make_assets(160)
    batches = [ids[k * 40 : k * 40 + 40] for k in range(4)]
    with ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(lambda ids: import_predictions(ls_client, ls_catalog, project, _items(ids)), batches))
    assert sum(r.created for r in reports) == 160 and sum(r.reconciled for r in reports) == 0
    tasks = list(ls_client.iter_tasks(project.external_project_id))
    assert sorted(t["data"][importer.ASSET_KEY] for t in tasks) == sorted(ids)
    assert len({r.external_task_id for r in _catalog_rows(ls_catalog)}) == len(_catalog_rows(ls_catalog))
    assert [p for p in patches if "model_version" in p] == [{"model_version": V1}]
    again = import_predictions(ls_client, ls_catalog, project, _items(batches[0]))
    assert (again.created, again.skipped) == (0, 40)
    assert len([p for p in patches if "model_version" in p]) == 1
