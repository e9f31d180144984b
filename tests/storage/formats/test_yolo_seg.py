"""YOLO segmentation export: label lines from masks (tables with empty and degenerate rows), polygons that
rasterise back to exactly the mask, and a written folder read back by supervision's YOLO loader."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.instances import Instances
from model.masks import polygons_to_mask
from storage.formats.exporter import ExportItem, ExportSource
from storage.formats.yolo_seg import data_yaml, join_parts, label_lines, write_yolo_seg

CLASSES = ("cat", "dog")
INDEX = {name: i for i, name in enumerate(CLASSES)}
# The polygons are pixel-corner outlines, so a rasteriser that fills pixel centres inside the polygon (even-odd,
# pycocotools) gives the mask back exactly: 6 significant digits move a vertex by at most 5e-7 x the image size.
ROUND_TRIP_MIN_IOU = 1.0


def _mask(h: int, w: int, *boxes: tuple[int, int, int, int], holes: tuple[tuple[int, int, int, int], ...] = ()):  # noqa: ANN202
    """(H, W) bool with each (y0, y1, x0, x1) box set and each hole box cleared."""
    mask = np.zeros((h, w), bool)
    for y0, y1, x0, x1 in boxes:
        mask[y0:y1, x0:x1] = True
    for y0, y1, x0, x1 in holes:
        mask[y0:y1, x0:x1] = False
    return mask


# id: (masks of one image, labels, the exact lines or None where only their number is fixed)
ROWS = {
    "no-instances": ([], [], []),
    "one-pixel": ([_mask(8, 10, (2, 3, 3, 4))], ["cat"], ["0 0.3 0.25 0.4 0.25 0.4 0.375 0.3 0.375"]),
    "whole-image": ([np.ones((8, 10), bool)], ["dog"], ["1 0 0 1 0 1 1 0 1"]),
    "empty-mask-left-out": (
        [_mask(8, 10), _mask(8, 10, (0, 2, 0, 2))],
        ["cat", "dog"],
        ["1 0 0 0.2 0 0.2 0.25 0 0.25"],
    ),
    "mask-with-a-hole": ([_mask(12, 16, (2, 10, 2, 12), holes=((4, 7, 5, 9),))], ["cat"], None),
    "two-blobs-one-instance": ([_mask(12, 16, (1, 4, 1, 4), (6, 11, 8, 14))], ["dog"], None),
    "two-blobs-one-with-a-hole": (
        [_mask(12, 16, (1, 4, 1, 4), (6, 11, 8, 14), holes=((7, 9, 10, 12),))],
        ["cat"],
        None,
    ),
    "diagonal-pixels": ([_mask(6, 6, (1, 2, 1, 2), (2, 3, 2, 3), (3, 4, 3, 4))], ["cat"], None),
    "blob-in-the-far-corner-of-a-large-image": ([_mask(3000, 4000, (2990, 2997, 3991, 3999))], ["dog"], None),
    "two-instances-overlapping": (
        [_mask(20, 30, (0, 10, 0, 15)), _mask(20, 30, (5, 20, 10, 30))],
        ["dog", "cat"],
        None,
    ),
}


def _instances(masks: list[np.ndarray], labels: list[str], h: int = 8, w: int = 10) -> Instances:
    return Instances(masks=np.stack(masks), labels=labels) if masks else Instances.empty(h, w)


def _parse(line: str, height: int, width: int) -> tuple[int, list[float]]:
    """A strict reader of one line as Ultralytics documents it: an integer class index, then an even number (at
    least 6) of coordinates normalised to [0, 1]; returns the class and the polygon in pixels."""
    head, *coords = line.split(" ")
    values = [float(c) for c in coords]
    assert head.isdigit() and len(values) >= 6 and len(values) % 2 == 0, line
    assert all(0.0 <= v <= 1.0 for v in values), line
    return int(head), [v * (width if i % 2 == 0 else height) for i, v in enumerate(values)]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.mark.parametrize(("masks", "labels", "expected"), list(ROWS.values()), ids=list(ROWS))
def test_one_line_per_instance_with_a_mask_class_index_first(
    masks: list[np.ndarray], labels: list[str], expected: list[str] | None
) -> None:
    lines = label_lines(_instances(masks, labels), INDEX)
    kept = [label for mask, label in zip(masks, labels, strict=True) if mask.any()]
    assert [int(line.split()[0]) for line in lines] == [INDEX[label] for label in kept]
    if expected is not None:
        assert lines == expected


@pytest.mark.parametrize(("masks", "labels"), [row[:2] for row in ROWS.values()], ids=list(ROWS))
def test_each_polygon_rasterises_back_to_its_mask(masks: list[np.ndarray], labels: list[str]) -> None:
    instances = _instances(masks, labels)
    height, width = instances.image_size
    kept = [mask for mask in masks if mask.any()]
    lines = label_lines(instances, INDEX)
    assert len(lines) == len(kept)
    for line, mask in zip(lines, kept, strict=True):
        _, polygon = _parse(line, height, width)
        assert _iou(polygons_to_mask([polygon], height, width), mask) >= ROUND_TRIP_MIN_IOU


def test_random_masks_with_holes_and_many_parts_rasterise_back_exactly() -> None:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(7)
    for _ in range(40):
        height, width = (int(v) for v in rng.integers(5, 90, 2))
        mask = gaussian_filter(rng.random((height, width)), rng.uniform(0.7, 3)) > 0.52
        if not mask.any():
            continue
        (line,) = label_lines(Instances(masks=mask[None], labels=["cat"]), INDEX)
        _, polygon = _parse(line, height, width)
        assert _iou(polygons_to_mask([polygon], height, width), mask) >= ROUND_TRIP_MIN_IOU


def test_an_empty_mask_is_logged_and_a_label_outside_the_classes_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="storage.formats.yolo_seg"):
        assert label_lines(Instances(masks=np.zeros((1, 4, 4), bool), labels=["cat"]), INDEX) == []
    assert "instance 0 (cat) has an empty mask" in caplog.text
    with pytest.raises(ValueError, match=r"label 'bird' is not a class; expected one of \['cat', 'dog'\]"):
        label_lines(Instances(masks=np.ones((1, 4, 4), bool), labels=["bird"]), INDEX)


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([], []),
        ([[0, 0, 1, 0, 1, 1, 0, 1]], [0, 0, 1, 0, 1, 1, 0, 1]),
        (  # bridge from (1, 1), the first square's vertex nearest the second, to the second's nearest, (3, 3)
            [[0, 0, 1, 0, 1, 1, 0, 1], [4, 3, 4, 4, 3, 4, 3, 3]],
            [0, 0, 1, 0, 1, 1, 3, 3, 4, 3, 4, 4, 3, 4, 3, 3, 1, 1, 0, 1],
        ),
    ],
    ids=["no-parts", "one-part-unchanged", "two-parts-bridged-at-nearest-vertices"],
)
def test_parts_are_joined_by_a_zero_width_bridge(parts: list[list[float]], expected: list[float]) -> None:
    assert join_parts(parts) == expected


def test_data_yaml_names_classes_by_index_and_quotes_odd_names() -> None:
    import yaml

    text = data_yaml(["cat", 'say "hi": yes', "Ünï"])
    assert yaml.safe_load(text) == {
        "train": "images",
        "val": "images",
        "nc": 3,
        "names": {0: "cat", 1: 'say "hi": yes', 2: "Ünï"},
    }


def test_written_folder_reads_back_with_supervision(tmp_path: Path) -> None:
    """supervision rasterises with OpenCV at pixel centres, edges included: it reads each mask back with every
    pixel of it, grown by at most the one pixel row and column the outline's right and bottom edges fall on, plus
    the pixels OpenCV draws along a bridge between two parts."""
    import supervision as sv

    items = {  # file name -> (masks, labels)
        "7_a.png": ROWS["two-instances-overlapping"][:2],
        "8_b.jpg.png": ROWS["mask-with-a-hole"][:2],
        "9_c.png": ([_mask(20, 30, (3, 9, 4, 12), (12, 18, 20, 28))], ["cat"]),
        "10_empty.png": ([], []),
    }
    bridge_pixels = {"9_c.png": 9}  # the bridge from corner (x 12, y 9) to (20, 12): a line of 9 pixels
    sizes = {"10_empty.png": (16, 24)}
    (tmp_path / "images").mkdir()
    export_items = []
    for name, (masks, labels) in items.items():
        height, width = masks[0].shape if masks else sizes[name]
        Image.new("RGB", (width, height)).save(tmp_path / "images" / name, "PNG")
        export_items.append(ExportItem(name, width, height, -1, _instances(masks, labels, height, width)))
    frame = ExportItem("11_v.mp4#frame=3", 30, 20, 3, _instances([_mask(20, 30, (0, 5, 0, 5))], ["dog"]))
    files = write_yolo_seg(ExportSource(CLASSES, [*export_items, frame]), tmp_path)

    assert [(f.name, f.summary) for f in files] == [
        ("data.yaml", "YOLO segmentation: 2 classes, images in images/"),
        ("labels/", "4 label files, 4 polygons; 1 video frames left out (no image file)"),
    ]
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == [
        "10_empty.txt",
        "7_a.txt",
        "8_b.jpg.txt",
        "9_c.txt",
    ]
    assert (tmp_path / "labels" / "10_empty.txt").read_text() == ""

    dataset = sv.DetectionDataset.from_yolo(
        images_directory_path=str(tmp_path / "images"),
        annotations_directory_path=str(tmp_path / "labels"),
        data_yaml_path=str(tmp_path / "data.yaml"),
        is_obb=False,
        force_masks=True,
    )
    assert dataset.classes == list(CLASSES) and len(dataset) == len(items)
    for path, _, detections in dataset:
        masks, labels = items[Path(path).name]
        assert [CLASSES[c] for c in detections.class_id] == labels
        if not masks:
            continue
        for loaded, mask in zip(detections.mask, masks, strict=True):
            grown = mask.copy()
            grown[1:] |= mask[:-1]
            grown[:, 1:] |= grown[:, :-1]
            assert np.all(loaded[mask]), Path(path).name
            assert np.sum(loaded & ~grown) <= bridge_pixels.get(Path(path).name, 0), Path(path).name
