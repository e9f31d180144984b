"""Segmenter: batched prompts equal one-by-one, preprocessing equals the official processor, geometry on a real
photo (and its EXIF-rotated copy), prompt validation."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.images import decode_image
from model.masks import masks_to_boxes
from model.preprocess import preprocess_images, scale_coords, stability_scores, upsample_logits
from model.segmenter import Segmenter
from tests.support.tiny_models import save_tiny_sam2

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
COCO_IMAGE = DATA / "coco128-seg" / "images" / "train2017" / "000000000025.jpg"
COCO_ANNOTATIONS = DATA / "coco128-seg" / "annotations" / "instances_train2017_coco128seg.json"


@pytest.fixture(scope="module")
def seg(tmp_path_factory: pytest.TempPathFactory) -> Segmenter:
    torch.manual_seed(0)
    return Segmenter.from_pretrained(save_tiny_sam2(tmp_path_factory.mktemp("sam2") / "tiny"), device="cpu")


def _image(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_box_prompts_batched_equal_one_by_one(seg: Segmenter) -> None:
    image = _image(0, 150, 220)
    boxes = np.array([[5, 5, 60, 70], [30, 20, 200, 140], [0, 0, 220, 150], [100, 90, 101, 91]], np.float32)
    emb = seg.embed(image)
    batched = seg.decode(emb, boxes=boxes)
    singles = [seg.decode(emb, boxes=boxes[i : i + 1]) for i in range(len(boxes))]
    assert torch.allclose(batched.logits, torch.cat([s.logits for s in singles]), atol=1e-5)
    assert torch.allclose(batched.iou, torch.cat([s.iou for s in singles]), atol=1e-6)
    chunked = seg.decode(emb, boxes=boxes, prompt_batch=3)
    assert torch.allclose(batched.logits, chunked.logits, atol=1e-5)
    full = seg.predict(emb, boxes=boxes)[0]
    for i in range(len(boxes)):
        assert np.array_equal(full.masks[i], seg.predict(emb, boxes=boxes[i : i + 1])[0].masks[0])


def test_multi_point_and_combined_prompts_batched_equal_one_by_one(seg: Segmenter) -> None:
    image = _image(1, 130, 100)
    points = np.array([[[10, 10], [50, 60]], [[90, 120], [0, 0]], [[40, 40], [41, 41]]], np.float32)
    labels = np.array([[1, 0], [1, -10], [1, 1]])
    boxes = np.array([[0, 0, 60, 70], [50, 50, 100, 130], [20, 20, 80, 80]], np.float32)
    emb = seg.embed(image)
    for kwargs in (
        {"points": points, "point_labels": labels},
        {"points": points, "point_labels": labels, "boxes": boxes},
    ):
        batched = seg.decode(emb, multimask=True, **kwargs)
        assert batched.logits.shape == (3, 3, *seg.mask_input_size)
        for i in range(3):
            one = seg.decode(emb, multimask=True, **{k: v[i : i + 1] for k, v in kwargs.items()})
            assert torch.allclose(batched.logits[i], one.logits[0], atol=1e-5)


def test_mask_input_prompts_batched_equal_one_by_one(seg: Segmenter) -> None:
    image = _image(2, 96, 128)
    emb = seg.embed(image)
    h, w = seg.mask_input_size
    masks = np.where(np.random.default_rng(0).random((3, h, w)) > 0.5, 10.0, -10.0).astype(np.float32)
    points = np.array([[20, 20], [60, 50], [100, 80]], np.float32)
    batched = seg.decode(emb, points=points, mask_inputs=masks)
    for i in range(3):
        one = seg.decode(emb, points=points[i : i + 1], mask_inputs=masks[i : i + 1])
        assert torch.allclose(batched.logits[i], one.logits[0], atol=1e-5)
    no_mask = seg.decode(emb, points=points)
    assert not torch.allclose(no_mask.logits, batched.logits, atol=1e-4)  # the mask prompt is used


def test_several_images_per_encoder_forward_equal_separate_embeddings(seg: Segmenter) -> None:
    images = [_image(3, 100, 140), _image(4, 64, 64), _image(5, 300, 90)]
    together = seg.embed(images, batch_size=3)
    for i, image in enumerate(images):
        alone = seg.embed(image)
        for a, b in zip(together.features, alone.features, strict=True):
            assert torch.allclose(a[i : i + 1], b, atol=1e-4)
    assert together.original_sizes == ((100, 140), (64, 64), (300, 90))
    results = seg.predict(together, boxes=[np.array([[0, 0, 50, 50]]), None, np.zeros((0, 4))])
    assert [len(r) for r in results] == [1, 0, 0]
    assert [r.image_size for r in results] == [(100, 140), (64, 64), (300, 90)]


def test_predict_returns_typed_instances_with_lineage(seg: Segmenter) -> None:
    image = _image(6, 80, 120)
    result = seg.predict(image, points=[[30, 40]], multimask=True)[0]
    assert result.masks.shape == (1, 80, 120) and result.masks.dtype == bool
    assert 0 <= result.scores[0] <= 1 and 0 <= result.stability[0] <= 1
    prompt = result.prompts[0]
    assert prompt.kind == "point" and prompt.params == {"points": [[30.0, 40.0]], "labels": [1]}
    assert prompt.model_id == seg.model_version
    assert np.array_equal(result.boxes, masks_to_boxes(result.masks))


def test_no_prompts_gives_empty_instances_of_the_image_size(seg: Segmenter) -> None:
    result = seg.predict(_image(7, 33, 44), boxes=np.zeros((0, 4), np.float32))[0]
    assert len(result) == 0 and result.image_size == (33, 44)


def test_one_pixel_image_is_segmented(seg: Segmenter) -> None:
    result = seg.predict(np.zeros((1, 1, 3), np.uint8), points=[[0, 0]])[0]
    assert result.masks.shape == (1, 1, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"points": np.zeros((2, 3))}, r"points must be \(P, K, 2\)"),
        ({"points": np.zeros((2, 1, 2)), "point_labels": np.ones((3, 1))}, "point_labels must have shape"),
        ({"points": np.zeros((1, 1, 2)), "point_labels": np.array([[2]])}, "point_labels must be 1, 0, -1 or -10"),
        ({"point_labels": np.ones((1, 1))}, "point_labels given without points"),
        ({"boxes": np.array([[10, 10, 5, 20]])}, "x2 >= x1"),
        ({"boxes": np.zeros((2, 3))}, r"boxes must be \(P, 4\)"),
        ({"boxes": np.array([[0, 0, np.nan, 4]])}, "boxes must be finite"),
        ({"mask_inputs": np.zeros((64, 64))}, r"mask_inputs must be \(P, h, w\)"),
        ({"points": np.zeros((2, 1, 2)), "boxes": np.zeros((3, 4))}, "same count P"),
    ],
)
def test_bad_prompts_raise_value_error_naming_the_image(seg: Segmenter, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        seg.predict(_image(8, 20, 20), **kwargs)
    assert "image 0" in str(info.value)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([np.zeros((10, 10), np.uint8)], r"expected an \(H, W, 3\) uint8 array"),
        ([np.zeros((10, 10, 4), np.uint8)], r"expected an \(H, W, 3\) uint8 array"),
        ([np.zeros((10, 10, 3), np.float32)], "dtype float32"),
        ([np.zeros((0, 10, 3), np.uint8)], "at least 1x1"),
        (["image.jpg"], "got str"),
        ([], "at least one image"),
    ],
)
def test_bad_images_raise_value_error(seg: Segmenter, images: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        seg.embed(images)


def test_per_image_prompt_lists_must_match_image_count(seg: Segmenter) -> None:
    emb = seg.embed([_image(9, 20, 20), _image(10, 20, 20)])
    with pytest.raises(ValueError, match="for 2 images pass a list of 2"):
        seg.predict(emb, boxes=np.zeros((1, 4)))


def test_embeddings_of_another_model_are_rejected(seg: Segmenter, tmp_path: Path) -> None:
    other = Segmenter.from_pretrained(save_tiny_sam2(tmp_path / "other", seed=9), device="cpu")
    with pytest.raises(ValueError, match="embeddings come from"):
        seg.predict(other.embed(_image(11, 20, 20)), boxes=np.array([[0, 0, 5, 5]]))


# -- pre/post-processing -----------------------------------------------------------------------------------------
def test_preprocessing_resizes_to_square_and_normalises_with_imagenet_stats() -> None:
    image = np.full((10, 30, 3), (124, 116, 104), np.uint8)  # ~ImageNet mean
    pixels = preprocess_images([image], 64, torch.device("cpu"))
    assert pixels.shape == (1, 3, 64, 64)
    assert pixels.abs().max() < 0.01
    white = preprocess_images([np.full((5, 5, 3), 255, np.uint8)], 8, torch.device("cpu"))
    assert torch.allclose(
        white[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    )


@pytest.mark.parametrize(
    ("coords", "size", "expected"),
    [
        ([[0.0, 0.0]], (100, 200), [[0.0, 0.0]]),
        ([[200.0, 100.0]], (100, 200), [[1024.0, 1024.0]]),
        ([[50.0, 50.0]], (100, 200), [[256.0, 512.0]]),
        ([[10.0, 20.0, 30.0, 40.0]], (40, 60), [[170.66667, 512.0, 512.0, 1024.0]]),
    ],
)
def test_scale_coords_per_axis_table(coords: list, size: tuple[int, int], expected: list) -> None:
    assert torch.allclose(scale_coords(torch.tensor(coords), size, 1024), torch.tensor(expected))


def test_upsample_logits_to_original_size_keeps_geometry() -> None:
    low = torch.full((1, 4, 4), -5.0)
    low[0, :2, 2:] = 5.0  # top-right quadrant
    up = upsample_logits(low, (40, 80)) > 0
    assert up.shape == (1, 40, 80)
    assert up[0, :15, 40:].all() and up[0, :20, 48:].all()  # the inner corner is rounded by bilinear interpolation
    assert not up[0, 20:, :].any() and not up[0, :, :40].any()
    assert upsample_logits(torch.zeros((0, 4, 4)), (5, 6)).shape == (0, 5, 6)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([5.0, 5.0, 5.0, 5.0], 1.0),
        ([5.0, 0.5, -5.0, -5.0], 0.5),
        ([-5.0] * 4, 0.0),
        ([0.5, 0.5, 5.0, -0.5], 0.25),
        ([0.5, 0.5, 0.5, 0.5], 0.0),
    ],
)
def test_stability_score_table(values: list[float], expected: float) -> None:
    logits = torch.tensor(values).view(1, 2, 2)
    assert stability_scores(logits).item() == pytest.approx(expected)


def test_preprocessing_resizes_in_float_without_rounding_to_uint8_levels() -> None:
    """Meta's SAM2Transforms resize the [0, 1] float image (tests/reference compares against Meta's code): a
    one-level step between two pixels, upsampled, must give values between the levels, not rounded back to them."""
    image = np.zeros((2, 1, 3), np.uint8)
    image[1] = 1
    ours = preprocess_images([image], 8, torch.device("cpu"))
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    levels = ((ours * std + mean) * 255.0)[0, 0, :, 0]
    between = levels[(levels > 0.01) & (levels < 0.99)]
    assert len(between) >= 2, levels.tolist()


# -- geometry on a real photo -----------------------------------------------------------------------------------
class _EchoPromptModel(torch.nn.Module):
    """Test double around the real tiny Sam2Model: runs it, then replaces its random-weight masks by the prompt box
    rasterised on the low-res grid in *model input coordinates*, so predictions test our coordinate transforms."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.config = model.config
        self.prompt_encoder = model.prompt_encoder

    def get_image_embeddings(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        return self.inner.get_image_embeddings(pixel_values)

    def forward(self, **kwargs: object):  # type: ignore[no-untyped-def]
        out = self.inner(**kwargs)
        boxes = kwargs["input_boxes"]
        size = self.config.prompt_encoder_config.image_size
        h, w = out.pred_masks.shape[-2:]
        ys = (torch.arange(h) + 0.5) * size / h
        xs = (torch.arange(w) + 0.5) * size / w
        x1, y1, x2, y2 = (boxes[:, 0, i].view(-1, 1, 1) for i in range(4))  # type: ignore[index]
        inside = (
            (xs.view(1, 1, -1) >= x1) & (xs.view(1, 1, -1) < x2) & (ys.view(1, -1, 1) >= y1) & (ys.view(1, -1, 1) < y2)
        )
        logits = torch.where(inside, 8.0, -8.0)[:, None, None].expand_as(out.pred_masks)
        out.pred_masks = logits.contiguous()
        return out


def _coco_box() -> np.ndarray:
    coco = json.loads(COCO_ANNOTATIONS.read_text())
    image_id = next(im["id"] for im in coco["images"] if im["file_name"].endswith("000000000025.jpg"))
    ann = max((a for a in coco["annotations"] if a["image_id"] == image_id), key=lambda a: a["area"])
    x, y, w, h = ann["bbox"]
    return np.array([x, y, x + w, y + h], np.float32)


@pytest.fixture(scope="module")
def echo(seg: Segmenter) -> Segmenter:
    return Segmenter(_EchoPromptModel(seg.model), model_id="echo", device="cpu")  # type: ignore[arg-type]


def test_box_prompt_mask_stays_on_the_coco_ground_truth_box(echo: Segmenter) -> None:
    image = decode_image(COCO_IMAGE.read_bytes(), COCO_IMAGE.name)
    assert image.shape == (426, 640, 3)
    box = _coco_box()  # giraffe, [386, 60, 601, 357]
    result = echo.predict(image, boxes=box[None])[0]
    got = result.boxes[0]
    cell_h, cell_w = 426 / echo.mask_input_size[0], 640 / echo.mask_input_size[1]
    tolerance = np.array([cell_w, cell_h, cell_w, cell_h])  # one cell of the low-res mask grid
    assert np.all(np.abs(got - box) <= tolerance), (got, box)
    assert result.masks[0, int(box[1]) + 5 : int(box[3]) - 5, int(box[0]) + 5 : int(box[2]) - 5].all()


def test_exif_rotated_copy_gives_the_rotated_mask(echo: Segmenter) -> None:
    original = decode_image(COCO_IMAGE.read_bytes(), COCO_IMAGE.name)
    stored = Image.fromarray(original)
    exif = stored.getexif()
    exif[0x0112] = 6  # orientation: display rotated 90 degrees clockwise
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=95, exif=exif)
    rotated = decode_image(buffer.getvalue(), "rotated.jpg")
    assert rotated.shape == (640, 426, 3)
    assert np.abs(rotated.astype(int) - np.rot90(original, k=-1).astype(int)).mean() < 3
    height = original.shape[0]
    x1, y1, x2, y2 = _coco_box()
    rotated_box = np.array([[height - y2, x1, height - y1, x2]], np.float32)
    upright = echo.predict(original, boxes=_coco_box()[None])[0].masks[0]
    turned = echo.predict(rotated, boxes=rotated_box)[0].masks[0]
    disagreement = np.mean(turned != np.rot90(upright, k=-1))
    assert disagreement < 0.01
