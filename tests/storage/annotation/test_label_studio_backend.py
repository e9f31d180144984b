"""``LabelStudioBackend`` is an ``AnnotationBackend``: the protocol check, the registry's factory (which alone checks
the token, with an error naming the server and the setting), and one import → change → harvest round trip with the
review queue, all through the protocol, against the real Label Studio server."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from model.errors import MaskloopError
from model.instances import Instances
from model.masks import rle_to_mask
from storage.annotation import (
    AnnotationBackend,
    AnnotationBackendNotConfiguredError,
    ImportItem,
    UnknownBackendError,
    model_version_string,
)
from storage.annotation.registry import BACKENDS, annotation_backend
from storage.catalog import Annotation, AnnotationTask, Catalog
from storage.harvest import harvest
from storage.labelstudio.backend import LabelStudioBackend
from storage.labelstudio.client import LabelStudioClient
from storage.labelstudio.convert import instances_to_results
from storage.labelstudio.server import LabelStudioServer
from storage.settings import Settings

H, W = 48, 64
VERSION = model_version_string("facebook/sam2.1-hiera-tiny", "0123456789abcdef", "everything")
_names = itertools.count()


def _mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_label_studio_backend_satisfies_the_protocol_and_its_client_alone_does_not(
    ls_client: LabelStudioClient,
) -> None:
    backend: AnnotationBackend = LabelStudioBackend(ls_client)  # mypy checks the structure, isinstance the members
    assert isinstance(backend, AnnotationBackend)
    assert not isinstance(ls_client, AnnotationBackend)
    assert (backend.name, backend.title, backend.url) == ("label-studio", "Label Studio", ls_client.url)
    assert BACKENDS["label-studio"] == LabelStudioBackend.from_settings


def test_the_factory_refuses_a_missing_token_naming_the_server_and_the_setting() -> None:
    settings = Settings(label_studio_url="http://ls.example:8080", label_studio_token=None)
    with pytest.raises(AnnotationBackendNotConfiguredError) as caught:
        annotation_backend(settings)
    assert isinstance(caught.value, MaskloopError)
    assert "http://ls.example:8080" in str(caught.value) and "MASKLOOP_LABEL_STUDIO_TOKEN" in str(caught.value)


def test_the_registry_refuses_an_unknown_backend_listing_the_known_ones() -> None:
    with pytest.raises(UnknownBackendError, match="'cvat'.*'label-studio'"):
        annotation_backend(Settings(label_studio_token=SecretStr("t")), "cvat")


@pytest.mark.labelstudio
def test_import_change_harvest_and_review_queue_round_trip_through_the_protocol(
    label_studio_server: LabelStudioServer,
    ls_client: LabelStudioClient,
    ls_catalog: Catalog,
    make_assets: Callable[..., list[int]],
) -> None:
    settings = Settings(
        label_studio_url=label_studio_server.url, label_studio_token=SecretStr(label_studio_server.token)
    )
    with annotation_backend(settings) as backend:
        assert isinstance(backend, LabelStudioBackend) and backend.url == label_studio_server.url.rstrip("/")
        project = backend.ensure_project(ls_catalog, f"protocol-{next(_names)}", "image", ["cat", "dog"])
        assert (project.backend, project.backend_url, project.media_kind) == ("label-studio", backend.url, "image")

        # import: bulk, then idempotent
        cat = _mask(2, 22, 2, 22)
        assets = make_assets(2, width=W, height=H)
        items = [
            ImportItem(a, f"http://127.0.0.1:9/img/{a}.png", Instances(masks=cat[None], labels=["cat"]), VERSION, 0.5)
            for a in assets
        ]
        assert backend.import_predictions(ls_catalog, project, items).created == 2
        again = backend.import_predictions(ls_catalog, project, items, keep_touched=True)
        assert (again.created, again.skipped) == (0, 2)
        with ls_catalog.session() as session:
            rows = session.execute(select(AnnotationTask.asset_id, AnnotationTask.external_task_id)).tuples().all()
        tasks: dict[int, int] = dict(rows)
        assert sorted(tasks) == sorted(assets)
        assert backend.current_model_version(project) == VERSION

        # change: a person relabels and moves the first task's mask; harvest stores exactly that, once
        dog = _mask(25, 45, 30, 60)
        person = instances_to_results(Instances(masks=dog[None], labels=["dog"]), id_prefix="p")
        made = ls_client.create_annotation(tasks[assets[0]], person)
        report = harvest(backend, ls_catalog, project.name)
        assert (report.created, report.updated, report.invalid, report.unknown_tasks) == (1, 0, {}, [])
        with ls_catalog.session() as session:
            stored = session.scalars(select(Annotation)).one()
        assert stored.external_annotation_id == int(made["id"]) and stored.status == "accepted"
        assert [r["label"] for r in stored.instances] == ["dog"]
        assert np.array_equal(rle_to_mask(stored.instances[0]["rle"]), dog)
        assert stored.external_updated_at is not None
        assert (harvest(backend, ls_catalog, project.name).created, report.cursor is not None) == (0, True)

        # review queue: scores on the shown predictions, a tab with exactly the chosen tasks, its URL
        scores = {tasks[assets[0]]: 0.9, tasks[assets[1]]: 0.1}
        versions = dict.fromkeys(scores, VERSION)
        assert backend.write_scores(project, versions, scores, {tasks[assets[1]]: 3}) == 2
        shown = {int(p["task"]): p for p in ls_client.list_project_predictions(project.external_project_id)}
        assert {t: shown[t]["score"] for t in scores} == scores and shown[tasks[assets[1]]]["cluster"] == 3
        view = backend.review_view(project, [tasks[assets[1]]], "review next")
        assert ls_client.view_task_ids(project.external_project_id, view) == [tasks[assets[1]]]
        assert backend.review_view(project, list(scores), "review next") == view  # updated, not a second tab
        assert sorted(ls_client.view_task_ids(project.external_project_id, view)) == sorted(scores)
        assert backend.review_url(project, view) == (
            f"{backend.url}/projects/{project.external_project_id}/data?tab={view}"
        )
