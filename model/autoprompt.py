"""Auto-prompting: turn images into :class:`Instances` without a human click.

One entry point for the pipeline, :func:`auto_segment`, with three strategies:

- ``"everything"``: a point grid over the image (and optional crops), see :mod:`model.everything`.
- ``"text"``: class names -> Grounding DINO boxes -> SAM 2 masks; label = class phrase; class-aware NMS.
- ``"prior"``: boxes and/or masks of earlier instances (a dataset version, or a COCO file via
  :func:`priors_from_coco`) -> re-segmented masks that keep the prior's labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from model.instances import Instances, Prompt

if TYPE_CHECKING:
    from model.detector import TextDetector
    from model.segmenter import Segmenter

Strategy = str  # a name in model.strategies.STRATEGIES


def auto_segment(
    segmenter: Segmenter,
    images: list[np.ndarray],
    strategy: Strategy,
    classes: list[str] | None = None,
    priors: list[Instances] | None = None,
    detector: TextDetector | None = None,
    **params: Any,
) -> list[Instances]:
    """One :class:`Instances` per image (empty, not an error, when nothing is found), by the strategy of that name in
    :data:`model.strategies.STRATEGIES`.

    ``params`` by strategy — everything: fields of :class:`~model.everything.EverythingParams`
    (``points_per_side``, ``pred_iou_thresh``, ``crop_n_layers``, ``min_region_area`` ...); text:
    ``box_threshold`` (0.35), ``text_threshold`` (0.25), ``nms_thresh`` (0.5), ``multimask`` (False);
    prior: ``prompt`` ("box", "mask" or "box+mask"; default "box"), ``multimask`` (False).
    """
    from model.strategies import StrategyInputs, strategy_spec

    spec = strategy_spec(strategy)
    if not isinstance(images, (list, tuple)):
        raise ValueError(f"images must be a list of (H, W, 3) uint8 arrays, got {type(images).__name__}")
    if not images:
        return []
    inputs = StrategyInputs(segmenter, tuple(classes or ()), detector, priors)
    spec.check(inputs, params)
    return spec.run(inputs, list(images), params)


def segment_text(
    segmenter: Segmenter,
    detector: TextDetector,
    images: list[np.ndarray],
    classes: list[str],
    box_threshold: float = 0.35,
    text_threshold: float = 0.25,
    nms_thresh: float = 0.5,
    multimask: bool = False,
    prompt_batch: int = 256,
) -> list[Instances]:
    """Detector boxes per class phrase -> SAM 2 box prompts -> class-aware NMS on the mask boxes."""
    import torch

    from model.nms import batched_nms

    detections = detector.detect(images, classes, box_threshold=box_threshold, text_threshold=text_threshold)
    embeddings = segmenter.embed(images)
    results = []
    for i, found in enumerate(detections):
        height, width = images[i].shape[:2]
        if not found.labels:
            results.append(Instances.empty(height, width))
            continue
        class_idx = torch.tensor([classes.index(label) for label in found.labels])
        keep = batched_nms(torch.from_numpy(found.boxes), torch.from_numpy(found.scores), class_idx, nms_thresh).numpy()
        boxes, scores = found.boxes[keep], found.scores[keep]
        labels = [found.labels[k] for k in keep]
        inst = segmenter.predict(embeddings[i], boxes=boxes, multimask=multimask, prompt_batch=prompt_batch)[0]
        prompts = [
            Prompt(
                "text",
                {"phrase": label, "box": box.astype(np.float64).round(2).tolist()},
                f"{detector.model_id}+{segmenter.model_version}",
            )
            for label, box in zip(labels, boxes, strict=True)
        ]
        inst = Instances(
            masks=inst.masks,
            labels=labels,
            scores=inst.scores,
            stability=inst.stability,
            detector_scores=scores,
            prompts=prompts,
        )
        nonempty = inst.areas > 0
        results.append(inst[nonempty] if nonempty.any() else Instances.empty(height, width))
    return results


def segment_priors(
    segmenter: Segmenter,
    images: list[np.ndarray],
    priors: list[Instances],
    prompt: str = "box",
    multimask: bool = False,
    prompt_batch: int = 256,
) -> list[Instances]:
    """Re-segment earlier instances (boxes and/or masks as prompts), keeping their labels and detector scores."""
    if len(priors) != len(images):
        raise ValueError(f"priors must have one Instances per image: {len(images)} images, got {len(priors)} priors")
    if prompt not in {"box", "mask", "box+mask"}:
        raise ValueError(f"prior prompt must be 'box', 'mask' or 'box+mask', got {prompt!r}")
    embeddings = segmenter.embed(images)
    results = []
    for i, prior in enumerate(priors):
        height, width = images[i].shape[:2]
        if prior.image_size != (height, width):
            raise ValueError(f"image {i}: prior masks are {prior.image_size}, image is {(height, width)}")
        prior = prior[prior.areas > 0] if len(prior) else prior
        if len(prior) == 0:
            results.append(Instances.empty(height, width))
            continue
        boxes = prior.boxes if "box" in prompt else None
        mask_inputs = masks_to_mask_inputs(prior.masks, segmenter.mask_input_size) if "mask" in prompt else None
        inst = segmenter.predict(
            embeddings[i], boxes=boxes, mask_inputs=mask_inputs, multimask=multimask, prompt_batch=prompt_batch
        )[0]
        prompts = [
            Prompt(
                "prior",
                {"box": [round(float(v), 2) for v in box], "prompt": prompt, "prior": p.to_json()},
                segmenter.model_version,
            )
            for box, p in zip(prior.boxes, prior.prompts, strict=True)  # type: ignore[arg-type]
        ]
        results.append(
            Instances(
                masks=inst.masks,
                labels=prior.labels,
                scores=inst.scores,
                stability=inst.stability,
                detector_scores=prior.detector_scores,
                prompts=prompts,
                track_ids=prior.track_ids,
            )
        )
    return results


def masks_to_mask_inputs(masks: np.ndarray, size: tuple[int, int], magnitude: float = 10.0) -> np.ndarray:
    """(N, H, W) bool masks -> (N, h, w) low-res logits (+/- ``magnitude``) for SAM's mask prompt."""
    import torch
    import torch.nn.functional as F

    if masks.shape[0] == 0:
        return np.zeros((0, *size), np.float32)
    resized = F.interpolate(torch.from_numpy(masks[:, None].astype(np.float32)), size=size, mode="area")[:, 0]
    return ((resized > 0.5).float() * 2 - 1).mul(magnitude).numpy()


def priors_from_coco(coco: Mapping[str, Any], image_ids: Sequence[int]) -> list[Instances]:
    """Instances per COCO image id from a parsed COCO instances dict (polygons, RLE or, failing both, the bbox).

    Labels are the category names; ``detector_scores`` carry an annotation's ``score`` when present (results files).
    """
    from model.masks import polygons_to_mask, rle_to_mask

    images = {int(im["id"]): im for im in coco.get("images", [])}
    categories = {int(c["id"]): str(c["name"]) for c in coco.get("categories", [])}
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for ann in coco.get("annotations", []):
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    out = []
    for image_id in image_ids:
        if int(image_id) not in images:
            raise ValueError(f"COCO file has no image with id {image_id}")
        info = images[int(image_id)]
        height, width = int(info["height"]), int(info["width"])
        masks, labels, scores, prompts = [], [], [], []
        for ann in by_image.get(int(image_id), []):
            seg = ann.get("segmentation")
            if isinstance(seg, dict):
                mask = rle_to_mask(seg)
            elif isinstance(seg, list) and seg:
                mask = polygons_to_mask(seg, height, width)
            else:
                x, y, w, h = (float(v) for v in ann["bbox"])
                mask = np.zeros((height, width), bool)
                mask[int(round(y)) : int(round(y + h)), int(round(x)) : int(round(x + w))] = True
            category = int(ann["category_id"])
            if category not in categories:
                raise ValueError(f"COCO annotation {ann.get('id')} has unknown category_id {category}")
            masks.append(mask)
            labels.append(categories[category])
            scores.append(float(ann["score"]) if "score" in ann else np.nan)
            prompts.append(Prompt("human", {"coco_annotation_id": ann.get("id"), "bbox": list(ann.get("bbox", []))}))
        if not masks:
            out.append(Instances.empty(height, width))
            continue
        out.append(
            Instances(
                masks=np.stack(masks), labels=labels, detector_scores=np.array(scores, np.float32), prompts=prompts
            )
        )
    return out


def resegment(
    segmenter: Segmenter, embeddings: Any, index: int, previous: Instances, prompt_batch: int = 256
) -> Instances:
    """``previous`` instances of image ``index`` decoded again by ``segmenter`` from the prompts that made them.

    Boxes in the lineage (box, prior and text prompts) are re-prompted as boxes; grid and point prompts as points
    (three candidates, the best by predicted IoU kept); anything else (mask prompts, human masks) from its previous
    mask as a mask prompt. Order, labels, detector scores and track ids are kept; the lineage names the new model.
    """
    n = len(previous)
    height, width = previous.image_size
    if n == 0:
        return Instances.empty(height, width)
    kinds: list[str] = []
    boxes = np.zeros((n, 4), np.float32)
    points = np.zeros((n, 1, 2), np.float32)
    for i, prompt in enumerate(previous.prompts or []):
        params = prompt.params if isinstance(prompt.params, Mapping) else {}
        if params.get("box") is not None and len(params["box"]) == 4:
            kinds.append("box")
            boxes[i] = np.asarray(params["box"], np.float32)
        elif params.get("point") is not None or params.get("points"):
            kinds.append("point")
            point = params.get("point") or params["points"][0]
            points[i, 0] = np.asarray(point, np.float32)[:2]
        else:
            kinds.append("mask")
    kind_arr = np.asarray(kinds)
    masks = np.zeros((n, height, width), bool)
    scores = np.zeros((n,), np.float32)
    stability = np.zeros((n,), np.float32)
    for kind in ("box", "point", "mask"):
        sel = np.nonzero(kind_arr == kind)[0]
        if sel.size == 0:
            continue
        if kind == "box":
            out = segmenter.predict(embeddings[index], boxes=boxes[sel], prompt_batch=prompt_batch)[0]
        elif kind == "point":
            out = segmenter.predict(embeddings[index], points=points[sel], multimask=True, prompt_batch=prompt_batch)[0]
        else:
            mask_inputs = masks_to_mask_inputs(previous.masks[sel], segmenter.mask_input_size)
            out = segmenter.predict(embeddings[index], mask_inputs=mask_inputs, prompt_batch=prompt_batch)[0]
        masks[sel], scores[sel], stability[sel] = out.masks, out.scores, out.stability
    prompts = [Prompt(p.kind, dict(p.params), segmenter.model_version) for p in previous.prompts or []]
    return Instances(
        masks=masks,
        labels=previous.labels,
        scores=scores,
        stability=stability,
        detector_scores=previous.detector_scores,
        prompts=prompts,
        track_ids=previous.track_ids,
    )
