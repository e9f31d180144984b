"""The mask conversions of one pre-labelled photo: what each costs, and the alternatives, measured in one run.

    .venv/bin/python -m benchmarks.bench_masks --photos 16 --rounds 5

Per photo the pipeline turns the model's dense masks into COCO RLE for the catalog (the store thread:
``model.masks.masks_to_rles``) and, in the import, the catalog's COCO RLE into Label Studio's brush RLE
(``coco_counts`` then ``coco_counts_to_brush_rles``). Those two are the largest items of the worker's CPU per photo
(``benchmarks.bench_ceiling``), so this prints their cost beside the alternatives that could replace them, every one
checked byte-identical to the product's output on the same masks:

* ``coco/pycocotools``: pycocotools' ``encode`` of a column-major copy of the stack (the product's way before the
  third pass of issue 27);
* ``brush/dense``: the brush RLE straight from the dense masks (row-major change points of the whole stack, then the
  product's bit packer), as the store thread could make it while the masks are still in memory;
* ``brush/row-rle``: pycocotools' ``encode`` of the stack's transposed view, which is its *row-major* RLE without a
  copy, parsed and packed; what the import would cost if the catalog held row-major runs;
* ``brush/pack``: the bit packer alone, on runs already known: the floor of any brush path in numpy.

Masks: the shipped model's (``maskloop/shapes-tiny``, everything mode, no score filter: ~50 full-size masks per
photo), cached where ``benchmarks.bench_ceiling`` caches them. Milliseconds of CPU (this thread) per photo, median of
``--rounds`` rounds over the same photos, alternatives interleaved within each round.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from benchmarks.bench_ceiling import DATA, MASKS_CACHE, photo_paths, precompute_masks, strategy_params
from model.masks import masks_to_rles
from storage.labelstudio.brush import coco_counts, coco_counts_to_brush_rles, encode_brush_streams


def _stack(masks: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    n, height, width = masks.shape
    return np.ascontiguousarray(masks).view(np.uint8).reshape(n, height * width), n, height, width


def pycocotools_column_major(masks: np.ndarray) -> list[str]:
    """COCO RLE as pycocotools makes it: from a column-major (H, W, N) copy."""
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [r["counts"].decode("ascii") for r in encoded]


def dense_runs(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Row-major runs of every mask (lengths, 0/255 values, owner) from the dense stack."""
    flat, n, height, width = _stack(masks)
    total = height * width
    changes = np.flatnonzero(flat[:, 1:] != flat[:, :-1])  # indices into (n, total - 1), row-major: sorted
    bounds = np.sort(
        np.concatenate((np.arange(n) * total, (changes // (total - 1)) * total + changes % (total - 1) + 1))
    )
    lengths = np.diff(np.append(bounds, n * total))
    return lengths, flat.reshape(-1)[bounds] * np.uint8(255), bounds // total, total


def brush_from_dense(masks: np.ndarray) -> list[list[int]]:
    lengths, values, owner, total = dense_runs(masks)
    return encode_brush_streams(lengths * 4, values, owner, np.full(masks.shape[0], total * 4))


def row_major_rles(masks: np.ndarray) -> list[bytes]:
    """pycocotools' RLE of the transposed view: the stack's row-major runs, compressed, without a copy."""
    flat, n, height, width = _stack(masks)
    return [r["counts"] for r in mask_utils.encode(flat.reshape(n, height, width).transpose(2, 1, 0))]


def brush_from_row_rles(counts: list[bytes], total: int) -> list[list[int]]:
    runs = [coco_counts(c) for c in counts]
    sizes = [len(r) for r in runs]
    lengths = np.concatenate(runs)
    owner = np.repeat(np.arange(len(runs)), sizes)
    index = np.arange(lengths.shape[0]) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    keep = lengths > 0  # a first run of 0 zeros: the mask starts on
    values = np.where(index % 2 == 1, np.uint8(255), np.uint8(0))
    return encode_brush_streams(lengths[keep] * 4, values[keep], owner[keep], np.full(len(runs), total * 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=16, help="coco128 photos (at most 32: the cached masks)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--points-per-side", type=int, default=8)
    parser.add_argument("--masks-cache", type=Path, default=MASKS_CACHE)
    args = parser.parse_args()

    paths = photo_paths(DATA, args.photos)
    stored = precompute_masks(paths, strategy_params(args.points_per_side), args.masks_cache, threads=1)
    stacks = [np.ascontiguousarray(inst.masks) for inst in stored.values()]
    coco = [[r["counts"] for r in masks_to_rles(m)] for m in stacks]
    parsed = [[coco_counts(c) for c in counts] for counts in coco]
    row_rles = [row_major_rles(m) for m in stacks]
    runs = [dense_runs(m) for m in stacks]
    brush = [coco_counts_to_brush_rles(p, *m.shape[1:]) for p, m in zip(parsed, stacks, strict=True)]
    for k, m in enumerate(stacks):  # every alternative gives the product's bytes
        assert pycocotools_column_major(m) == coco[k], "pycocotools' COCO RLE differs"
        assert brush_from_dense(m) == brush[k], "brush from dense masks differs"
        assert brush_from_row_rles(row_rles[k], m.shape[1] * m.shape[2]) == brush[k], "brush from row RLE differs"

    cases: dict[str, Callable[[int], Any]] = {
        "coco (product: masks_to_rles)": lambda k: masks_to_rles(stacks[k]),
        "coco/pycocotools (column-major copy)": lambda k: pycocotools_column_major(stacks[k]),
        "brush (product: parse + convert)": lambda k: coco_counts_to_brush_rles(
            [coco_counts(c) for c in coco[k]], *stacks[k].shape[1:]
        ),
        "  of which parse (coco_counts)": lambda k: [coco_counts(c) for c in coco[k]],
        "  of which convert (coco_counts_to_brush_rles)": lambda k: coco_counts_to_brush_rles(
            parsed[k], *stacks[k].shape[1:]
        ),
        "brush/dense": lambda k: brush_from_dense(stacks[k]),
        "brush/row-rle: pycocotools row-major encode": lambda k: row_major_rles(stacks[k]),
        "brush/row-rle: parse + pack": lambda k: brush_from_row_rles(row_rles[k], runs[k][3]),
        "brush/pack (runs known)": lambda k: encode_brush_streams(
            runs[k][0] * 4, runs[k][1], runs[k][2], np.full(stacks[k].shape[0], runs[k][3] * 4)
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, case in cases.items():
            start = time.thread_time()
            for k in range(len(stacks)):
                case(k)
            times[name].append((time.thread_time() - start) / len(stacks) * 1000)
    masks = statistics.median(m.shape[0] for m in stacks)
    coco_runs = statistics.median(sum(len(p) for p in photo) for photo in parsed)
    row_runs = statistics.median(len(r[0]) for r in runs)
    brush_kb = statistics.median(sum(len(b) for b in photo) / 1024 for photo in brush)
    print(
        f"{len(stacks)} photos, {args.rounds} rounds; per photo (median): {masks:.0f} masks, {coco_runs:.0f} COCO "
        f"(column) runs, {row_runs:.0f} row runs, {brush_kb:.0f} KB of brush RLE; every alternative byte-identical"
    )
    print(f"{'conversion':50s} {'CPU ms per photo':>18s}  range")
    for name, values in times.items():
        print(f"{name:50s} {statistics.median(values):18.2f}  {min(values):.2f}-{max(values):.2f}")


if __name__ == "__main__":
    main()
