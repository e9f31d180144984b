"""Meta's side of the reference comparison: runs in the reference venv (``.venv-ref``: Meta's ``sam2`` package), never
in the project's venv, and never imports maskloop.

    .venv-ref/bin/python tests/reference/meta_side.py build SPEC.json     # seeded random weights -> Meta-format .pt
    .venv-ref/bin/python tests/reference/meta_side.py run SPEC.json       # predictions -> SPEC["out"] (.npz)

The spec (JSON, written by ``tests/reference/harness.py``) names the packaged config, the checkpoint path, the
images and prompts, the automatic-mask-generator settings and the video clips. Outputs are plain arrays, so the
project's side compares them without Meta's code.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


def _build_image_model(spec: dict[str, Any], checkpoint: str | None) -> Any:
    from sam2.build_sam import build_sam2

    return build_sam2(spec["config"], ckpt_path=checkpoint, device=spec.get("device", "cpu"), mode="eval")


# Output layers scaled up so that logits, predicted IoUs and object scores spread like a trained model's instead of
# sitting near 0 (Meta's default init gives mask logits within +-1 and IoUs near 0.5 for every prompt).
_SCALE_LAST_LAYER = {
    "output_hypernetworks_mlps": 16.0,
    "iou_prediction_head": 8.0,
    "pred_obj_score_head": 8.0,
}


def reinitialise(model: torch.nn.Module, seed: int) -> None:
    """Seeded weights that give non-degenerate masks: Meta's default init (drawn after ``torch.manual_seed``), then
    every constant tensor (norm scales, zero biases, zero-initialised embeddings) redrawn around its value, then
    the mask / IoU / object-score output layers scaled (``_SCALE_LAST_LAYER``)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or tensor.numel() < 2:
                continue
            base = float(tensor.flatten()[0])
            if bool((tensor == base).all()):
                spread = 0.1 if base != 0 else 0.02
                tensor.copy_((base + spread * torch.randn(tensor.shape, generator=gen)).to(tensor.dtype))
            for head, factor in _SCALE_LAST_LAYER.items():
                if f".{head}" in name and ".layers.2." in name and name.endswith("weight"):
                    tensor.mul_(factor)


def build(spec: dict[str, Any]) -> None:
    started = time.perf_counter()
    torch.manual_seed(int(spec["seed"]))
    model = _build_image_model(spec, None)
    reinitialise(model, int(spec["seed"]))
    Path(spec["checkpoint"]).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, spec["checkpoint"])
    keys = sorted(model.state_dict())
    Path(spec["checkpoint"] + ".keys.json").write_text(json.dumps(keys))
    print(f"built {spec['config']} in {time.perf_counter() - started:.1f} s: {len(keys)} tensors", file=sys.stderr)


def _rgb(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def run_image(spec: dict[str, Any], out: dict[str, np.ndarray], timings: dict[str, float]) -> None:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(_build_image_model(spec, spec["checkpoint"]))
    embed_s = []
    for i, path in enumerate(spec["image"]["paths"]):
        image = _rgb(path)
        started = time.perf_counter()
        predictor.set_image(image)
        embed_s.append(time.perf_counter() - started)
        for per_image in spec["image"]["prompts"]:
            prompt = per_image[i]
            mask_input = None
            if prompt.get("mask_input"):
                mask_input = np.load(prompt["mask_input"])[None].astype(np.float32)
            masks, ious, low_res = predictor.predict(
                point_coords=None if prompt.get("points") is None else np.asarray(prompt["points"], np.float32),
                point_labels=None if prompt.get("labels") is None else np.asarray(prompt["labels"], np.int32),
                box=None if prompt.get("box") is None else np.asarray(prompt["box"], np.float32),
                mask_input=mask_input,
                multimask_output=bool(prompt.get("multimask", False)),
                return_logits=False,
            )
            key = f"image/{i}/{prompt['name']}"
            out[key + "/masks"] = np.packbits(masks.astype(bool), axis=-1)
            out[key + "/iou"] = ious.astype(np.float32)
            out[key + "/low_res"] = low_res.astype(np.float32)
    timings["image_embed_s"] = float(np.median(embed_s))


def run_everything(spec: dict[str, Any], out: dict[str, np.ndarray], timings: dict[str, float]) -> None:
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    generator = SAM2AutomaticMaskGenerator(_build_image_model(spec, spec["checkpoint"]), **spec["everything"]["params"])
    seconds = []
    for i, path in enumerate(spec["everything"]["paths"]):
        image = _rgb(path)
        started = time.perf_counter()
        records = generator.generate(image)
        seconds.append(time.perf_counter() - started)
        masks = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, *image.shape[:2]), bool)
        out[f"everything/{i}/masks"] = np.packbits(masks.astype(bool), axis=-1)
        out[f"everything/{i}/iou"] = np.asarray([r["predicted_iou"] for r in records], np.float32)
        out[f"everything/{i}/stability"] = np.asarray([r["stability_score"] for r in records], np.float32)
        out[f"everything/{i}/points"] = np.asarray([r["point_coords"][0] for r in records], np.float32).reshape(-1, 2)
    timings["everything_s"] = float(np.median(seconds))


def _clip_dir(root: Path, frames: list[str]) -> str:
    root.mkdir(parents=True, exist_ok=True)
    for j, frame in enumerate(frames):
        os.symlink(os.path.abspath(frame), root / f"{j:05d}.jpg")
    return str(root)


def _track(predictor: Any, frames_dir: str, objects: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(frames, objects, H, W) bool masks and (frames, objects) object-present flags, objects in spec order."""
    state = predictor.init_state(video_path=frames_dir)
    for obj in objects:
        if obj.get("mask") is not None:
            mask = np.asarray(Image.open(obj["mask"])) > 0
            predictor.add_new_mask(state, frame_idx=0, obj_id=obj["id"], mask=mask)
        else:
            predictor.add_new_points_or_box(
                state,
                frame_idx=0,
                obj_id=obj["id"],
                points=None if obj.get("points") is None else np.asarray(obj["points"], np.float32),
                labels=None if obj.get("labels") is None else np.asarray(obj["labels"], np.int32),
                box=None if obj.get("box") is None else np.asarray(obj["box"], np.float32),
            )
    n = state["num_frames"]
    masks = np.zeros((n, len(objects), state["video_height"], state["video_width"]), bool)
    present = np.zeros((n, len(objects)), bool)
    for frame_idx, obj_ids, video_res in predictor.propagate_in_video(state):
        for k, obj_id in enumerate(obj_ids):
            slot = [o["id"] for o in objects].index(obj_id)
            masks[frame_idx, slot] = (video_res[k, 0] > 0).cpu().numpy()
    for slot, obj in enumerate(objects):
        per_obj = state["output_dict_per_obj"][predictor._obj_id_to_idx(state, obj["id"])]
        for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
            for frame_idx, stored in per_obj[key].items():
                present[frame_idx, slot] = bool(stored["object_score_logits"].flatten()[0] > 0)
    return masks, present


def run_video(spec: dict[str, Any], out: dict[str, np.ndarray], timings: dict[str, float]) -> None:
    """Objects prompted on frame 0 tracked over the clip; objects added mid-clip tracked on the clip from their
    frame (Meta's offline predictor also reads *future* prompts as memory, so a late object is run on its own
    sub-clip to compare with a streaming tracker that cannot see the future)."""
    from sam2.build_sam import build_sam2_video_predictor

    video = spec["video"]
    predictor = build_sam2_video_predictor(
        spec["config"], ckpt_path=spec["checkpoint"], device=spec.get("device", "cpu")
    )
    frames = video["frames"]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        masks, present = _track(predictor, _clip_dir(Path(tmp) / "all", frames), video["objects"])
        timings["video_s_per_frame"] = (time.perf_counter() - started) / len(frames)
        out["video/masks"] = np.packbits(masks, axis=-1)
        out["video/present"] = present
        for late in video.get("late", []):
            sub = frames[late["frame"] :]
            m, p = _track(predictor, _clip_dir(Path(tmp) / f"late{late['id']}", sub), [late])
            out[f"video/late/{late['id']}/masks"] = np.packbits(m[:, 0], axis=-1)
            out[f"video/late/{late['id']}/present"] = p[:, 0]


RUNNERS = {"image": run_image, "everything": run_everything, "video": run_video}


def run(spec: dict[str, Any]) -> None:
    """Each part named in ``spec["outputs"]`` (part -> .npz path) is run and written to its own file."""
    torch.set_num_threads(int(spec.get("threads", torch.get_num_threads())))
    for part, path in spec["outputs"].items():
        out: dict[str, np.ndarray] = {}
        timings: dict[str, float] = {}
        RUNNERS[part](spec, out, timings)
        out["timings"] = np.asarray(json.dumps(timings))
        np.savez_compressed(path, **out)


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    command, spec_path = sys.argv[1], sys.argv[2]
    loaded = json.loads(Path(spec_path).read_text())
    {"build": build, "run": run}[command](loaded)
