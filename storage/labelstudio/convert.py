"""Pure converters between maskloop's :class:`Instances` and Label Studio result dicts.

* Brush masks use Label Studio's brush RLE (the ``rle-pack`` bit format the editor decodes, over the RGBA-expanded
  mask). :func:`mask_to_brush_rle` is a vectorised numpy encoder that produces exactly the bytes of
  ``label_studio_sdk.converter.brush.mask2rle`` (proved by ``tests/storage/labelstudio/test_convert.py``) but
  without its per-run Python string building; :func:`brush_rle_to_mask` decodes any valid stream (including the
  literal blocks the editor writes).
* Polygons and rectangles are in percent of the image size, as the editor stores them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
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
    # Each field (<= 32 bits) lands in a 5-byte window at its byte offset; fields never share a bit, so the bytes
    # of overlapping windows add up without carries. The SDK always pads: a whole zero byte when already aligned.
    offsets = np.cumsum(all_bits) - all_bits
    size = int(offsets[-1] + all_bits[-1]) // 8 + 1
    window = all_vals << (np.uint64(40) - (offsets % 8 + all_bits).astype(np.uint64))
    byte_shifts = np.arange(32, -1, -8, dtype=np.uint64)
    parts = ((window[:, None] >> byte_shifts) & np.uint64(0xFF)).astype(np.float64)
    where = (offsets // 8)[:, None] + np.arange(5)
    packed = np.bincount(where.ravel(), weights=parts.ravel(), minlength=size)[:size]
    return packed.astype(np.uint8).tolist()


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


# -- COCO RLE -> brush RLE, without decoding the mask -----------------------------------------------------------
def coco_counts(counts: str | bytes | Sequence[int]) -> np.ndarray:
    """Run lengths of a COCO RLE ``counts`` (pycocotools' compressed string, or a plain list), first run of 0s."""
    if not isinstance(counts, (str, bytes)):
        return np.asarray(counts, np.int64)
    data = np.frombuffer(counts.encode("ascii") if isinstance(counts, str) else counts, np.uint8).astype(np.int64)
    data -= 48
    if data.size == 0:
        return np.zeros(0, np.int64)
    if data.min() < 0 or data.max() > 63 or data[-1] & 0x20:
        raise ValueError("COCO RLE counts string is not pycocotools' compressed format")
    last = (data & 0x20) == 0  # a value's last 5-bit group (pycocotools' rleFrString)
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    k = np.arange(data.size) - np.repeat(starts, ends - starts + 1)  # group position inside its value
    values = np.add.reduceat((data & 0x1F) << (5 * k), starts)
    negative = (data[ends] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (k[ends][negative] + 1))  # sign extension of the last group
    out = values.copy()  # from the 4th value on, each is a delta to the one two before
    out[1::2] = np.cumsum(values[1::2])
    out[2::2] = np.cumsum(values[2::2])
    return out


def _odd(keys: np.ndarray) -> np.ndarray:
    """The sorted keys that occur an odd number of times (toggles at one place cancel in pairs)."""
    uniq, times = np.unique(keys, return_counts=True)
    return uniq[times % 2 == 1]


def _on_spans(group: np.ndarray, rows: np.ndarray, start_on: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, ...]:
    """Rows where a 0/1 signal per group is 1, as (group, row) pairs: the signal of group ``g`` starts at ``lo``
    as ``start_on[g]`` and toggles at the (sorted, unique per group) ``rows`` of that group, up to ``hi``."""
    n = start_on.shape[0]
    flips = np.bincount(group, minlength=n) % 2
    end_on = start_on.astype(np.int64) ^ flips
    g = np.concatenate((np.flatnonzero(start_on), group, np.flatnonzero(end_on)))
    r = np.concatenate((np.full(int(start_on.sum()), lo), rows, np.full(int(end_on.sum()), hi)))
    order = np.lexsort((r, g))
    g, r = g[order], r[order]
    begin, stop, owner = r[0::2], r[1::2], g[0::2]  # each group's markers pair up: [begin, stop) is on
    lengths = stop - begin
    total = int(lengths.sum())
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(owner, lengths), np.arange(total) - offsets + np.repeat(begin, lengths)


def coco_rle_to_brush_rle(rle: Mapping[str, Any]) -> list[int]:
    """Label Studio brush RLE of one COCO RLE mask (``{"size": [H, W], "counts": ...}``), byte-identical to
    ``mask_to_brush_rle(rle_to_mask(rle))`` but computed from the runs alone: COCO's runs go down the columns,
    the brush's along the rows, and only the pixels where a row changes value are enumerated (no H x W array)."""
    height, width = (int(v) for v in rle["size"])
    return _brush_from_counts(coco_counts(rle["counts"]), height, width)


def _brush_from_counts(counts: np.ndarray, height: int, width: int) -> list[int]:
    total = height * width
    if int(counts.sum()) != total or (counts < 0).any():
        raise ValueError(f"COCO RLE counts cover {int(counts.sum())} pixels, its size {height}x{width} is {total}")
    if total == 0:
        return mask_to_brush_rle(np.zeros((height, width), bool))
    toggles = _odd(np.cumsum(counts)[:-1])  # column-major places where the value changes
    first = bool(toggles.size and toggles[0] == 0)
    toggles = toggles[toggles > 0]
    col, row = toggles // height, toggles % height
    inner = row > 0  # changes inside a column; the others change the value at the top of a column
    ecol, erow = col[inner], row[inner]
    top = first ^ (np.searchsorted(toggles, np.arange(width) * height, side="right") % 2).astype(bool)  # M[0, c]
    # column c against column c-1 (c >= 1): differs at row 0 when their tops differ, then flips where either flips
    pair_keys = np.concatenate(
        (
            ecol[ecol >= 1] * (height + 1) + erow[ecol >= 1],
            (ecol[ecol < width - 1] + 1) * (height + 1) + erow[ecol < width - 1],
        )
    )
    pair_keys = _odd(pair_keys)
    pc, pr = _on_spans(pair_keys // (height + 1) - 1, pair_keys % (height + 1), top[1:] != top[:-1], 0, height)
    positions = [pr * width + pc + 1]
    if height > 1:  # column 0 of row r against column W-1 of row r-1, for r >= 1
        at0 = ecol == 0
        last = ecol == width - 1
        wrap_rows = _odd(np.concatenate((erow[at0 & (erow >= 2)], erow[last & (erow <= height - 2)] + 1)))
        bottom_prev = bool(top[width - 1])
        first_row1 = bool(top[0]) ^ bool(np.any(at0 & (erow == 1)))
        _, wr = _on_spans(
            np.zeros(wrap_rows.shape[0], np.int64), wrap_rows, np.array([first_row1 != bottom_prev]), 1, height
        )
        positions.append(wr * width)
    bounds = np.sort(np.concatenate(positions))
    lengths = np.diff(np.concatenate(([0], bounds, [total])))
    values = np.where(np.arange(lengths.shape[0]) % 2 == 0, np.uint8(255 * first), np.uint8(255 * (not first)))
    return encode_brush_runs(lengths * 4, values, total * 4)


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
    height, width = instances.image_size
    results: list[dict[str, Any]] = []
    for i in range(len(instances)):
        mask = instances.masks[i]
        results += _regions(
            _Region(i, instances.labels[i], float(instances.scores[i]), instances.boxes[i], bool(mask.any())),  # type: ignore[index]
            height,
            width,
            partial(mask_to_brush_rle, mask),
            partial(np.asarray, mask),
            to_name=to_name,
            brush_from=brush_from,
            polygon_from=polygon_from,
            rectangle_from=rectangle_from,
            polygon_tolerance=polygon_tolerance,
            id_prefix=id_prefix,
        )
    return results


def records_to_results(
    records: Sequence[Mapping[str, Any]],
    height: int,
    width: int,
    *,
    to_name: str = "image",
    brush_from: str | None = "brush",
    polygon_from: str | None = None,
    rectangle_from: str | None = None,
    polygon_tolerance: float = 1.0,
    id_prefix: str = "",
) -> list[dict[str, Any]]:
    """:func:`instances_to_results` of ``Instances.from_records(records, height, width)``, the same results, but
    brush regions come from each record's COCO RLE directly (:func:`coco_rle_to_brush_rle`): no mask is decoded
    unless polygons are asked for."""
    from model.masks import rle_to_mask

    results: list[dict[str, Any]] = []
    for i, record in enumerate(records):
        rle = record["rle"]
        if [int(v) for v in rle["size"]] != [height, width]:
            raise ValueError(f"records_to_results: RLE size {rle['size']} does not match image ({height}, {width})")
        counts = coco_counts(rle["counts"])
        score = float(np.float32(record["score"]))  # as Instances holds it
        results += _regions(
            _Region(i, str(record["label"]), score, record["box"], bool(counts[1::2].any())),
            height,
            width,
            partial(_brush_from_counts, counts, height, width),
            partial(rle_to_mask, rle),
            to_name=to_name,
            brush_from=brush_from,
            polygon_from=polygon_from,
            rectangle_from=rectangle_from,
            polygon_tolerance=polygon_tolerance,
            id_prefix=id_prefix,
        )
    return results


@dataclass(frozen=True)
class _Region:
    index: int
    label: str
    score: float
    box: Sequence[float]
    has_pixels: bool


def _regions(
    region: _Region,
    height: int,
    width: int,
    brush: Callable[[], list[int]],
    mask: Callable[[], np.ndarray],
    *,
    to_name: str,
    brush_from: str | None,
    polygon_from: str | None,
    rectangle_from: str | None,
    polygon_tolerance: float,
    id_prefix: str,
) -> list[dict[str, Any]]:
    """The results of one instance: brush and polygons when it has pixels, a rectangle from its box."""
    from model.masks import mask_to_polygons

    i, label, score = region.index, region.label, region.score
    results: list[dict[str, Any]] = []
    if brush_from and region.has_pixels:
        r = _base(f"{id_prefix}b{i}", BRUSH, brush_from, to_name, height, width, score)
        r["value"] = {"format": "rle", "rle": brush(), BRUSH: [label]}
        results.append(r)
    if polygon_from and region.has_pixels:
        for k, poly in enumerate(mask_to_polygons(mask(), tolerance=polygon_tolerance)):
            pts = np.asarray(poly, np.float64).reshape(-1, 2) * (100.0 / width, 100.0 / height)
            r = _base(f"{id_prefix}p{i}_{k}", POLYGON, polygon_from, to_name, height, width, score)
            r["value"] = {"points": pts.tolist(), "closed": True, POLYGON: [label]}
            results.append(r)
    if rectangle_from:
        r = _base(f"{id_prefix}r{i}", RECTANGLE, rectangle_from, to_name, height, width, score)
        r["value"] = {**box_to_percent(region.box, height, width), RECTANGLE: [label]}
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
