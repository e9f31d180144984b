"""The exporter table: every row writes the files it names, an unknown name lists the known ones, and a frozen
COCO decodes into the Instances the exporters are given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.errors import MaskloopError
from model.instances import Instances
from storage.formats.coco import CocoSource, build_coco
from storage.formats.exporter import CocoItems, ExportSource
from storage.formats.registry import EXPORTERS, UnknownExportFormatError, exporter_for

H, W = 12, 16


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _coco(polygons: bool = False) -> dict:
    holed = _box(2, 10, 2, 12)
    holed[4:7, 5:9] = False
    cat_dog = Instances(masks=np.stack([holed, _box(0, 3, 13, 16)]), labels=["cat", "dog"])
    video = [{"label": "dog", "track_id": 1, "boxes": [[3, 1.0, 2.0, 5.0, 6.0], [4, 0.0, 0.0, 0.0, 6.0]]}]  # 4: no box
    sources = [
        CocoSource(7, "7_a.png", W, H, -1, "image", cat_dog.to_records()),
        CocoSource(8, "8_empty.png", W, H, -1, "image", []),
        CocoSource(9, "9_v.mp4", W, H, -1, "video", video),
    ]
    return build_coco(sources, ["cat", "dog"], polygons=polygons)


@pytest.mark.parametrize("polygons", [False, True], ids=["rle", "polygons"])
def test_coco_items_decode_every_image_and_frame_into_instances(polygons: bool) -> None:
    coco = _coco(polygons)
    items = CocoItems(coco)
    assert len(items) == 3
    first, again = list(items), list(items)  # iterable more than once
    assert [(i.file_name, i.width, i.height, i.frame_index, len(i.instances)) for i in first] == [
        ("7_a.png", W, H, -1, 2),
        ("8_empty.png", W, H, -1, 0),
        ("9_v.mp4#frame=3", W, H, 3, 1),
    ]
    assert [i.file_name for i in again] == [i.file_name for i in first]
    holed = _box(2, 10, 2, 12)
    holed[4:7, 5:9] = False
    image, empty, frame = first
    assert image.instances.labels == ["cat", "dog"]
    assert np.array_equal(image.instances.masks, np.stack([holed, _box(0, 3, 13, 16)]))
    assert image.instances.boxes.tolist() == [[2, 2, 12, 10], [13, 0, 16, 3]]  # type: ignore[union-attr]
    assert empty.instances.image_size == (H, W)
    assert frame.instances.labels == ["dog"] and np.array_equal(frame.instances.masks[0], _box(2, 6, 1, 5))


@pytest.mark.parametrize("name", sorted(EXPORTERS))
def test_every_exporter_writes_the_label_file_it_names_and_every_file_it_lists(name: str, tmp_path: Path) -> None:
    exporter = EXPORTERS[name]
    coco = _coco()
    files = exporter.write(ExportSource(("cat", "dog"), CocoItems(coco), coco), tmp_path)
    assert (tmp_path / exporter.labels).is_file()
    assert files and all((tmp_path / f.name).exists() for f in files)
    assert exporter.images_dir and "/" not in exporter.images_dir
    assert not (tmp_path / exporter.images_dir).exists()  # image files are export_version's job


def test_an_unknown_format_is_refused_naming_the_known_ones() -> None:
    assert exporter_for("coco") is EXPORTERS["coco"]
    with pytest.raises(UnknownExportFormatError) as refused:
        exporter_for("voc")
    assert str(refused.value) == f"export format 'voc' is not known; choose one of {', '.join(EXPORTERS)}"
    assert {"coco", "yolo-seg"} <= set(EXPORTERS)
    assert issubclass(UnknownExportFormatError, MaskloopError)


def test_the_coco_exporter_needs_the_frozen_coco(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="writes a version's frozen COCO"):
        EXPORTERS["coco"].write(ExportSource(("cat",), []), tmp_path)
