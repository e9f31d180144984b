"""Fixtures for flow tests (a plugin of tests/conftest.py, so every suite shares one Prefect server): Prefect's test harness (a real temporary API server) and a tiny real SAM 2 checkpoint."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as env:
        env.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry: nothing beyond loopback
        with prefect_test_harness(server_startup_timeout=120):
            yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real transformers Sam2Model (tiny config, random weights) saved as a local directory."""
    from tests.support.tiny_models import save_tiny_sam2

    # hidden size 128: the video memory encoder (64 channels) needs a hidden size that is a larger multiple of 64
    return save_tiny_sam2(tmp_path_factory.mktemp("sam2-tiny"), image_size=64, hidden_size=128)


@pytest.fixture()
def flow_settings(settings: Any, catalog_url: str, label_studio_server: Any, tiny_checkpoint: Path) -> Any:
    """Settings for a flow run against this test's S3 server, catalog (SQLite or PostgreSQL), the session's Label
    Studio and the tiny SAM 2 checkpoint."""
    return type(settings).model_validate(
        {
            **settings.model_dump(),
            "database_url": catalog_url,
            "label_studio_url": label_studio_server.url,
            "label_studio_token": label_studio_server.token,
            "model_id": str(tiny_checkpoint),
            "device": "cpu",
            "io_process_wait_s": 60.0,  # on a busy machine a short flow can end before the helper starts
        }
    )


def png_bytes(rng: np.random.Generator, height: int = 96, width: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def mp4_bytes(rng: np.random.Generator, tmp_path: Path, frames: int = 6, height: int = 64, width: int = 96) -> bytes:
    from model.video import write_video

    path = write_video(
        tmp_path / f"clip-{rng.integers(1 << 30)}.mp4",
        [rng.integers(0, 255, (height, width, 3), dtype=np.uint8) for _ in range(frames)],
    )
    return path.read_bytes()


@pytest.fixture()
def fill_bucket(s3, bucket: str, tmp_path: Path) -> Callable[..., dict[str, list[str]]]:  # noqa: ANN001
    """Put ``images`` PNGs, ``videos`` MP4s and one corrupt image under ``in/``; returns the keys by kind."""

    def fill(images: int = 5, videos: int = 1, broken: int = 1, seed: int = 0) -> dict[str, list[str]]:
        rng = np.random.default_rng(seed)
        keys: dict[str, list[str]] = {"image": [], "video": [], "broken": []}
        for i in range(images):
            keys["image"].append(f"in/img{i:03d}.png")
            s3.put_object(Bucket=bucket, Key=keys["image"][-1], Body=png_bytes(rng))
        for i in range(videos):
            keys["video"].append(f"in/clip{i}.mp4")
            s3.put_object(Bucket=bucket, Key=keys["video"][-1], Body=mp4_bytes(rng, tmp_path))
        for i in range(broken):
            keys["broken"].append(f"in/broken{i}.jpg")
            s3.put_object(Bucket=bucket, Key=keys["broken"][-1], Body=b"this is not a JPEG")
        return keys

    return fill
