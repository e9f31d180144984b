"""Pure converters: mask <-> COCO RLE, mask -> polygons (parts and holes), mask -> box; contour helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from model.contours import label_components, signed_area, simplify, trace_loops, trace_outer_contours
from model.masks import (
    mask_to_polygons,
    mask_to_rle,
    masks_to_boxes,
    masks_to_rles,
    polygons_to_mask,
    rle_area,
    rle_to_mask,
    rles_to_masks,
)


def _mask(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in rows], dtype=bool)


SHAPES = {
    "empty": _mask(["....", "....", "...."]),
    "full": _mask(["###", "###"]),
    "one_pixel": _mask(["#"]),
    "single_dot": _mask(["....", ".#..", "...."]),
    "two_parts": _mask(["##..#", "##..#", "....#"]),
    "ring_hole": _mask(["#####", "#...#", "#.#.#", "#...#", "#####"]),
    "two_holes": _mask(["#######", "#.##..#", "#.##..#", "#######"]),
    "diagonal_touch": _mask(["#...", ".#..", "..#.", "...#"]),
    "hole_touching_diagonally": _mask(["####", "#.##", "##.#", "####"]),
    "u_shape": _mask(["#.#", "#.#", "###"]),
    "border_frame": _mask(["####", "#..#", "####"]),
    "nested_island": _mask(["#######", "#.....#", "#.###.#", "#.#.#.#", "#.###.#", "#.....#", "#######"]),
    "checker": _mask(["#.#.", ".#.#", "#.#.", ".#.#"]),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_rle_round_trip_and_pycocotools_decode_equal_the_mask(name: str) -> None:
    mask = SHAPES[name]
    rle = mask_to_rle(mask)
    json.dumps(rle)  # JSON-serialisable
    assert rle["size"] == list(mask.shape)
    assert np.array_equal(rle_to_mask(rle), mask)
    coco_decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert np.array_equal(coco_decoded.astype(bool), mask)
    assert rle_area(rle) == int(mask.sum())


STACKS = {
    "1x1 off, on": np.array([[[False]], [[True]]]),
    "one row": np.array([[[True, False, True, True]], [[False, False, False, True]]]),
    "one column": np.array([[[True], [False], [True]], [[False], [True], [True]]]),
    "empty and full": np.stack([np.zeros((3, 4), bool), np.ones((3, 4), bool)]),
    "a run across columns": np.stack([SHAPES["border_frame"], ~SHAPES["border_frame"]]),
    "every shape of one size": np.stack([SHAPES[k] for k in ("ring_hole",)] * 2),
    "random": np.random.default_rng(3).random((6, 17, 23)) < 0.4,
    "photo-sized": np.random.default_rng(4).random((3, 480, 640)) < 0.01,
    "no pixels (0 x 5)": np.zeros((2, 0, 5), bool),
}


@pytest.mark.parametrize("name", list(STACKS))
def test_masks_to_rles_is_byte_identical_to_pycocotools_encode(name: str) -> None:
    masks = STACKS[name]
    expected = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    assert masks_to_rles(masks) == [{"size": list(masks.shape[1:]), "counts": r["counts"].decode()} for r in expected]


def test_batched_rles_round_trip_and_uncompressed_counts_decode() -> None:
    masks = np.stack([SHAPES["ring_hole"], np.zeros((5, 5), bool), np.ones((5, 5), bool)])
    assert np.array_equal(rles_to_masks(masks_to_rles(masks)), masks)
    assert masks_to_rles(np.zeros((0, 4, 4), bool)) == []
    uncompressed = {"size": [2, 3], "counts": [1, 2, 3]}  # column-major runs: 1 off, 2 on, 3 off
    assert np.array_equal(rle_to_mask(uncompressed), np.array([[0, 1, 0], [1, 0, 0]], bool))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: masks_to_rles(np.zeros((4, 4))), r"expected masks of shape \(N, H, W\)"),
        (lambda: mask_to_rle(np.zeros((1, 4, 4))), r"expected one mask of shape \(H, W\)"),
        (lambda: rles_to_masks([]), "needs at least one RLE"),
        (lambda: rles_to_masks([mask_to_rle(np.zeros((2, 2))), mask_to_rle(np.zeros((3, 2)))]), "share one size"),
        (lambda: rle_to_mask({"counts": "x"}), "must have 'size' and 'counts'"),
        (lambda: mask_to_polygons(np.zeros((2, 2, 2))), r"expected one mask of shape \(H, W\)"),
    ],
)
def test_converter_errors(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_polygon_round_trip_is_exact_including_holes(name: str) -> None:
    mask = SHAPES[name]
    polygons = mask_to_polygons(mask)
    assert all(len(p) % 2 == 0 and len(p) >= 6 for p in polygons)
    assert np.array_equal(polygons_to_mask(polygons, *mask.shape), mask)


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("empty", 0),
        ("full", 1),
        ("two_parts", 2),
        ("ring_hole", 2),
        ("diagonal_touch", 4),
        ("nested_island", 2),
        ("checker", 8),
    ],
)
def test_one_polygon_per_four_connected_part(name: str, parts: int) -> None:
    assert len(mask_to_polygons(SHAPES[name])) == parts


def test_polygon_round_trip_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(1, 24, 2)
        mask = rng.random((h, w)) < rng.random()
        assert np.array_equal(polygons_to_mask(mask_to_polygons(mask), h, w), mask)


def test_polygons_are_pixel_corner_coordinates() -> None:
    assert mask_to_polygons(SHAPES["single_dot"]) == [[1.0, 1.0, 2.0, 1.0, 2.0, 2.0, 1.0, 2.0]]


def test_simplified_polygons_stay_close_and_have_fewer_vertices() -> None:
    yy, xx = np.mgrid[0:60, 0:60]
    disc = (xx - 30) ** 2 + (yy - 30) ** 2 < 25**2
    exact = mask_to_polygons(disc)
    simple = mask_to_polygons(disc, tolerance=1.5)
    assert len(simple[0]) < len(exact[0]) / 2
    back = polygons_to_mask(simple, 60, 60)
    assert (back != disc).mean() < 0.02


def test_trace_loops_orients_outer_positive_and_holes_negative() -> None:
    loops = trace_loops(SHAPES["ring_hole"])
    areas = sorted(signed_area(loop) for loop in loops)
    assert areas == [-9.0, 1.0, 25.0]  # the hole's 3x3 boundary, the island in it, the outer square


def test_label_components_is_four_connected() -> None:
    labels = label_components(SHAPES["diagonal_touch"])
    assert len(set(labels[SHAPES["diagonal_touch"]].tolist())) == 4
    assert len(set(label_components(SHAPES["u_shape"])[SHAPES["u_shape"]].tolist())) == 1
    assert trace_outer_contours(SHAPES["empty"]) == []


def test_simplify_keeps_short_contours_and_zero_tolerance() -> None:
    square = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], float)
    assert np.array_equal(simplify(square, 0), square)
    assert np.array_equal(simplify(square[:3], 5.0), square[:3])


@pytest.mark.parametrize(
    ("masks", "boxes"),
    [
        (np.zeros((0, 3, 3), bool), np.zeros((0, 4))),
        (SHAPES["single_dot"][None], [[1, 1, 2, 2]]),
        (SHAPES["full"][None], [[0, 0, 3, 2]]),
        (SHAPES["empty"][None], [[0, 0, 0, 0]]),
        (np.stack([SHAPES["two_parts"], np.zeros((3, 5), bool)]), [[0, 0, 5, 3], [0, 0, 0, 0]]),
    ],
)
def test_masks_to_boxes_table(masks: np.ndarray, boxes: list) -> None:
    assert np.array_equal(masks_to_boxes(masks), np.asarray(boxes, np.float32).reshape(-1, 4))
