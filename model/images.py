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
    from PIL import Image

    with _opened(data, name, max_pixels) as image:
        width, height = image.size
        if image.format == "PNG" and not _png_metadata_after_pixels(data):
            # Pillow's PNG getexif() decodes every pixel to look for metadata stored after the image data; the
            # chunk scan says there is none, so what the header held (read at open) is all there is.
            exif = Image.Image.getexif(image)
        else:
            exif = image.getexif()
        orientation = exif.get(0x0112, 1)
    return (width, height) if orientation in _SWAPS_AXES else (height, width)


_PNG_LATE_METADATA = frozenset({b"eXIf", b"iTXt", b"tEXt", b"zTXt"})  # where EXIF and XMP orientation can live


def _png_metadata_after_pixels(data: bytes | bytearray | memoryview) -> bool:
    """Whether a PNG has a metadata chunk after its first IDAT, which Pillow reads only by decoding the pixels.
    Walks the chunk headers (lengths only, nothing decompressed); an odd or truncated layout answers True, so the
    caller falls back to Pillow's full read."""
    view = memoryview(data)
    pos, seen_pixels = 8, False  # after the 8-byte signature
    while pos + 8 <= len(view):
        length = int.from_bytes(view[pos : pos + 4], "big")
        kind = bytes(view[pos + 4 : pos + 8])
        if kind == b"IEND":
            return False
        if kind == b"IDAT":
            seen_pixels = True
        elif seen_pixels and kind in _PNG_LATE_METADATA:
            return True
        pos += 12 + length  # length, type, data, CRC
    return True


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
