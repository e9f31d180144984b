"""Media files that only tests need (e.g. an audio-only MP4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_audio_only(path: str | Path, seconds: float = 0.5, rate: int = 16000) -> Path:
    """An .m4a-style file with one AAC audio stream and no video."""
    import av
    import numpy as np

    path = Path(path)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream: Any = container.add_stream("aac", rate=rate)
        samples = np.zeros((1, int(seconds * rate)), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
