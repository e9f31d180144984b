"""The keys of a Meta checkpoint written by Meta's own model (not by maskloop's inverse table): every tensor is
used by maskloop's video model, and the image model ignores exactly the memory modules."""

from __future__ import annotations

import torch
from transformers import Sam2Model, Sam2VideoModel

from model.configs import sam2_architecture_config
from model.convert import meta_to_hf_state_dict
from model.video_model import video_config_from_image_config
from tests.reference.harness import Reference

# what the image model (Sam2Model) does not use from a Meta checkpoint: the video memory path
MEMORY_PREFIXES = (
    "memory_attention.",
    "memory_encoder.",
    "memory_temporal_positional_encoding",
    "no_memory_positional_encoding",
    "object_pointer_proj.",
    "no_object_pointer",
    "occlusion_spatial_embedding_parameter",
    "temporal_positional_encoding_projection_layer.",
    "mask_downsample.",
)


def test_every_tensor_of_metas_checkpoint_is_used_and_every_model_weight_is_filled(reference: Reference) -> None:
    state = torch.load(reference.checkpoint, map_location="cpu", weights_only=True)["model"]
    assert sorted(state) == reference.meta_keys  # the file holds Meta's model's own state dict
    converted = meta_to_hf_state_dict(state)
    size = reference.size.name
    video = Sam2VideoModel(video_config_from_image_config(sam2_architecture_config(size))).state_dict()
    assert set(converted) - set(video) == set(), "Meta tensors the video model does not use"
    assert set(video) - set(converted) == set(), "video-model weights the checkpoint does not fill"
    assert all(tuple(converted[k].shape) == tuple(video[k].shape) for k in video)
    image = Sam2Model(sam2_architecture_config(size)).state_dict()
    assert set(image) <= set(converted)
    ignored = set(converted) - set(image)
    assert ignored and all(k.startswith(MEMORY_PREFIXES) for k in ignored), sorted(
        k for k in ignored if not k.startswith(MEMORY_PREFIXES)
    )
