"""Tiny random SAM 2 video configs for tests and CPU benchmarks (real transformers classes, random weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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


def write_video(
    path: str | Path,
    frames: Any,
    fps: int = 10,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    times_s: Any = None,
) -> Path:
    """Encode (H, W, 3) uint8 frames with PyAV. ``rotation`` sets the display matrix (counter-clockwise degrees, as
    :attr:`av.VideoFrame.rotation` reads it back); ``times_s`` gives explicit presentation times (variable rate)."""
    from fractions import Fraction

    import av

    path = Path(path)
    frames = list(frames)
    with av.open(str(path), mode="w") as container:
        stream: Any = container.add_stream(codec, rate=fps)
        h, w = (frames[0].shape[:2]) if frames else (16, 16)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if times_s is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if times_s is not None:
                frame.pts = int(round(times_s[i] * 1000))
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only(path: str | Path, seconds: float = 0.5, rate: int = 16000) -> Path:
    """An .m4a-style file with one AAC audio stream and no video."""
    import av
    import numpy as np

    path = Path(path)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream: Any = container.add_stream("aac", rate=rate)
        samples = np.zeros((1, int(seconds * rate)), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
