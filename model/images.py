"""Decode image bytes to (H, W, 3) uint8 RGB arrays, normalising mode, bit depth and EXIF orientation.

Everything that cannot be used raises :class:`~model.errors.BadMediaError` naming the object and the reason.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from model.errors import BadMediaError

DEFAULT_MAX_PIXELS = 100_000_000  # ~10k x 10k; SAM 2 downsizes to 1024 px anyway


def decode_image(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``data`` (JPEG, PNG, WebP, TIFF, BMP, GIF ...) to an (H, W, 3) uint8 RGB array.

    Grayscale, palette, RGBA (alpha dropped, composited on nothing), CMYK and 16-bit images are converted; the EXIF
    orientation is applied so the array is what a viewer shows. Images above ``max_pixels`` are refused before
    their pixels are decoded (decompression-bomb guard).
    """
    from PIL import ImageOps

    with _opened(data, name, max_pixels) as image:
        image.load()
        upright = ImageOps.exif_transpose(image) or image
        return _to_rgb_uint8(upright)


_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees


def probe_image(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(height, width)`` of the upright image from its header alone (no pixel decoding), with the same refusals as
    :func:`decode_image` for unreadable, empty and oversized images. A file whose pixels are corrupt past its header
    passes here and fails in :func:`decode_image`."""
    with _opened(data, name, max_pixels) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (width, height) if orientation in _SWAPS_AXES else (height, width)


@contextmanager
def _opened(data: bytes, name: str, max_pixels: int) -> Iterator[Any]:
    """The opened (header-read, not decoded) Pillow image after the size checks; every Pillow failure inside the
    block becomes a :class:`BadMediaError` naming ``name`` and the reason."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadMediaError(name, f"expected image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise BadMediaError(name, "empty file (0 bytes)")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own max_pixels check decides
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise BadMediaError(
                    name, f"image of {width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}"
                )
            if width < 1 or height < 1:
                raise BadMediaError(name, f"image has no pixels ({width}x{height})")
            yield image
    except BadMediaError:
        raise
    except Image.DecompressionBombError as exc:
        raise BadMediaError(name, f"image exceeds Pillow's decompression-bomb limit ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise BadMediaError(name, f"not a decodable image ({exc.__class__.__name__}: {exc})") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise BadMediaError(name, f"corrupt or truncated image ({exc.__class__.__name__}: {exc})") from exc


def _to_rgb_uint8(image: object) -> np.ndarray:
    from PIL import Image

    assert isinstance(image, Image.Image)
    mode = image.mode
    if mode in {"I;16", "I;16B", "I;16L", "I", "I;16N"}:
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        gray = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        lo, hi = float(values.min(initial=0)), float(values.max(initial=0))
        gray = (
            np.zeros(values.shape, np.uint8) if hi <= lo else np.round((values - lo) / (hi - lo) * 255).astype(np.uint8)
        )
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.uint8)
    return np.ascontiguousarray(array)
