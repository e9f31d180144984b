"""Brush RLE encoder/decoder against the Label Studio SDK, and Instances <-> Label Studio results."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, encode_rle, mask2rle

from model.instances import Instances
from model.masks import mask_to_rle
from storage.labelstudio.brush import (
    _runs,
    brush_rle_to_mask,
    coco_counts,
    coco_counts_to_brush_rles,
    coco_rle_to_brush_rle,
    decode_brush_rle,
    encode_brush_runs,
    encode_brush_streams,
    mask_to_brush_rle,
)
from storage.labelstudio.convert import (
    box_to_percent,
    instances_to_results,
    records_to_results,
    result_to_mask,
    results_to_instances,
)

RNG = np.random.default_rng(7)


def _blob(h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[h // 4 : 3 * h // 4, w // 5 : 4 * w // 5] = True
    return m


MASKS = {
    "1x1 empty": np.zeros((1, 1), bool),
    "1x1 full": np.ones((1, 1), bool),
    "3x5 checker": np.indices((3, 5)).sum(0) % 2 == 0,
    "640x480 empty": np.zeros((480, 640), bool),
    "640x480 full (runs over 2**16)": np.ones((480, 640), bool),
    "640x480 blob": _blob(480, 640),
    "640x480 noise": RNG.random((480, 640)) < 0.3,
    "1080p blob": _blob(1080, 1920),
    "single pixel": np.pad(np.ones((1, 1), bool), ((40, 9), (3, 60))),
    "column stripe": np.tile(np.arange(97) == 50, (61, 1)),
}


@pytest.mark.parametrize("name", list(MASKS))
def test_mask_to_brush_rle_is_byte_identical_to_sdk_mask2rle(name: str) -> None:
    mask = MASKS[name]
    assert mask_to_brush_rle(mask) == mask2rle(mask.astype(np.uint8) * 255)


@pytest.mark.parametrize("name", list(MASKS))
def test_brush_rle_round_trips_through_our_decoder_and_the_sdks(name: str) -> None:
    mask = MASKS[name]
    rle = mask_to_brush_rle(mask)
    np.testing.assert_array_equal(brush_rle_to_mask(rle, *mask.shape), mask)
    sdk_alpha = decode_rle(rle).reshape(*mask.shape, 4)[:, :, 3]
    np.testing.assert_array_equal(sdk_alpha > 0, mask)


def test_uint8_mask_with_arbitrary_values_matches_sdk() -> None:
    mask = RNG.integers(0, 256, (23, 31)).astype(np.uint8)
    mask[5:20, 4:30] = 17
    assert mask_to_brush_rle(mask) == mask2rle(mask)


@pytest.mark.parametrize("n", [1, 2, 8, 9, 16, 17, 256, 257, 65536, 65537, 131072, 200001])
def test_generic_run_encoder_matches_sdk_encode_rle_including_single_values_and_long_chunks(n: int) -> None:
    arr = RNG.integers(0, 3, n).astype(np.uint8)
    arr[n // 3 :] = 9  # one long run after a noisy (single-value) prefix
    lengths, values = _runs(arr)
    rle = encode_brush_runs(lengths, values, n)
    assert rle == encode_rle(arr)
    np.testing.assert_array_equal(decode_brush_rle(rle), arr)


def test_decoder_reads_literal_blocks_the_sdk_decoder_agrees_on() -> None:
    # hand-made stream: 5 words, literal block of 3 (x=0, size idx 0, len-1=2) then a series of 2 (x=1, len-1=1)
    bits = f"{5:032b}" + f"{7:05b}" + "0010001101110000"  # header: word 8, rle sizes 3, 4, 8, 16
    bits += "0" + "00" + "010" + f"{10:08b}{20:08b}{30:08b}"
    bits += "1" + "00" + "001" + f"{99:08b}"
    bits += "0" * (8 - len(bits) % 8)
    rle = [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]
    np.testing.assert_array_equal(decode_brush_rle(rle), [10, 20, 30, 99, 99])
    np.testing.assert_array_equal(decode_rle(rle), [10, 20, 30, 99, 99])


@pytest.mark.parametrize(
    ("mask", "message"),
    [(np.zeros((2, 3, 4), bool), "one \\(H, W\\) mask"), (np.zeros((3, 3), np.float32), "bool or uint8")],
)
def test_mask_to_brush_rle_rejects_bad_masks(mask: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mask_to_brush_rle(mask)


def test_brush_rle_to_mask_rejects_wrong_size_and_truncated_streams() -> None:
    rle = mask_to_brush_rle(MASKS["640x480 blob"])
    with pytest.raises(ValueError, match="expected 480x641"):
        brush_rle_to_mask(rle, 480, 641)
    with pytest.raises(ValueError, match="truncated"):
        decode_brush_rle(rle[:20])


@pytest.mark.parametrize(
    ("box", "h", "w", "expected"),
    [
        ((0, 0, 640, 480), 480, 640, {"x": 0.0, "y": 0.0, "width": 100.0, "height": 100.0}),
        ((64, 48, 128, 96), 480, 640, {"x": 10.0, "y": 10.0, "width": 10.0, "height": 10.0}),
        ((5, 5, 5, 5), 10, 10, {"x": 50.0, "y": 50.0, "width": 0.0, "height": 0.0}),
    ],
)
def test_box_to_percent_table(box: tuple[float, ...], h: int, w: int, expected: dict[str, float]) -> None:
    got = box_to_percent(box, h, w)
    assert got == pytest.approx({**expected, "rotation": 0.0})


def _instances() -> Instances:
    masks = np.zeros((3, 60, 80), bool)
    masks[0, 10:30, 20:50] = True
    masks[1, 40:55, 5:15] = True  # masks[2] stays empty
    return Instances(masks=masks, labels=["cat", "dog", "cat"], scores=[0.9, 0.4, 0.1])


def test_instances_to_results_brush_polygon_rectangle_in_percent_with_region_scores() -> None:
    results = instances_to_results(_instances(), brush_from="brush", polygon_from="polygon", rectangle_from="rect")
    by_type: dict[str, list[dict]] = {}
    for r in results:
        by_type.setdefault(r["type"], []).append(r)
    # the empty third mask yields a rectangle only
    assert [len(by_type[t]) for t in ("brushlabels", "polygonlabels", "rectanglelabels")] == [2, 2, 3]
    brush = by_type["brushlabels"][0]
    assert brush["value"]["brushlabels"] == ["cat"] and brush["score"] == pytest.approx(0.9)
    assert (brush["original_width"], brush["original_height"]) == (80, 60)
    np.testing.assert_array_equal(brush_rle_to_mask(brush["value"]["rle"], 60, 80), _instances().masks[0])
    rect = by_type["rectanglelabels"][0]["value"]
    assert (rect["x"], rect["y"], rect["width"], rect["height"]) == pytest.approx((25.0, 100 / 6, 37.5, 100 / 3))
    pts = np.array(by_type["polygonlabels"][0]["value"]["points"])
    assert pts.min(axis=0) == pytest.approx([25.0, 100 / 6], abs=0.01) and pts.max(axis=0) == pytest.approx(
        [62.5, 50.0], abs=0.01
    )
    assert len({r["id"] for r in results}) == len(results)


def test_instances_to_results_of_no_instances_is_empty() -> None:
    assert instances_to_results(Instances.empty(10, 10), polygon_from="polygon", rectangle_from="rect") == []


@pytest.mark.parametrize("kind", ["brush", "polygon", "rect"])
def test_results_to_instances_recovers_masks_per_tag(kind: str) -> None:
    inst = _instances()[[0, 1]]
    results = instances_to_results(
        inst,
        brush_from="brush" if kind == "brush" else None,
        polygon_from="polygon" if kind == "polygon" else None,
        rectangle_from="rect" if kind == "rect" else None,
    )
    back = results_to_instances(results, 60, 80)
    assert back.labels == ["cat", "dog"]
    assert all(p.kind == "human" for p in back.prompts)
    np.testing.assert_array_equal(back.masks, inst.masks)  # rectangles here: masks are boxes already


def test_results_to_instances_ignores_non_region_results_and_handles_none() -> None:
    assert len(results_to_instances([{"type": "choices", "value": {"choices": ["x"]}}], 4, 4)) == 0


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (
            {
                "id": "a",
                "type": "brushlabels",
                "value": {"format": "rle", "rle": [0], "brushlabels": []},
                "original_width": 4,
                "original_height": 4,
            },
            "exactly one",
        ),
        (
            {
                "id": "b",
                "type": "keypointlabels",
                "value": {"keypointlabels": ["x"]},
                "original_width": 4,
                "original_height": 4,
            },
            "unsupported type",
        ),
        (
            {
                "id": "c",
                "type": "rectanglelabels",
                "value": {"x": 1, "y": 1, "width": 2, "height": 2, "rotation": 30, "rectanglelabels": ["x"]},
                "original_width": 4,
                "original_height": 4,
            },
            "rotated",
        ),
        ({"id": "d", "type": "rectanglelabels", "value": {"rectanglelabels": ["x"]}}, "no original_width"),
    ],
)
def test_result_to_mask_rejects_bad_results(result: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        result_to_mask(result)


# -- COCO RLE straight to brush RLE (the pre-label import never decodes the catalog's masks) ---------------------
CORNERS = {
    "first pixel only (COCO counts start with 0)": np.pad(np.ones((1, 1), bool), ((0, 6), (0, 4))),
    "last pixel only": np.pad(np.ones((1, 1), bool), ((6, 0), (4, 0))),
    "1x7 row": np.array([[1, 0, 0, 1, 1, 0, 1]], bool),
    "7x1 column": np.array([[1], [1], [0], [1], [0], [0], [1]], bool),
    "first column full (a run crosses into column 1)": np.pad(np.ones((5, 1), bool), ((0, 0), (0, 3))),
    "last column full": np.pad(np.ones((5, 1), bool), ((0, 0), (3, 0))),
    "first row full": np.pad(np.ones((1, 6), bool), ((0, 4), (0, 0))),
    "last row full": np.pad(np.ones((1, 6), bool), ((4, 0), (0, 0))),
    "diagonal": np.eye(9, 11, dtype=bool),
    **{
        f"random {k}": RNG.random((int(RNG.integers(1, 23)), int(RNG.integers(1, 23)))) < RNG.random()
        for k in range(40)
    },
}


@pytest.mark.parametrize("name", [*MASKS, *CORNERS])
def test_coco_rle_to_brush_rle_is_byte_identical_to_encoding_the_decoded_mask(name: str) -> None:
    mask = {**MASKS, **CORNERS}[name]
    rle = mask_to_rle(mask)
    assert coco_rle_to_brush_rle(rle) == mask_to_brush_rle(mask) == mask2rle(mask.astype(np.uint8) * 255)
    uncompressed = {"size": rle["size"], "counts": coco_counts(rle["counts"]).tolist()}  # COCO files' list form
    assert coco_rle_to_brush_rle(uncompressed) == mask_to_brush_rle(mask)


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ({"size": [2, 2], "counts": [1, 2]}, "cover 3 pixels"),
        ({"size": [2, 2], "counts": "3"}, "cover 3 pixels"),
        ({"size": [2, 2], "counts": "0`"}, "compressed format"),  # ends inside a value
        ({"size": [2, 2], "counts": "0 "}, "compressed format"),  # below '0'
    ],
)
def test_coco_rle_to_brush_rle_rejects_counts_that_do_not_fit_the_size(rle: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        coco_rle_to_brush_rle(rle)


BATCHES = {
    "no masks": (4, 6, []),
    "one empty": (4, 6, [np.zeros((4, 6), bool)]),
    "empty, full, empty": (4, 6, [np.zeros((4, 6), bool), np.ones((4, 6), bool), np.zeros((4, 6), bool)]),
    "one row": (1, 9, [np.arange(9) % 3 == 0, np.arange(9) > 4]),
    "one column": (9, 1, [np.arange(9)[:, None] % 2 == 0, np.arange(9)[:, None] < 3]),
    "1x1 each way": (1, 1, [np.ones((1, 1), bool), np.zeros((1, 1), bool), np.ones((1, 1), bool)]),
    "corners side by side": (5, 4, [m for m in CORNERS.values() if m.shape == (5, 4)]),
    "random same-size masks": (17, 13, [RNG.random((17, 13)) < p for p in (0.0, 0.1, 0.5, 0.9, 1.0)]),
    "a photo's worth of blobs": (480, 640, [np.roll(_blob(480, 640), k * 37, axis=k % 2) for k in range(12)]),
}


@pytest.mark.parametrize("name", list(BATCHES))
@pytest.mark.parametrize("zero_runs", [False, True], ids=["pycocotools counts", "with zero-length runs"])
def test_coco_counts_to_brush_rles_of_many_masks_equals_each_mask_encoded_alone(name: str, zero_runs: bool) -> None:
    height, width, masks = BATCHES[name]
    counts = [coco_counts(mask_to_rle(np.asarray(m).reshape(height, width))["counts"]) for m in masks]
    if zero_runs:  # legal in a COCO list: a run of 0 between two runs of the same value, trailing 0s
        counts = [np.concatenate(([0, 0], c[:1], [0, 0], c[1:], [0])) for c in counts]
    expected = [mask2rle(np.asarray(m).reshape(height, width).astype(np.uint8) * 255) for m in masks]
    assert coco_counts_to_brush_rles(counts, height, width) == expected


def test_coco_counts_to_brush_rles_rejects_a_mask_whose_counts_do_not_fit() -> None:
    good = coco_counts(mask_to_rle(_blob(4, 6))["counts"])
    with pytest.raises(ValueError, match="cover 23 pixels, its size 4x6 is 24"):
        coco_counts_to_brush_rles([good, np.array([3, 20])], 4, 6)
    with pytest.raises(ValueError, match="negative"):
        coco_counts_to_brush_rles([np.array([30, -6])], 4, 6)


def test_encode_brush_streams_writes_each_stream_as_the_sdk_encodes_it_alone() -> None:
    arrays = [np.zeros(1, np.uint8), RNG.integers(0, 3, 70001).astype(np.uint8), np.full(300, 255, np.uint8)]
    runs = [_runs(a) for a in arrays]
    owner = np.concatenate([np.full(len(lengths), k) for k, (lengths, _) in enumerate(runs)])
    streams = encode_brush_streams(
        np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs]), owner, [len(a) for a in arrays]
    )
    assert streams == [encode_rle(a) for a in arrays]


@pytest.mark.parametrize(
    "tags",
    [
        {"brush_from": "brush"},
        {"brush_from": None, "polygon_from": "poly"},
        {"brush_from": None, "rectangle_from": "box"},
        {"brush_from": "brush", "polygon_from": "poly", "rectangle_from": "box"},
    ],
)
@pytest.mark.parametrize("n", [0, 1, 3])
def test_records_to_results_equals_instances_to_results_of_the_decoded_records(tags: dict, n: int) -> None:
    masks = np.stack([_blob(48, 64), np.zeros((48, 64), bool), RNG.random((48, 64)) < 0.2][:n]) if n else None
    instances = (
        Instances(masks=masks, labels=["cat", "dog", "cow"][:n], scores=np.array([0.91, 0.52, 0.33][:n]))
        if masks is not None
        else Instances.empty(48, 64)
    )
    records = instances.to_records()
    expected = instances_to_results(Instances.from_records(records, 48, 64), **tags)
    assert records_to_results(records, 48, 64, **tags) == expected
    assert len(expected) >= n - 1  # the empty mask gets no brush/polygon region, the others do


def test_records_to_results_rejects_records_of_another_image_size() -> None:
    records = Instances(masks=_blob(48, 64)[None]).to_records()
    with pytest.raises(ValueError, match=r"does not match image \(64, 48\)"):
        records_to_results(records, 64, 48)
