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
from storage.catalog import Catalog, LabelStudioTask
from storage.labelstudio.client import LabelStudioClient
from storage.labelstudio.importer import ensure_project, import_predictions
from storage.labelstudio.server import REPO_ROOT, LabelStudioServer

pytestmark = [pytest.mark.browser, pytest.mark.labelstudio]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "test-artifacts"
GREY = 128


def _brush_pixels(png: bytes) -> int:
    """Pixels clearly tinted by the first class's (red) brush colour over the grey image."""
    rgb = np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((r - g > 40) & (r - b > 40)).sum())


def _grey_pixels(png: bytes) -> int:
    rgb = np.asarray(Image.open(BytesIO(png)).convert("RGB")).astype(np.int16)
    return int((np.abs(rgb - GREY) <= 6).all(axis=-1).sum())


def test_prelabelled_brush_region_is_listed_and_rendered_in_the_editor(
    label_studio_server: LabelStudioServer,
    ls_client: LabelStudioClient,
    ls_catalog: Catalog,
    make_assets: Callable[..., list[int]],
    cors_file_server: tuple[str, Path],
) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert CHROMIUM.exists(), "Debian chromium is missing: run scripts/install_label_studio.sh (apt-get install -y chromium)"
    base_url, served = cors_file_server
    Image.new("RGB", (640, 480), (GREY, GREY, GREY)).save(served / "grey.png")
    project = ensure_project(ls_client, ls_catalog, "browser-check", "image", ["cat", "dog"])
    (asset,) = make_assets(1)
    mask = np.zeros((1, 480, 640), bool)
    mask[120:360, 160:480] = True
    version = "sam2@test/grid"
    import_predictions(ls_client, ls_catalog, project, [(asset, f"{base_url}/grey.png", Instances(masks=mask, labels=["cat"], scores=[0.9]), version, 0.2)])
    with ls_catalog.session() as session:
        task_id = session.query(LabelStudioTask).one().ls_task_id

    creds = label_studio_server.credentials
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "label_studio_brush_prediction.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            console: list[str] = []
            page.on("console", lambda msg: console.append(msg.text[:300]))
            page.goto(f"{label_studio_server.url}/user/login/")
            page.fill("input[name=email]", creds.username)
            page.fill("input[name=password]", creds.password)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/user/login" not in url, timeout=60_000)
            task_url = f"{label_studio_server.url}/projects/{project.ls_project_id}/data?task={task_id}"
            page.goto(task_url)
            try:  # normally the editor pre-fills a draft from the prediction of the project's model_version
                expect(page.locator(".lsf-outliner-item")).to_have_count(1, timeout=45_000)
            except AssertionError:
                # On a loaded machine the data manager can replace its task list while the editor initialises
                # (mobx "no longer part of a state tree") and the pre-fill is lost: open the prediction itself.
                page.get_by_text(version, exact=True).first.click()
            try:
                expect(page.locator(".lsf-outliner-item")).to_have_count(1, timeout=30_000)
            except AssertionError:
                shot.write_bytes(page.screenshot())
                task = ls_client.request("GET", f"/api/tasks/{task_id}/", params={"project": project.ls_project_id})
                raise AssertionError(
                    f"no region listed; project model_version={ls_client.get_project(project.ls_project_id)['model_version']!r}, "
                    f"task predictions={[p['model_version'] for p in task.get('predictions', [])]}, console={console[-15:]}"
                ) from None
            png = page.screenshot()
            deadline = time.monotonic() + 30
            while (_brush_pixels(png) < 5000 or _grey_pixels(png) < 5000) and time.monotonic() < deadline:
                page.wait_for_timeout(500)
                png = page.screenshot()
            shot.write_bytes(png)
        finally:
            browser.close()
    # the image loaded (grey visible) and the mask is drawn on it (red-tinted area), not only listed
    assert _grey_pixels(png) >= 5000, f"image not rendered; see {shot}"
    assert _brush_pixels(png) >= 5000, f"brush region not rendered; see {shot}"
