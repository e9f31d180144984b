"""Media type from content: the magic bytes at the start of a file (for keys whose extension says nothing)."""

from __future__ import annotations

from typing import Literal

SNIFF_BYTES = 256  # enough for every signature below (MPEG-TS repeats its sync byte at 188)

MediaKind = Literal["image", "video"]

# (offset, signature, kind, format name)
_SIGNATURES: tuple[tuple[int, bytes, MediaKind, str], ...] = (
    (0, b"\xff\xd8\xff", "image", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "image", "PNG"),
    (0, b"GIF87a", "image", "GIF"),
    (0, b"GIF89a", "image", "GIF"),
    (0, b"BM", "image", "BMP"),
    (0, b"II*\x00", "image", "TIFF"),
    (0, b"MM\x00*", "image", "TIFF"),
    (4, b"ftyp", "video", "MP4/QuickTime"),  # ISO base media (mp4, mov, m4v, 3gp); HEIC/AVIF excluded below
    (0, b"\x1a\x45\xdf\xa3", "video", "Matroska/WebM"),
    (0, b"\x00\x00\x01\xba", "video", "MPEG-PS"),
    (0, b"\x47", "video", "MPEG-TS"),  # checked again at 188 below when there are enough bytes
)
_IMAGE_BRANDS = (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis")


def sniff_media_type(head: bytes) -> tuple[MediaKind | None, str]:
    """``(kind, what)`` for the first bytes of a file: ``("image", "JPEG")``, ``("video", "MP4/QuickTime")``, or
    ``(None, why not)`` (empty, text/HTML, or an unknown signature)."""
    if not head:
        return None, "empty object (0 bytes)"
    if head[:4] == b"RIFF" and len(head) >= 12:
        form = head[8:12]
        if form == b"WEBP":
            return "image", "WebP"
        if form == b"AVI ":
            return "video", "AVI"
    for offset, signature, kind, name in _SIGNATURES:
        if head[offset : offset + len(signature)] != signature:
            continue
        if name == "MP4/QuickTime" and head[8:12] in _IMAGE_BRANDS:
            return None, f"HEIF/AVIF image ({head[8:12].decode()}), not supported"
        if name == "MPEG-TS" and (len(head) < 189 or head[188:189] != b"\x47"):
            continue
        return kind, name
    text = head.lstrip()[:15].lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"{", b"[")):
        return None, "text (HTML, XML or JSON), not media"
    return None, f"unknown content (starts with {head[:8].hex(' ')})"
