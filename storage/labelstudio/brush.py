"""Label Studio's brush RLE (pure numpy): the ``rle-pack`` bit format the editor decodes, over the RGBA-expanded
mask.

* :func:`mask_to_brush_rle` produces exactly the bytes of ``label_studio_sdk.converter.brush.mask2rle`` (proved by
  ``tests/storage/labelstudio/test_convert.py``) without its per-run Python string building;
  :func:`brush_rle_to_mask` decodes any valid stream (including the literal blocks the editor writes).
* :func:`coco_counts_to_brush_rles` makes the brush RLE of many masks of one image straight from their COCO RLE runs
  in one vectorised pass: no H x W array, and numpy's per-call overhead paid once per image, not once per mask
  (a photo's ~50 masks: ~0.6 ms each one by one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_WORD = 8
_RLE_SIZES = (3, 4, 8, 16)
_MAX_CHUNK = 2**16
_HEADER_BITS = (32, 5, 4, 4, 4, 4)


# -- encoding ----------------------------------------------------------------------------------------------------
def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths and values of a 1-D array."""
    n = flat.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.uint8)
    ends = np.append(np.flatnonzero(flat[1:] != flat[:-1]), n - 1)
    lengths = np.diff(np.append(-1, ends))
    return lengths.astype(np.int64), flat[ends].astype(np.uint8)


def encode_brush_streams(
    lengths: np.ndarray, values: np.ndarray, owner: np.ndarray, totals: np.ndarray
) -> list[list[int]]:
    """Brush RLE bytes of several streams at once (each the SDK's ``encode_rle`` of its words): stream ``s`` holds
    ``totals[s]`` uint8 words, given as the runs ``(lengths, values)`` whose ``owner`` is ``s``, in order (the runs
    are sorted by owner)."""
    lengths = np.asarray(lengths, np.int64)
    values = np.asarray(values, np.uint64)
    owner = np.asarray(owner, np.int64)
    totals = np.asarray(totals, np.uint64)
    n = totals.shape[0]
    # Runs longer than 256 use 16-bit length fields; the SDK splits runs over 2**16 into 2**16-long chunks first.
    chunks = np.where(lengths > 256, -(-lengths // _MAX_CHUNK), 1)
    run_of = np.repeat(np.arange(lengths.shape[0]), chunks)
    pos = np.arange(run_of.shape[0]) - (np.cumsum(chunks) - chunks)[run_of]
    last = pos == chunks[run_of] - 1
    big = lengths[run_of] > 256
    tok_len = np.where(big & ~last, _MAX_CHUNK, lengths[run_of] - _MAX_CHUNK * (chunks[run_of] - 1)).astype(np.uint64)
    one = np.uint64(1)
    # token = [series flag][size index (2 bits)][length-1][value (8 bits)]
    size_idx = np.select([~big & (tok_len <= 8), ~big & (tok_len <= 16), ~big], [0, 1, 2], 3).astype(np.uint64)
    len_bits = np.array(_RLE_SIZES, np.uint64)[size_idx.astype(np.int64)]
    single = ~big & (tok_len == 1)
    flag = np.where(single, np.uint64(0), one)
    tokens = (flag << (np.uint64(2) + len_bits + np.uint64(_WORD))) | (size_idx << (len_bits + np.uint64(_WORD)))
    tokens |= (np.where(single, np.uint64(0), tok_len - one) << np.uint64(_WORD)) | values[run_of]
    # every stream: its header's six fields, then its tokens
    header_vals = np.empty((n, len(_HEADER_BITS)), np.uint64)
    header_vals[:, 0] = totals
    header_vals[:, 1:] = [_WORD - 1, *(s - 1 for s in _RLE_SIZES)]
    field_owner = np.concatenate((np.repeat(np.arange(n), len(_HEADER_BITS)), owner[run_of]))
    order = np.argsort(field_owner, kind="stable")
    field_owner = field_owner[order]
    vals = np.concatenate((header_vals.ravel(), tokens))[order]
    bits = np.concatenate((np.tile(_HEADER_BITS, n), (np.uint64(3 + _WORD) + len_bits).astype(np.int64)))[order]
    # Each stream is padded to whole bytes (by a whole zero byte when already aligned, as the SDK does) and starts
    # on a 32-bit word of one buffer. A field (<= 32 bits) spans at most two words: its bits, shifted into a 64-bit
    # window, split into the two words' sums. Fields never share a bit, so the sums carry nothing.
    stream_bits = np.bincount(field_owner, weights=bits, minlength=n).astype(np.int64)
    sizes = stream_bits // 8 + 1
    words = -(-sizes // 4)
    base = np.cumsum(words) - words
    offsets = np.cumsum(bits) - bits - (np.cumsum(stream_bits) - stream_bits)[field_owner] + 32 * base[field_owner]
    window = vals << (np.uint64(64) - (offsets % 32 + bits).astype(np.uint64))
    word = offsets // 32
    total = int(words.sum()) + 1
    sums = np.bincount(word, weights=(window >> np.uint64(32)).astype(np.float64), minlength=total)
    sums += np.bincount(word + 1, weights=(window & np.uint64(0xFFFFFFFF)).astype(np.float64), minlength=total)
    packed = np.frombuffer(sums.astype(">u4").tobytes(), np.uint8).tolist()
    return [packed[4 * b : 4 * b + s] for b, s in zip(base.tolist(), sizes.tolist(), strict=True)]


def encode_brush_runs(lengths: np.ndarray, values: np.ndarray, total: int) -> list[int]:
    """Label Studio brush RLE bytes for ``total`` uint8 words given as runs (same output as the SDK's encode_rle)."""
    lengths = np.asarray(lengths, np.int64)
    return encode_brush_streams(lengths, values, np.zeros(lengths.shape[0], np.int64), np.array([total]))[0]


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


# -- decoding ----------------------------------------------------------------------------------------------------
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


# -- COCO RLE -> brush RLE, without decoding the masks -----------------------------------------------------------
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
    keys = np.sort(keys, kind="stable")  # timsort: the keys come as a few already sorted runs
    same = keys[1:] == keys[:-1]
    if not same.any():
        return keys
    starts = np.flatnonzero(np.concatenate(([True], ~same)))
    times = np.diff(np.append(starts, keys.shape[0]))
    return keys[starts[times % 2 == 1]]


def _on_spans(group: np.ndarray, rows: np.ndarray, start_on: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, ...]:
    """Rows where a 0/1 signal per group is 1, as (group, row) pairs: the signal of group ``g`` starts at ``lo``
    as ``start_on[g]`` and toggles at the (sorted, unique per group) ``rows`` of that group (lo < row < hi), up to
    ``hi``."""
    n = start_on.shape[0]
    flips = np.bincount(group, minlength=n) % 2
    end_on = start_on.astype(np.int64) ^ flips
    g = np.concatenate((np.flatnonzero(start_on), group, np.flatnonzero(end_on)))
    r = np.concatenate((np.full(int(start_on.sum()), lo), rows, np.full(int(end_on.sum()), hi)))
    key = np.sort(g * (hi + 1) + r, kind="stable")  # three sorted runs (starts, toggles, ends): timsort merges them
    g, r = key // (hi + 1), key % (hi + 1)
    begin, stop, owner = r[0::2], r[1::2], g[0::2]  # each group's markers pair up: [begin, stop) is on
    lengths = stop - begin
    total = int(lengths.sum())
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(owner, lengths), np.arange(total) - offsets + np.repeat(begin, lengths)


def coco_rle_to_brush_rle(rle: Mapping[str, Any]) -> list[int]:
    """Label Studio brush RLE of one COCO RLE mask (``{"size": [H, W], "counts": ...}``), byte-identical to
    ``mask_to_brush_rle(rle_to_mask(rle))``."""
    height, width = (int(v) for v in rle["size"])
    return coco_counts_to_brush_rles([coco_counts(rle["counts"])], height, width)[0]


def coco_counts_to_brush_rles(counts: Sequence[np.ndarray], height: int, width: int) -> list[list[int]]:
    """Brush RLE of each of an image's COCO RLE masks (run lengths from :func:`coco_counts`, first run of 0s),
    byte-identical to :func:`mask_to_brush_rle` of each decoded mask, in one pass over all of them.

    COCO's runs go down the columns, the brush's along the rows: only the pixels where a row changes value are
    enumerated, from the places where each column changes value, keyed by mask so that one call does them all."""
    n, total = len(counts), height * width
    if n == 0:
        return []
    flat = np.concatenate([np.asarray(c, np.int64) for c in counts])
    mask_of = np.repeat(np.arange(n), [len(c) for c in counts])
    sums = np.bincount(mask_of, weights=flat, minlength=n).astype(np.int64)
    wrong_sum, negative = np.flatnonzero(sums != total), mask_of[flat < 0]
    if wrong_sum.size:
        k = int(wrong_sum[0])
        raise ValueError(f"COCO RLE counts of mask {k} cover {sums[k]} pixels, its size {height}x{width} is {total}")
    if negative.size:
        raise ValueError(f"COCO RLE counts of mask {int(negative[0])} have a negative run")
    if total == 0:
        return [mask_to_brush_rle(np.zeros((height, width), bool)) for _ in range(n)]
    # column-major places where each mask's value changes, as sorted keys mask * total + place
    cum = np.cumsum(flat) - mask_of * total  # every mask before sums to total
    inside = cum < total
    keys = _odd(mask_of[inside] * total + cum[inside])
    at0 = keys % total == 0
    first = np.zeros(n, bool)
    first[keys[at0] // total] = True  # a first run of 0 zeros: the mask starts on
    keys = keys[~at0]
    own, place = keys // total, keys % total
    col, row = place // height, place % height
    # M[0, c] of every mask: its first value, flipped by each change up to the top of column c
    tops = (np.arange(n)[:, None] * total + np.arange(width) * height).ravel()
    flips = np.searchsorted(keys, tops, side="right").reshape(n, width)
    top = first[:, None] ^ ((flips - flips[:, :1]) % 2).astype(bool)
    inner = row > 0  # changes inside a column; the others change the value at the top of a column
    eown, ecol, erow = own[inner], col[inner], row[inner]
    positions = []
    if width > 1:  # column c against column c-1: differs at row 0 when their tops differ, then flips where either does
        lo, hi = ecol >= 1, ecol < width - 1
        pair = _odd(
            np.concatenate(
                (
                    (eown[lo] * (width - 1) + ecol[lo] - 1) * (height + 1) + erow[lo],
                    (eown[hi] * (width - 1) + ecol[hi]) * (height + 1) + erow[hi],
                )
            )
        )
        pg, pr = _on_spans(pair // (height + 1), pair % (height + 1), (top[:, 1:] != top[:, :-1]).ravel(), 0, height)
        positions.append((pg // (width - 1)) * total + pr * width + pg % (width - 1) + 1)
    if height > 1:  # column 0 of row r against column W-1 of row r-1, for r >= 1
        at_first, at_last = ecol == 0, ecol == width - 1
        wrap = _odd(
            np.concatenate(
                (
                    eown[at_first & (erow >= 2)] * (height + 1) + erow[at_first & (erow >= 2)],
                    eown[at_last & (erow <= height - 2)] * (height + 1) + erow[at_last & (erow <= height - 2)] + 1,
                )
            )
        )
        row1 = top[:, 0].copy()
        row1[eown[at_first & (erow == 1)]] ^= True  # M[1, 0]
        wg, wr = _on_spans(wrap // (height + 1), wrap % (height + 1), row1 != top[:, width - 1], 1, height)
        positions.append(wg * total + wr * width)
    # row-major runs of every mask: from each mask's start and each place where it changes to the next one
    bounds = np.sort(np.concatenate((np.arange(n) * total, *positions)))
    lengths = np.diff(np.append(bounds, n * total))
    run_mask = bounds // total
    index = np.arange(bounds.shape[0]) - np.searchsorted(bounds, run_mask * total)
    values = np.where(first[run_mask] ^ (index % 2 == 1), np.uint8(255), np.uint8(0))
    return encode_brush_streams(lengths * 4, values, run_mask, np.full(n, total * 4))
