"""A streaming SAM 2 video session with bounded memory (:class:`Sam2VideoSession`, made by
:meth:`model.video_model.Sam2Video.new_session`).

Neither transformers nor Meta's code prunes a session: every frame (at model resolution) and every per-frame output
(high-res mask logits included) is kept forever. The session here keeps only what the memory bank reads:
conditioning frames (prompts) plus the last ``max(num_maskmem, max_object_pointers_in_encoder) - 1`` tracked frames,
drops high-res logits once encoded and the pixels of past frames. The per-frame loop mirrors Meta's
``SAM2VideoPredictor`` (checked frame by frame by ``tests/reference``) using transformers' ``Sam2VideoModel`` private
steps, so it can also report the decoder's predicted IoU, prompt objects on an already-tracked frame without
re-running the others, and prune in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from model.video_model import Sam2Video

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ObjectFrame:
    """One object's prediction on one frame: ``mask`` (H, W) bool at frame size, decoder IoU, presence in 0..1."""

    mask: np.ndarray
    score: float
    presence: float

    @property
    def visible(self) -> bool:
        return self.presence >= 0.5 and bool(self.mask.any())


@dataclass(frozen=True)
class _Input:
    """A prompt of one object on one frame: a (1, 1, S, S) binary mask, or points (1, 1, N, 2) with labels."""

    mask: torch.Tensor | None = None
    coords: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    def to(self, device: str, dtype: torch.dtype) -> _Input:
        return _Input(
            mask=None if self.mask is None else self.mask.to(device, dtype=dtype),
            coords=None if self.coords is None else self.coords.to(device, dtype=dtype),
            labels=None if self.labels is None else self.labels.to(device),
        )


class Sam2VideoSession:
    """Streaming session: :meth:`step` adds the next frame and tracks all objects; :meth:`prompt` adds (or
    re-prompts) objects with masks on the current frame. Frame indices here are consecutive session indices.

    ``prune`` keeps memory flat (results are identical); ``offload_state`` keeps the memory bank on the CPU (saves
    accelerator memory with many objects, costs a transfer per frame). Frames are always stored on the CPU."""

    def __init__(
        self, video: Sam2Video, height: int, width: int, prune: bool = True, offload_state: bool = False
    ) -> None:
        import sys

        if height <= 0 or width <= 0:
            raise ValueError(f"Sam2VideoSession size must be positive, got {height}x{width}")
        self.video = video
        self.model = video.model
        self.height, self.width = height, width
        self.prune_enabled = prune
        self.frame_idx = -1
        # the family's own session class, beside its model (Sam2VideoInferenceSession, EdgeTamVideoInferenceSession)
        model_cls = type(video.model)
        session_cls = getattr(
            sys.modules[model_cls.__module__], model_cls.__name__.replace("Model", "InferenceSession")
        )
        self.session = session_cls(
            video_height=height,
            video_width=width,
            inference_device=video.device,
            inference_state_device="cpu" if offload_state else video.device,
            video_storage_device="cpu",
            dtype=video.dtype,
        )
        config = self.model.config
        self.history = max(int(config.num_maskmem), int(config.max_object_pointers_in_encoder)) - 1
        self._mean = torch.tensor(_IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(_IMAGENET_STD).view(3, 1, 1)

    # -- public -------------------------------------------------------------------------------------------------
    @property
    def object_ids(self) -> list[int]:
        return list(self.session.obj_ids)

    def step(self, rgb: np.ndarray) -> dict[int, ObjectFrame]:
        """Add the next frame and track every known object on it."""
        if rgb.shape != (self.height, self.width, 3):
            raise ValueError(f"frame must be ({self.height}, {self.width}, 3), got {rgb.shape}")
        self.frame_idx += 1
        self.session.add_new_frame(self._preprocess(rgb), self.frame_idx)
        if self.prune_enabled:
            self._prune()
        objs = list(range(self.session.get_obj_num()))
        return self._run(objs, None)

    def prompt(
        self,
        masks: dict[int, np.ndarray] | None = None,
        *,
        points: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
        boxes: dict[int, np.ndarray] | None = None,
    ) -> dict[int, ObjectFrame]:
        """Prompt objects (new ids or existing ones) on the current frame: ``masks`` (H, W) per object, or
        ``points`` ((K, 2) xy frame pixels, (K,) labels 1/0) and/or ``boxes`` (xyxy frame pixels) per object, as
        Meta's ``add_new_mask`` / ``add_new_points_or_box``."""
        if self.frame_idx < 0:
            raise ValueError("Sam2VideoSession.prompt needs a frame first; call step() with the first frame")
        masks, points, boxes = masks or {}, points or {}, boxes or {}
        both = set(masks) & (set(points) | set(boxes))
        if both:
            raise ValueError(f"objects {sorted(both)}: give a mask or points/boxes, not both")
        inputs: dict[int, _Input] = {}
        for obj_id, mask in masks.items():
            if mask.shape != (self.height, self.width):
                raise ValueError(
                    f"prompt mask for object {obj_id} must be ({self.height}, {self.width}), got {mask.shape}"
                )
            inputs[self.session.obj_id_to_idx(int(obj_id))] = _Input(mask=self._mask_input(mask))
        for obj_id in sorted(set(points) | set(boxes)):
            coords, labels = self._point_input(points.get(obj_id), boxes.get(obj_id), obj_id)
            inputs[self.session.obj_id_to_idx(int(obj_id))] = _Input(coords=coords, labels=labels)
        return self._run(list(inputs), inputs) if inputs else {}

    # -- internals ----------------------------------------------------------------------------------------------
    def _preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """As Meta's video predictor loads frames: PIL bicubic resize of the uint8 frame, 1/255, ImageNet norm."""
        from PIL import Image

        size = self.video.image_size
        frame = np.ascontiguousarray(rgb, dtype=np.uint8)
        if frame.shape[:2] != (size, size):
            frame = np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BICUBIC))
        x = torch.from_numpy(np.array(frame)).permute(2, 0, 1).float().div_(255.0)
        return (x - self._mean) / self._std

    def _mask_input(self, mask: np.ndarray) -> torch.Tensor:
        size = self.video.image_size
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
        if m.shape[-2:] != (size, size):
            m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            m = (m >= 0.5).float()
        return m

    def _point_input(
        self, points: tuple[np.ndarray, np.ndarray] | None, box: np.ndarray | None, obj_id: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 1, N, 2) model-input coordinates and (1, 1, N) labels: the box as two corner points (labels 2, 3)
        first, then the points, as Meta's ``add_new_points_or_box``."""
        coords, labels = [], []
        if box is not None:
            xyxy = np.asarray(box, np.float32).reshape(-1)
            if xyxy.shape != (4,) or xyxy[2] < xyxy[0] or xyxy[3] < xyxy[1]:
                raise ValueError(f"box for object {obj_id} must be xyxy with x2 >= x1, y2 >= y1, got {box}")
            coords.append(xyxy.reshape(2, 2))
            labels.append(np.array([2, 3], np.int64))
        if points is not None:
            xy, lab = np.asarray(points[0], np.float32).reshape(-1, 2), np.asarray(points[1], np.int64).reshape(-1)
            if len(xy) != len(lab) or not np.isin(lab, (0, 1)).all():
                raise ValueError(f"points for object {obj_id}: need (K, 2) xy and K labels in {{0, 1}}, got {lab}")
            coords.append(xy)
            labels.append(lab)
        scale = np.array([self.video.image_size / self.width, self.video.image_size / self.height], np.float32)
        xy_all = torch.from_numpy(np.concatenate(coords) * scale)[None, None]
        return xy_all, torch.from_numpy(np.concatenate(labels))[None, None]

    @torch.inference_mode()
    def _run(self, objs: list[int], inputs: dict[int, _Input] | None) -> dict[int, ObjectFrame]:
        session, model, t = self.session, self.model, self.frame_idx
        size = self.video.image_size
        results: dict[int, ObjectFrame] = {}
        high_res, score_logits = [], []
        for obj_idx in objs:
            given = None if inputs is None else inputs[obj_idx].to(self.video.device, self.video.dtype)
            out, iou = self._infer(obj_idx, t, given)
            cond = given is not None
            per_obj = session.output_dict_per_obj[obj_idx]
            if cond:
                per_obj["non_cond_frame_outputs"].pop(t, None)
                session.frames_tracked_per_obj[obj_idx].pop(t, None)
                # as Meta's propagate_in_video_preflight: a prompted frame's memory is encoded from its low-res
                # mask upsampled to the model size (not the decoder's high-res output), binarised
                memory_mask = F.interpolate(out["pred_masks"], size=(size, size), mode="bilinear", align_corners=False)
            else:
                session.frames_tracked_per_obj[obj_idx][t] = {"reverse": False}
                memory_mask = out["high_res_masks"]
            session.store_output(obj_idx, t, output_value=out, is_conditioning_frame=cond)
            high_res.append(memory_mask)
            score_logits.append(out["object_score_logits"])
            results[session.obj_idx_to_id(obj_idx)] = self._to_object_frame(out, iou)
        if objs and model.num_maskmem > 0:
            self._encode_memories(objs, high_res, score_logits, from_prompt=inputs is not None)
        if self.prune_enabled:
            for obj_idx in objs:  # high-res logits are only needed for the memory encoding just done
                for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
                    stored = session.output_dict_per_obj[obj_idx][key].get(t)
                    if stored is not None:
                        stored.pop("high_res_masks", None)
        return results

    def _encode_memories(
        self, objs: list[int], high_res: list[torch.Tensor], score_logits: list[torch.Tensor], from_prompt: bool
    ) -> None:
        """Encode frame ``frame_idx``'s memory of each object: batched where the model can (SAM 2), else object by
        object (EdgeTAM, whose perceiver-resampled memories the batched path cannot split), as its own
        ``_run_single_frame_inference`` does."""
        model, session, t = self.model, self.session, self.frame_idx
        if hasattr(model, "_batch_encode_memories"):
            model._batch_encode_memories(
                inference_session=session,
                frame_idx=t,
                objects_needing_memory_encoding=objs,
                high_res_masks_for_memory=high_res,
                object_score_logits_for_memory=score_logits,
                is_mask_from_pts_per_obj=[from_prompt] * len(objs),
            )
            return
        feats, _ = model._prepare_vision_features(session, t, 1)
        for obj_idx, masks, logits in zip(objs, high_res, score_logits, strict=True):
            features, pos_enc = model._encode_new_memory(
                current_vision_feats=feats[-1],
                pred_masks_high_res=masks,
                object_score_logits=logits,
                is_mask_from_pts=from_prompt,
            )
            per_obj = session.output_dict_per_obj[obj_idx]
            key = "cond_frame_outputs" if t in per_obj["cond_frame_outputs"] else "non_cond_frame_outputs"
            if t in per_obj[key]:
                per_obj[key][t]["maskmem_features"] = features
                per_obj[key][t]["maskmem_pos_enc"] = pos_enc

    def _infer(self, obj_idx: int, t: int, given: _Input | None) -> tuple[dict[str, Any], float]:
        """One object on frame ``t`` (mirrors ``Sam2VideoModel._run_single_frame_inference``, plus the IoU)."""
        model, session = self.model, self.session
        feats, pos = model._prepare_vision_features(session, t, 1)
        high_res_features = [
            x.permute(1, 2, 0).view(x.size(1), x.size(2), *s)
            for x, s in zip(feats[:-1], model.backbone_feature_sizes[:-1], strict=True)
        ]
        if given is not None and given.mask is not None:
            pix = feats[-1].permute(1, 2, 0).view(-1, model.hidden_dim, *model.backbone_feature_sizes[-1])
            sam = model._use_mask_as_output(pix, high_res_features, given.mask)
            iou = 1.0
        else:
            # Meta: an object's prompt is an initial conditioning frame unless that frame was already tracked (then
            # the prompt refines a memory-conditioned prediction; Meta also feeds the tracked logits back as a mask
            # input there, which this session does not)
            if given is not None:
                is_init = t not in session.frames_tracked_per_obj[obj_idx]
            else:
                is_init = not session.output_dict_per_obj[obj_idx]["cond_frame_outputs"]
            pix = model._prepare_memory_conditioned_features(
                inference_session=session,
                frame_idx=t,
                obj_idx=obj_idx,
                is_initial_conditioning_frame=is_init,
                current_vision_features=feats[-1],
                current_vision_positional_embeddings=pos[-1],
                num_total_frames=session.num_frames,
                track_in_reverse_time=False,
                streaming=True,
            )
            point_inputs = None if given is None else {"point_labels": given.labels}
            multimask = model._use_multimask(is_init, point_inputs)
            sam = model._single_frame_forward(
                pixel_values=None,
                input_points=None if given is None else given.coords,
                input_labels=None if given is None else given.labels,
                input_masks=None,
                image_embeddings=high_res_features + [pix],
                multimask_output=multimask,
            )
            scores = sam.iou_scores.float()
            iou = float(scores.max(dim=-1).values.flatten()[0] if multimask else scores[..., 0].flatten()[0])
        out = {
            "pred_masks": sam.pred_masks,
            # (objects, hidden) on both paths: the mask-prompt path returns (1, 1, hidden), which transformers 5.23
            # only reshapes when its memory is narrower than the decoder (as in SAM 2); equal widths would crash
            "object_pointer": sam.object_pointer.reshape(-1, model.hidden_dim),
            "high_res_masks": sam.high_res_masks,
            "object_score_logits": sam.object_score_logits,
        }
        return out, iou

    def _to_object_frame(self, out: dict[str, Any], iou: float) -> ObjectFrame:
        logits = out["pred_masks"].float().cpu()
        logits = logits.reshape(1, 1, *logits.shape[-2:])
        # straight from the low-res logits to the frame size, as Meta's _get_orig_video_res_output
        logits = F.interpolate(logits, size=(self.height, self.width), mode="bilinear", align_corners=False)
        presence = float(torch.sigmoid(out["object_score_logits"].float()).flatten()[0])
        return ObjectFrame(mask=(logits[0, 0] > 0).numpy(), score=iou, presence=presence)

    def _prune(self) -> None:
        """Drop what the memory bank of frame ``frame_idx`` and later can no longer read."""
        session, t = self.session, self.frame_idx
        frames = session.processed_frames or {}
        for old in [f for f in frames if f < t]:
            del frames[old]
        oldest_needed = t - self.history
        for obj_idx, per_obj in session.output_dict_per_obj.items():
            non_cond = per_obj["non_cond_frame_outputs"]
            for old in [f for f in non_cond if f < oldest_needed]:
                del non_cond[old]
            for f, stored in per_obj["cond_frame_outputs"].items():
                if f < t:
                    stored.pop("pred_masks", None)  # only read when the same frame is re-run
            tracked = session.frames_tracked_per_obj[obj_idx]
            for old in [f for f in tracked if f < t]:
                del tracked[old]
            session.mask_inputs_per_obj[obj_idx].clear()
            session.point_inputs_per_obj[obj_idx].clear()
