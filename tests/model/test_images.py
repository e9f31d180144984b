"""decode_image: every supported pixel layout becomes (H, W, 3) uint8 RGB as displayed; bad input -> BadMediaError.
probe_image: the same upright size from the header alone."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.errors import BadMediaError
from model.images import decode_image, probe_image

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _gradient(h: int = 6, w: int = 8) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 30 % 256, y * 40 % 256, (x + y) * 10 % 256], axis=2).astype(np.uint8)


RGB = _gradient()


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("rgb.png", _encode(Image.fromarray(RGB), "PNG"), RGB),
        ("gray.png", _encode(Image.fromarray(RGB[..., 0]), "PNG"), np.repeat(RGB[..., :1], 3, axis=2)),
        ("rgba.png", _encode(Image.fromarray(np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])), "PNG"), RGB),
        (
            "palette.png",
            _encode(Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=256), "PNG"),
            None,
        ),
        (
            "gray16.png",
            _encode(Image.fromarray(RGB[..., 0].astype(np.uint16) * 257), "PNG"),
            np.repeat(RGB[..., :1], 3, axis=2),
        ),
        (
            "bilevel.png",
            _encode(Image.fromarray(RGB[..., 0] > 100), "PNG"),
            np.repeat(np.where(RGB[..., :1] > 100, 255, 0), 3, axis=2),
        ),
        (
            "one.png",
            _encode(Image.fromarray(np.array([[[1, 2, 3]]], np.uint8)), "PNG"),
            np.array([[[1, 2, 3]]], np.uint8),
        ),
        ("rgb.bmp", _encode(Image.fromarray(RGB), "BMP"), RGB),
        ("rgb.tiff", _encode(Image.fromarray(RGB), "TIFF"), RGB),
    ],
)
def test_lossless_layouts_decode_to_rgb_uint8(name: str, data: bytes, expected: np.ndarray | None) -> None:
    decoded = decode_image(data, name)
    assert decoded.dtype == np.uint8 and decoded.ndim == 3 and decoded.shape[2] == 3
    assert decoded.flags.c_contiguous
    if expected is None:  # palette quantisation: close to the source colours
        assert decoded.shape == RGB.shape and np.abs(decoded.astype(int) - RGB).mean() < 8
    else:
        assert np.array_equal(decoded, expected)


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    data = _encode(Image.fromarray(np.full((8, 8, 3), (200, 30, 30), np.uint8)).convert("CMYK"), "JPEG", quality=95)
    decoded = decode_image(data, "cmyk.jpg")
    assert decoded.shape == (8, 8, 3)
    assert np.abs(decoded.astype(int) - (200, 30, 30)).max() < 12


@pytest.mark.parametrize(
    ("orientation", "turn"),
    [
        (1, lambda a: a),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_is_applied(orientation: int, turn) -> None:  # type: ignore[no-untyped-def]
    stored = np.zeros((4, 6, 3), np.uint8)
    stored[0, 0] = (255, 0, 0)  # a red top-left corner tells where the image went
    stored[3, 5] = (0, 0, 255)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    decoded = decode_image(_encode(image, "PNG", exif=exif), f"o{orientation}.png")
    assert np.array_equal(decoded, turn(stored))


def test_real_coco_jpeg_decodes() -> None:
    path = DATA / "coco128-seg" / "images" / "train2017" / "000000000009.jpg"
    assert decode_image(path.read_bytes(), path.name).shape == (480, 640, 3)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    data = _encode(Image.new("L", (4000, 3000)), "PNG")
    with pytest.raises(BadMediaError, match=r"4000x3000 = 12000000 pixels exceeds max_pixels=1000000") as info:
        decode_image(data, "s3://bucket/huge.png", max_pixels=1_000_000)
    assert info.value.name == "s3://bucket/huge.png"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"definitely not an image", "not a decodable image"),
        (_encode(Image.fromarray(RGB), "PNG")[:40], "not a decodable image|corrupt or truncated"),
        (_encode(Image.fromarray(np.zeros((64, 64, 3), np.uint8)), "JPEG")[:200], "corrupt or truncated"),
        ("a string", "expected image bytes, got str"),
    ],
)
def test_bad_bytes_raise_bad_media_error_naming_the_object(data: bytes, reason: str) -> None:
    with pytest.raises(BadMediaError, match=reason) as info:
        decode_image(data, "key/bad.png")
    assert info.value.name == "key/bad.png" and str(info.value).startswith("key/bad.png: ")


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_probe_image_gives_the_upright_size_decode_image_gives(orientation: int) -> None:
    image = Image.fromarray(np.zeros((4, 6, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = orientation
    for fmt in ("PNG", "JPEG"):
        data = _encode(image, fmt, exif=exif)
        assert probe_image(data, "o.img") == decode_image(data, "o.img").shape[:2]


def test_probe_image_reads_the_header_only_so_corrupt_pixels_pass_it_and_fail_decoding() -> None:
    noise = np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    whole = _encode(Image.fromarray(noise), "JPEG")
    data = whole[: len(whole) // 2]  # header intact, half of the entropy-coded pixels gone
    assert probe_image(data, "key/cut.jpg") == (64, 48)
    with pytest.raises(BadMediaError, match="corrupt or truncated"):
        decode_image(data, "key/cut.jpg")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    import zlib

    return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")


def _png_with_exif_after_pixels(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    plain = _encode(image, "PNG")
    iend = plain.rindex(b"IEND") - 4
    return plain[:iend] + _png_chunk(b"eXIf", exif.tobytes()) + plain[iend:]


def test_probe_image_reads_a_png_header_only_so_corrupt_pixels_pass_it_and_fail_decoding() -> None:
    noise = np.random.default_rng(0).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    whole = _encode(Image.fromarray(noise), "PNG")
    start = whole.index(b"IDAT") + 4
    data = whole[:start] + bytes(b ^ 0xFF for b in whole[start : start + 64]) + whole[start + 64 :]
    assert probe_image(data, "key/bad-pixels.png") == (64, 48)
    with pytest.raises(BadMediaError, match="corrupt or truncated"):
        decode_image(data, "key/bad-pixels.png")


@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_probe_image_finds_png_exif_stored_after_the_pixels(orientation: int) -> None:
    data = _png_with_exif_after_pixels(Image.fromarray(np.zeros((4, 6, 3), np.uint8)), orientation)
    assert probe_image(data, "late.png") == decode_image(data, "late.png").shape[:2]
    assert probe_image(data, "late.png") == ((6, 4) if orientation in (6, 8) else (4, 6))


@pytest.mark.parametrize(
    ("data", "max_pixels", "reason"),
    [
        (b"", 100, "empty file"),
        (b"definitely not an image", 100, "not a decodable image"),
        (_encode(Image.new("L", (40, 30)), "PNG"), 1000, r"40x30 = 1200 pixels exceeds max_pixels=1000"),
        ("a string", 100, "expected image bytes, got str"),
    ],
)
def test_probe_image_refuses_what_decode_image_refuses_from_the_header(
    data: bytes, max_pixels: int, reason: str
) -> None:
    with pytest.raises(BadMediaError, match=reason) as info:
        probe_image(data, "key/bad.png", max_pixels=max_pixels)
    assert info.value.name == "key/bad.png"
