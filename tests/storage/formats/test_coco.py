"""pycocotools' own prints ("creating index...") never reach the terminal: load_coco and validate_coco capture them."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from storage.formats.coco import CocoSource, build_coco, load_coco, validate_coco


def _coco() -> dict[str, Any]:
    from model.instances import Instances

    mask = np.zeros((8, 10), bool)
    mask[2:6, 3:9] = True
    records = Instances(masks=mask[None], labels=["cat"]).to_records()
    return build_coco([CocoSource(1, "s3://b/a.png", 10, 8, -1, "image", records)], ["cat"])


def test_pycocotools_prints_when_left_alone(capfd: pytest.CaptureFixture[str]) -> None:
    """The premise: without the helper, indexing a COCO prints to stdout."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = _coco()
    coco.createIndex()
    assert "index created!" in capfd.readouterr().out


@pytest.mark.parametrize("load", [load_coco, validate_coco], ids=["load_coco", "validate_coco"])
def test_loading_a_coco_prints_nothing(
    load: Any, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG, logger="storage.formats.coco"):
        coco = load(_coco())
    assert len(coco.anns) == 1
    assert capfd.readouterr() == ("", "")
    assert "pycocotools printed: creating index... | index created!" in caplog.text
