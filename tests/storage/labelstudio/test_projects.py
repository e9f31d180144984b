"""Label Studio projects on a real server: created from the class list, adopted after a crash, updated in place."""

from __future__ import annotations

import itertools

import pytest

from storage.catalog import Catalog
from storage.labelstudio.client import LabelStudioClient
from storage.labelstudio.projects import ensure_project

pytestmark = pytest.mark.labelstudio

_names = itertools.count()


def _name(prefix: str) -> str:
    return f"project-{prefix}-{next(_names)}"


def test_ensure_project_creates_one_project_from_the_class_list_with_uncertainty_sampling(
    ls_client: LabelStudioClient, ls_catalog: Catalog
) -> None:
    name = _name("create")
    row = ensure_project(ls_client, ls_catalog, name, "image", ["cat", "dog"], rectangles=True)
    again = ensure_project(ls_client, ls_catalog, name, "image", ["cat", "dog"], rectangles=True)
    assert again.id == row.id and again.external_project_id == row.external_project_id
    assert len(ls_client.list_projects(title=name)) == 1
    project = ls_client.get_project(row.external_project_id)
    assert project["sampling"] == "Uncertainty sampling"
    assert project["show_collab_predictions"] is True
    assert 'BrushLabels name="brush"' in project["label_config"] and 'value="dog"' in project["label_config"]
    assert 'RectangleLabels name="rect"' in project["label_config"]
    grown = ensure_project(ls_client, ls_catalog, name, "image", ["cat", "dog", "bird"], rectangles=True)
    assert grown.classes == ["cat", "dog", "bird"]
    assert 'value="bird"' in ls_client.get_project(row.external_project_id)["label_config"]


def test_ensure_project_adopts_a_label_studio_project_the_catalog_lost(
    ls_client: LabelStudioClient, ls_catalog: Catalog
) -> None:
    name = _name("adopt")
    created = ls_client.create_project(name, "<View><Image name='image' value='$image'/></View>")
    row = ensure_project(ls_client, ls_catalog, name, "image", ["cat"])
    assert row.external_project_id == created["id"]
    assert len(ls_client.list_projects(title=name)) == 1
