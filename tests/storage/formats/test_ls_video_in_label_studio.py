"""Keyframes land at the right time in the real Label Studio, whatever the clip's frame rate.

Real H.264 clips (constant 8, 25, 29.97 and 60 fps, and a variable-rate one; some sampled with ``--video-every`` /
``--video-fps``) show one red box moving at constant speed. They are tracked (a colour-threshold stand-in for SAM 2,
fed by the real decoder), converted for one 25 fps project, imported into the real Label Studio and read back through
its API. At the presentation time of every decoded frame up to the last tracked one -- sampled or not -- the box Label
Studio interpolates (linear between keyframes on its frame axis, as ``VideoRectangleRegion.getShape`` does) must match
the box in that frame.
One clip is also opened in headless Chromium at a mid-clip frame (screenshot in ``test-artifacts/``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.instances import Instances, Prompt
from model.masks import masks_to_boxes
from model.tracker import track_video
from model.tracks import VideoTracks
from model.video import iter_frames, probe_video, write_video
from model.video_model import ObjectFrame
from storage.formats.ls_video import to_ls_video_results
from storage.labelstudio.client import LabelStudioClient
from storage.labelstudio.config import LabelConfig, video_label_config

pytestmark = pytest.mark.labelstudio

H, W = 144, 240
BOX_W, BOX_H = 64, 48
SPEED = (40.0, 16.0)  # pixels per second: half a 25 fps project frame moves the box 0.8 px
PROJECT_FPS = 25.0
RED = (230, 40, 40)


def _box_at(time_s: float) -> tuple[int, int, int, int]:
    x, y = int(round(8 + SPEED[0] * time_s)), int(round(12 + SPEED[1] * time_s))
    return x, y, x + BOX_W, y + BOX_H


def _render(times: Sequence[float], colour: tuple[int, int, int] = RED) -> list[np.ndarray]:
    frames = []
    for t in times:
        rgb = np.full((H, W, 3), 40, np.uint8)
        x1, y1, x2, y2 = _box_at(t)
        rgb[y1:y2, x1:x2] = colour
        frames.append(rgb)
    return frames


def _red(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., c].astype(np.int16) for c in range(3))
    return (r > 140) & (g < 110) & (b < 110)


def _green(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., c].astype(np.int16) for c in range(3))
    return (g > 140) & (r < 110) & (b < 110)


class _ColourSession:
    """Stands in for SAM 2: the prompted object is wherever the red pixels of the current frame are."""

    def __init__(self) -> None:
        self.rgb: np.ndarray | None = None
        self.objects: set[int] = set()

    def _out(self) -> ObjectFrame:
        assert self.rgb is not None
        return ObjectFrame(mask=_red(self.rgb), score=1.0, presence=1.0)

    def step(self, rgb: np.ndarray) -> Mapping[int, ObjectFrame]:
        self.rgb = rgb
        return {i: self._out() for i in self.objects}

    def prompt(self, masks: dict[int, np.ndarray]) -> Mapping[int, ObjectFrame]:
        self.objects |= set(masks)
        return {i: self._out() for i in masks}


@dataclass
class _ColourModel:
    model_id: str = "colour"

    def new_session(self, height: int, width: int, prune: bool = True) -> _ColourSession:
        return _ColourSession()


def _propose(rgb: np.ndarray, frame_index: int) -> Instances:
    mask = _red(rgb)[None]
    return Instances(masks=mask, labels=["box"], scores=[1.0], prompts=[Prompt("mask")])


@dataclass(frozen=True)
class Clip:
    name: str
    fps: Any  # what the encoder is given (Fraction for 29.97)
    times: list[float]
    every: int = 1
    target_fps: float | None = None
    vfr: bool = False


def _cfr(name: str, fps: Any, seconds: float, **kw: Any) -> Clip:
    n = int(round(seconds * float(fps)))
    return Clip(name, fps, [i / float(fps) for i in range(n)], **kw)


def _vfr_times(seconds: float) -> list[float]:
    gaps = [1 / 30, 1 / 30, 1 / 10, 1 / 60, 1 / 15, 1 / 24, 1 / 60, 1 / 12]  # ms-exact after rounding below
    times, t, i = [], 0.0, 0
    while t < seconds:
        times.append(round(t, 3))
        t += gaps[i % len(gaps)]
        i += 1
    return times


CLIPS = [
    _cfr("8fps", 8, 2.0),
    _cfr("25fps", 25, 2.0),
    _cfr("29.97fps-every-2", Fraction(30000, 1001), 2.0, every=2),
    _cfr("60fps-at-10fps", 60, 2.0, target_fps=10.0),
    Clip("vfr", 30, _vfr_times(2.0), vfr=True),
]


def _tracked(tmp_path: Path, clip: Clip) -> tuple[Path, VideoTracks]:
    path = write_video(
        tmp_path / f"{clip.name}.mp4", _render(clip.times), fps=clip.fps, times_s=clip.times if clip.vfr else None
    )
    tracks = track_video(
        _ColourModel(), path, "colour", proposer=_propose, every=clip.every, target_fps=clip.target_fps
    )
    assert len(tracks.tracks) == 1 and len(tracks.tracks[0].frames) == len(tracks.sampled_frames)
    return path, tracks


def ls_box_at(sequence: Sequence[Mapping[str, Any]], frame: int) -> tuple[float, float, float, float] | None:
    """The box (percent xyxy) Label Studio draws on ``frame``: ``VideoRectangleRegion.getShape`` (exact keyframe,
    else linear between the neighbouring keyframes, else the last one) within the region's lifespan (a keyframe
    with ``enabled`` false ends it)."""
    keys = sorted(sequence, key=lambda k: k["frame"])
    prev = next_ = None
    for key in keys:
        if key["frame"] == frame:
            prev = next_ = key
            break
        if key["frame"] > frame:
            next_ = key
            break
        prev = key
    if prev is None or (prev["frame"] != frame and not prev["enabled"]):
        return None
    if next_ is None or next_ is prev:
        shape = {p: prev[p] for p in ("x", "y", "width", "height")}
    else:
        r = (frame - prev["frame"]) / (next_["frame"] - prev["frame"])
        shape = {p: prev[p] + (next_[p] - prev[p]) * r for p in ("x", "y", "width", "height")}
    return shape["x"], shape["y"], shape["x"] + shape["width"], shape["y"] + shape["height"]


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.fixture(scope="module")
def project(ls_client: LabelStudioClient) -> tuple[int, LabelConfig]:
    xml = video_label_config(["box"], framerate=PROJECT_FPS)
    created = ls_client.create_project(f"video-time-{uuid.uuid4().hex[:8]}", xml)
    config = LabelConfig.parse(xml)
    assert config.framerates == {"video": PROJECT_FPS}
    return int(created["id"]), config


def _import(ls_client: LabelStudioClient, project: tuple[int, LabelConfig], url: str, tracks: VideoTracks) -> int:
    project_id, config = project
    results = to_ls_video_results(tracks, framerate=config.framerates["video"])
    config.validate_results(results)
    (task_id,) = ls_client.import_tasks(
        project_id, [{"data": {"video": url}, "predictions": [{"model_version": "colour", "result": results}]}]
    )
    return task_id


@pytest.mark.parametrize("clip", CLIPS, ids=[c.name for c in CLIPS])
def test_box_label_studio_interpolates_at_each_frame_time_matches_the_box_in_that_frame(
    ls_client: LabelStudioClient, project: tuple[int, LabelConfig], tmp_path: Path, clip: Clip
) -> None:
    path, tracks = _tracked(tmp_path, clip)
    assert probe_video(path).variable_frame_rate == clip.vfr
    task_id = _import(ls_client, project, f"http://127.0.0.1:9/{clip.name}.mp4", tracks)
    (prediction,) = ls_client.list_predictions(task_id)
    (region,) = prediction["result"]
    sequence = region["value"]["sequence"]
    assert len(sequence) >= 2
    last_tracked = tracks.tracks[0].frames[-1].time_s  # after it (sampling's tail) Label Studio holds the last box
    checked = 0
    for frame in iter_frames(path):  # every decoded frame up to the last tracked one, sampled or not
        if frame.time_s > last_tracked:
            continue
        truth = masks_to_boxes(_red(frame.rgb)[None])[0]
        ls_frame = int(np.floor(frame.time_s * PROJECT_FPS + 0.5)) + 1  # the project frame showing this time
        drawn = ls_box_at(sequence, ls_frame)
        assert drawn is not None, f"{clip.name}: no box on project frame {ls_frame} ({frame.time_s:.3f} s)"
        pixels = (drawn[0] * W / 100, drawn[1] * H / 100, drawn[2] * W / 100, drawn[3] * H / 100)
        iou = _iou(pixels, [float(v) for v in truth])
        assert iou >= 0.9, (
            f"{clip.name}: frame {frame.index} at {frame.time_s:.3f} s is project frame {ls_frame}; Label Studio "
            f"draws {np.round(pixels, 1).tolist()}, the frame shows {truth.tolist()} (IoU {iou:.2f})"
        )
        checked += 1
    assert checked == sum(t <= last_tracked + 1e-6 for t in clip.times) > len(tracks.sampled_frames) // 2


def _pixel_box(pixels: np.ndarray, min_run: int = 8) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(pixels.sum(axis=1) >= min_run)
    cols = np.flatnonzero(pixels.sum(axis=0) >= min_run)
    if rows.size == 0 or cols.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


@pytest.mark.browser
def test_browser_draws_the_8fps_clips_box_on_the_object_at_mid_clip(
    label_studio_server: Any,
    ls_client: LabelStudioClient,
    cors_file_server: tuple[str, Path],
) -> None:
    """The clip's box is green; the region is drawn in the label's red. Seeked to the middle of the clip, the red
    outline must sit on the green box (in screen pixels): the keyframes are at the right time."""
    from io import BytesIO

    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    from tests.support.browser import ARTIFACTS, launch_chromium

    base_url, served = cors_file_server
    clip = CLIPS[0]  # 8 fps into the 25 fps project: the demo case
    path = write_video(served / "mid-8fps.mp4", _render(clip.times, colour=(40, 220, 40)), fps=clip.fps)
    tracks = track_video(_ColourModel(), path, "colour", proposer=lambda rgb, i: _propose(_green_as_red(rgb), i))
    xml = video_label_config(["car"], framerate=PROJECT_FPS)  # its own project: labelled "car", versioned "colour"
    project_id = int(ls_client.create_project(f"video-browser-{uuid.uuid4().hex[:8]}", xml)["id"])
    for track in tracks.tracks:
        track.label = "car"
    task_id = _import(ls_client, (project_id, LabelConfig.parse(xml)), f"{base_url}/mid-8fps.mp4", tracks)
    # the editor pre-fills a draft from the prediction of the project's model version
    ls_client.update_project(project_id, model_version="colour", show_collab_predictions=True)
    creds = label_studio_server.credentials
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "label_studio_video_mid_clip.png"
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(90_000)
            page.goto(f"{label_studio_server.url}/user/login/")
            page.fill("input[name=email]", creds.username)
            page.fill("input[name=password]", creds.password)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/user/login" not in url)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)[:300]))
            page.on("console", lambda msg: errors.append(msg.text[:300]) if msg.type == "error" else None)
            page.goto(f"{label_studio_server.url}/projects/{project_id}/data?task={task_id}")
            try:
                expect(page.locator(".lsf-outliner-item")).to_have_count(1, timeout=90_000)
            except AssertionError as exc:
                shot.write_bytes(page.screenshot())
                raise AssertionError(f"no region listed (see {shot}); page errors: {errors[-6:]}") from exc
            view = page.locator(".lsf-video-canvas__view").first
            expect(view).to_be_visible(timeout=90_000)
            seeker = page.locator(".lsf-seeker").first
            sbox = seeker.bounding_box()
            assert sbox is not None
            page.mouse.click(sbox["x"] + sbox["width"] * 0.5, sbox["y"] + sbox["height"] / 2)
            page.wait_for_timeout(2000)
            vbox = view.bounding_box()
            assert vbox is not None
            png = page.screenshot(clip=vbox)
            shot.write_bytes(page.screenshot())
        finally:
            browser.close()
    rgb = np.asarray(Image.open(BytesIO(png)).convert("RGB"))
    content, drawn = _pixel_box(_green(rgb)), _pixel_box(_red(rgb), min_run=20)
    assert content is not None, f"the video frame is not drawn; see {shot}"
    assert drawn is not None, f"no region drawn over the video; see {shot}"
    iou = _iou([float(v) for v in content], [float(v) for v in drawn])
    assert iou >= 0.8, f"region drawn at {drawn}, the object is at {content} (IoU {iou:.2f}); see {shot}"


def _green_as_red(rgb: np.ndarray) -> np.ndarray:
    out = rgb.copy()
    out[_green(rgb)] = RED
    return out
