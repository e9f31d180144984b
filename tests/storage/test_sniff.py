"""Media type from the first bytes of an object (keys without a media extension), and discovery that uses it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from storage.catalog import Catalog
from storage.catalog.assets import DiscoveryReport, content_sniffer, discover, skipped_objects
from storage.s3 import list_objects
from storage.sniff import sniff_media_type


def _image(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("head", "kind", "what"),
    [
        (b"", None, "empty object"),
        (b"<!DOCTYPE html><html>", None, "text"),
        (b'  {"a": 1}', None, "text"),
        (b"\x00\x01\x02\x03garbage", None, "unknown content"),
        (_image("JPEG"), "image", "JPEG"),
        (_image("PNG"), "image", "PNG"),
        (_image("GIF"), "image", "GIF"),
        (_image("WEBP"), "image", "WebP"),
        (_image("BMP"), "image", "BMP"),
        (_image("TIFF"), "image", "TIFF"),
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", "video", "MP4/QuickTime"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", None, "HEIF/AVIF"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", "video", "Matroska/WebM"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "video", "AVI"),
        (b"\x47" + b"\x00" * 187 + b"\x47", "video", "MPEG-TS"),
        (b"\x47\x00\x00", None, "unknown content"),  # one sync byte is not a transport stream
    ],
)
def test_sniff_media_type_by_magic_bytes(head: bytes, kind: str | None, what: str) -> None:
    got_kind, got_what = sniff_media_type(head)
    assert got_kind == kind and what in got_what


def test_discovery_keeps_media_without_extension_and_lists_what_is_not_media(
    catalog: Catalog,
    s3,
    bucket: str,
    tmp_path,  # noqa: ANN001
) -> None:
    from model.video import write_video

    clip = write_video(tmp_path / "c.mp4", [np.zeros((32, 48, 3), np.uint8)] * 3).read_bytes()
    objects = {
        "in/photo.png": _image("PNG"),
        "in/noext": _image("JPEG"),
        "in/clip": clip,
        "in/notes.txt": b"just text",
        "in/page.jpeg.html": b"<html><body>hi</body></html>",
        "in/empty": b"",
    }
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    report = DiscoveryReport()
    listing = list_objects(s3, bucket, "in/", sniff=content_sniffer(catalog, s3, bucket, report))
    discover(catalog, listing, report=report)
    assert (report.listed, report.sniffed, report.not_media, report.unreadable) == (3, 2, 3, 0)
    with catalog.session() as session:
        from storage.catalog import Asset

        kinds = {a.key: a.media_type for a in session.query(Asset)}
    assert kinds == {"in/photo.png": "image", "in/noext": "image", "in/clip": "video"}
    skipped = {row.key: row.reason for row in skipped_objects(catalog, bucket, "in/")}
    assert set(skipped) == {"in/notes.txt", "in/page.jpeg.html", "in/empty"}
    assert "empty object" in skipped["in/empty"] and "text" in skipped["in/page.jpeg.html"]

    again = DiscoveryReport()  # known revisions: from the catalog, nothing read again, nothing new
    discover(catalog, list_objects(s3, bucket, "in/", sniff=content_sniffer(catalog, s3, bucket, again)), report=again)
    assert (again.listed, again.sniffed, again.not_media, len(again.new_asset_ids)) == (3, 0, 3, 0)
