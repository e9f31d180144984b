"""SAM 3 on still images: every instance of each text concept ("person", "forklift") per image, strategy ``concept``.

>>> seg = ConceptSegmenter.from_pretrained("facebook/sam3")          # or a transformers-format directory
>>> seg.segment([image_a, image_b], ["person", "car"])               # list[Instances], one per image

One vision forward per image batch, one text forward per call; the DETR detector + mask head then run per image on
the cached vision features with the class phrases as a batch. Per instance (what the active-learning signals read,
:mod:`model.al_scores`):

- ``scores`` — SAM 3's confidence ``sigmoid(query logit) * sigmoid(presence logit)``, the score SAM 3 itself
  thresholds on; it stands where SAM 2 puts its predicted IoU (``predicted_iou`` signal);
- ``detector_scores`` — the image-level presence probability ``sigmoid(presence logit)`` of the instance's concept
  (``detector_margin`` signal: how sure the model is that the concept is in the image at all);
- ``stability`` — SAM's stability score of the instance's mask logits (``stability`` signal).

Labels are the class phrases; the lineage is a ``text`` :class:`Prompt` with the phrase and SAM 3's box.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.errors import ModelCapabilityError, ModelNotAvailableError
from model.instances import Instances, Prompt

if TYPE_CHECKING:
    import torch

    from model.strategies import StrategyInputs

logger = logging.getLogger(__name__)

TEXT_LENGTH = 32  # SAM 3's text encoder takes 32 tokens (Sam3Processor pads to max_length=32)
_MEAN = (0.5, 0.5, 0.5)  # Sam3ImageProcessor: IMAGENET_STANDARD_MEAN / _STD
_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ConceptParams:
    """Strategy ``concept`` settings. ``score_threshold`` applies to SAM 3's confidence (query score x presence
    score); ``mask_threshold`` to the mask probability; ``class_batch`` / ``image_batch`` only change speed and
    memory; ``max_instances`` keeps the best-scoring ones per image."""

    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    class_batch: int = 8
    image_batch: int = 2
    max_instances: int | None = None

    def __post_init__(self) -> None:
        for name in ("score_threshold", "mask_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"concept {name} must be in [0, 1), got {value}")
        for name in ("class_batch", "image_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"concept {name} must be >= 1, got {getattr(self, name)}")
        if self.max_instances is not None and self.max_instances < 1:
            raise ValueError(f"concept max_instances must be >= 1 or None, got {self.max_instances}")


def concept_params() -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(ConceptParams))


def run_concept(inputs: StrategyInputs, images: list[np.ndarray], params: Mapping[str, Any]) -> list[Instances]:
    """The ``concept`` strategy's runner (see :data:`model.strategies.STRATEGIES`)."""
    segmenter = inputs.segmenter
    if not isinstance(segmenter, ConceptSegmenter):
        version = getattr(segmenter, "model_version", type(segmenter).__name__)
        raise ModelCapabilityError(
            f"strategy 'concept' needs a SAM 3 checkpoint (e.g. --model facebook/sam3 or a transformers-format SAM 3 "
            f"directory); {version} is not one: use strategy 'text' (Grounding DINO + SAM 2) for class names with it"
        )
    return segmenter.segment(images, list(inputs.classes), ConceptParams(**params))


class ConceptSegmenter:
    """A SAM 3 image model (transformers ``Sam3Model`` + its CLIP tokenizer) with maskloop's pre/post-processing."""

    box_prompts = False  # concepts only: no point/box prompt decoder

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_id: str = "sam3",
        checkpoint_sha256: str = "0" * 64,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> None:
        from model.device import resolve_dtype, select_device

        self.device = select_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.checkpoint_sha256 = checkpoint_sha256
        size = model.config.vision_config.backbone_config.image_size
        self.input_size = int(size[0] if isinstance(size, (list, tuple)) else size)

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        *,
        local_files_only: bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        hub_timeout_s: float = 3.0,
    ) -> ConceptSegmenter:
        """Load from a hub id (``facebook/sam3``) or a transformers-format directory (``config.json``,
        ``model.safetensors`` and the tokenizer files)."""
        from transformers import Sam3Model

        from model.families import get_family
        from model.loading import load_pretrained

        source = str(model_id_or_path)
        if source.endswith((".pt", ".pth")):
            raise ModelNotAvailableError(
                f"{source}: maskloop does not convert SAM 3's .pt files; use {get_family('sam3').download}"
            )
        loaded = load_pretrained(
            Sam3Model, source, local_files_only=local_files_only, cache_dir=cache_dir, hub_timeout_s=hub_timeout_s
        )
        tokenizer = _load_tokenizer(_checkpoint_dir(source, cache_dir))
        logger.info("loaded SAM 3 %s", loaded.model_version)
        return cls(
            loaded.model,
            tokenizer,
            model_id=loaded.model_id,
            checkpoint_sha256=loaded.checkpoint_sha256,
            device=device,
            dtype=dtype,
        )

    @property
    def model_version(self) -> str:
        """Lineage string stored with every mask: ``{model_id}@{sha256[:8]}``."""
        return f"{self.model_id}@{self.checkpoint_sha256[:8]}"

    # -- what SAM 3's concept model does not do ---------------------------------------------------------------
    def _not_prompt_model(self, what: str) -> ModelCapabilityError:
        return ModelCapabilityError(
            f"{self.model_version} is a SAM 3 concept model: it has no {what}; it runs strategy 'concept' "
            f"(--strategy concept --classes ...). For points, boxes, priors or 'everything' use a SAM 2 or EdgeTAM model"
        )

    def embed(self, *args: Any, **kwargs: Any) -> Any:
        raise self._not_prompt_model("point/box prompt decoder (embed/predict)")

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        raise self._not_prompt_model("point/box prompt decoder (embed/predict)")

    # -- concept segmentation ---------------------------------------------------------------------------------
    def encode_text(self, classes: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, L, D) projected text features and the (C, L) attention mask of the class phrases."""
        import torch

        if not classes or not all(isinstance(c, str) and c.strip() for c in classes):
            raise ValueError(f"concept classes must be one or more non-empty strings, got {list(classes)!r}")
        tokens = self.tokenizer(
            [c.strip() for c in classes],
            padding="max_length",
            max_length=TEXT_LENGTH,
            truncation=True,
            return_tensors="pt",
        )
        input_ids = tokens["input_ids"].to(self.device)
        attention = tokens["attention_mask"].to(self.device)
        with self._context():
            features = self.model.get_text_features(input_ids=input_ids, attention_mask=attention).pooler_output
        return features, attention.to(torch.long)

    def segment(
        self, images: Sequence[np.ndarray], classes: Sequence[str], params: ConceptParams | None = None
    ) -> list[Instances]:
        """One :class:`Instances` per image: every instance of every class scoring above the threshold."""
        from model.preprocess import check_image

        params = params or ConceptParams()
        checked = [check_image(image, i) for i, image in enumerate(images)]
        text, text_mask = self.encode_text(classes)
        results: list[Instances] = []
        for start in range(0, len(checked), params.image_batch):
            chunk = checked[start : start + params.image_batch]
            with self._context():
                vision = self.model.get_vision_features(pixel_values=self._pixels(chunk))
            for j, image in enumerate(chunk):
                results.append(self._segment_one(vision, j, image.shape[:2], list(classes), text, text_mask, params))
        return results

    def _segment_one(
        self,
        vision: Any,
        index: int,
        size: tuple[int, int],
        classes: list[str],
        text: torch.Tensor,
        text_mask: torch.Tensor,
        params: ConceptParams,
    ) -> Instances:
        import torch
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        from model.preprocess import stability_scores, upsample_logits

        height, width = size
        keep_logits: list[torch.Tensor] = []
        keep_boxes, keep_scores, keep_presence, keep_class = [], [], [], []
        with self._context():
            cls = self._geometry_cls(vision, index)  # (1, 1, D): Meta's token that ends every text-only prompt
        for c0 in range(0, len(classes), params.class_batch):
            c1 = min(c0 + params.class_batch, len(classes))
            n = c1 - c0
            one = Sam3VisionEncoderOutput(
                fpn_hidden_states=tuple(f[index : index + 1].expand(n, -1, -1, -1) for f in vision.fpn_hidden_states),
                fpn_position_encoding=tuple(
                    p[index : index + 1].expand(n, -1, -1, -1) for p in vision.fpn_position_encoding
                ),
            )
            prompt = torch.cat([text[c0:c1], cls.expand(n, -1, -1).to(text.dtype)], dim=1)
            prompt_mask = torch.cat([text_mask[c0:c1], text_mask.new_ones(n, 1)], dim=1)
            with self._context():
                out = self.model(vision_embeds=one, text_embeds=_Pooled(prompt), attention_mask=prompt_mask)
            presence = out.presence_logits.float().sigmoid().reshape(n, 1)  # (n, 1)
            scores = out.pred_logits.float().sigmoid() * presence  # (n, Q)
            for k in range(n):
                selected = torch.nonzero(scores[k] > params.score_threshold).flatten()
                if selected.numel() == 0:
                    continue
                keep_logits.append(out.pred_masks[k, selected].float())
                keep_boxes.append(out.pred_boxes[k, selected].float())
                keep_scores.append(scores[k, selected])
                keep_presence.append(presence[k].expand(selected.numel()))
                keep_class += [c0 + k] * int(selected.numel())
        if not keep_logits:
            return Instances.empty(height, width)
        logits = torch.cat(keep_logits)
        conf = torch.cat(keep_scores)
        order = torch.argsort(conf, descending=True)
        if params.max_instances is not None:
            order = order[: params.max_instances]
        logits, conf = logits[order], conf[order]
        boxes = torch.cat(keep_boxes)[order].cpu().numpy() * np.array([width, height, width, height], np.float32)
        presence_scores = torch.cat(keep_presence)[order]
        labels = [classes[keep_class[i]] for i in order.tolist()]
        threshold = float(np.log(params.mask_threshold / (1 - params.mask_threshold)))  # probability -> logit
        masks = np.zeros((logits.shape[0], height, width), dtype=bool)
        for s in range(0, logits.shape[0], 32):
            masks[s : s + 32] = (upsample_logits(logits[s : s + 32], size) > threshold).cpu().numpy()
        prompts = [
            Prompt(
                "text",
                {"phrase": label, "concept": True, "box": box.astype(np.float64).round(2).tolist()},
                self.model_version,
            )
            for label, box in zip(labels, boxes, strict=True)
        ]
        inst = Instances(
            masks=masks,
            labels=labels,
            scores=conf.cpu().numpy(),
            stability=stability_scores(logits, threshold).cpu().numpy(),
            detector_scores=presence_scores.cpu().numpy(),
            prompts=prompts,
        )
        nonempty = inst.areas > 0
        return inst[nonempty] if nonempty.any() else Instances.empty(height, width)

    def _geometry_cls(self, vision: Any, index: int) -> torch.Tensor:
        """The geometry encoder's output for a prompt without boxes: its CLS token alone, after its layers attend to
        image ``index``'s features (1, 1, D).

        Meta's SAM 3 runs the geometry encoder for every prompt and appends its output to the text tokens, so a
        text-only prompt reaches the DETR as text + this CLS token. transformers' ``Sam3Model`` skips the encoder
        when no box is given (and with a padding box calls ``torchvision.ops.roi_align``, which maskloop does not
        need), so the token is built here from the encoder's own modules, as its ``forward`` would with every box
        masked out (``tests/reference/test_sam3_parity.py`` compares the result with Meta's code)."""
        encoder = self.model.geometry_encoder
        feats = vision.fpn_hidden_states[:-1][-1][index : index + 1]  # what Sam3Model gives the encoder
        pos = vision.fpn_position_encoding[:-1][-1][index : index + 1]
        flat, pos_flat = feats.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2)
        hidden = encoder.cls_embed.weight.view(1, 1, -1).to(feats.dtype)
        hidden = encoder.prompt_layer_norm(encoder.final_proj(hidden))
        for layer in encoder.layers:
            hidden = layer(prompt_feats=hidden, vision_feats=flat, vision_pos_encoding=pos_flat, prompt_mask=None)
        return encoder.output_layer_norm(hidden)

    def _pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Images -> (B, 3, S, S) as Sam3ImageProcessor makes them: antialiased bilinear resize to the square input,
        /255, normalised with mean = std = 0.5."""
        import torch
        import torch.nn.functional as F

        out = []
        for image in images:
            pixels = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float()
            # antialiased, as Meta's transform and Sam3ImageProcessor (matters when shrinking a large photo)
            pixels = F.interpolate(
                pixels, size=(self.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True
            )
            out.append(pixels / 255.0)
        stacked = torch.cat(out)
        mean = torch.tensor(_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(_STD, device=self.device).view(1, 3, 1, 1)
        return (stacked - mean) / std

    def _context(self) -> Any:
        from model.device import inference_context

        return inference_context(self.device, self.dtype)


@dataclass(frozen=True)
class _Pooled:
    """What ``Sam3Model.forward`` reads from precomputed ``text_embeds``: ``.pooler_output`` (C, L, D)."""

    pooler_output: torch.Tensor


def _checkpoint_dir(source: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(source, cache_dir=None if cache_dir is None else Path(cache_dir), local_files_only=True)
    )


def _load_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    if not any((directory / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        raise ModelNotAvailableError(
            f"{directory} has no tokenizer (tokenizer.json or vocab.json + merges.txt): a SAM 3 checkpoint ships its "
            f"CLIP tokenizer next to config.json; save it with the model (tokenizer.save_pretrained) or download "
            f"facebook/sam3 whole"
        )
    return AutoTokenizer.from_pretrained(directory, local_files_only=True)
