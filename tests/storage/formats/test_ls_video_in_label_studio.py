"""Keyframes land at the right time in the real Label Studio, whatever the clip's frame rate.

Real H.264 clips (constant 8, 25, 29.97 and 60 fps, and a variable-rate one; some sampled with ``--video-every`` /
``--video-fps``) show one red box moving at constant speed. They are tracked (a colour-threshold stand-in for SAM 2,
fed by the real decoder), converted for one 25 fps project, imported into the real Label Studio and read back through
its API. At the presentation time of every decoded frame up to the last tracked one -- sampled or not -- the box Label
Studio interpolates (linear between keyframes on its frame axis, as ``VideoRectangleRegion.getShape`` does) must match
the box in that frame.
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


def _render(times: Sequence[float]) -> list[np.ndarray]:
    frames = []
    for t in times:
        rgb = np.full((H, W, 3), 40, np.uint8)
        x1, y1, x2, y2 = _box_at(t)
        rgb[y1:y2, x1:x2] = RED
        frames.append(rgb)
    return frames


def _red(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., c].astype(np.int16) for c in range(3))
    return (r > 140) & (g < 110) & (b < 110)


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
