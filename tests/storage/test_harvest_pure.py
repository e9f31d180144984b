"""Pure parts of harvesting and versioning: matching, boundary F, manifest hash, diff, track interpolation, COCO."""

from __future__ import annotations

import numpy as np
import pytest

from storage.agreement import boundary_f_score, iou_matrix, match_instances, strategy_of, summarize
from storage.formats.coco import CocoSource, build_coco, validate_coco
from storage.harvest import AnnotationError, content_hash
from storage.labelstudio.annotations import image_records, interpolate_sequence
from storage.labelstudio.brush import mask_to_brush_rle
from storage.labelstudio.config import LabelConfig, image_label_config
from storage.version_reads import diff_items
from storage.versions import manifest_hash


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _stack(*masks: np.ndarray, h: int = 20, w: int = 20) -> np.ndarray:
    return np.stack(masks) if masks else np.zeros((0, h, w), bool)


A = _box(20, 20, 0, 10, 0, 10)  # 100 px
B = _box(20, 20, 10, 20, 10, 20)  # disjoint from A
A_SHIFT = _box(20, 20, 0, 10, 2, 12)  # IoU with A = 80 / 120


@pytest.mark.parametrize(
    ("pred", "pred_labels", "human", "human_labels", "expected"),
    [
        ((), [], (), [], []),
        ((A,), ["cat"], (), [], [("deleted", 0, None, 0.0)]),
        ((), [], (A,), ["cat"], [("added", None, 0, 0.0)]),
        ((A,), ["cat"], (A,), ["cat"], [("accepted", 0, 0, 1.0)]),
        ((A,), ["cat"], (A,), ["dog"], [("relabelled", 0, 0, 1.0)]),
        ((A,), ["cat"], (A_SHIFT,), ["cat"], [("modified", 0, 0, 80 / 120)]),
        ((A,), ["cat"], (B,), ["cat"], [("deleted", 0, None, 0.0), ("added", None, 0, 0.0)]),
        # Hungarian, not greedy: both predictions find their best partner regardless of order
        ((B, A), ["x", "y"], (A_SHIFT, B), ["y", "x"], [("accepted", 0, 1, 1.0), ("modified", 1, 0, 80 / 120)]),
        # an empty predicted mask matches nothing
        ((np.zeros((20, 20), bool),), ["cat"], (A,), ["cat"], [("deleted", 0, None, 0.0), ("added", None, 0, 0.0)]),
    ],
    ids=["empty", "only-pred", "only-human", "identical", "relabel", "moved", "disjoint", "hungarian", "empty-mask"],
)
def test_match_instances_table(pred, pred_labels, human, human_labels, expected) -> None:  # noqa: ANN001
    out = match_instances(_stack(*pred), pred_labels, _stack(*human), human_labels)
    assert [(o.outcome, o.pred_index, o.human_index) for o in out] == [e[:3] for e in expected]
    assert [o.iou for o in out] == pytest.approx([e[3] for e in expected])


def test_match_instances_rejects_labels_that_do_not_fit_the_masks() -> None:
    with pytest.raises(ValueError, match="labels must match masks"):
        match_instances(_stack(A), [], _stack(), [])


def test_iou_matrix_of_empty_sides_has_the_right_shape() -> None:
    assert iou_matrix(_stack(A, B), _stack()).shape == (2, 0)
    assert iou_matrix(_stack(A, B), _stack(A))[:, 0].tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    ("a", "b", "tolerance", "expected"),
    [
        (np.zeros((8, 8), bool), np.zeros((8, 8), bool), 2, 1.0),
        (A, np.zeros((20, 20), bool), 2, 0.0),
        (A, A, 0, 1.0),
        (A, A_SHIFT, 2, 1.0),  # a 2-pixel shift is within tolerance
        (A, B, 1, 0.0),
    ],
    ids=["both-empty", "one-empty", "identical", "within-tolerance", "far-apart"],
)
def test_boundary_f_score_table(a: np.ndarray, b: np.ndarray, tolerance: int, expected: float) -> None:
    assert boundary_f_score(a, b, tolerance) == pytest.approx(expected)


def test_boundary_f_score_drops_when_the_shift_exceeds_the_tolerance() -> None:
    assert 0.0 < boundary_f_score(A, A_SHIFT, 0) < 1.0


@pytest.mark.parametrize(
    ("version", "strategy"),
    [
        ("facebook/sam2.1-hiera-tiny@01234567/everything", "everything"),
        ("shapes-tiny@01234567/text+89abcdef", "text"),  # a job's prompt hash is not part of the strategy
        ("no-strategy", ""),
        ("a/b", ""),
        ("", ""),
    ],
)
def test_strategy_of_model_version(version: str, strategy: str) -> None:
    assert strategy_of(version) == strategy


def test_summarize_groups_counts_and_means_of_matched_only() -> None:
    rows = [
        ("m@1/grid", "grid", "cat", "accepted", 0.95, 0.9),
        ("m@1/grid", "grid", "cat", "modified", 0.55, 0.5),
        ("m@1/grid", "grid", "cat", "deleted", 0.0, 0.0),
        ("m@1/grid", "grid", "dog", "added", 0.0, 0.0),
    ]
    cat, dog = summarize(rows)
    assert (cat.label, cat.counts["accepted"], cat.counts["modified"], cat.counts["deleted"]) == ("cat", 1, 1, 1)
    assert cat.mean_iou == pytest.approx(0.75) and cat.acceptance_rate == pytest.approx(1 / 3)
    assert dog.mean_iou is None and dog.acceptance_rate is None and dog.counts["added"] == 1
    assert summarize([]) == []


@pytest.mark.parametrize(
    ("pairs", "same_as"),
    [
        ([], []),
        ([("s1", "h1"), ("s2", "h2")], [("s2", "h2"), ("s1", "h1")]),  # order does not matter
    ],
)
def test_manifest_hash_is_canonical(pairs: list[tuple[str, str]], same_as: list[tuple[str, str]]) -> None:
    assert manifest_hash(pairs) == manifest_hash(same_as)
    assert len(manifest_hash(pairs)) == 64


def test_manifest_hash_changes_with_any_annotation_and_rejects_blank_entries() -> None:
    assert manifest_hash([("s1", "h1")]) != manifest_hash([("s1", "h2")])
    with pytest.raises(ValueError, match="asset sha256"):
        manifest_hash([("", "h1")])


@pytest.mark.parametrize(
    ("a", "b", "ca", "cb", "expected"),
    [
        ({}, {}, {}, {}, ([], [], [], {})),
        ({"x": "1"}, {"x": "1"}, {"cat": 1}, {"cat": 1}, ([], [], [], {})),
        ({"x": "1"}, {"x": "2"}, {"cat": 1}, {"cat": 1, "dog": 1}, ([], [], ["x"], {"dog": 1})),
        ({"x": "1"}, {"y": "1"}, {"cat": 2}, {}, (["y"], ["x"], [], {"cat": -2})),
    ],
    ids=["empty", "unchanged", "changed", "added-removed"],
)
def test_diff_items_table(a, b, ca, cb, expected) -> None:  # noqa: ANN001
    diff = diff_items(a, b, ca, cb)
    assert (diff.added, diff.removed, diff.changed, diff.class_deltas) == expected
    assert diff.empty == (expected == ([], [], [], {}))


def test_content_hash_ignores_instance_order_and_region_ids() -> None:
    r1 = {"label": "cat", "rle": {"size": [2, 2], "counts": "abc"}, "region_id": "a"}
    r2 = {"label": "dog", "rle": {"size": [2, 2], "counts": "xyz"}, "region_id": "b"}
    assert content_hash(-1, [r1, r2]) == content_hash(-1, [{**r2, "region_id": "z"}, r1])
    assert content_hash(-1, [r1]) != content_hash(3, [r1])
    assert content_hash(-1, []) != content_hash(-1, [r1])


@pytest.mark.parametrize(
    ("sequence", "frames", "expected"),
    [
        (
            [{"frame": 1, "enabled": True, "x": 0, "y": 0, "width": 10, "height": 10}],
            3,
            [[0, 0, 0, 10, 10], [1, 0, 0, 10, 10], [2, 0, 0, 10, 10]],
        ),
        (
            [
                {"frame": 1, "enabled": True, "x": 0, "y": 0, "width": 10, "height": 10},
                {"frame": 3, "enabled": False, "x": 20, "y": 0, "width": 10, "height": 10},
            ],
            5,
            [[0, 0, 0, 10, 10], [1, 10, 0, 20, 10], [2, 20, 0, 30, 10]],
        ),
        ([], 4, []),
        (
            [{"frame": 2, "enabled": False, "x": 95, "y": 95, "width": 10, "height": 10}],
            2,
            [[1, 95, 95, 100, 100]],
        ),  # clipped
    ],
    ids=["last-enabled-lasts", "interpolated-then-ends", "no-keyframes", "clipped-to-frame"],
)
def test_interpolate_sequence_table(sequence, frames, expected) -> None:  # noqa: ANN001
    assert interpolate_sequence(sequence, frames, 100, 100) == expected


def test_interpolate_sequence_rejects_keyframes_outside_the_clip() -> None:
    with pytest.raises(ValueError, match="outside the clip"):
        interpolate_sequence([{"frame": 9, "x": 0, "y": 0, "width": 1, "height": 1}], 3, 10, 10)


def _brush(label: str, mask: np.ndarray, rid: str = "r1", size: tuple[int, int] | None = None) -> dict:
    h, w = size or mask.shape
    return {
        "id": rid,
        "type": "brushlabels",
        "from_name": "brush",
        "to_name": "image",
        "original_width": w,
        "original_height": h,
        "value": {"format": "rle", "rle": mask_to_brush_rle(mask), "brushlabels": [label]},
    }


CONFIG = LabelConfig.parse(image_label_config(["cat", "dog"], polygons=True))


def test_image_records_decode_brush_and_drop_empty_regions() -> None:
    records, empty = image_records([_brush("cat", A), _brush("dog", np.zeros((20, 20), bool), "r2")], CONFIG, 20, 20)
    assert empty == 1 and [r["label"] for r in records] == ["cat"]
    assert records[0]["box"] == [0.0, 0.0, 10.0, 10.0]


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (_brush("bird", A), "unknown label"),
        (_brush("cat", _box(10, 10, 0, 5, 0, 5), size=(10, 10)), "drawn on a 10x10 image"),
        (
            {
                "id": "p",
                "type": "polygonlabels",
                "from_name": "polygon",
                "to_name": "image",
                "original_width": 20,
                "original_height": 20,
                "value": {"points": [[0, 0], [150, 0], [0, 50]], "polygonlabels": ["cat"]},
            },
            "leave the image",
        ),
    ],
    ids=["label-not-in-config", "mask-outside-image", "polygon-outside-image"],
)
def test_image_records_name_the_bad_region(result: dict, message: str) -> None:
    with pytest.raises(AnnotationError, match=message):
        image_records([result], CONFIG, 20, 20)


def test_coco_of_no_items_is_valid_and_unknown_labels_are_named() -> None:
    validate_coco(build_coco([], ["cat"]))
    src = CocoSource(
        1,
        "s3://b/k.png",
        20,
        20,
        -1,
        "image",
        [{"label": "emu", "rle": {"size": [20, 20], "counts": "0"}, "box": [0, 0, 1, 1]}],
    )
    with pytest.raises(ValueError, match="'emu' is not a class"):
        build_coco([src], ["cat"])


def test_coco_polygons_and_video_boxes_validate_with_pycocotools() -> None:
    from model.masks import mask_to_rle

    img = CocoSource(
        1, "s3://b/a.png", 20, 20, -1, "image", [{"label": "cat", "rle": mask_to_rle(A), "box": [0, 0, 10, 10]}]
    )
    vid = CocoSource(
        2, "s3://b/v.mp4", 20, 20, -1, "video", [{"label": "dog", "boxes": [[0, 1, 1, 5, 5], [1, 2, 2, 2, 6]]}]
    )
    coco = validate_coco(build_coco([img, vid], ["cat", "dog"], polygons=True))
    assert np.array_equal(coco.annToMask(coco.loadAnns(1)[0]).astype(bool), A)
    assert len(coco.imgs) == 2 and len(coco.anns) == 2  # the zero-width box on frame 1 is left out
