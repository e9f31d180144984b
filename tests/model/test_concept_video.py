"""SAM 3 on video: a tiny random Sam3Model's concept instances on every sampled frame, associated into stable track
ids by the detection tracker, with memory that does not grow with the clip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.cache import clear_cache, get_video_model
from model.concept import ConceptSegmenter
from model.concept_video import ConceptVideo
from model.errors import ModelCapabilityError
from model.tracker import make_proposer, track_video
from model.tracks import VideoTracks
from model.video import write_video
from tests.support.tiny_models import save_tiny_sam3

CLASSES = ["person", "car"]


@pytest.fixture(scope="module")
def sam3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sam3(tmp_path_factory.mktemp("sam3v") / "tiny-sam3")


@pytest.fixture(scope="module")
def sam3(sam3_dir: Path) -> ConceptSegmenter:
    torch.set_num_threads(1)
    return ConceptSegmenter.from_pretrained(sam3_dir, device="cpu")


def _static_clip(path: Path, frames: int, size: int = 96) -> Path:
    """The same picture on every frame, intra-only lossless (FFV1): every decoded frame is identical."""
    rgb = np.random.default_rng(3).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return write_video(path, [rgb] * frames, fps=10, codec="ffv1", pix_fmt="yuv444p")


def _track(sam3: ConceptSegmenter, path: Path) -> VideoTracks:
    proposer = make_proposer("concept", segmenter=sam3, classes=CLASSES)
    return track_video(ConceptVideo(sam3), path, "concept", classes=CLASSES, segmenter=sam3, proposer=proposer)


def test_a_sam3_checkpoint_loads_as_a_video_model_that_tracks_by_detection(sam3_dir: Path) -> None:
    clear_cache()
    video = get_video_model(sam3_dir, device="cpu")
    assert isinstance(video, ConceptVideo)
    assert video.model_id.startswith("sam3_concept_video:") and "@" in video.model_id
    assert (video.tracking.trust_memory, video.tracking.max_key_frame_interval) == (False, 1)
    assert get_video_model(sam3_dir, device="cpu") is video  # cached
    with pytest.raises(ModelCapabilityError, match="tracks by detection"):
        video.new_session(32, 32)
    clear_cache()


def test_every_instance_keeps_one_track_id_through_a_static_clip(sam3: ConceptSegmenter, tmp_path: Path) -> None:
    path = _static_clip(tmp_path / "static.mkv", 6)
    result = _track(sam3, path)
    first = sam3.segment([np.asarray(next(iter(_frames(path))))], CLASSES)[0]
    assert len(first) > 0, "the tiny model should find instances (it is biased to)"
    assert result.model_id.startswith("sam3_concept_video:")
    assert result.sampled_frames == list(range(6))
    assert {t.label for t in result.tracks} <= set(CLASSES)
    spanning = [t for t in result.tracks if [f.frame_index for f in t.frames] == list(range(6))]
    # identical frames give identical detections: each becomes one track over the whole clip, no id switches
    assert len(spanning) == len(result.tracks) >= 1
    assert len({t.track_id for t in result.tracks}) == len(result.tracks)


def _frames(path: Path) -> list[np.ndarray]:
    from model.video import iter_frames

    return [f.rgb for f in iter_frames(path)]


def test_tracking_holds_no_past_frame_so_memory_is_flat_in_clip_length(sam3: ConceptSegmenter, tmp_path: Path) -> None:
    """Every decoded frame the proposer sees is watched by a weak reference: while tracking 40 frames, at most the
    current and the previous frame are alive at any time (the tracker compares consecutive frames for scene cuts),
    and none once the tracks are returned, so what the tracker holds does not grow with the clip's frames."""
    import gc
    import weakref

    path = _static_clip(tmp_path / "long.mkv", 40, size=64)
    seen: list[weakref.ref[np.ndarray]] = []
    most_alive = 0
    concept = make_proposer("concept", segmenter=sam3, classes=CLASSES)

    def watching(rgb: np.ndarray, frame_index: int) -> Any:
        nonlocal most_alive
        gc.collect()
        most_alive = max(most_alive, sum(r() is not None for r in seen))
        seen.append(weakref.ref(rgb))
        return concept(rgb, frame_index)

    result = track_video(ConceptVideo(sam3), path, "concept", classes=CLASSES, segmenter=sam3, proposer=watching)
    gc.collect()
    assert len(seen) == 40 and result.tracks
    assert most_alive <= 2, most_alive
    assert all(r() is None for r in seen)
