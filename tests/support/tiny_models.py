"""Tiny, seeded, randomly initialised transformers models for tests and CPU benchmarks (test support, not product).

They are the real ``Sam2Model`` / ``GroundingDinoForObjectDetection`` classes built from small configs and saved with
``save_pretrained``, so tests load them back through exactly the code a user runs (``Segmenter.from_pretrained``).
Random weights mean they test plumbing and geometry, never quality. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import GroundingDinoConfig, Sam2Config, Sam2Model

# Word pieces of the tiny tokenizer: letters as pieces so every class name tokenises without [UNK].
_TINY_WORDS = ("a", "an", "the", "of", "photo", "cat", "dog", "person", "car", "bird", "truck", "object", "shape")


def tiny_sam2_config(image_size: int = 256, hidden_size: int = 32) -> Sam2Config:
    """A ~0.35 M-parameter SAM 2 config (Hiera with 5 blocks) that runs in milliseconds on one CPU core.

    ``image_size`` must be a multiple of 64 (the backbone downsamples by 32 and windows tile by 2); ``hidden_size``
    is the FPN / prompt-encoder / mask-decoder width (a multiple of 8; use 128 when a video config with its 64-channel
    memory encoder is built on top of it).
    """
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    if image_size % 64 or image_size <= 0:
        raise ValueError(f"tiny_sam2_config: image_size must be a positive multiple of 64, got {image_size}")
    if hidden_size % 8 or hidden_size <= 0:
        raise ValueError(f"tiny_sam2_config: hidden_size must be a positive multiple of 8, got {hidden_size}")
    backbone = Sam2HieraDetConfig(
        hidden_size=16,
        num_attention_heads=1,
        image_size=[image_size, image_size],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 2, 2],
        window_size_per_stage=[8, 4, 4, 2],
        global_attention_blocks=[3],  # a global block must not be the first (query-pooling) block of a stage
        window_positional_embedding_background_size=[4, 4],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[128, 64, 32, 16],
        backbone_feature_sizes=[[image_size // s, image_size // s] for s in (4, 8, 16)],
        fpn_hidden_size=hidden_size,
    )
    prompt = Sam2PromptEncoderConfig(hidden_size=hidden_size, image_size=image_size, patch_size=16)
    decoder = Sam2MaskDecoderConfig(
        hidden_size=hidden_size, mlp_dim=2 * hidden_size, num_attention_heads=2, iou_head_hidden_dim=hidden_size
    )
    return Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def build_tiny_sam2(seed: int = 0, image_size: int = 256, hidden_size: int = 32) -> Sam2Model:
    """A tiny ``Sam2Model`` with seeded random weights (deterministic for a given seed), in eval mode.

    The image-wide positional embedding is tied to the prompt encoder's, as in every real checkpoint (Meta's
    checkpoints hold one matrix for both).
    """
    import torch
    from transformers import Sam2Model

    config = tiny_sam2_config(image_size=image_size, hidden_size=hidden_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam2Model(config)
        # random init leaves some tensors at constant values; perturb every tensor so a wrong key mapping shows up
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for tensor in model.state_dict().values():
                if tensor.is_floating_point():
                    tensor.add_(0.02 * torch.randn(tensor.shape, generator=generator))
            model.shared_image_embedding.positional_embedding.copy_(
                model.prompt_encoder.shared_embedding.positional_embedding
            )
    return model.eval()


def save_tiny_sam2(directory: str | Path, seed: int = 0, image_size: int = 256, hidden_size: int = 32) -> Path:
    """Save :func:`build_tiny_sam2` in transformers format (``config.json`` + ``model.safetensors``); returns the dir."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_tiny_sam2(seed=seed, image_size=image_size, hidden_size=hidden_size).save_pretrained(directory)
    return directory


def save_tiny_sam2_meta_checkpoint(path: str | Path, seed: int = 0, image_size: int = 256) -> Path:
    """Save a tiny random SAM 2 as a Meta-style ``.pt`` (``{"model": state_dict}`` in Meta's key naming)."""
    import torch

    from model.convert import hf_to_meta_state_dict

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_tiny_sam2(seed=seed, image_size=image_size)
    torch.save({"model": hf_to_meta_state_dict(model.state_dict())}, path)
    return path


def _tiny_bert_vocab() -> list[str]:
    # Grounding DINO hard-codes BERT ids for [CLS]=101, [SEP]=102, "."=1012, "?"=1029: keep them where BERT has them.
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"[unused{i}]" for i in range(99, 99 + 1012 - len(vocab))]
    vocab += ["."] + [f"[unused{i}]" for i in range(2000, 2016)] + ["?"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    vocab += letters + [f"##{c}" for c in letters] + list(_TINY_WORDS) + [",", "-", "'"]
    return vocab


def tiny_grounding_dino_config() -> GroundingDinoConfig:
    """A ~0.5 M-parameter Grounding DINO (Swin + 1-layer BERT) config with the BERT special-token ids kept."""
    from transformers import BertConfig, GroundingDinoConfig, SwinConfig

    swin = SwinConfig(  # type: ignore[call-arg]  # out_indices is accepted through **kwargs
        image_size=224,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_indices=[2, 3, 4],
    )
    bert = BertConfig(
        vocab_size=len(_tiny_bert_vocab()),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return GroundingDinoConfig(
        backbone_config=swin,
        text_config=bert,
        num_queries=30,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        d_model=32,
        max_text_len=32,
        encoder_n_points=2,
        decoder_n_points=2,
    )


def save_tiny_grounding_dino(directory: str | Path, seed: int = 0) -> Path:
    """Save a tiny random ``GroundingDinoForObjectDetection`` and a locally built BERT word-piece tokenizer."""
    import torch
    from transformers import BertTokenizer, GroundingDinoForObjectDetection

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(tiny_grounding_dino_config()).eval()
    model.save_pretrained(directory)
    vocab = {token: i for i, token in enumerate(_tiny_bert_vocab())}
    BertTokenizer(vocab=vocab, do_lower_case=True).save_pretrained(directory)
    _write_json(directory / "maskloop_detector.json", {"shortest_edge": 224, "longest_edge": 320})
    return directory


def _write_json(path: Path, data: dict[str, Any]) -> None:
    import json

    path.write_text(json.dumps(data, indent=2) + "\n")


def tiny_sam2_video_config(image_size: int = 64, num_maskmem: int = 3, max_object_pointers: int = 4) -> Any:
    """A ~1.5 M parameter ``Sam2VideoConfig`` (Hiera with 4 stages, 128-wide FPN, 64-channel memory).

    ``image_size`` must be a multiple of 32 (the lowest feature map is ``image_size / 16`` and the Hiera windows
    tile it).
    """
    from transformers import Sam2VideoConfig

    if image_size % 32:
        raise ValueError(f"tiny_sam2_video_config: image_size must be a multiple of 32, got {image_size}")
    s = image_size
    return Sam2VideoConfig(
        vision_config={
            "model_type": "sam2_vision_model",
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": 16,
                "num_attention_heads": 1,
                "image_size": [s, s],
                "blocks_per_stage": [1, 1, 2, 1],
                "embed_dim_per_stage": [16, 32, 64, 128],
                "num_attention_heads_per_stage": [1, 1, 1, 1],
                "window_size_per_stage": [8, 4, 4, 2],
                "global_attention_blocks": [3],
                "window_positional_embedding_background_size": [4, 4],
            },
            "backbone_channel_list": [128, 64, 32, 16],
            "backbone_feature_sizes": [[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
            "fpn_hidden_size": 128,
        },
        prompt_encoder_config={"hidden_size": 128, "image_size": s, "patch_size": 16},
        mask_decoder_config={"hidden_size": 128, "mlp_dim": 256, "num_attention_heads": 4, "iou_head_hidden_dim": 64},
        image_size=s,
        memory_attention_hidden_size=128,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=256,
        memory_attention_rope_feat_sizes=[s // 16, s // 16],
        memory_encoder_hidden_size=128,
        mask_downsampler_embed_dim=128,
        memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=256,
        num_maskmem=num_maskmem,
        max_object_pointers_in_encoder=max_object_pointers,
    )


def tiny_sam2_video_model(image_size: int = 64, seed: int = 0, present: bool = True) -> Any:
    """A random tiny ``Sam2VideoModel``. With ``present`` the object-score head is biased so objects are predicted
    present (random masks, not empty ones), which makes mask-level comparisons in tests meaningful."""
    import torch
    from transformers import Sam2VideoModel

    torch.manual_seed(seed)
    model = Sam2VideoModel(tiny_sam2_video_config(image_size)).eval()
    if present:
        with torch.no_grad():
            model.mask_decoder.pred_obj_score_head.proj_out.bias += 4.0
    return model


def save_tiny_sam2_video(directory: str | Path, image_size: int = 64, seed: int = 0, present: bool = True) -> Path:
    """Save :func:`tiny_sam2_video_model` in transformers format to ``directory`` and return the path."""
    path = Path(directory)
    tiny_sam2_video_model(image_size, seed, present).save_pretrained(path)
    return path


# -- SAM 3 and EdgeTAM ---------------------------------------------------------------------------------------------
_SAM3_LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]


def _tiny_clip_vocab() -> dict[str, int]:
    """A character-level CLIP BPE vocabulary (no merges): every lower-case class name tokenises without unknowns."""
    tokens = ["<|startoftext|>", "<|endoftext|>", *_SAM3_LETTERS, *(f"{c}</w>" for c in _SAM3_LETTERS)]
    return {token: i for i, token in enumerate(tokens)}


def tiny_sam3_config(image_size: int = 112, hidden_size: int = 32, num_queries: int = 12) -> Any:
    """A ~0.25 M-parameter ``Sam3Config``: a 2-layer ViT (patch 14, so ``image_size`` must be a multiple of 14 whose
    patch grid is a multiple of the window size 4), 1-layer CLIP text encoder, 1-layer DETR encoder/decoder."""
    from transformers import Sam3Config

    grid = image_size // 14
    if image_size % 14 or grid % 4:
        raise ValueError(f"tiny_sam3_config: image_size must be 14 * a multiple of 4 (56, 112, ...), got {image_size}")
    vocab = _tiny_clip_vocab()
    small = {"hidden_size": hidden_size, "num_attention_heads": 2, "intermediate_size": 2 * hidden_size}
    return Sam3Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam3_vit_model",
                **small,
                "num_hidden_layers": 2,
                "image_size": image_size,
                "patch_size": 14,
                "window_size": 4,
                "global_attn_indexes": [1],
                "pretrain_image_size": image_size // 2,
            },
            "fpn_hidden_size": hidden_size,
            "backbone_feature_sizes": [[grid * 4, grid * 4], [grid * 2, grid * 2], [grid, grid]],
        },
        text_config={
            "model_type": "clip_text_model",
            **small,
            "vocab_size": len(vocab),
            "projection_dim": hidden_size,
            "num_hidden_layers": 1,
            "max_position_embeddings": 32,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        geometry_encoder_config={**small, "num_layers": 1},
        detr_encoder_config={**small, "num_layers": 1},
        detr_decoder_config={**small, "num_layers": 1, "num_queries": num_queries},
        mask_decoder_config={"hidden_size": hidden_size, "num_attention_heads": 2},
    )


def build_tiny_sam3(seed: int = 0, image_size: int = 112, present: bool = True) -> Any:
    """A tiny ``Sam3Model`` with seeded random weights, in eval mode. With ``present`` the presence and query-score
    heads are biased so SAM 3 reports instances (random masks, not none), which makes flow tests see masks."""
    import torch
    from transformers import Sam3Model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam3Model(tiny_sam3_config(image_size=image_size)).eval()
    if present:
        with torch.no_grad():
            model.detr_decoder.presence_head.layer3.bias += 3.0
            # query scores are dot products of projected queries and text: shift them up through the query MLP bias
            model.dot_product_scoring.query_proj.bias += 0.7
            model.dot_product_scoring.text_proj.bias += 0.7
    return model


def save_tiny_sam3(directory: str | Path, seed: int = 0, image_size: int = 112, present: bool = True) -> Path:
    """Save :func:`build_tiny_sam3` plus a character-level CLIP tokenizer in transformers format; returns the dir."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    build_tiny_sam3(seed=seed, image_size=image_size, present=present).save_pretrained(directory)
    CLIPTokenizer(vocab=_tiny_clip_vocab(), merges=[]).save_pretrained(directory)
    return directory


def tiny_edgetam_config(image_size: int = 256, hidden_size: int = 32) -> Any:
    """A small ``EdgeTamConfig``: the released RepViT-M1 timm encoder (needs ``timm``) at ``image_size`` with a
    ``hidden_size``-wide FPN, prompt encoder and mask decoder."""
    from transformers import EdgeTamConfig, EdgeTamVisionConfig

    from model.configs import edgetam_backbone_config

    if image_size % 64:
        raise ValueError(f"tiny_edgetam_config: image_size must be a multiple of 64, got {image_size}")
    s = image_size
    return EdgeTamConfig(
        vision_config=EdgeTamVisionConfig(
            backbone_config=edgetam_backbone_config(),
            backbone_channel_list=[384, 192, 96, 48],
            backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
            fpn_hidden_size=hidden_size,
        ),
        prompt_encoder_config={"hidden_size": hidden_size, "image_size": s, "patch_size": 16},
        mask_decoder_config={
            "hidden_size": hidden_size,
            "mlp_dim": 2 * hidden_size,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": hidden_size,
        },
    )


def save_tiny_edgetam(directory: str | Path, seed: int = 0, image_size: int = 256, hidden_size: int = 32) -> Path:
    """Save a seeded random ``EdgeTamModel`` (:func:`tiny_edgetam_config`) in transformers format; needs ``timm``."""
    import torch
    from transformers import EdgeTamModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EdgeTamModel(tiny_edgetam_config(image_size=image_size, hidden_size=hidden_size)).eval()
        with torch.no_grad():
            model.shared_image_embedding.positional_embedding.copy_(
                model.prompt_encoder.shared_embedding.positional_embedding
            )
    model.save_pretrained(directory)
    return directory
