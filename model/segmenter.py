"""SAM 2 on still images: load once, embed images in batches, decode many batched prompts per cached embedding.

>>> seg = Segmenter.from_pretrained("facebook/sam2.1-hiera-tiny")          # or a local dir / Meta .pt
>>> emb = seg.embed([image_a, image_b])                                     # one encoder forward
>>> seg.predict(emb, boxes=[boxes_a, boxes_b])                              # list[Instances], one per image

Prompts are in original-image pixels: points (P, K, 2) xy with labels (P, K) (1 = positive, 0 = negative,
-10 = padding), boxes (P, 4) xyxy, mask inputs (P, h, w) low-resolution logits (as returned by :meth:`decode`).
Kinds can be combined; P must agree. Several images take a per-image sequence of prompt arrays.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from model.instances import Instances
from model.prompt_arrays import PromptArrays, check_prompts, prompt_lineage, split_per_image

if TYPE_CHECKING:
    import torch
    from transformers import Sam2Config, Sam2Model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embeddings:
    """Image embeddings of B images: the FPN levels (B, C, h, w) the mask decoder needs, and the original sizes."""

    features: tuple[torch.Tensor, ...]
    original_sizes: tuple[tuple[int, int], ...]
    model_version: str

    def __post_init__(self) -> None:
        sizes = {int(f.shape[0]) for f in self.features}
        if sizes != {len(self.original_sizes)}:
            raise ValueError(f"Embeddings: {len(self.original_sizes)} original sizes but feature batch sizes {sizes}")

    def __len__(self) -> int:
        return len(self.original_sizes)

    def __getitem__(self, index: int | slice) -> Embeddings:
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Embeddings(tuple(f[index] for f in self.features), self.original_sizes[index], self.model_version)


@dataclass(frozen=True)
class Decoded:
    """Raw decoder output for P prompts on one image: low-res logits (P, M, h, w), predicted IoU (P, M), object
    score logits (P,). M is 3 with ``multimask`` else 1."""

    logits: torch.Tensor
    iou: torch.Tensor
    object_logits: torch.Tensor


class Segmenter:
    """A SAM 2-family image model (transformers ``Sam2Model``, or ``EdgeTamModel``, a ``Sam2Model`` with a RepViT
    image encoder) with maskloop's own pre/post-processing."""

    box_prompts = True  # segments from box prompts (tracking by detection re-segments a lost track from its box)

    def __init__(
        self,
        model: Sam2Model,
        *,
        model_id: str = "sam2",
        checkpoint_sha256: str = "0" * 64,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        compile_encoder: bool = False,
    ) -> None:
        import torch

        from model.device import resolve_dtype, select_device

        self.device = select_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(self.device).eval()  # type: ignore[arg-type]
        self.model_id = model_id
        self.checkpoint_sha256 = checkpoint_sha256
        self.input_size = int(model.prompt_encoder.input_image_size)  # type: ignore[arg-type]  # an int for SAM 2
        low_h, low_w = (int(v) for v in model.prompt_encoder.mask_input_size)
        self.mask_input_size: tuple[int, int] = (low_h, low_w)
        if compile_encoder:
            self.model.vision_encoder = torch.compile(self.model.vision_encoder)  # type: ignore[assignment]

    # -- loading ------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        *,
        config: Sam2Config | None = None,
        compile_encoder: bool = False,
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        hub_timeout_s: float = 3.0,
        family: str | None = None,
    ) -> Segmenter:
        """Load a prompt-family model (SAM 2 / 2.1, EdgeTAM; see :mod:`model.families`) from a hub id
        (``facebook/sam2.1-hiera-tiny`` ...), a transformers-format directory, or a Meta ``.pt`` checkpoint (keys
        converted; ``config`` defaults to the Hiera size named in the file name). ``family`` overrides detection."""
        from model.configs import hiera_size_from_name, sam2_architecture_config
        from model.convert import meta_to_hf_state_dict
        from model.errors import ModelCapabilityError, ModelNotAvailableError
        from model.families import family_of, get_family
        from model.loading import load_pretrained

        source = str(model_id_or_path)
        spec = get_family(family) if family else family_of(source, cache_dir=cache_dir)
        if "points" not in spec.supports:
            raise ModelCapabilityError(
                f"{source!r} is a {spec.title} checkpoint, which has no point/box prompt decoder (it supports "
                f"{', '.join(sorted(spec.supports))}): use strategy 'concept', or load it with model.cache.get_segmenter"
            )
        if source.endswith((".pt", ".pth")) and not spec.meta_checkpoint:
            raise ModelNotAvailableError(
                f"{source}: maskloop does not convert {spec.title}'s .pt files; use {spec.download}"
            )
        spec.check_requirements(source)
        if config is None and source.endswith((".pt", ".pth")):
            size = hiera_size_from_name(os.path.basename(source))
            config = sam2_architecture_config(size) if size else None
        loaded = load_pretrained(
            spec.model_class(),
            source,
            config=config,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
            hub_timeout_s=hub_timeout_s,
            convert_state_dict=meta_to_hf_state_dict,
        )
        logger.info("loaded %s %s", spec.title, loaded.model_version)
        return cls(
            loaded.model,
            model_id=loaded.model_id,
            checkpoint_sha256=loaded.checkpoint_sha256,
            device=device,
            dtype=dtype,
            compile_encoder=compile_encoder,
        )

    @property
    def model_version(self) -> str:
        """Lineage string stored with every mask: ``{model_id}@{sha256[:8]}``."""
        return f"{self.model_id}@{self.checkpoint_sha256[:8]}"

    def _context(self) -> Any:
        from model.device import inference_context

        return inference_context(self.device, self.dtype)

    # -- encoder ------------------------------------------------------------------------------------------------
    def embed(self, images: Sequence[np.ndarray] | np.ndarray, batch_size: int = 8) -> Embeddings:
        """Encode images (each (H, W, 3) uint8 RGB, any size) in forwards of up to ``batch_size`` images."""
        import torch

        from model.preprocess import check_image, preprocess_images

        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        images = [check_image(image, i) for i, image in enumerate(images)]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        levels: list[list[torch.Tensor]] = []
        with self._context():
            for start in range(0, len(images), batch_size):
                pixels = preprocess_images(images[start : start + batch_size], self.input_size, self.device)
                features = self.model.get_image_embeddings(pixels)
                levels.append([f.float() for f in features])
        if not levels:
            raise ValueError("embed needs at least one image")
        features = tuple(torch.cat([chunk[i] for chunk in levels]) for i in range(len(levels[0])))
        sizes = tuple((int(im.shape[0]), int(im.shape[1])) for im in images)
        return Embeddings(features, sizes, self.model_version)

    # -- decoder ------------------------------------------------------------------------------------------------
    def decode(
        self,
        embeddings: Embeddings,
        index: int = 0,
        *,
        points: Any = None,
        point_labels: Any = None,
        boxes: Any = None,
        mask_inputs: Any = None,
        multimask: bool = False,
        prompt_batch: int = 256,
    ) -> Decoded:
        """Decode P prompts of image ``index`` in chunks of ``prompt_batch`` on its cached embedding."""
        prompts = check_prompts(points, point_labels, boxes, mask_inputs, index)
        return self._decode(embeddings, index, prompts, multimask, prompt_batch)

    def _decode(
        self, embeddings: Embeddings, index: int, prompts: PromptArrays, multimask: bool, prompt_batch: int
    ) -> Decoded:
        import torch

        from model.preprocess import scale_coords

        if embeddings.model_version != self.model_version:
            raise ValueError(f"embeddings come from {embeddings.model_version}, this segmenter is {self.model_version}")
        if prompt_batch < 1:
            raise ValueError(f"prompt_batch must be >= 1, got {prompt_batch}")
        size = embeddings.original_sizes[index]
        feats = [f[index : index + 1].to(self.device) for f in embeddings.features]
        total, n_out = prompts.count, (3 if multimask else 1)
        h, w = (int(v) for v in self.mask_input_size)
        if total == 0:
            empty = torch.zeros((0, n_out, h, w))
            return Decoded(empty, torch.zeros((0, n_out)), torch.zeros((0,)))
        dev = self.device
        points = (
            None
            if prompts.points is None
            else scale_coords(torch.from_numpy(prompts.points).to(dev), size, self.input_size)
        )
        labels = None if prompts.labels is None else torch.from_numpy(prompts.labels).to(dev)
        boxes = (
            None
            if prompts.boxes is None
            else scale_coords(torch.from_numpy(prompts.boxes).to(dev), size, self.input_size)
        )
        masks = None if prompts.masks is None else torch.from_numpy(prompts.masks).to(dev)
        out_logits, out_iou, out_obj = [], [], []
        with self._context():
            for start in range(0, total, prompt_batch):
                sl = slice(start, min(start + prompt_batch, total))
                n = sl.stop - sl.start
                out = self.model(
                    image_embeddings=[f.expand(n, -1, -1, -1) for f in feats],
                    input_points=None if points is None else points[sl, None],
                    input_labels=None if labels is None else labels[sl, None],
                    input_boxes=None if boxes is None else boxes[sl, None],
                    input_masks=None if masks is None else masks[sl, None],
                    multimask_output=multimask,
                )
                out_logits.append(out.pred_masks[:, 0].float())
                out_iou.append(out.iou_scores[:, 0].float())
                out_obj.append(out.object_score_logits[:, 0, 0].float())
        return Decoded(torch.cat(out_logits), torch.cat(out_iou), torch.cat(out_obj))

    def predict(
        self,
        images_or_embeddings: Embeddings | Sequence[np.ndarray] | np.ndarray,
        points: Any = None,
        point_labels: Any = None,
        boxes: Any = None,
        mask_inputs: Any = None,
        multimask: bool = False,
        *,
        mask_threshold: float = 0.0,
        prompt_batch: int = 256,
        label: str = "object",
    ) -> list[Instances]:
        """One :class:`Instances` per image with one mask per prompt (with ``multimask`` the best of three by
        predicted IoU). Given a single (H, W, 3) image or a one-image :class:`Embeddings`, prompts may be plain
        arrays; for several images pass per-image lists."""
        from model.preprocess import stability_scores

        single = (isinstance(images_or_embeddings, np.ndarray) and images_or_embeddings.ndim == 3) or (
            isinstance(images_or_embeddings, Embeddings) and len(images_or_embeddings) == 1
        )
        embeddings = (
            images_or_embeddings if isinstance(images_or_embeddings, Embeddings) else self.embed(images_or_embeddings)
        )
        n = len(embeddings)
        per_image = zip(
            split_per_image(points, n, "points", single),
            split_per_image(point_labels, n, "point_labels", single),
            split_per_image(boxes, n, "boxes", single),
            split_per_image(mask_inputs, n, "mask_inputs", single),
            strict=True,
        )
        results = []
        for i, (pts, lab, bxs, msk) in enumerate(per_image):
            prompts = check_prompts(pts, lab, bxs, msk, i)
            decoded = self._decode(embeddings, i, prompts, multimask, prompt_batch)
            best = decoded.iou.argmax(dim=1)
            rows = range(decoded.logits.shape[0])
            logits = decoded.logits[list(rows), best] if len(rows) else decoded.logits[:, 0]
            iou = decoded.iou[list(rows), best] if len(rows) else decoded.iou[:, 0]
            stability = stability_scores(logits, mask_threshold)
            masks = self.logits_to_masks(logits, embeddings.original_sizes[i], mask_threshold)
            results.append(
                Instances(
                    masks=masks,
                    labels=[label] * len(masks),
                    scores=iou.cpu().numpy(),
                    stability=stability.cpu().numpy(),
                    prompts=prompt_lineage(prompts, self.model_version),
                )
            )
        return results

    @staticmethod
    def logits_to_masks(
        logits: torch.Tensor, original_size: tuple[int, int], threshold: float = 0.0, chunk: int = 64
    ) -> np.ndarray:
        """(N, h, w) low-res logits -> (N, H, W) bool masks at the original size, upsampled in chunks."""
        from model.preprocess import upsample_logits

        height, width = original_size
        out = np.zeros((logits.shape[0], height, width), dtype=bool)
        for start in range(0, logits.shape[0], chunk):
            out[start : start + chunk] = (
                (upsample_logits(logits[start : start + chunk], original_size) > threshold).cpu().numpy()
            )
        return out
