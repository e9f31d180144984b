"""The histogram scene-cut detector."""

from __future__ import annotations

import numpy as np
import pytest

from model.video_cuts import SceneCutDetector, frame_histogram, histogram_distance


def _solid(rgb: tuple[int, int, int], h: int = 30, w: int = 40) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [((10, 10, 10), (10, 10, 10), 0.0), ((0, 0, 0), (255, 255, 255), 1.0), ((0, 0, 0), (0, 0, 255), 1 / 3)],
)
def test_histogram_distance_table(a: tuple[int, int, int], b: tuple[int, int, int], expected: float) -> None:
    assert histogram_distance(frame_histogram(_solid(a)), frame_histogram(_solid(b))) == pytest.approx(expected)


def test_cut_fires_on_a_shot_change_only() -> None:
    rng = np.random.default_rng(0)
    dark = [np.clip(_solid((40, 40, 40)) + rng.integers(0, 8, (30, 40, 3)), 0, 255).astype(np.uint8) for _ in range(3)]
    bright = [_solid((200, 180, 30)) for _ in range(2)]
    detector = SceneCutDetector(threshold=0.5)
    assert [detector.update(f) for f in dark + bright] == [False, False, False, True, False]


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        frame_histogram(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        SceneCutDetector(threshold=0.0)
