"""Pure converters between maskloop's :class:`Instances` and Label Studio result dicts.

* Brush masks use Label Studio's brush RLE (the ``rle-pack`` bit format the editor decodes, over the RGBA-expanded
  mask). :func:`mask_to_brush_rle` is a vectorised numpy encoder that produces exactly the bytes of
  ``label_studio_sdk.converter.brush.mask2rle`` (proved by ``tests/storage/labelstudio/test_convert.py``) but
  without its per-run Python string building; :func:`brush_rle_to_mask` decodes any valid stream (including the
  literal blocks the editor writes).
* Polygons and rectangles are in percent of the image size, as the editor stores them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from model.instances import Instances, Prompt

BRUSH, POLYGON, RECTANGLE = "brushlabels", "polygonlabels", "rectanglelabels"
_WORD = 8
_RLE_SIZES = (3, 4, 8, 16)
_MAX_CHUNK = 2**16


# -- brush RLE ---------------------------------------------------------------------------------------------------
def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths and values of a 1-D array."""
    n = flat.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.uint8)
    ends = np.append(np.flatnonzero(flat[1:] != flat[:-1]), n - 1)
    lengths = np.diff(np.append(-1, ends))
    return lengths.astype(np.int64), flat[ends].astype(np.uint8)


def encode_brush_runs(lengths: np.ndarray, values: np.ndarray, total: int) -> list[int]:
    """Label Studio brush RLE bytes for ``total`` uint8 words given as runs (same output as the SDK's encode_rle)."""
    lengths = np.asarray(lengths, np.int64)
    values = np.asarray(values, np.uint64)
    # Runs longer than 256 use 16-bit length fields; the SDK splits runs over 2**16 into 2**16-long chunks first.
    chunks = np.where(lengths > 256, -(-lengths // _MAX_CHUNK), 1)
    run_of = np.repeat(np.arange(lengths.shape[0]), chunks)
    starts = np.cumsum(chunks) - chunks
    pos = np.arange(run_of.shape[0]) - starts[run_of]
    last = pos == chunks[run_of] - 1
    big = lengths[run_of] > 256
    tok_len = np.where(big & ~last, _MAX_CHUNK, lengths[run_of] - _MAX_CHUNK * (chunks[run_of] - 1)).astype(np.uint64)
    val = values[run_of]
    one = np.uint64(1)
    # token = [series flag][size index (2 bits)][length-1][value (8 bits)]
    size_idx = np.select([~big & (tok_len <= 8), ~big & (tok_len <= 16), ~big], [0, 1, 2], 3).astype(np.uint64)
    len_bits = np.array(_RLE_SIZES, np.uint64)[size_idx.astype(np.int64)]
    single = ~big & (tok_len == 1)
    flag = np.where(single, np.uint64(0), one)
    tokens = (flag << (np.uint64(2) + len_bits + np.uint64(_WORD))) | (size_idx << (len_bits + np.uint64(_WORD)))
    tokens |= (np.where(single, np.uint64(0), tok_len - one) << np.uint64(_WORD)) | val
    nbits = (np.uint64(3 + _WORD) + len_bits).astype(np.int64)
    header_vals = np.array([total, _WORD - 1, *(s - 1 for s in _RLE_SIZES)], np.uint64)
    header_bits = np.array([32, 5, 4, 4, 4, 4], np.int64)
    all_vals = np.concatenate([header_vals, tokens])
    all_bits = np.concatenate([header_bits, nbits])
    shifts = np.arange(31, -1, -1, dtype=np.uint64)
    matrix = ((all_vals[:, None] >> shifts) & one).astype(np.uint8)
    keep = np.arange(32)[None, :] >= (32 - all_bits)[:, None]
    bits = matrix[keep]
    pad = 8 - bits.shape[0] % 8  # the SDK always pads, a whole zero byte when already aligned
    bits = np.concatenate([bits, np.zeros(pad, np.uint8)])
    return np.packbits(bits).tolist()


def mask_to_brush_rle(mask: np.ndarray) -> list[int]:
    """Brush RLE of one (H, W) mask: bool (True -> 255) or uint8; byte-identical to the SDK's ``mask2rle``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask_to_brush_rle expects one (H, W) mask, got shape {mask.shape}")
    if mask.dtype == np.bool_:
        flat = mask.ravel().view(np.uint8) * np.uint8(255)
    elif mask.dtype == np.uint8:
        flat = mask.ravel()
    else:
        raise ValueError(f"mask_to_brush_rle expects a bool or uint8 mask, got dtype {mask.dtype}")
    lengths, values = _runs(flat)
    return encode_brush_runs(lengths * 4, values, flat.shape[0] * 4)  # RGBA: every pixel repeated 4 times


def decode_brush_rle(rle: Sequence[int]) -> np.ndarray:
    """Decode Label Studio brush RLE to the flat uint8 word array it encodes (RGBA, length W*H*4)."""
    data = np.asarray(rle, dtype=np.uint8)
    bits = np.unpackbits(data).astype(np.int64)
    weights = 1 << np.arange(63, -1, -1, dtype=np.int64)
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > bits.shape[0]:
            raise ValueError(f"brush RLE truncated: needs bit {pos + n}, has {bits.shape[0]}")
        value = int(bits[pos : pos + n] @ weights[64 - n :])
        pos += n
        return value

    num = read(32)
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(num, np.uint8 if word <= 8 else np.uint32)
    i = 0
    while i < num:
        series = read(1)
        j = min(num, i + 1 + read(sizes[read(2)]))
        if series:
            out[i:j] = read(word)
        else:
            count = j - i
            if pos + count * word > bits.shape[0]:
                raise ValueError("brush RLE truncated inside a literal block")
            out[i:j] = bits[pos : pos + count * word].reshape(count, word) @ weights[64 - word :]
            pos += count * word
        i = j
    return out


def brush_rle_to_mask(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """(H, W) bool mask from brush RLE (the alpha channel, as the SDK's exporter reads it)."""
    flat = decode_brush_rle(rle)
    if flat.shape[0] != height * width * 4:
        raise ValueError(f"brush RLE holds {flat.shape[0]} words, expected {height}x{width}x4={height * width * 4}")
    return flat.reshape(height, width, 4)[:, :, 3] > 0


# -- Instances -> results ----------------------------------------------------------------------------------------
def _base(
    rid: str, kind: str, from_name: str, to_name: str, height: int, width: int, score: float | None
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "id": rid,
        "type": kind,
        "from_name": from_name,
        "to_name": to_name,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
    }
    if score is not None:
        result["score"] = float(score)
    return result


def box_to_percent(box: Sequence[float], height: int, width: int) -> dict[str, float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return {
        "x": 100.0 * x1 / width,
        "y": 100.0 * y1 / height,
        "width": 100.0 * (x2 - x1) / width,
        "height": 100.0 * (y2 - y1) / height,
        "rotation": 0.0,
    }


def instances_to_results(
    instances: Instances,
    *,
    to_name: str = "image",
    brush_from: str | None = "brush",
    polygon_from: str | None = None,
    rectangle_from: str | None = None,
    polygon_tolerance: float = 1.0,
    id_prefix: str = "",
) -> list[dict[str, Any]]:
    """Label Studio results (one region per instance per enabled tag) with per-region ``score``.

    Empty masks get no brush/polygon region (the editor cannot show them); rectangles come from ``boxes``.
    """
    from model.masks import mask_to_polygons

    height, width = instances.image_size
    results: list[dict[str, Any]] = []
    for i in range(len(instances)):
        label = instances.labels[i]  # type: ignore[index]
        score = float(instances.scores[i])  # type: ignore[index]
        mask = instances.masks[i]
        has_pixels = bool(mask.any())
        if brush_from and has_pixels:
            r = _base(f"{id_prefix}b{i}", BRUSH, brush_from, to_name, height, width, score)
            r["value"] = {"format": "rle", "rle": mask_to_brush_rle(mask), BRUSH: [label]}
            results.append(r)
        if polygon_from and has_pixels:
            for k, poly in enumerate(mask_to_polygons(mask, tolerance=polygon_tolerance)):
                pts = np.asarray(poly, np.float64).reshape(-1, 2) * (100.0 / width, 100.0 / height)
                r = _base(f"{id_prefix}p{i}_{k}", POLYGON, polygon_from, to_name, height, width, score)
                r["value"] = {"points": pts.tolist(), "closed": True, POLYGON: [label]}
                results.append(r)
        if rectangle_from:
            r = _base(f"{id_prefix}r{i}", RECTANGLE, rectangle_from, to_name, height, width, score)
            r["value"] = {**box_to_percent(instances.boxes[i], height, width), RECTANGLE: [label]}  # type: ignore[index]
            results.append(r)
    return results


# -- results -> Instances ----------------------------------------------------------------------------------------
def _result_size(result: Mapping[str, Any], height: int | None, width: int | None) -> tuple[int, int]:
    h = int(result.get("original_height") or height or 0)
    w = int(result.get("original_width") or width or 0)
    if h <= 0 or w <= 0:
        raise ValueError(
            f"Label Studio result {result.get('id')!r} has no original_width/original_height and no size was given"
        )
    return h, w


def result_to_mask(
    result: Mapping[str, Any], height: int | None = None, width: int | None = None
) -> tuple[str, np.ndarray]:
    """(label, (H, W) bool mask) of one brush, polygon or rectangle result."""
    from model.masks import polygons_to_mask

    kind = str(result.get("type", "")).lower()
    value = result.get("value") or {}
    h, w = _result_size(result, height, width)
    labels = value.get(kind) or []
    if len(labels) != 1:
        raise ValueError(
            f"Label Studio result {result.get('id')!r} must carry exactly one {kind} label, got {labels!r}"
        )
    if kind == BRUSH:
        if value.get("format", "rle") != "rle" or "rle" not in value:
            raise ValueError(f"brush result {result.get('id')!r} must have format 'rle' and an 'rle' list")
        return labels[0], brush_rle_to_mask(value["rle"], h, w)
    if kind == POLYGON:
        pts = np.asarray(value.get("points", []), np.float64).reshape(-1, 2) * (w / 100.0, h / 100.0)
        return labels[0], polygons_to_mask([pts.ravel().tolist()], h, w)
    if kind == RECTANGLE:
        if float(value.get("rotation", 0.0) or 0.0) != 0.0:
            raise ValueError(f"rectangle result {result.get('id')!r} is rotated; only axis-aligned boxes are supported")
        x1, y1 = value["x"] * w / 100.0, value["y"] * h / 100.0
        x2, y2 = x1 + value["width"] * w / 100.0, y1 + value["height"] * h / 100.0
        mask = np.zeros((h, w), bool)
        mask[max(0, round(y1)) : min(h, round(y2)), max(0, round(x1)) : min(w, round(x2))] = True
        return labels[0], mask
    raise ValueError(
        f"Label Studio result {result.get('id')!r} has unsupported type {kind!r}; expected one of {BRUSH}, {POLYGON}, {RECTANGLE}"
    )


def results_to_instances(results: Iterable[Mapping[str, Any]], height: int, width: int) -> Instances:
    """Human masks from an annotation's results (brush, polygon, rectangle regions; other result types ignored)."""
    masks, labels = [], []
    for result in results:
        if str(result.get("type", "")).lower() not in (BRUSH, POLYGON, RECTANGLE):
            continue
        label, mask = result_to_mask(result, height, width)
        if mask.shape != (height, width):
            raise ValueError(
                f"Label Studio result {result.get('id')!r} is {mask.shape}, the image is {(height, width)}"
            )
        masks.append(mask)
        labels.append(label)
    if not masks:
        return Instances.empty(height, width)
    return Instances(masks=np.stack(masks), labels=labels, prompts=[Prompt("human")] * len(masks))
