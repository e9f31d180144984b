"""maskloop's SAM 3 path (``ConceptSegmenter`` on transformers ``Sam3Model``) against Meta's ``sam3`` 0.1.4
(``build_sam3_image_model`` + ``Sam3Processor``), both at the released architecture (ViT-L/14 at 1008 px, 24-layer
CLIP text encoder, 6+6-layer DETR, 200 queries) with the same seeded random weights.

Meta's side runs in ``.venv-ref`` (``sam3_meta_side.py``: builds the model, saves its state dict, runs its processor
on one COCO image with two phrases); here its state dict is mapped onto ``Sam3Model`` with the key mapping of
transformers' ``convert_sam3_to_hf.py`` (``sam3_harness.convert_state_dict``), and maskloop's ``ConceptSegmenter``
runs on the same image and phrases with the same tokenizer ids. Compared: the tokens, the raw outputs of all 200
queries (text features, query logits, presence logit, boxes, low-res mask logits) and what each side keeps (SAM 3's
confidence above 0.5: masks at the image size, boxes in pixels, scores). ~6 min on 2 cores (each side ~2 min for
the ViT at 1008 px); Meta's side is cached in ``test-artifacts/reference/sam3-*``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.reference.conftest import _require_reference_venv
from tests.reference.harness import mask_iou, record, unpack
from tests.reference.sam3_harness import (
    IMAGE,
    PHRASES,
    PREPROCESS_IMAGES,
    build_spec,
    clip_tokenizer,
    convert_state_dict,
    load_meta_result,
    merges_for,
    run_meta,
)

# Meta tensors with no place in Sam3Model, by design: the ViT's RoPE tables (transformers recomputes them from the
# config) and the geometry encoder's point projections (transformers' SAM 3 takes boxes only, no point prompts; a
# text prompt uses neither). Every Sam3Model tensor is filled.
UNMAPPED_META = ("vision_encoder.backbone.layers.", ".rotary_emb.rope_embeddings")
UNMAPPED_POINTS = {
    f"geometry_encoder.points_{name}_project.{kind}"
    for name in ("direct", "pool", "pos_enc")
    for kind in ("weight", "bias")
}

_RUN: dict[str, Any] = {}


def _run() -> dict[str, Any]:
    """Meta's answers (cached) and maskloop's, computed once per session."""
    if _RUN:
        return _RUN
    _require_reference_venv()
    import torch
    from transformers import Sam3Config, Sam3Model

    from model.concept import ConceptParams, ConceptSegmenter

    spec = build_spec()
    meta_s = run_meta(spec)
    meta = load_meta_result(spec)
    torch.set_num_threads(int(spec["threads"]))

    started = time.perf_counter()
    state = torch.load(spec["checkpoint"], map_location="cpu", weights_only=True, mmap=True)
    converted = convert_state_dict(state)
    model = Sam3Model(Sam3Config())
    missing, unexpected = model.load_state_dict(converted, strict=False)
    load_s = time.perf_counter() - started

    segmenter = ConceptSegmenter(model, clip_tokenizer(merges_for(PHRASES)), device="cpu", dtype="fp32")
    captured: list[Any] = []
    vision_features = segmenter.model.get_vision_features

    def capture(**kwargs: Any) -> Any:
        out = vision_features(**kwargs)
        captured.append(out)
        return out

    segmenter.model.get_vision_features = capture  # keeps the segmenter's vision pass for the raw comparison
    image = np.asarray(Image.open(IMAGE).convert("RGB"))
    started = time.perf_counter()
    instances = segmenter.segment(
        [image], list(PHRASES), ConceptParams(score_threshold=float(meta["0/score_threshold"]))
    )[0]
    segment_s = time.perf_counter() - started

    raw = {}
    with torch.inference_mode():
        for k, phrase in enumerate(PHRASES):
            text, mask = segmenter.encode_text([phrase])  # what segment() feeds the detector
            tokens = segmenter.tokenizer(
                [phrase], padding="max_length", max_length=32, truncation=True, return_tensors="pt"
            )
            out = model(vision_embeds=captured[0], **tokens)
            raw[k] = {
                "tokens": tokens["input_ids"][0].tolist(),
                "valid": int(mask[0].sum()),
                "text_features": text[0].float().numpy(),
                "pred_logits": out.pred_logits[0].float().numpy(),
                "presence_logit": out.presence_logits.reshape(-1).float().numpy(),
                "pred_boxes": out.pred_boxes[0].float().numpy(),
                "pred_masks": out.pred_masks[0].float().numpy(),
            }
    _RUN.update(
        spec=spec,
        meta=meta,
        raw=raw,
        instances=instances,
        segmenter=segmenter,
        image=image,
        missing=missing,
        unexpected=unexpected,
        seconds={
            "meta_side_s": round(meta_s, 1),
            "ours_load_s": round(load_s, 1),
            "ours_segment_s": round(segment_s, 1),
        },
    )
    record("sam3", "timings", "cpu_2_threads", **_RUN["seconds"])
    return _RUN


def test_meta_checkpoint_maps_onto_sam3model_with_every_tensor_loaded() -> None:
    run = _run()
    rope = [k for k in run["unexpected"] if k.startswith(UNMAPPED_META[0]) and k.endswith(UNMAPPED_META[1])]
    unexpected = set(run["unexpected"]) - set(rope)
    assert unexpected == UNMAPPED_POINTS, f"Meta tensors with no place in Sam3Model: {sorted(unexpected)[:20]}"
    assert len(rope) == 32, f"RoPE tables of {len(rope)} ViT blocks (32 expected)"
    assert not run["missing"], f"Sam3Model tensors Meta's state dict does not fill: {run['missing']}"


def test_tokenizers_agree() -> None:
    """maskloop's CLIPTokenizer and Meta's SimpleTokenizer (same merges) give the same ids where the text is."""
    run = _run()
    for k, phrase in enumerate(PHRASES):
        ours, theirs = run["raw"][k]["tokens"], run["meta"][f"tokens/{k}"]
        valid = run["raw"][k]["valid"]
        assert valid == int((theirs != 0).sum()) >= 3, f"{phrase!r}: {ours} vs Meta {theirs.tolist()}"
        assert list(ours[:valid]) == theirs[:valid].tolist(), f"{phrase!r}: {ours} vs Meta {theirs.tolist()}"


@pytest.mark.parametrize("k", range(len(PHRASES)), ids=list(PHRASES))
def test_raw_outputs_of_all_queries_match_meta(k: int) -> None:
    run = _run()
    ours, meta = run["raw"][k], run["meta"]
    key = f"0/{k}"
    valid = ours["valid"]
    text_diff = float(np.abs(ours["text_features"][:valid] - meta[f"{key}/text_features"][:valid]).max())
    logit_diff = float(np.abs(ours["pred_logits"] - meta[f"{key}/pred_logits"]).max())
    presence_diff = float(np.abs(ours["presence_logit"] - meta[f"{key}/presence_logit"]).max())
    box_diff = float(np.abs(ours["pred_boxes"] - meta[f"{key}/pred_boxes"]).max())
    mask_diff = float(np.abs(ours["pred_masks"] - meta[f"{key}/pred_masks"]).max())
    ious = [mask_iou(a > 0, b > 0) for a, b in zip(ours["pred_masks"], meta[f"{key}/pred_masks"], strict=True)]
    their_scores = 1 / (1 + np.exp(-meta[f"{key}/pred_logits"])) / (1 + np.exp(-meta[f"{key}/presence_logit"]))
    our_scores = 1 / (1 + np.exp(-ours["pred_logits"])) / (1 + np.exp(-ours["presence_logit"]))
    score_diff = float(np.abs(our_scores - their_scores).max())
    record(
        "sam3",
        "raw",
        PHRASES[k],
        max_text_feature_diff=round(text_diff, 7),
        max_query_logit_diff=round(logit_diff, 7),
        max_presence_logit_diff=round(presence_diff, 7),
        max_box_diff_normalised=round(box_diff, 8),
        max_mask_logit_diff=round(mask_diff, 6),
        min_lowres_mask_iou=round(min(ious), 6),
        max_score_diff=round(score_diff, 8),
        meta_score_range=f"{their_scores.min():.4f}..{their_scores.max():.4f}",
        mask_logit_scale=round(float(np.abs(meta[f"{key}/pred_masks"]).mean()), 3),
    )
    assert ours["pred_masks"].shape == meta[f"{key}/pred_masks"].shape
    assert text_diff <= 1e-3, f"text features differ from Meta's by {text_diff}"
    assert logit_diff <= 1e-2 and presence_diff <= 1e-2, f"query logits {logit_diff}, presence {presence_diff}"
    assert box_diff <= 1e-4, f"boxes (normalised xyxy) differ by {box_diff}"
    margin = float(meta["0/score_margin"])
    assert score_diff < margin, f"scores differ by {score_diff}: more than the threshold's margin {margin}"
    assert min(ious) >= 0.99, f"low-res masks: IoU {min(ious)} (logits differ by up to {mask_diff})"


def _match_by_box(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """For each of ``theirs`` the index of its partner in ``ours``: greedy by box distance, each used once (every
    query has its own box; the random weights' masks look alike, so masks would not tell queries apart)."""
    dist = np.abs(theirs[:, None, :] - ours[None, :, :]).max(-1)
    partner = np.full(len(theirs), -1)
    used: set[int] = set()
    for flat in np.argsort(dist, axis=None):
        r, c = divmod(int(flat), dist.shape[1])
        if partner[r] < 0 and c not in used:
            partner[r] = c
            used.add(c)
    return partner


@pytest.mark.parametrize("k", range(len(PHRASES)), ids=list(PHRASES))
def test_concept_segmenter_instances_match_metas_processor(k: int) -> None:
    """What maskloop keeps for a phrase (``ConceptSegmenter.segment``) against Meta's ``Sam3Processor`` at the same
    confidence threshold: the same instances (same count) with the same masks at the image size, boxes in pixels
    and scores. Instances are paired by box (the random weights' scores sit close together, so score order is not
    compared)."""
    run = _run()
    meta, key = run["meta"], f"0/{k}"
    inst = run["instances"]
    mine = np.array([label == PHRASES[k] for label in inst.labels], bool)
    height, width = run["image"].shape[:2]
    their_scores = meta[f"{key}/scores"]
    their_boxes = meta[f"{key}/boxes"].astype(np.float64)
    their_masks = unpack(meta[f"{key}/masks"], width)
    if k == 0:
        assert 0 < len(their_scores) < 200, f"Meta keeps {len(their_scores)} of 200: the threshold must split them"
    assert int(mine.sum()) == len(their_scores), f"{int(mine.sum())} instances vs Meta's {len(their_scores)}"
    our_scores = inst.scores[mine]
    our_boxes = np.array([p.params["box"] for p, m in zip(inst.prompts, mine, strict=True) if m], np.float64)
    our_masks = inst.masks[mine]
    partner = _match_by_box(our_boxes, their_boxes)
    ious = [mask_iou(our_masks[j], their_masks[r]) for r, j in enumerate(partner)]
    score_diff = float(np.abs(our_scores[partner] - their_scores).max())
    box_diff = float(np.abs(our_boxes[partner] - their_boxes).max())
    record(
        "sam3",
        "instances",
        PHRASES[k],
        instances=len(their_scores),
        score_threshold=round(float(meta["0/score_threshold"]), 6),
        score_margin=round(float(meta["0/score_margin"]), 7),
        min_mask_iou=round(min(ious), 6),
        mean_mask_iou=round(float(np.mean(ious)), 6),
        max_box_diff_px=round(box_diff, 4),
        max_score_diff=round(score_diff, 8),
        mask_fraction=round(float(their_masks.mean()), 3),
    )
    assert score_diff <= 1e-4, f"scores differ from Meta's by {score_diff}"
    assert box_diff <= 0.05, f"boxes differ by {box_diff} px"  # maskloop rounds boxes to 0.01 px
    assert min(ious) >= 0.99, f"mask IoU {min(ious)} with Meta's processor"
    assert 0.0 < their_masks.mean() < 1.0, "Meta's masks are degenerate: the seeded weights need spread"
    assert our_masks.shape == their_masks.shape == (len(their_scores), height, width)


@pytest.mark.parametrize("i", range(len(PREPROCESS_IMAGES)), ids=[p.name for p in PREPROCESS_IMAGES])
def test_preprocessing_matches_metas_transform(i: int) -> None:
    """maskloop's input tensor (``ConceptSegmenter._pixels``: float bilinear resize to 1008, mean = std = 0.5)
    against Meta's ``Sam3Processor.transform`` (torchvision v2: uint8 bilinear resize with antialias, then the same
    normalisation)."""
    run = _run()
    theirs = run["meta"][f"pixels/{i}"]
    image = np.asarray(Image.open(PREPROCESS_IMAGES[i]).convert("RGB"))
    ours = run["segmenter"]._pixels([image])[0].numpy()
    diff = np.abs(ours - theirs)
    record(
        "sam3",
        "preprocessing",
        PREPROCESS_IMAGES[i].name,
        size=f"{image.shape[1]}x{image.shape[0]}",
        max_abs_diff=round(float(diff.max()), 6),
        mean_abs_diff=round(float(diff.mean()), 6),
    )
    assert ours.shape == theirs.shape
    # one uint8 step after normalisation is 2/255: Meta rounds the resized image to uint8, maskloop keeps floats
    assert float(diff.max()) <= 2 / 255 + 1e-6, f"max |diff| {diff.max():.4f} (mean {diff.mean():.5f})"
