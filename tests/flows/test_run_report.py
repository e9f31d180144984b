"""The run report and the quiet terminal, against real servers (moto S3, Label Studio, Prefect's harness) and a tiny
real SAM 2: `runs show N --report` writes a self-contained HTML page that renders with its pictures in headless
Chromium; a `prelabel` over bad media on a terminal prints a few lines, every failure named by its S3 URI."""

from __future__ import annotations

import io
import os
import pty
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storage.run_report import RunSummary, markdown
from storage.settings import Settings
from tests.flows.test_prelabel import LOOSE, _spawn_prelabel
from tests.flows.test_prelabel_jobs import _cli, _env
from tests.support.browser import ARTIFACTS, launch_chromium


@pytest.mark.parametrize(
    ("failures", "per_class", "expected"),
    [
        ([], {}, ["| assets | 0 of 0 pre-labelled, 0 failed |"]),
        (
            [("s3://b/k|1.jpg", "fetch", "permanent", "bad | worse")],
            {"cat": 3},
            ["| cat | 3 |", "| s3://b/k|1.jpg | fetch | permanent | bad / worse |"],
        ),
    ],
)
def test_markdown_summary_has_counts_classes_and_failures(
    failures: list[tuple[str, str, str, str]], per_class: dict[str, int], expected: list[str]
) -> None:
    from storage.run_report import FailureRow

    summary = RunSummary(1, "prelabel", "completed", None, None, "s3://b/", "m@1/everything", 2, {}, {})
    summary.failures = [FailureRow(*f) for f in failures]
    summary.per_class = per_class
    text = markdown(summary)
    assert text.startswith("# prelabel run 1\n")
    for line in expected:
        assert line in text, text


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)  # the catalog is not what is tested
def test_report_renders_counts_failures_and_pictures_in_chromium(
    prefect_api: str,
    flow_settings: Settings,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright

    from flows.prelabel import prelabel_flow
    from storage.params import PrelabelParams

    keys = fill_bucket(images=3, videos=1, broken=1)
    params = PrelabelParams(
        source=f"s3://{bucket}/in/",
        project=f"rep-{bucket[-8:]}",
        batch_size=2,
        strategy_params=LOOSE,
        video_max_frames=4,
    )
    result = prelabel_flow(params, settings=flow_settings)
    assert (result.count("done"), result.count("failed")) == (4, 1) and result.count("instances") > 0
    _env(monkeypatch, flow_settings, str(flow_settings.s3_endpoint_url))
    out = _cli(capsys, "runs", "show", str(result.run_id), "--report", str(tmp_path / "report.html"))
    assert f"report: {tmp_path / 'report.html'}" in out
    page = (tmp_path / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4, "3 images and 1 video strip, inlined"
    assert 'src="http' not in page and "<script" not in page, "the report must be self-contained"
    assert f"s3://{bucket}/{keys['broken'][0]}" in page and "permanent" in page
    assert "fetch" in page and "model" in page and "assets/s" in page

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "run_report.png"
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            view = browser.new_page(viewport={"width": 1200, "height": 900})
            view.goto((tmp_path / "report.html").as_uri())
            loaded = view.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
            bars = view.evaluate("document.querySelectorAll('svg rect').length")
            sheet = view.locator(".sheet").screenshot()
            view.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert loaded == [True] * 4, f"pictures that did not render: {loaded}"
    assert bars == 10, "the score histogram has its 10 bins"
    pixels = np.asarray(Image.open(io.BytesIO(sheet)).convert("RGB"), np.int16)
    reds = (pixels[..., 0] > 150) & (pixels[..., 1] < 110) & (pixels[..., 2] < 150)  # the first mask colour
    assert reds.mean() > 0.001, f"no mask overlay visible on the contact sheet (screenshot: {shot})"


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)  # the catalog is not what is tested
def test_prelabel_on_a_terminal_is_quiet_and_names_every_failure_by_its_s3_uri(
    prefect_api: str,
    flow_settings: Settings,
    s3,  # noqa: ANN001
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
) -> None:
    keys = fill_bucket(images=4, videos=1, broken=1)
    bad = {"in/empty.jpg": b"", "in/page.png": b"<!DOCTYPE html><html></html>", "in/broken.mp4": b"\x00" * 64}
    for key, body in bad.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    s3.put_object(Bucket=bucket, Key="in/readme.txt", Body=b"not media")
    master, slave = pty.openpty()
    proc = _spawn_prelabel(flow_settings, prefect_api, f"s3://{bucket}/in/", f"tty-{bucket[-8:]}", stdout=slave)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(60)
    os.close(master)
    text = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    lines = [line for line in re.split(r"[\n\r]", text) if line.strip()]
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "prelabel_terminal.txt").write_text(text)  # what a person saw
    assert proc.returncode == 0, text[-3000:]
    assert text.count("\n") < 40, f"{text.count(chr(10))} lines on the terminal:\n{text}"
    assert "Traceback" not in text and "sharded" not in text, text
    assert re.search(r"run \d+ \(job \d+\): 5/9 assets pre-labelled, 4 failed", text), text
    for key in [keys["broken"][0], *bad]:
        assert any(f"s3://{bucket}/{key}" in line for line in lines), f"no line names s3://{bucket}/{key}:\n{text}"
    assert "assets," in text and "img/s" in text, "no progress line"
