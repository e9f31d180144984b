"""``export_version`` on a real (moto) S3 server, read back by outside readers, not by maskloop: pycocotools,
FiftyOne's COCO importer given only the exported directory (run in FiftyOne's own venv, ``.venv-fo``), and
supervision's YOLO loader for ``maskloop versions export --format yolo-seg``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.masks import masks_to_boxes
from storage.catalog import Catalog
from storage.formats.registry import UnknownExportFormatError
from storage.settings import Settings
from storage.version_export import export_version
from tests.support.dataset_versions import MadeImage, box_mask, make_version
from tests.support.settings_for import point_cli_at

H, W = 40, 56
REPO_ROOT = Path(__file__).resolve().parents[2]
FIFTYONE_PYTHON = REPO_ROOT / ".venv-fo" / "bin" / "python"
FIFTYONE_LOAD = REPO_ROOT / "tests" / "support" / "fiftyone_coco_load.py"

# two keys share a basename (cat.png), one key has characters no file name should carry
IMAGES = {
    "shelter/a/cat.png": ([box_mask(H, W, 2, 20, 3, 30), box_mask(H, W, 22, 38, 30, 50)], ["cat", "dog"]),
    "shelter/b/cat.png": ([box_mask(H, W, 0, 40, 0, 10)], ["cat"]),
    "odd/Ünï code (1)?.png": ([box_mask(H, W, 5, 15, 5, 45)], ["dog"]),
}


@pytest.fixture()
def version(sqlite_catalog: Catalog, s3: Any, bucket: str) -> tuple[int, list[MadeImage]]:
    made, images = make_version(sqlite_catalog, s3, bucket, IMAGES)
    return made.version.id, images


def test_creating_a_version_prints_nothing(
    sqlite_catalog: Catalog, s3: Any, bucket: str, capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    made, _ = make_version(sqlite_catalog, s3, bucket, IMAGES)  # validates the COCO with pycocotools
    assert made.created
    assert capfd.readouterr() == ("", "")


def test_export_opens_with_pycocotools_file_names_resolve_under_data(
    sqlite_catalog: Catalog, s3: Any, bucket: str, tmp_path: Path, version: tuple[int, list[MadeImage]]
) -> None:
    from pycocotools.coco import COCO

    version_id, images = version
    out = tmp_path / "export"
    result = export_version(sqlite_catalog, s3, version_id, out, images=True)
    assert (result.labels, result.manifest, result.images_dir) == (
        out / "labels.json",
        out / "manifest.json",
        out / "data",
    )
    assert sorted(p.name for p in out.iterdir()) == ["data", "labels.json", "manifest.json"]
    assert sorted(result.image_files) == sorted((out / "data").iterdir()) and len(result.image_files) == 3
    assert result.sha256_mismatches == ()

    coco = COCO(str(result.labels))
    by_uri = {img["maskloop_s3_uri"]: img for img in coco.dataset["images"]}
    assert sorted(by_uri) == sorted(i.uri for i in images)
    expected_names = {
        f"s3://{bucket}/shelter/a/cat.png": f"{images[0].asset_id}_cat.png",
        f"s3://{bucket}/shelter/b/cat.png": f"{images[1].asset_id}_cat.png",
        f"s3://{bucket}/odd/Ünï code (1)?.png": f"{images[2].asset_id}_n_code_1_.png",
    }
    assert {uri: img["file_name"] for uri, img in by_uri.items()} == expected_names
    for made in images:
        img = by_uri[made.uri]
        path = out / "data" / img["file_name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == made.sha256 == img["maskloop_sha256"]
        assert (img["maskloop_asset_id"], img["width"], img["height"]) == (made.asset_id, made.width, made.height)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert [coco.cats[a["category_id"]]["name"] for a in anns] == made.labels
        boxes = masks_to_boxes(made.masks)
        for ann, mask, (x1, y1, x2, y2) in zip(anns, made.masks, boxes, strict=True):
            assert np.array_equal(coco.annToMask(ann).astype(bool), mask)
            assert ann["area"] == mask.sum()
            assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1]

    manifest = json.loads(result.manifest.read_text())
    assert manifest["export"]["images_dir"] == "data/" and manifest["export"]["labels"] == "labels.json"
    assert {i["key"]: (i["file_name"], i["asset_id"], i["asset_sha256"]) for i in manifest["items"]} == {
        m.uri: (expected_names[m.uri], m.asset_id, m.sha256) for m in images
    }


def _fiftyone_env(tmp_path: Path) -> dict[str, str]:
    """The environment less any FIFTYONE_* of the user's, with FiftyOne's database, config and home in tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIFTYONE_")}
    env.update(
        HOME=str(tmp_path / "home"),
        FIFTYONE_CONFIG_PATH=str(tmp_path / "fiftyone-config.json"),
        FIFTYONE_DATABASE_DIR=str(tmp_path / "fiftyone-db"),
        FIFTYONE_DATABASE_VALIDATION="false",
        FIFTYONE_DO_NOT_TRACK="true",
    )
    return env


def test_fiftyone_coco_importer_loads_every_sample_and_mask_from_the_directory_alone(
    sqlite_catalog: Catalog, s3: Any, bucket: str, tmp_path: Path, version: tuple[int, list[MadeImage]]
) -> None:
    if not FIFTYONE_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{FIFTYONE_PYTHON} is missing: scripts/setup.sh --dev installs FiftyOne there")
        pytest.skip(f"{FIFTYONE_PYTHON} is missing (bash scripts/setup.sh --dev installs FiftyOne there)")
    version_id, images = version
    out = tmp_path / "export"
    export_version(sqlite_catalog, s3, version_id, out, images=True)
    report = tmp_path / "fiftyone.json"
    proc = subprocess.run(
        [str(FIFTYONE_PYTHON), str(FIFTYONE_LOAD), str(out), str(report)],
        env=_fiftyone_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"FiftyOne import failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    loaded = json.loads(report.read_text())
    assert loaded["count"] == len(images) and loaded["classes"] == ["cat", "dog"]
    coco = json.loads((out / "labels.json").read_text())
    made_of = {m.uri: m for m in images}
    by_path = {str(out / "data" / img["file_name"]): made_of[img["maskloop_s3_uri"]] for img in coco["images"]}
    assert sorted(s["filepath"] for s in loaded["samples"]) == sorted(by_path)
    for sample in loaded["samples"]:
        made = by_path[sample["filepath"]]
        assert (sample["width"], sample["height"]) == (made.width, made.height)
        detections = sample["detections"]
        assert [d["label"] for d in detections] == made.labels
        for det, mask, (x1, y1, x2, y2) in zip(detections, made.masks, masks_to_boxes(made.masks), strict=True):
            assert det["bounding_box"] == pytest.approx([x1 / W, y1 / H, (x2 - x1) / W, (y2 - y1) / H])
            assert det["mask_shape"] == [y2 - y1, x2 - x1] and det["mask_pixels"] == mask.sum()
    assert (tmp_path / "fiftyone-db").is_dir()  # the database lived in tmp_path, not in the user's home


def test_export_without_images_and_an_image_changed_in_s3(
    sqlite_catalog: Catalog, s3: Any, bucket: str, tmp_path: Path, version: tuple[int, list[MadeImage]]
) -> None:
    version_id, images = version
    bare = export_version(sqlite_catalog, s3, version_id, tmp_path / "bare")
    assert bare.images_dir is None and bare.image_files == () and not (tmp_path / "bare" / "data").exists()
    assert "--images downloads the 3 image files" in "\n".join(bare.summary_lines())

    s3.put_object(Bucket=bucket, Key="shelter/b/cat.png", Body=b"not the frozen bytes")
    changed = export_version(sqlite_catalog, s3, version_id, tmp_path / "changed", images=True)
    assert changed.sha256_mismatches == (f"{images[1].asset_id}_cat.png",)
    assert any("sha256 mismatch" in line for line in changed.summary_lines())


def test_coco_export_writes_the_frozen_coco_and_manifest_byte_for_byte_but_for_file_names(
    sqlite_catalog: Catalog, s3: Any, bucket: str, tmp_path: Path, version: tuple[int, list[MadeImage]]
) -> None:
    from storage.formats.export_layout import plan_export
    from storage.s3 import parse_s3_uri
    from storage.version_reads import get_version

    def stored(uri: str) -> Any:
        bucket_name, key = parse_s3_uri(uri)
        return json.loads(s3.get_object(Bucket=bucket_name, Key=key)["Body"].read())

    frozen = get_version(sqlite_catalog, version[0])
    assert frozen.coco_uri and frozen.manifest_uri
    plan = plan_export(stored(frozen.coco_uri), stored(frozen.manifest_uri))
    result = export_version(sqlite_catalog, s3, version[0], tmp_path / "coco", fmt="coco")
    assert result.labels.read_bytes() == json.dumps(plan.coco).encode()
    assert result.manifest.read_bytes() == json.dumps(plan.manifest, indent=1).encode()
    assert [i["file_name"] for i in plan.coco["images"]] != [i["file_name"] for i in stored(frozen.coco_uri)["images"]]


def test_cli_yolo_seg_export_reads_back_with_supervision(
    sqlite_catalog: Catalog,
    settings: Settings,
    s3: Any,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    version: tuple[int, list[MadeImage]],
) -> None:
    """Through ``maskloop versions export --format yolo-seg --images``. supervision fills the polygons with OpenCV
    (pixel centres, edges included), so each box mask comes back grown by the one pixel row and column its
    outline's bottom and right edges fall on, and by nothing else."""
    import supervision as sv

    from flows.cli import main

    version_id, images = version
    point_cli_at(monkeypatch, sqlite_catalog.url, settings, tmp_path / "cli")
    out = tmp_path / "yolo"
    capfd.readouterr()
    assert main(["versions", "export", str(version_id), "--format", "yolo-seg", "--out", str(out), "--images"]) == 0
    printed = capfd.readouterr().out.splitlines()
    assert printed[0] == f"exported version {version_id} to {out}"
    assert [line.split()[0] for line in printed[1:]] == ["data.yaml", "labels/", "manifest.json", "images/"]
    assert printed[2].endswith("3 label files, 4 polygons") and " 3 image files, " in printed[4]
    assert sorted(p.name for p in out.iterdir()) == ["data.yaml", "images", "labels", "manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["export"]["labels"] == "data.yaml" and manifest["export"]["images_dir"] == "images/"

    dataset = sv.DetectionDataset.from_yolo(
        images_directory_path=str(out / "images"),
        annotations_directory_path=str(out / "labels"),
        data_yaml_path=str(out / "data.yaml"),
        is_obb=False,
        force_masks=True,
    )
    assert dataset.classes == ["cat", "dog"] and len(dataset) == len(images)
    by_uri = {m.uri: m for m in images}
    made_of = {item["file_name"]: by_uri[item["key"]] for item in manifest["items"]}
    loaded_names = set()
    for path, image, detections in dataset:
        made = made_of[Path(path).name]
        loaded_names.add(Path(path).name)
        assert image.shape[:2] == (made.height, made.width)
        assert [dataset.classes[c] for c in detections.class_id] == made.labels
        for loaded, mask in zip(detections.mask, made.masks, strict=True):
            grown = mask.copy()
            grown[1:] |= mask[:-1]
            grown[:, 1:] |= grown[:, :-1]
            assert np.array_equal(loaded, grown)
    assert loaded_names == set(made_of)


def test_an_unknown_format_is_refused_before_anything_is_written(
    sqlite_catalog: Catalog, s3: Any, tmp_path: Path, version: tuple[int, list[MadeImage]]
) -> None:
    with pytest.raises(UnknownExportFormatError, match="export format 'voc' is not known; choose one of coco"):
        export_version(sqlite_catalog, s3, version[0], tmp_path / "voc", fmt="voc")
    assert not (tmp_path / "voc").exists()
