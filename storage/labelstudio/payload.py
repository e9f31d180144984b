"""What a Label Studio import posts (pure): an :class:`ImportItem`'s results in the project's own format (brush RLE
straight from the catalog's COCO RLE, ``videorectangle`` keyframes placed by time, or results given as they are,
validated against the labeling config), its task JSON with the ``data`` keys that link it back to the catalog, and
batches sized by payload."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from model.instances import Instances
from model.tracks import VideoTracks
from storage.annotation.items import EncodedInstances, ImportItem
from storage.labelstudio.config import LabelConfig
from storage.labelstudio.convert import instances_to_results, records_to_results

ASSET_KEY, FRAME_KEY, VERSION_KEY = "maskloop_asset_id", "maskloop_frame_index", "maskloop_model_version"


def as_item(item: ImportItem | Sequence[Any]) -> ImportItem:
    if isinstance(item, ImportItem):
        return item
    return ImportItem(*item)


def results_for(item: ImportItem, config: LabelConfig) -> list[dict[str, Any]]:
    if isinstance(item.results, (Instances, EncodedInstances)):
        to_name = next(iter(config.objects))
        tags = {c.tag: c.name for c in config.controls.values() if c.to_name == to_name}
        if not {"BrushLabels", "PolygonLabels", "RectangleLabels"} & set(tags):
            raise ValueError(
                f"asset {item.asset_id}: Instances need an image project with brush/polygon/rectangle tags"
            )
        brush, polygon, rectangle = tags.get("BrushLabels"), tags.get("PolygonLabels"), tags.get("RectangleLabels")
        if isinstance(item.results, EncodedInstances):  # brush RLE straight from the catalog's COCO RLE
            encoded = item.results
            results = records_to_results(
                encoded.records,
                encoded.height,
                encoded.width,
                to_name=to_name,
                brush_from=brush,
                polygon_from=polygon,
                rectangle_from=rectangle,
            )
        else:
            results = instances_to_results(
                item.results, to_name=to_name, brush_from=brush, polygon_from=polygon, rectangle_from=rectangle
            )
    elif isinstance(item.results, VideoTracks):
        from storage.formats.ls_video import DEFAULT_FRAMERATE, to_ls_video_results

        boxes = [c for c in config.controls.values() if c.tag == "VideoRectangle"]
        if not boxes:
            raise ValueError(f"asset {item.asset_id}: VideoTracks need a video project with a VideoRectangle tag")
        framerate = config.framerates.get(boxes[0].to_name, DEFAULT_FRAMERATE)  # keyframes in the project's rate
        results = to_ls_video_results(
            item.results, from_name=boxes[0].name, to_name=boxes[0].to_name, framerate=framerate
        )
    else:
        results = [dict(r) for r in item.results]
    try:
        config.validate_results(results)
    except ValueError as exc:
        raise ValueError(f"asset {item.asset_id} frame {item.frame_index}: {exc}") from exc
    return results


def prediction_json(item: ImportItem, results: list[dict[str, Any]]) -> dict[str, Any]:
    pred: dict[str, Any] = {"model_version": item.model_version, "result": results}
    if item.task_score is not None:
        pred["score"] = float(item.task_score)
    return pred


def task_json(item: ImportItem, results: list[dict[str, Any]], data_key: str) -> bytes:
    data = {
        **item.extra_data,
        data_key: item.media_url,
        ASSET_KEY: item.asset_id,
        FRAME_KEY: item.frame_index,
        VERSION_KEY: item.model_version,
    }
    # orjson: a photo's ~50 brush masks are ~120k small ints, 9 ms per photo through json, 1 ms through orjson
    task = {"data": data, "predictions": [prediction_json(item, results)]}
    return orjson.dumps(task, default=_numpy_scalar, option=orjson.OPT_SERIALIZE_NUMPY)


def _numpy_scalar(value: Any) -> Any:
    """numpy scalars (numpy.float64 is a float to json, not to orjson) as Python numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def batch_indices(blobs: Sequence[bytes], max_bytes: int, max_tasks: int) -> list[list[int]]:
    batches: list[list[int]] = []
    current: list[int] = []
    size = 2
    for i, blob in enumerate(blobs):
        if len(blob) + 2 > max_bytes:
            raise ValueError(f"one task is {len(blob)} bytes of JSON, over the batch limit of {max_bytes} bytes")
        if current and (size + len(blob) + 1 > max_bytes or len(current) >= max_tasks):
            batches.append(current)
            current, size = [], 2
        current.append(i)
        size += len(blob) + 1
    if current:
        batches.append(current)
    return batches
