"""Strategy ``concept`` (SAM 3) on a tiny random Sam3Model: every instance above the score threshold, with SAM 3's
own score formula, class labels, lineage and active-learning signals; clear errors on the wrong model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.al_scores import image_confidence, instance_confidence, instance_signals
from model.autoprompt import auto_segment
from model.concept import ConceptParams, ConceptSegmenter
from model.errors import ModelCapabilityError, ModelNotAvailableError
from model.segmenter import Segmenter
from model.strategies import STRATEGIES
from tests.support.tiny_models import save_tiny_sam2, save_tiny_sam3

CLASSES = ["person", "car"]


@pytest.fixture(scope="module")
def sam3(tmp_path_factory: pytest.TempPathFactory) -> ConceptSegmenter:
    return ConceptSegmenter.from_pretrained(save_tiny_sam3(tmp_path_factory.mktemp("sam3") / "tiny-sam3"), device="cpu")


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((90, 120, 3), (64, 64, 3), (131, 77, 3))]


def _expected_scores(seg: ConceptSegmenter, image: np.ndarray, classes: list[str]) -> list[tuple[str, float]]:
    """SAM 3's confidence per (class, query) straight from one Sam3Model forward (pixel_values + input_ids) with
    Meta's text-only prompt: transformers' own geometry path given one padding box (label -10, masked out), which
    appends the geometry encoder's CLS token to the text. That path pools the (masked) box with
    ``torchvision.ops.roi_align``; torchvision does not load here, and the masked box's features never reach the
    output, so zeros stand in for them."""
    from types import SimpleNamespace

    from transformers.models.sam3 import modeling_sam3

    def roi_align(features: torch.Tensor, boxes: list[torch.Tensor], size: int) -> torch.Tensor:
        return features.new_zeros(sum(len(b) for b in boxes), features.shape[1], size, size)

    n = len(classes)
    tokens = seg.tokenizer(classes, padding="max_length", max_length=32, return_tensors="pt")
    stub = SimpleNamespace(ops=SimpleNamespace(roi_align=roi_align))
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(modeling_sam3, "torchvision", stub, raising=False)
        out = seg.model(
            pixel_values=seg._pixels([image] * n),
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            input_boxes=torch.zeros(n, 1, 4),
            input_boxes_labels=torch.full((n, 1), -10),
        )
    scores = out.pred_logits.sigmoid() * out.presence_logits.sigmoid()
    return [(classes[c], float(s)) for c in range(n) for s in scores[c].tolist()]


def test_concept_instances_are_the_queries_sam3_scores_above_threshold(sam3: ConceptSegmenter) -> None:
    images = _images()
    results = auto_segment(sam3, images, "concept", classes=CLASSES, score_threshold=0.5)
    assert len(results) == len(images)
    for image, inst in zip(images, results, strict=True):
        expected = sorted((s for _, s in _expected_scores(sam3, image, CLASSES) if s > 0.5), reverse=True)
        assert len(inst) > 0
        assert inst.masks.shape[1:] == image.shape[:2]
        assert np.allclose(np.sort(inst.scores)[::-1], expected[: len(inst)], atol=1e-4)
        assert set(inst.labels) <= set(CLASSES)
        assert np.all(inst.scores > 0.5) and np.all(inst.scores <= 1)
        assert np.all(np.diff(inst.scores) <= 1e-6), "instances come best first"


def test_detector_scores_are_the_image_level_presence_of_each_class(sam3: ConceptSegmenter) -> None:
    image = _images()[0]
    inst = sam3.segment([image], CLASSES, ConceptParams(score_threshold=0.0))[0]
    tokens = sam3.tokenizer(CLASSES, padding="max_length", max_length=32, return_tensors="pt")
    with torch.no_grad():
        out = sam3.model(
            pixel_values=sam3._pixels([image, image]),
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
        )
    presence = dict(zip(CLASSES, out.presence_logits.sigmoid().flatten().tolist(), strict=True))
    for label, score in zip(inst.labels, inst.detector_scores, strict=True):
        assert score == pytest.approx(presence[label], abs=1e-5)
    assert np.all(inst.scores <= inst.detector_scores + 1e-6), "confidence = query score x presence <= presence"


def test_lineage_names_the_phrase_the_box_and_the_model(sam3: ConceptSegmenter) -> None:
    inst = auto_segment(sam3, _images()[:1], "concept", classes=CLASSES)[0]
    assert inst.prompts is not None and len(inst.prompts) == len(inst)
    for label, prompt in zip(inst.labels, inst.prompts, strict=True):
        assert prompt.kind == "text" and prompt.params["phrase"] == label and prompt.params["concept"] is True
        assert len(prompt.params["box"]) == 4 and prompt.model_id == sam3.model_version
    assert np.all(inst.track_ids == -1)


def test_higher_threshold_and_max_instances_keep_a_best_first_subset(sam3: ConceptSegmenter) -> None:
    images = _images()[:1]
    low = auto_segment(sam3, images, "concept", classes=CLASSES, score_threshold=0.3)[0]
    high = auto_segment(sam3, images, "concept", classes=CLASSES, score_threshold=0.899)[0]
    capped = auto_segment(sam3, images, "concept", classes=CLASSES, score_threshold=0.3, max_instances=2)[0]
    assert 0 < len(high) < len(low)
    assert np.allclose(high.scores, low.scores[: len(high)])
    assert len(capped) == 2 and np.allclose(capped.scores, low.scores[:2])


def test_batching_of_images_and_classes_does_not_change_results(sam3: ConceptSegmenter) -> None:
    images = _images()
    one = sam3.segment(images, CLASSES, ConceptParams(image_batch=1, class_batch=1))
    many = sam3.segment(images, CLASSES, ConceptParams(image_batch=3, class_batch=2))
    for a, b in zip(one, many, strict=True):
        assert a.labels == b.labels
        assert np.allclose(a.scores, b.scores, atol=1e-5)
        assert (a.masks != b.masks).mean() < 1e-3


def test_nothing_above_threshold_is_an_empty_result_not_an_error(sam3: ConceptSegmenter) -> None:
    out = auto_segment(sam3, _images(), "concept", classes=["dog"], score_threshold=0.999)
    assert [len(i) for i in out] == [0, 0, 0]
    assert out[1].masks.shape == (0, 64, 64)


def test_active_learning_signals_read_sam3_scores(sam3: ConceptSegmenter) -> None:
    inst = auto_segment(sam3, _images()[:1], "concept", classes=CLASSES)[0]
    signals = instance_signals(inst)
    assert np.allclose(signals.predicted_iou, inst.scores)
    assert np.all(np.isfinite(signals.detector_margin))
    confidence = instance_confidence(signals)
    assert confidence.shape == (len(inst),) and np.all((confidence >= 0) & (confidence <= 1))
    assert 0.0 <= image_confidence(confidence) <= 1.0


def test_concept_is_registered_with_its_params_and_needs_classes(sam3: ConceptSegmenter) -> None:
    spec = STRATEGIES["concept"]
    assert spec.needs_classes and not spec.needs_detector
    assert {"score_threshold", "mask_threshold", "max_instances"} <= spec.params()
    with pytest.raises(ValueError, match="needs classes"):
        auto_segment(sam3, _images(), "concept")
    with pytest.raises(ValueError, match="does not take"):
        auto_segment(sam3, _images(), "concept", classes=CLASSES, box_threshold=0.3)


@pytest.mark.parametrize(
    ("field", "value"),
    [("score_threshold", 1.0), ("mask_threshold", -0.1), ("class_batch", 0), ("image_batch", 0), ("max_instances", 0)],
)
def test_bad_concept_params_are_rejected(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        ConceptParams(**{field: value})


def test_concept_on_a_sam2_model_says_a_sam3_checkpoint_is_needed(tmp_path: Path) -> None:
    sam2 = Segmenter.from_pretrained(save_tiny_sam2(tmp_path / "tiny-sam2"), device="cpu")
    with pytest.raises(ModelCapabilityError, match="needs a SAM 3 checkpoint.*strategy 'text'"):
        auto_segment(sam2, _images(), "concept", classes=CLASSES)


@pytest.mark.parametrize("strategy", ["everything", "prior"])
def test_prompt_strategies_on_sam3_say_what_sam3_runs(sam3: ConceptSegmenter, strategy: str) -> None:
    from model.instances import Instances

    images = _images()[:1]
    priors = [Instances.empty(90, 120)] if strategy == "prior" else None
    with pytest.raises(ModelCapabilityError, match="SAM 3 concept model.*strategy 'concept'"):
        auto_segment(sam3, images, strategy, priors=priors)


def test_a_sam3_directory_without_tokenizer_fails_clearly(tmp_path: Path) -> None:
    path = save_tiny_sam3(tmp_path / "no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (path / name).unlink(missing_ok=True)
    with pytest.raises(ModelNotAvailableError, match="has no tokenizer"):
        ConceptSegmenter.from_pretrained(path, device="cpu")
