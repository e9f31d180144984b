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

# fp32 on two torch builds (2.13 here, 2.14.1 in .venv-ref) with different kernels for the same ops: the ViT's
# output already differs by ~2e-4 relative (3e-3 absolute) after 32 blocks
TOLERANCE = {"logit": 1e-2, "box": 1e-3, "iou": 0.99}

_RUN: dict[str, Any] = {}


def _run() -> dict[str, Any]:
    """Meta's answers (cached) and maskloop's, computed once per session."""
    if "error" in _RUN:
        pytest.fail(f"the SAM 3 comparison could not run: {_RUN['error']}")
    if _RUN:
        return _RUN
    _require_reference_venv()
    try:
        return _compute()
    except Exception as error:  # every test reads the same run: fail them all at once, not by re-running
        _RUN["error"] = repr(error)
        raise


def _compute() -> dict[str, Any]:
    import torch
    from transformers import Sam3Config, Sam3Model

    from model.concept import ConceptParams, ConceptSegmenter, _Pooled

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

    # the raw outputs of all 200 queries on the vision features segment() computed, two ways: prompted with the text
    # alone (as transformers' Sam3Model prompts without boxes), and as segment() prompts: the text plus the geometry
    # encoder's CLS token that Meta appends to every text-only prompt (ConceptSegmenter._geometry_cls). (The input
    # tensors differ by one uint8 step at most: test_preprocessing_matches_metas_transform.)
    variants = {"text_only": captured[0], "maskloop": captured[0]}
    raw: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in variants}
    with torch.inference_mode():
        for k, phrase in enumerate(PHRASES):
            text, mask = segmenter.encode_text([phrase])  # what segment() feeds the detector
            tokens = segmenter.tokenizer(
                [phrase], padding="max_length", max_length=32, truncation=True, return_tensors="pt"
            )
            for name, vision in variants.items():
                if name == "maskloop":  # segment()'s prompt: the text and the geometry encoder's CLS token
                    cls = segmenter._geometry_cls(vision, 0)
                    prompt = _Pooled(torch.cat([text, cls], dim=1))
                    out = model(
                        vision_embeds=vision,
                        text_embeds=prompt,
                        attention_mask=torch.cat([mask, mask.new_ones(1, 1)], 1),
                    )
                else:  # transformers without boxes: the text alone
                    out = model(vision_embeds=vision, **tokens)
                raw[name][k] = {
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
        ours, theirs = run["raw"]["maskloop"][k]["tokens"], run["meta"][f"tokens/{k}"]
        valid = run["raw"]["maskloop"][k]["valid"]
        assert valid == int((theirs != 0).sum()) >= 3, f"{phrase!r}: {ours} vs Meta {theirs.tolist()}"
        assert list(ours[:valid]) == theirs[:valid].tolist(), f"{phrase!r}: {ours} vs Meta {theirs.tolist()}"


def _raw_figures(variant: str, k: int) -> dict[str, float]:
    """Our raw outputs of all 200 queries (``variant``, see ``_run``) against Meta's, recorded in figures.json."""
    run = _run()
    ours, meta, key = run["raw"][variant][k], run["meta"], f"0/{k}"
    valid = ours["valid"]
    their_scores = 1 / (1 + np.exp(-meta[f"{key}/pred_logits"])) / (1 + np.exp(-meta[f"{key}/presence_logit"]))
    our_scores = 1 / (1 + np.exp(-ours["pred_logits"])) / (1 + np.exp(-ours["presence_logit"]))
    assert ours["pred_masks"].shape == meta[f"{key}/pred_masks"].shape
    ious = [mask_iou(a > 0, b > 0) for a, b in zip(ours["pred_masks"], meta[f"{key}/pred_masks"], strict=True)]
    figures = {
        "max_text_feature_diff": float(
            np.abs(ours["text_features"][:valid] - meta[f"{key}/text_features"][:valid]).max()
        ),
        "max_query_logit_diff": float(np.abs(ours["pred_logits"] - meta[f"{key}/pred_logits"]).max()),
        "max_presence_logit_diff": float(np.abs(ours["presence_logit"] - meta[f"{key}/presence_logit"]).max()),
        "max_score_diff": float(np.abs(our_scores - their_scores).max()),
        "max_box_diff_normalised": float(np.abs(ours["pred_boxes"] - meta[f"{key}/pred_boxes"]).max()),
        "max_mask_logit_diff": float(np.abs(ours["pred_masks"] - meta[f"{key}/pred_masks"]).max()),
        "min_lowres_mask_iou": float(min(ious)),
        "mean_lowres_mask_iou": float(np.mean(ious)),
    }
    record(
        "sam3",
        f"raw/{variant}",
        PHRASES[k],
        **{name: float(f"{value:.4g}") for name, value in figures.items()},
        meta_score_range=f"{their_scores.min():.4f}..{their_scores.max():.4f}",
        mask_logit_scale=round(float(np.abs(meta[f"{key}/pred_masks"]).mean()), 3),
    )
    return figures


@pytest.mark.parametrize("k", range(len(PHRASES)), ids=list(PHRASES))
def test_maskloops_prompt_carries_metas_geometry_token_and_the_raw_outputs_agree(k: int) -> None:
    """transformers' Sam3Model skips the geometry encoder when no box is given, so its DETR sees the text tokens
    alone: the 200 queries then differ from Meta's. Meta always runs the encoder, and its
    text-only prompt carries one more token (the encoder's CLS); maskloop's segment() builds that token
    (``ConceptSegmenter._geometry_cls``), and its raw outputs agree with Meta's within the two torch builds'
    tolerance."""
    text_only = _raw_figures("text_only", k)
    as_maskloop = _raw_figures("maskloop", k)
    assert text_only["max_text_feature_diff"] <= 1e-4, text_only
    assert text_only["max_query_logit_diff"] > TOLERANCE["logit"], text_only
    assert as_maskloop["max_text_feature_diff"] <= 1e-4, as_maskloop
    assert as_maskloop["max_query_logit_diff"] <= TOLERANCE["logit"], as_maskloop
    assert as_maskloop["max_box_diff_normalised"] <= TOLERANCE["box"], as_maskloop
    assert as_maskloop["min_lowres_mask_iou"] >= TOLERANCE["iou"], as_maskloop


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
    # two torch builds and the ViT's LayerNorm eps (Meta 1e-5, transformers' Sam3 config 1e-6) leave the ViT's output
    # ~3e-3 apart; that reaches the scores as ~3.6e-4 (measured), below the gap the threshold sits in
    assert score_diff <= 1e-3, f"scores differ from Meta's by {score_diff}"
    assert box_diff <= 0.05, f"boxes differ by {box_diff} px"  # maskloop rounds boxes to 0.01 px
    assert min(ious) >= 0.99, f"mask IoU {min(ious)} with Meta's processor"
    assert 0.0 < their_masks.mean() < 1.0, "Meta's masks are degenerate: the seeded weights need spread"
    assert our_masks.shape == their_masks.shape == (len(their_scores), height, width)


@pytest.mark.parametrize("i", range(len(PREPROCESS_IMAGES)), ids=[p.name for p in PREPROCESS_IMAGES])
def test_preprocessing_matches_metas_transform(i: int) -> None:
    """maskloop's input tensor (``ConceptSegmenter._pixels``: float antialiased bilinear resize to 1008, mean = std = 0.5)
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
        image_size=f"{image.shape[1]}x{image.shape[0]}",
        max_abs_diff=round(float(diff.max()), 6),
        mean_abs_diff=round(float(diff.mean()), 6),
    )
    assert ours.shape == theirs.shape
    # about one uint8 step after normalisation (2/255 = 0.00784): Meta rounds the resized image to uint8 (torchvision's
    # fixed-point kernel: measured 0.00787 on the 640x480 photo), maskloop keeps floats
    assert float(diff.max()) <= 0.008, f"max |diff| {diff.max():.4f} (mean {diff.mean():.5f})"
