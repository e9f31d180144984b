"""Headless Chromium opens a pre-labelled task: the brush region is listed and actually drawn over the image.

Uses Debian's ``/usr/bin/chromium`` (``scripts/install_label_studio.sh`` installs it) driven by the PyPI
``playwright`` package; the screenshot goes to ``test-artifacts/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.instances import Instances
from storage.catalog import AnnotationTask, Catalog
from storage.labelstudio.client import LabelStudioClient
from storage.labelstudio.importer import import_predictions
from storage.labelstudio.projects import ensure_project
from storage.labelstudio.server import LabelStudioServer
from tests.support.browser import ARTIFACTS, launch_chromium, logged_in_page

pytestmark = [pytest.mark.browser, pytest.mark.labelstudio]

GREY = 128
# The mask covers the middle half of the image in each direction; Label Studio draws it ~5 % larger (centred).
EXPECTED_BOX = (0.25, 0.25, 0.75, 0.75)


def _rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(np.int16)


def _brush_pixels(rgb: np.ndarray) -> np.ndarray:
    """Pixels clearly tinted by the first class's (red, ``#f23c3c``) brush colour over the grey image."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (r - g > 40) & (r - b > 40)


def _grey_pixels(rgb: np.ndarray) -> np.ndarray:
    return (np.abs(rgb - GREY) <= 6).all(axis=-1)


def _box(pixels: np.ndarray, min_run: int = 100) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the rows/columns holding at least ``min_run`` pixels (ignores thin UI accents), or None."""
    rows = np.flatnonzero(pixels.sum(axis=1) >= min_run)
    cols = np.flatnonzero(pixels.sum(axis=0) >= min_run)
    if rows.size == 0 or cols.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _brush_box_in_image(png: bytes) -> tuple[float, float, float, float] | None:
    """Where the drawn brush area lies inside the drawn image, as fractions of the image box (None: not drawn)."""
    rgb = _rgb(png)
    brush = _brush_pixels(rgb)
    image_box, brush_box = _box(brush | _grey_pixels(rgb)), _box(brush)
    if image_box is None or brush_box is None:
        return None
    (ix0, iy0, ix1, iy1), (bx0, by0, bx1, by1) = image_box, brush_box
    w, h = ix1 - ix0, iy1 - iy0
    return (bx0 - ix0) / w, (by0 - iy0) / h, (bx1 - ix0) / w, (by1 - iy0) / h


def _drawn_in_middle(png: bytes) -> bool:
    box = _brush_box_in_image(png)
    return box is not None and bool(np.allclose(box, EXPECTED_BOX, atol=0.03))


def test_prelabelled_brush_region_is_listed_and_rendered_in_the_editor(
    label_studio_server: LabelStudioServer,
    ls_client: LabelStudioClient,
    ls_catalog: Catalog,
    make_assets: Callable[..., list[int]],
    cors_file_server: tuple[str, Path],
) -> None:
    from playwright.sync_api import expect, sync_playwright

    base_url, served = cors_file_server
    Image.new("RGB", (640, 480), (GREY, GREY, GREY)).save(served / "grey.png")
    project = ensure_project(ls_client, ls_catalog, "browser-check", "image", ["cat", "dog"])
    (asset,) = make_assets(1)
    mask = np.zeros((1, 480, 640), bool)
    mask[0, 120:360, 160:480] = True  # the middle half of the image in each direction
    version = "sam2@test/grid"
    import_predictions(
        ls_client,
        ls_catalog,
        project,
        [(asset, f"{base_url}/grey.png", Instances(masks=mask, labels=["cat"], scores=[0.9]), version, 0.2)],
    )
    with ls_catalog.session() as session:
        task_id = session.query(AnnotationTask).one().external_task_id
    stored = ls_client.list_predictions(task_id)
    assert [(p["model_version"], [r["type"] for r in p["result"]]) for p in stored] == [(version, ["brushlabels"])]

    creds = label_studio_server.credentials
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "label_studio_brush_prediction.png"
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page, errors = logged_in_page(browser, label_studio_server.url, creds.username, creds.password)
            # no annotation yet: the editor pre-fills a draft from the prediction of the project's model_version
            page.goto(f"{label_studio_server.url}/projects/{project.external_project_id}/data?task={task_id}")
            try:
                expect(page.locator(".lsf-outliner-item")).to_have_count(1, timeout=90_000)
            except AssertionError as exc:
                shot.write_bytes(page.screenshot())
                task = ls_client.get_task(task_id)
                raise AssertionError(
                    f"no region listed in the editor (see {shot}); task annotations={task.get('annotations')!r} "
                    f"drafts={task.get('drafts')!r}; page errors={errors[-5:]}"
                ) from exc
            png = page.screenshot()
            deadline = time.monotonic() + 30
            while not _drawn_in_middle(png) and time.monotonic() < deadline:  # image, mask or layout still settling
                page.wait_for_timeout(500)
                png = page.screenshot()
            shot.write_bytes(png)
        finally:
            browser.close()
    # the grey image is drawn and the red mask covers its middle half in each direction: drawn, not only listed
    box = _brush_box_in_image(png)
    assert box is not None, f"image or brush region not rendered; see {shot}"
    assert _drawn_in_middle(png), f"brush drawn at {box} of the image, expected its middle; see {shot}"
