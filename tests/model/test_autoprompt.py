"""auto_segment: everything (grid), text (Grounding DINO -> SAM 2) and prior strategies."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model.autoprompt import auto_segment, masks_to_mask_inputs, priors_from_coco
from model.detector import TextDetector, build_caption, resize_shape
from model.everything import EverythingParams, crop_boxes, point_grid, segment_everything
from model.images import decode_image
from model.instances import Instances, Prompt
from model.nms import box_iou, mask_iou
from model.segmenter import Decoded, Segmenter
from tests.support.tiny_models import save_tiny_grounding_dino, save_tiny_sam2

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
LABELME = DATA / "labelme_examples" / "instance_segmentation_coco"


@pytest.fixture(scope="module")
def seg(tmp_path_factory: pytest.TempPathFactory) -> Segmenter:
    return Segmenter.from_pretrained(save_tiny_sam2(tmp_path_factory.mktemp("sam2") / "tiny"), device="cpu")


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> TextDetector:
    return TextDetector.from_pretrained(
        save_tiny_grounding_dino(tmp_path_factory.mktemp("gd") / "tiny-gd"), device="cpu"
    )


def _image(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- everything ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, [[0.5, 0.5]]), (2, [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]])],
)
def test_point_grid_is_cell_centred_x_fastest(n: int, expected: list) -> None:
    assert np.allclose(point_grid(n), expected)
    assert point_grid(32).shape == (1024, 2)


def test_crop_boxes_cover_the_image_with_overlap() -> None:
    assert crop_boxes(100, 200, 0, 512 / 1500) == [((0, 0, 200, 100), 0)]
    boxes = crop_boxes(100, 200, 1, 512 / 1500)
    assert len(boxes) == 5 and [layer for _, layer in boxes] == [0, 1, 1, 1, 1]
    covered = np.zeros((100, 200), int)
    for (x0, y0, x1, y1), _ in boxes[1:]:
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1 and covered.max() >= 2
    assert len(crop_boxes(100, 200, 2, 0.3)) == 1 + 4 + 16


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"points_per_side": 0}, "points_per_side must be >= 1"),
        ({"points_per_batch": 0}, "points_per_batch must be >= 1"),
        ({"crop_n_layers": -1}, "crop_n_layers must be >= 0"),
        ({"pred_iou_thresh": 1.5}, r"pred_iou_thresh must be in \[0, 1\]"),
        ({"min_region_area": -1}, "must be >= 0"),
    ],
)
def test_everything_params_are_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EverythingParams(**kwargs)


@dataclass
class _ScriptedSegmenter:
    """Test double: decode returns hand-made low-res logits and IoUs for a 2x2 point grid (3 masks each)."""

    logits: torch.Tensor  # (4, 3, 8, 8)
    iou: torch.Tensor  # (4, 3)
    mask_input_size: tuple[int, int] = (8, 8)
    model_version: str = "scripted@00000000"

    def embed(self, images: list[np.ndarray]) -> list[tuple[int, int]]:
        return [im.shape[:2] for im in images]

    def decode(self, embeddings, index, *, points, multimask, prompt_batch):  # type: ignore[no-untyped-def]
        assert points.shape == (4, 1, 2) and multimask
        return Decoded(self.logits, self.iou, torch.zeros(4))

    logits_to_masks = staticmethod(Segmenter.logits_to_masks)


def _box_logits(y0: int, y1: int, x0: int, x1: int, inside: float = 6.0) -> torch.Tensor:
    out = torch.full((8, 8), -6.0)
    out[y0:y1, x0:x1] = inside
    return out


def test_everything_low_res_mode_filters_by_iou_and_stability_then_deduplicates() -> None:
    good_a = _box_logits(0, 4, 0, 4)
    good_a_dup = _box_logits(0, 4, 0, 3)  # mask IoU 0.75 with good_a, lower score
    good_b = _box_logits(4, 8, 4, 8)
    unstable = _box_logits(0, 8, 0, 8, inside=0.5) - 0.0  # logits within +/-1: stability 0
    low_iou = _box_logits(2, 6, 2, 6)
    logits = torch.stack(
        [
            torch.stack([good_a, good_a_dup, low_iou]),
            torch.stack([good_b, unstable, low_iou]),
            torch.stack([low_iou] * 3),
            torch.stack([low_iou] * 3),
        ]
    )
    iou = torch.tensor([[0.95, 0.93, 0.5], [0.9, 0.99, 0.5], [0.1, 0.1, 0.1], [0.2, 0.2, 0.2]])
    fake = _ScriptedSegmenter(logits, iou)
    image = np.zeros((80, 80, 3), np.uint8)
    result = segment_everything(fake, [image], EverythingParams(points_per_side=2, nms_thresh=0.7, filter_at="low"))[0]  # type: ignore[arg-type]
    assert len(result) == 2
    assert result.scores.tolist() == pytest.approx([0.95, 0.9])
    assert result.boxes.tolist() == [[0, 0, 40, 40], [40, 40, 80, 80]]
    assert [p.kind for p in result.prompts] == ["grid", "grid"]
    assert result.prompts[0].params["point"] == [20.0, 20.0] and result.prompts[1].params["point"] == [60.0, 20.0]
    assert np.all(result.stability == 1.0)
    loose = segment_everything(fake, [image], EverythingParams(points_per_side=2, nms_thresh=0.8, filter_at="low"))[0]  # type: ignore[arg-type]
    assert len(loose) == 3  # the 0.75-IoU duplicate survives a looser NMS
    unfiltered = segment_everything(
        fake, [image], EverythingParams(points_per_side=2, pred_iou_thresh=0, stability_score_thresh=0, filter_at="low")
    )[0]  # type: ignore[arg-type]
    assert len(unfiltered) >= 4  # low-IoU and unstable masks come back when the filters are off


def test_everything_default_mode_scores_stability_at_full_size_and_suppresses_by_box() -> None:
    sharp = _box_logits(0, 4, 0, 4)  # +-6 logits: stability ~0.91 once upsampled 10x
    shifted = _box_logits(0, 4, 0, 3)  # box IoU ~0.74 with `sharp`, lower score -> suppressed at 0.7
    other = _box_logits(4, 8, 4, 8)
    coarse = _box_logits(0, 8, 0, 2, inside=1.2)  # stability 1.0 at low res, 0.83 upsampled
    low = _box_logits(2, 6, 2, 6)
    logits = torch.stack(
        [
            torch.stack([sharp, shifted, low]),
            torch.stack([other, coarse, low]),
            torch.stack([low] * 3),
            torch.stack([low] * 3),
        ]
    )
    iou = torch.tensor([[0.95, 0.93, 0.5], [0.9, 0.99, 0.5], [0.1, 0.1, 0.1], [0.2, 0.2, 0.2]])
    fake = _ScriptedSegmenter(logits, iou)
    params = EverythingParams(points_per_side=2, stability_score_thresh=0.85, nms_thresh=0.7)
    result = segment_everything(fake, [np.zeros((80, 80, 3), np.uint8)], params)[0]  # type: ignore[arg-type]
    assert result.scores.tolist() == pytest.approx([0.95, 0.9])
    assert np.all((result.stability > 0.85) & (result.stability < 1.0))  # scored on the upsampled logits
    low_res = segment_everything(fake, [np.zeros((80, 80, 3), np.uint8)], replace(params, filter_at="low"))[0]  # type: ignore[arg-type]
    assert 0.99 in [round(float(s), 2) for s in low_res.scores]  # the coarse mask passes only at low resolution
    looser = segment_everything(fake, [np.zeros((80, 80, 3), np.uint8)], replace(params, nms_thresh=0.8))[0]  # type: ignore[arg-type]
    assert len(looser) == 3  # the shifted box survives a looser box NMS


def test_everything_removes_small_regions_and_fills_holes_before_upsampling() -> None:
    blob = _box_logits(0, 6, 0, 6)
    blob[2, 2] = -6.0  # a one-cell hole
    blob[7, 7] = 6.0  # a one-cell speck
    logits = torch.stack([torch.stack([blob, blob, blob])] + [torch.stack([_box_logits(0, 0, 0, 0)] * 3)] * 3)
    iou = torch.tensor([[0.99, 0.0, 0.0]] + [[0.0] * 3] * 3)
    fake = _ScriptedSegmenter(logits, iou)
    params = EverythingParams(
        points_per_side=2, min_region_area=400, max_hole_area=400, filter_at="low"
    )  # 400 px: 4 cells
    result = segment_everything(fake, [np.zeros((80, 80, 3), np.uint8)], params)[0]  # type: ignore[arg-type]
    assert len(result) == 1
    mask = result.masks[0]
    assert mask[25, 25] and not mask[75, 75]
    raw = segment_everything(
        fake, [np.zeros((80, 80, 3), np.uint8)], EverythingParams(points_per_side=2, filter_at="low")
    )[0]  # type: ignore[arg-type]
    assert not raw.masks[0][25, 25] and raw.masks[0][75, 75]


def test_everything_on_the_tiny_model_gives_valid_deduplicated_instances(seg: Segmenter) -> None:
    images = [_image(0, 96, 128), _image(1, 60, 40)]
    results = auto_segment(
        seg, images, "everything", points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    assert [r.image_size for r in results] == [(96, 128), (60, 40)]
    for result in results:
        assert len(result) >= 1
        assert np.all(np.diff(result.scores) <= 0)
        iou = mask_iou(torch.from_numpy(result.masks))
        assert (iou.fill_diagonal_(0) <= 0.7 + 1e-6).all()
        assert all(p.kind == "grid" and p.model_id == seg.model_version for p in result.prompts)


def test_everything_with_crop_layers_keeps_masks_in_image_coordinates(seg: Segmenter) -> None:
    result = auto_segment(
        seg,
        [_image(2, 100, 150)],
        "everything",
        points_per_side=4,
        crop_n_layers=1,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        max_masks=5,
    )[0]
    assert result.image_size == (100, 150) and 1 <= len(result) <= 5
    crops = {tuple(p.params["crop"]) for p in result.prompts}
    assert crops <= {box for box, _ in crop_boxes(100, 150, 1, 512 / 1500)}


def test_everything_with_nothing_passing_gives_empty_instances(seg: Segmenter) -> None:
    result = auto_segment(seg, [_image(3, 50, 70)], "everything", points_per_side=3, pred_iou_thresh=0.999)[0]
    assert len(result) == 0 and result.image_size == (50, 70)


# -- text ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("classes", "caption", "spans"),
    [
        (["cat"], "cat .", [(0, 3)]),
        (["Cat", "traffic  light"], "cat . traffic light .", [(0, 3), (6, 19)]),
    ],
)
def test_build_caption_table(classes: list[str], caption: str, spans: list) -> None:
    assert build_caption(classes) == (caption, spans)


def test_build_caption_rejects_empty_names() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        build_caption(["cat", " "])


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((480, 640), (800, 1067)), ((100, 1000), (133, 1333)), ((800, 800), (800, 800)), ((1, 1), (800, 800))],
)
def test_detector_resize_shape_table(shape: tuple[int, int], expected: tuple[int, int]) -> None:
    assert resize_shape(*shape, 800, 1333) == expected


def test_text_strategy_labels_are_class_phrases_with_detector_scores(seg: Segmenter, detector: TextDetector) -> None:
    images = [_image(4, 120, 160), _image(5, 90, 90)]
    classes = ["cat", "traffic light"]
    results = auto_segment(
        seg, images, "text", classes=classes, detector=detector, box_threshold=0.0, text_threshold=0.0, nms_thresh=0.5
    )
    assert [r.image_size for r in results] == [(120, 160), (90, 90)]
    for result in results:
        assert len(result) >= 1
        assert set(result.labels) <= set(classes)
        assert np.all(np.isfinite(result.detector_scores))
        assert all(
            p.kind == "text" and p.params["phrase"] == label
            for p, label in zip(result.prompts, result.labels, strict=True)
        )
        boxes = torch.tensor([p.params["box"] for p in result.prompts])
        same = torch.tensor([[a == b for b in result.labels] for a in result.labels])
        overlap = box_iou(boxes, boxes).fill_diagonal_(0)
        assert not ((overlap > 0.5 + 1e-4) & same).any()  # class-aware NMS on the detector boxes


def test_text_strategy_with_no_detections_gives_empty_instances(seg: Segmenter, detector: TextDetector) -> None:
    result = auto_segment(seg, [_image(6, 40, 50)], "text", classes=["dog"], detector=detector, box_threshold=1.0)[0]
    assert len(result) == 0 and result.image_size == (40, 50)


def test_detector_boxes_lie_inside_the_image(detector: TextDetector) -> None:
    found = detector.detect([_image(7, 70, 110)], ["cat", "dog"], box_threshold=0.0, text_threshold=0.0)[0]
    assert len(found.labels) > 0
    assert (found.boxes >= 0).all() and (found.boxes[:, [0, 2]] <= 110).all() and (found.boxes[:, [1, 3]] <= 70).all()


# -- prior --------------------------------------------------------------------------------------------------------
def _prior(h: int, w: int) -> Instances:
    masks = np.zeros((2, h, w), bool)
    masks[0, 5:20, 5:30] = True
    masks[1, 30:50, 40:60] = True
    return Instances(
        masks=masks,
        labels=["cat", "dog"],
        detector_scores=np.array([0.8, np.nan], np.float32),
        prompts=[Prompt("human", {"id": 1}), Prompt("human", {"id": 2})],
    )


@pytest.mark.parametrize("prompt", ["box", "mask", "box+mask"])
def test_prior_strategy_resegments_and_keeps_labels(seg: Segmenter, prompt: str) -> None:
    prior = _prior(60, 80)
    result = auto_segment(seg, [_image(8, 60, 80)], "prior", priors=[prior], prompt=prompt)[0]
    assert len(result) == 2 and result.labels == ["cat", "dog"]
    assert result.detector_scores[0] == pytest.approx(0.8) and np.isnan(result.detector_scores[1])
    assert [p.kind for p in result.prompts] == ["prior", "prior"]
    assert result.prompts[0].params["prior"] == {"kind": "human", "params": {"id": 1}, "model_id": ""}
    assert result.prompts[1].params["box"] == [40.0, 30.0, 60.0, 50.0]


def test_prior_strategy_skips_empty_priors(seg: Segmenter) -> None:
    result = auto_segment(seg, [_image(9, 20, 30)], "prior", priors=[Instances.empty(20, 30)])[0]
    assert len(result) == 0 and result.image_size == (20, 30)


def test_masks_to_mask_inputs_downsamples_to_signed_logits() -> None:
    masks = np.zeros((1, 40, 40), bool)
    masks[0, :20, :20] = True
    logits = masks_to_mask_inputs(masks, (4, 4))
    assert logits.shape == (1, 4, 4)
    assert (logits[0, :2, :2] == 10).all() and (logits[0, 2:, :] == -10).all()


def test_priors_from_a_real_coco_file_round_trip_through_the_prior_strategy(seg: Segmenter) -> None:
    coco = json.loads((LABELME / "annotations.json").read_text())
    image_ids = [im["id"] for im in coco["images"]]
    priors = priors_from_coco(coco, image_ids)
    per_image = {i: [a for a in coco["annotations"] if a["image_id"] == i] for i in image_ids}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for image_id, prior in zip(image_ids, priors, strict=True):
        anns = per_image[image_id]
        assert len(prior) == len(anns)
        assert prior.labels == [names[a["category_id"]] for a in anns]
        for area, ann in zip(prior.areas, anns, strict=True):
            assert abs(int(area) - ann["area"]) <= 0.1 * ann["area"] + 50
    first = coco["images"][0]
    image = decode_image((LABELME / first["file_name"]).read_bytes(), first["file_name"])
    result = auto_segment(seg, [image], "prior", priors=priors[:1])[0]
    assert result.labels == priors[0].labels and result.image_size == image.shape[:2]


def test_priors_from_coco_errors_name_the_problem() -> None:
    coco = {
        "images": [{"id": 1, "height": 4, "width": 4}],
        "categories": [],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [0, 0, 2, 2]}],
    }
    with pytest.raises(ValueError, match="no image with id 2"):
        priors_from_coco(coco, [2])
    with pytest.raises(ValueError, match="annotation 7 has unknown category_id 3"):
        priors_from_coco(coco, [1])


def test_priors_from_coco_uses_the_bbox_when_there_is_no_segmentation() -> None:
    coco = {
        "images": [{"id": 1, "height": 4, "width": 5}],
        "categories": [{"id": 3, "name": "box"}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 1, 3, 2], "score": 0.4}],
    }
    prior = priors_from_coco(coco, [1])[0]
    assert prior.boxes.tolist() == [[1, 1, 4, 3]] and prior.labels == ["box"]
    assert prior.detector_scores[0] == pytest.approx(0.4)


# -- entry point validation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "magic"}, "strategy must be one of"),
        ({"strategy": "everything", "bogus": 1}, r"does not take \['bogus'\]"),
        ({"strategy": "text"}, "needs classes="),
        ({"strategy": "text", "classes": ["cat"]}, "needs a text detector"),
        ({"strategy": "prior"}, "needs priors="),
        ({"strategy": "prior", "priors": []}, "one Instances per image"),
        ({"strategy": "prior", "priors": [Instances.empty(5, 5)]}, r"prior masks are \(5, 5\)"),
        ({"strategy": "prior", "priors": [Instances.empty(10, 10)], "prompt": "points"}, "prior prompt must be"),
    ],
)
def test_auto_segment_rejects_bad_arguments(seg: Segmenter, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        auto_segment(seg, [_image(10, 10, 10)], **kwargs)


def test_auto_segment_of_no_images_is_an_empty_list(seg: Segmenter) -> None:
    assert auto_segment(seg, [], "everything") == []
    with pytest.raises(ValueError, match="images must be a list"):
        auto_segment(seg, np.zeros((4, 4, 3), np.uint8), "everything")  # type: ignore[arg-type]


def test_get_detector_loads_once_per_key(tmp_path: Path) -> None:
    from model.cache import clear_cache, get_detector

    path = save_tiny_grounding_dino(tmp_path / "gd")
    clear_cache()
    try:
        assert get_detector(str(path), device="cpu") is get_detector(str(path), device="cpu")
    finally:
        clear_cache()


def test_resegment_decodes_each_instance_again_from_its_own_prompt_keeping_order_and_labels(seg: Segmenter) -> None:
    from model.autoprompt import resegment

    image = np.random.default_rng(5).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    masks = np.zeros((3, 40, 48), bool)
    masks[0, 2:10, 2:10] = masks[1, 20:30, 20:30] = masks[2, 5:15, 30:40] = True
    previous = Instances(
        masks=masks,
        labels=["cat", "dog", "cat"],
        detector_scores=[0.9, np.nan, np.nan],
        prompts=[
            Prompt("text", {"phrase": "cat", "box": [2, 2, 10, 10]}, "old"),
            Prompt("grid", {"point": [25.0, 25.0]}, "old"),
            Prompt("human", {}, ""),
        ],
    )
    emb = seg.embed([image])
    again = resegment(seg, emb, 0, previous)
    assert again.labels == ["cat", "dog", "cat"] and again.image_size == (40, 48)
    assert [p.kind for p in again.prompts] == ["text", "grid", "human"]
    assert {p.model_id for p in again.prompts} == {seg.model_version}
    np.testing.assert_allclose(again.detector_scores, [0.9, np.nan, np.nan])
    # the box instance is exactly what a box prompt gives, the point one what a point prompt (best of 3) gives
    by_box = seg.predict(emb, boxes=np.array([[2, 2, 10, 10]], np.float32))[0]
    by_point = seg.predict(emb, points=np.array([[[25.0, 25.0]]], np.float32), multimask=True)[0]
    np.testing.assert_array_equal(again.masks[0], by_box.masks[0])
    np.testing.assert_array_equal(again.masks[1], by_point.masks[0])
    assert len(resegment(seg, emb, 0, Instances.empty(40, 48))) == 0
