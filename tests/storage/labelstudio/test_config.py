"""Labeling configs generated from class lists, and result validation (Label Studio drops mismatches silently)."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.label_interface import LabelInterface

from model.instances import Instances
from storage.labelstudio.config import LabelConfig, image_label_config, label_config_for, video_label_config
from storage.labelstudio.convert import instances_to_results

CLASSES = ["cat", "dog", 'big "bird" & <co>']


def _brush_result(label: str = "cat", **overrides: object) -> dict:
    masks = np.zeros((1, 8, 8), bool)
    masks[0, 2:5, 2:6] = True
    result = instances_to_results(Instances(masks=masks, labels=[label]))[0]
    result.update(overrides)
    return result


def test_image_config_lists_every_class_for_every_enabled_tag_and_escapes_xml() -> None:
    config = LabelConfig.parse(image_label_config(CLASSES, brush=True, polygons=True, rectangles=True))
    assert dict(config.objects) == {"image": "image"}
    assert {name: (c.tag, c.to_name) for name, c in config.controls.items()} == {
        "brush": ("BrushLabels", "image"),
        "polygon": ("PolygonLabels", "image"),
        "rect": ("RectangleLabels", "image"),
    }
    assert all(c.labels == frozenset(CLASSES) for c in config.controls.values())


def test_generated_configs_parse_in_the_label_studio_sdk() -> None:
    for xml in (image_label_config(CLASSES, polygons=True, rectangles=True), video_label_config(CLASSES)):
        li = LabelInterface(xml)
        names = ["brush", "polygon", "rect"] if "<Image" in xml else ["videoLabels"]
        for name in names:
            assert li.get_control(name).labels == CLASSES


def test_valid_brush_result_passes_our_validation_and_the_sdks() -> None:
    xml = image_label_config(CLASSES)
    result = _brush_result("dog")
    LabelConfig.parse(xml).validate_results([result])
    assert LabelInterface(xml).validate_prediction({"result": [result]}, return_errors=True) == []
    bad = {**result, "value": {**result["value"], "brushlabels": ["zebra"]}}
    assert LabelInterface(xml).validate_prediction({"result": [bad]}, return_errors=True)  # the SDK agrees it is bad


def test_video_config_has_video_rectangle_and_labels() -> None:
    config = LabelConfig.parse(video_label_config(["car"], framerate=30))
    assert config.data_key == "video"
    assert config.controls["box"].tag == "VideoRectangle"
    track = {
        "id": "t1",
        "type": "videorectangle",
        "from_name": "box",
        "to_name": "video",
        "value": {
            "sequence": [
                {"frame": 1, "x": 1, "y": 1, "width": 5, "height": 5, "enabled": True, "rotation": 0, "time": 0.0}
            ],
            "labels": ["car"],
            "framesCount": 10,
            "duration": 0.33,
        },
    }
    config.validate_result(track)
    with pytest.raises(ValueError, match="unknown label"):
        config.validate_result({**track, "value": {**track["value"], "labels": ["bus"]}})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"value": {"format": "rle", "rle": [1], "brushlabels": ["zebra"]}}, "unknown label.*zebra"),
        ({"from_name": "mask"}, "from_name 'mask' is not a control tag"),
        ({"to_name": "img"}, "to_name 'img' does not match"),
        ({"type": "polygonlabels"}, "type 'polygonlabels' does not match"),
        ({"value": {"format": "rle", "rle": [1], "brushlabels": []}}, "must list one label"),
        ({"value": {"format": "png", "rle": [1], "brushlabels": ["cat"]}}, "format 'rle'"),
        ({"original_width": 0}, "original_width must be a positive int"),
        ({"value": "cat"}, "'value' must be a dict"),
    ],
)
def test_invalid_results_are_rejected_with_a_named_reason(overrides: dict, message: str) -> None:
    config = LabelConfig.parse(image_label_config(CLASSES))
    with pytest.raises(ValueError, match=message):
        config.validate_result(_brush_result(**overrides))


def test_duplicate_result_ids_are_rejected() -> None:
    config = LabelConfig.parse(image_label_config(CLASSES))
    with pytest.raises(ValueError, match="unique"):
        config.validate_results([_brush_result(), _brush_result()])


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ([], "at least one class"),
        (["cat", "cat"], "duplicates \\['cat'\\]"),
        ([" cat"], "surrounding spaces"),
        ([""], "non-empty"),
    ],
)
def test_bad_class_lists_are_rejected(classes: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        image_label_config(classes)


def test_label_config_for_rejects_unknown_media_kind_and_no_tags() -> None:
    with pytest.raises(ValueError, match="media_kind must be one of"):
        label_config_for("audio", ["x"])
    with pytest.raises(ValueError, match="at least one of brush"):
        image_label_config(["x"], brush=False)
    with pytest.raises(ValueError, match="not valid XML"):
        LabelConfig.parse("<View><Image")
