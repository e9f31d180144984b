"""Meta's side of the SAM 3 comparison: runs in the reference venv (``.venv-ref``: Meta's ``sam3`` package), never in
the project's venv, and never imports maskloop.

    .venv-ref/bin/python tests/reference/sam3_meta_side.py SPEC.json

Builds Meta's SAM 3 image model at the released architecture (``build_sam3_image_model``, no checkpoint) with seeded
random weights, saves its state dict (Meta's key names) to ``SPEC["checkpoint"]``, then runs Meta's model on each
image for each phrase and writes plain arrays to ``SPEC["out"]`` (.npz): its input tensors, the tokens, the raw head
outputs for all queries (``forward_grounding``, as ``Sam3Processor.set_text_prompt`` calls it) and what Meta's own
``Sam3Processor`` keeps above a confidence threshold placed in the widest gap of the scores (``split_threshold``).
The spec is written by ``tests/reference/sam3_harness.py``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode

# Meta's text encoder makes two parameters with torch.empty and never initialises them (the checkpoint fills them):
# uninitialised memory (sometimes NaN) unless drawn here, as CLIP initialises them.
_UNINITIALISED_STD = {
    "backbone.language_backbone.encoder.positional_embedding": 0.01,
    "backbone.language_backbone.encoder.text_projection": 1024**-0.5,
}
# Output layers scaled, and the presence bias shifted, so that scores and mask logits spread like a trained model's
# instead of sitting near sigmoid(0) (default init: every query ~0.37 x presence ~0.27, mask logits within +-1).
_SCALE = {
    "dot_prod_scoring.hs_proj.weight": 8.0,
    "segmentation_head.mask_predictor.mask_embed.layers.2.weight": 8.0,
}
_SHIFT = {"transformer.decoder.presence_token_head.layers.2.bias": 4.0}


class _CudaOnlyCallsOnCpu(TorchFunctionMode):
    """Meta's code assumes CUDA in three places: the builder makes two caches with a hard-coded ``device="cuda"``
    (``PositionEmbeddingSine``'s precomputed encodings, ``TransformerDecoder``'s box-RPB coordinates) and the geometry
    encoder pins a tensor (``pin_memory()``, which needs a CUDA driver) before moving it. On a CPU-only machine those
    tensors are made on the CPU and pinning is skipped: same values, only the device handling changes."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = dict(kwargs or {})
        if not torch.cuda.is_available():
            if func is torch.Tensor.pin_memory:
                return args[0]
            if str(kwargs.get("device", "")).startswith("cuda"):
                kwargs["device"] = "cpu"
        return func(*args, **kwargs)


def reinitialise(model: torch.nn.Module, seed: int) -> list[str]:
    """Meta's default init (drawn after ``torch.manual_seed``), the parameters it leaves uninitialised drawn, then
    every constant parameter (norm scales, zero
    biases, layer scales, zero-initialised embeddings) redrawn around its value, so that a key mapped onto the wrong
    tensor of the same shape shows up as a difference; then the score / presence / mask output layers scaled
    (``_SCALE``). Returns the names of the redrawn parameters."""
    gen = torch.Generator().manual_seed(seed)
    redrawn = []
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name in _UNINITIALISED_STD:
                tensor.copy_(_UNINITIALISED_STD[name] * torch.randn(tensor.shape, generator=gen))
            elif tensor.is_floating_point() and tensor.numel() >= 2:
                base = float(tensor.flatten()[0])
                if bool((tensor == base).all()):
                    spread = 0.1 if base != 0 else 0.02
                    tensor.copy_(base + spread * torch.randn(tensor.shape, generator=gen))
                    redrawn.append(name)
            if name in _SCALE:
                tensor.mul_(_SCALE[name])
            if name in _SHIFT:
                tensor.add_(_SHIFT[name])
    missing = {*_UNINITIALISED_STD, *_SCALE, *_SHIFT} - {name for name, _ in model.named_parameters()}
    if missing:
        raise KeyError(f"no such parameters to scale: {sorted(missing)}")
    return redrawn


def split_threshold(scores: list[np.ndarray]) -> tuple[float, float]:
    """A confidence threshold for the post-processing comparison: the random weights' 200 scores per phrase sit in a
    narrow band, so the threshold is put in the widest gap between consecutive scores (all phrases pooled) among
    those that keep between 5 and 100 instances of the first phrase. Returns it and its margin (half the gap): two
    implementations whose scores differ by less than the margin keep the same instances."""
    pooled = np.sort(np.concatenate(scores))[::-1]
    first = np.sort(scores[0])[::-1]
    low, high = first[100], first[4]  # keep 5..100 of the first phrase
    best = (0.0, 0.5)
    for upper, lower in zip(pooled[:-1], pooled[1:], strict=True):
        if low <= lower and upper <= high and upper - lower > best[0]:
            best = (float(upper - lower), float((upper + lower) / 2))
    return best[1], best[0] / 2


def main(spec_path: str) -> None:
    spec: dict[str, Any] = json.loads(Path(spec_path).read_text())
    with _CudaOnlyCallsOnCpu():
        run(spec)


def run(spec: dict[str, Any]) -> None:
    torch.set_num_threads(int(spec["threads"]))
    warnings.filterwarnings("ignore")
    from sam3.model import box_ops
    from sam3.model.sam3_image_processor import Sam3Processor
    from sam3.model_builder import build_sam3_image_model
    from torchvision.transforms import v2

    timings: dict[str, float] = {}
    started = time.perf_counter()
    torch.manual_seed(int(spec["seed"]))
    model = build_sam3_image_model(
        bpe_path=spec["bpe"],
        device="cpu",
        eval_mode=True,
        checkpoint_path=None,
        load_from_HF=False,
        enable_segmentation=True,
        enable_inst_interactivity=False,
    )
    redrawn = reinitialise(model, int(spec["seed"]))
    model.eval()
    timings["build_s"] = time.perf_counter() - started
    Path(spec["checkpoint"]).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), spec["checkpoint"])
    print(f"built SAM 3 in {timings['build_s']:.1f} s ({len(redrawn)} constant parameters redrawn)", file=sys.stderr)

    processor = Sam3Processor(model, device="cpu")
    tokenizer = model.backbone.language_backbone.tokenizer
    out: dict[str, np.ndarray] = {}
    for i, path in enumerate(spec["preprocess_only"]):  # Meta's input tensor (what set_image feeds the ViT)
        out[f"pixels/{i}"] = processor.transform(v2.functional.to_image(Image.open(path).convert("RGB"))).numpy()
    for i, path in enumerate(spec["images"]):
        image = Image.open(path).convert("RGB")
        t0 = time.perf_counter()
        state = processor.set_image(image)
        timings[f"image{i}/vision_s"] = time.perf_counter() - t0
        scores = []
        for k, phrase in enumerate(spec["phrases"]):  # the raw outputs of all queries
            key = f"{i}/{k}"
            out[f"tokens/{k}"] = tokenizer([phrase], context_length=32)[0].numpy()
            t0 = time.perf_counter()
            with torch.inference_mode():
                text = model.backbone.forward_text([phrase], device="cpu")
                state["backbone_out"].update(text)
                raw = model.forward_grounding(
                    backbone_out=state["backbone_out"],
                    find_input=processor.find_stage,
                    geometric_prompt=model._get_dummy_prompt(),
                    find_target=None,
                )
            timings[f"{key}/heads_s"] = time.perf_counter() - t0
            out[f"{key}/text_features"] = text["language_features"][:, 0].float().numpy()  # (L, 256)
            out[f"{key}/pred_logits"] = raw["pred_logits"][0, :, 0].float().numpy()
            out[f"{key}/presence_logit"] = raw["presence_logit_dec"].reshape(-1).float().numpy()
            out[f"{key}/pred_boxes"] = box_ops.box_cxcywh_to_xyxy(raw["pred_boxes"][0]).float().numpy()
            out[f"{key}/pred_masks"] = raw["pred_masks"][0].float().numpy()
            scores.append(
                (raw["pred_logits"][0, :, 0].sigmoid() * raw["presence_logit_dec"].sigmoid()).reshape(-1).numpy()
            )
        threshold, margin = split_threshold(scores)
        out[f"{i}/score_threshold"], out[f"{i}/score_margin"] = np.asarray(threshold), np.asarray(margin)
        processor.set_confidence_threshold(threshold)
        for k, phrase in enumerate(spec["phrases"]):  # Meta's own post-processing: threshold, pixels, image size
            key = f"{i}/{k}"
            state.pop("geometric_prompt", None)
            state = processor.set_text_prompt(phrase, state)
            out[f"{key}/scores"] = state["scores"].float().numpy()
            out[f"{key}/boxes"] = state["boxes"].float().numpy()
            out[f"{key}/masks"] = np.packbits(state["masks"][:, 0].numpy(), axis=-1)
            out[f"{key}/width"] = np.asarray(image.size[0])
    out["timings"] = np.asarray(json.dumps(timings))
    out["redrawn"] = np.asarray(json.dumps(redrawn))
    np.savez(spec["out"], **out)
    print(json.dumps(timings), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
