"""The task JSON an import posts (pure): what json would write, numpy scalars included, non-JSON values refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from storage.annotation.items import ImportItem
from storage.labelstudio.payload import ASSET_KEY, FRAME_KEY, VERSION_KEY, task_json


@pytest.mark.parametrize(
    "results",
    [
        [],
        [{"id": "b0", "type": "brushlabels", "value": {"format": "rle", "rle": [0, 0, 1, 255], "brushlabels": ["é"]}}],
        [{"id": "r0", "score": np.float64(0.5), "value": {"x": np.float32(12.5), "width": np.int64(3)}}],
        [{"id": "r0", "value": {"points": np.array([[1.5, 2.0], [3.0, 4.0]])}}],
    ],
    ids=["no regions", "brush with a non-ASCII label", "numpy scalars", "numpy array"],
)
def test_task_json_is_the_json_of_the_task_with_numpy_values_as_python_numbers(results: list) -> None:
    item = ImportItem(7, "http://127.0.0.1/a.jpg", results, "v1", 0.25, extra_data={"maskloop_time_s": 1.5})
    task = json.loads(task_json(item, results, "image"))
    assert task["data"] == {
        "maskloop_time_s": 1.5,
        "image": "http://127.0.0.1/a.jpg",
        ASSET_KEY: 7,
        FRAME_KEY: -1,
        VERSION_KEY: "v1",
    }
    plain = json.loads(json.dumps(results, default=lambda v: v.tolist()))
    assert task["predictions"] == [{"model_version": "v1", "result": plain, "score": 0.25}]


def test_task_json_refuses_a_value_json_cannot_hold() -> None:
    item = ImportItem(7, "http://127.0.0.1/a.jpg", [], "v1", None)
    with pytest.raises(TypeError, match="not JSON serializable: set"):
        task_json(item, [{"id": "x", "value": {1, 2}}], "image")
