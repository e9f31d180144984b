"""Pure parts of the export layout: file names from untrusted keys, the COCO and manifest rewrite, the summary."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from storage.formats.export_layout import (
    MAX_BASENAME,
    ExportResult,
    export_file_name,
    plan_export,
    safe_basename,
)
from storage.formats.exporter import ExportedFile

COCO_LINE = ExportedFile("labels.json", "COCO: 3 images, 5 annotations, 2 categories (file_name relative to data/)")


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("coco/000000000009.jpg", "000000000009.jpg"),
        ("a.png", "a.png"),
        ("deep/er/IMG 0001 (copy).JPG", "IMG_0001_copy_.JPG"),
        ("x/../../etc/passwd", "passwd"),
        ("x/..", "image"),
        ("x/.hidden.png", "hidden.png"),
        ("x/-rf.png", "rf.png"),
        ("x/_under.png", "under.png"),
        ("x/", "image"),
        ("", "image"),
        ("x/Ünïcode—名前.png", "n_code_.png"),
        ("x/back\\slash.png", "back_slash.png"),
        ("x/tab\tnew\nline.png", "tab_new_line.png"),
        ("s3://bucket/prefix/cat.png", "cat.png"),
        ("x/" + "a" * 300 + ".jpeg", "a" * (MAX_BASENAME - 5) + ".jpeg"),
        ("x/" + "b" * 300, "b" * MAX_BASENAME),
        ("x/" + "c" * 300 + "." + "d" * 40, "c" * MAX_BASENAME),  # an "extension" that long is not kept
    ],
)
def test_safe_basename(key: str, expected: str) -> None:
    assert safe_basename(key) == expected


@pytest.mark.parametrize(
    ("asset_id", "uri", "frame", "expected"),
    [
        (9, "s3://b/coco/000000000009.jpg", -1, "9_000000000009.jpg"),
        (10, "s3://b/other/000000000009.jpg", -1, "10_000000000009.jpg"),
        (3, "s3://b/clips/walk.mp4", 12, "3_walk.mp4#frame=12"),
        (4, "s3://b/odd/", -1, "4_image"),
    ],
)
def test_export_file_name(asset_id: int, uri: str, frame: int, expected: str) -> None:
    assert export_file_name(asset_id, uri, frame) == expected


def _stored() -> tuple[dict[str, Any], dict[str, Any]]:
    """A stored COCO and manifest as create_version writes them: file_name is the item key (S3 URI)."""
    images = [
        {
            "id": 1,
            "file_name": "s3://b/a/cat.png",
            "maskloop_asset_id": 7,
            "maskloop_frame_index": -1,
            "width": 4,
            "height": 3,
        },
        {
            "id": 2,
            "file_name": "s3://b/b/cat.png",
            "maskloop_asset_id": 8,
            "maskloop_frame_index": -1,
            "width": 4,
            "height": 3,
        },
        {
            "id": 3,
            "file_name": "s3://b/v.mp4#frame=5",
            "maskloop_asset_id": 9,
            "maskloop_frame_index": 5,
            "width": 4,
            "height": 3,
        },
    ]
    coco = {"info": {}, "images": images, "annotations": [{"id": 1, "image_id": 1}], "categories": [{"id": 1}]}
    manifest = {
        "items": [
            {"key": "s3://b/a/cat.png", "asset_sha256": "aa", "annotation_hash": "h1"},
            {"key": "s3://b/b/cat.png", "asset_sha256": "bb", "annotation_hash": "h2"},
            {"key": "s3://b/v.mp4#frame=5", "asset_sha256": "vv", "annotation_hash": "h3"},
        ],
        "coco": "s3://b/datasets/x/coco/abc.json",
    }
    return coco, manifest


def test_plan_rewrites_file_names_and_keeps_uri_sha256_and_asset_id() -> None:
    coco, manifest = _stored()
    before = copy.deepcopy((coco, manifest))
    plan = plan_export(coco, manifest)
    assert (coco, manifest) == before  # inputs untouched
    assert [
        (i["file_name"], i["maskloop_s3_uri"], i["maskloop_sha256"], i["maskloop_asset_id"])
        for i in plan.coco["images"]
    ] == [
        ("7_cat.png", "s3://b/a/cat.png", "aa", 7),
        ("8_cat.png", "s3://b/b/cat.png", "bb", 8),
        ("9_v.mp4#frame=5", "s3://b/v.mp4", "vv", 9),
    ]
    assert [(f.file_name, f.s3_uri, f.asset_id, f.sha256) for f in plan.images] == [
        ("7_cat.png", "s3://b/a/cat.png", 7, "aa"),
        ("8_cat.png", "s3://b/b/cat.png", 8, "bb"),
    ]
    assert plan.frame_records == 1
    assert [(i["key"], i["file_name"], i["asset_id"]) for i in plan.manifest["items"]] == [
        ("s3://b/a/cat.png", "7_cat.png", 7),
        ("s3://b/b/cat.png", "8_cat.png", 8),
        ("s3://b/v.mp4#frame=5", "9_v.mp4#frame=5", 9),
    ]
    assert plan.manifest["export"]["images_dir"] == "data/" and plan.manifest["coco"] == manifest["coco"]
    assert plan.coco["annotations"] == coco["annotations"] and plan.coco["categories"] == coco["categories"]


def test_plan_of_an_exported_coco_is_the_same_plan() -> None:
    plan = plan_export(*_stored())
    again = plan_export(plan.coco, plan.manifest)
    assert (again.coco, again.images, again.frame_records) == (plan.coco, plan.images, plan.frame_records)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["images"][0].pop("maskloop_asset_id"), "has no maskloop_asset_id"),
        (lambda c: c["images"][1].update(maskloop_asset_id=7), "two assets would be exported as 7_cat.png"),
    ],
)
def test_plan_refuses_what_cannot_be_laid_out(change: Any, message: str) -> None:
    coco, manifest = _stored()
    change(coco)
    with pytest.raises(ValueError, match=message):
        plan_export(coco, manifest)


def test_one_asset_in_two_records_is_one_file() -> None:
    coco, manifest = _stored()
    coco["images"].append({**coco["images"][0], "id": 4})
    plan = plan_export(coco, manifest)
    assert [f.file_name for f in plan.images] == ["7_cat.png", "8_cat.png"]


def _result(tmp: Path, **changes: Any) -> ExportResult:
    fields: dict[str, Any] = {
        "version_id": 3,
        "out_dir": tmp,
        "labels": tmp / "labels.json",
        "manifest": tmp / "manifest.json",
        "images_dir": tmp / "data",
        "image_files": (tmp / "data" / "7_cat.png", tmp / "data" / "8_cat.png"),
        "image_bytes": 3 * 1024 + 512,
        "files": (COCO_LINE,),
        "items": 3,
        "image_records": 2,
        "frame_records": 1,
    }
    return ExportResult(**{**fields, **changes})


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {},
            [
                "exported version 3 to /x",
                "  labels.json     COCO: 3 images, 5 annotations, 2 categories (file_name relative to data/)",
                "  manifest.json   3 items",
                "  data/           2 image files, 3.5 KiB",
                "  video frames    1 COCO images are video frames; their files are not written",
            ],
        ),
        (
            {"images_dir": None, "image_files": (), "image_bytes": 0, "frame_records": 0},
            [
                "exported version 3 to /x",
                "  labels.json     COCO: 3 images, 5 annotations, 2 categories (file_name relative to data/)",
                "  manifest.json   3 items",
                "  data/           not written: --images downloads the 2 image files",
            ],
        ),
        (
            {"frame_records": 0, "image_bytes": 100, "sha256_mismatches": ("8_cat.png",)},
            [
                "exported version 3 to /x",
                "  labels.json     COCO: 3 images, 5 annotations, 2 categories (file_name relative to data/)",
                "  manifest.json   3 items",
                "  data/           2 image files, 100 B",
                "  sha256 mismatch 8_cat.png: S3 now holds other bytes than the version froze",
            ],
        ),
        (
            {
                "files": (ExportedFile("data.yaml", "YOLO"), ExportedFile("labels/", "2 label files")),
                "images_name": "images",
                "images_dir": None,
                "frame_records": 0,
            },
            [
                "exported version 3 to /x",
                "  data.yaml       YOLO",
                "  labels/         2 label files",
                "  manifest.json   3 items",
                "  images/         not written: --images downloads the 2 image files",
            ],
        ),
    ],
    ids=["coco", "coco-without-images", "coco-sha256-mismatch", "another-format-names-its-files-and-image-folder"],
)
def test_summary_lists_every_file_written(changes: dict[str, Any], expected: list[str]) -> None:
    assert _result(Path("/x"), **changes).summary_lines() == expected
