"""Loading SAM 2: transformers-format dirs, Meta .pt conversion, hub ids (cached / unavailable), lineage, cache."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from model.cache import cached_keys, clear_cache, get_segmenter
from model.configs import hiera_size_from_name, sam2_architecture_config
from model.convert import hf_to_meta_state_dict, meta_key_to_hf, meta_to_hf_state_dict
from model.device import resolve_dtype, select_device
from model.errors import ModelNotAvailableError
from model.segmenter import Segmenter
from tests.support.tiny_models import build_tiny_sam2, save_tiny_sam2, save_tiny_sam2_meta_checkpoint, tiny_sam2_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sam2(tmp_path_factory.mktemp("sam2") / "tiny-sam2")


def _image(seed: int = 0, h: int = 120, w: int = 160) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_directory_load_records_sha256_of_weights_and_model_version(tiny_dir: Path) -> None:
    seg = Segmenter.from_pretrained(tiny_dir, device="cpu")
    sha = hashlib.sha256((tiny_dir / "model.safetensors").read_bytes()).hexdigest()
    assert seg.checkpoint_sha256 == sha
    assert seg.model_version == f"tiny-sam2@{sha[:8]}"
    assert seg.device.type == "cpu" and seg.dtype == torch.float32


def test_directory_load_gives_the_saved_weights(tiny_dir: Path) -> None:
    seg = Segmenter.from_pretrained(tiny_dir, device="cpu")
    reference = build_tiny_sam2().state_dict()
    loaded = seg.model.state_dict()
    assert set(loaded) == set(reference)
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_tiny_model_helpers_are_deterministic(tmp_path: Path) -> None:
    a = save_tiny_sam2(tmp_path / "a", seed=3)
    b = save_tiny_sam2(tmp_path / "b", seed=3)
    c = save_tiny_sam2(tmp_path / "c", seed=4)
    digest = [hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest() for d in (a, b, c)]
    assert digest[0] == digest[1] != digest[2]


def test_meta_checkpoint_uses_meta_key_names(tmp_path: Path) -> None:
    checkpoint = torch.load(save_tiny_sam2_meta_checkpoint(tmp_path / "sam2.1_hiera_tiny.pt"), weights_only=True)
    keys = set(checkpoint["model"])
    for expected in (
        "image_encoder.trunk.patch_embed.proj.weight",
        "image_encoder.trunk.pos_embed_window",
        "image_encoder.trunk.blocks.0.norm1.weight",
        "image_encoder.trunk.blocks.0.mlp.layers.0.weight",
        "image_encoder.neck.convs.0.conv.weight",
        "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "sam_prompt_encoder.point_embeddings.3.weight",
        "sam_prompt_encoder.mask_downscaling.6.weight",
        "sam_mask_decoder.transformer.layers.0.cross_attn_token_to_image.out_proj.weight",
        "sam_mask_decoder.transformer.norm_final_attn.weight",
        "sam_mask_decoder.output_upscaling.3.weight",
        "sam_mask_decoder.output_hypernetworks_mlps.0.layers.2.weight",
        "sam_mask_decoder.iou_prediction_head.layers.1.weight",
        "sam_mask_decoder.pred_obj_score_head.layers.2.bias",
        "no_mem_embed",
    ):
        assert expected in keys, expected
    assert not any(k.startswith(("vision_encoder", "prompt_encoder.", "mask_decoder.")) for k in keys)


def test_meta_pt_checkpoint_converts_to_identical_transformers_weights(tmp_path: Path) -> None:
    path = save_tiny_sam2_meta_checkpoint(tmp_path / "my_sam2.pt", seed=0)
    seg = Segmenter.from_pretrained(path, device="cpu", config=tiny_sam2_config())
    reference = build_tiny_sam2(seed=0).state_dict()
    loaded = seg.model.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    assert seg.model_version == f"my_sam2@{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}"


def test_meta_checkpoint_with_extra_video_keys_loads_and_ignores_them(tmp_path: Path) -> None:
    state = hf_to_meta_state_dict(build_tiny_sam2().state_dict())
    state["memory_attention.layers.0.self_attn.q_proj.weight"] = torch.zeros(2, 2)
    state["maskmem_tpos_enc"] = torch.zeros(7, 1, 1, 64)
    path = tmp_path / "with_memory.pt"
    torch.save({"model": state}, path)
    seg = Segmenter.from_pretrained(path, device="cpu", config=tiny_sam2_config())
    assert "maskmem_tpos_enc" not in seg.model.state_dict()


def test_meta_checkpoint_missing_weights_is_a_clear_error(tmp_path: Path) -> None:
    state = hf_to_meta_state_dict(build_tiny_sam2().state_dict())
    del state["sam_mask_decoder.iou_token.weight"]
    path = tmp_path / "broken.pt"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=r"broken.pt: checkpoint lacks 1 weights .*mask_decoder.iou_token.weight"):
        Segmenter.from_pretrained(path, device="cpu", config=tiny_sam2_config())


def test_meta_checkpoint_for_another_architecture_is_a_clear_error(tmp_path: Path) -> None:
    path = save_tiny_sam2_meta_checkpoint(tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match="do not match the config"):
        Segmenter.from_pretrained(path, device="cpu", config=tiny_sam2_config(hidden_size=64))


def test_meta_checkpoint_without_config_or_size_in_name_asks_for_config(tmp_path: Path) -> None:
    path = save_tiny_sam2_meta_checkpoint(tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="pass config="):
        Segmenter.from_pretrained(path, device="cpu")


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("/nonexistent/dir/sam2.pt", "does not exist"),
        ("not-a-model-id", "neither a transformers-format directory"),
        ("./relative/thing", "neither a transformers-format directory"),
    ],
)
def test_bad_sources_raise_model_not_available(source: str, error: str) -> None:
    with pytest.raises(ModelNotAvailableError, match=error):
        Segmenter.from_pretrained(source, device="cpu")


def test_corrupt_pt_file_raises_model_not_available(tmp_path: Path) -> None:
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelNotAvailableError, match="not a readable torch checkpoint"):
        Segmenter.from_pretrained(path, device="cpu")


def test_uncached_hub_id_offline_fails_fast_saying_what_to_download(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as info:
        Segmenter.from_pretrained("facebook/sam2.1-hiera-tiny", local_files_only=True, cache_dir=tmp_path)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "facebook/sam2.1-hiera-tiny" in message and str(tmp_path) in message
    assert "hf download facebook/sam2.1-hiera-tiny" in message and "models--facebook--sam2.1-hiera-tiny" in message


def test_uncached_hub_id_with_unreachable_hub_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(ModelNotAvailableError, match=f"cannot connect to 127.0.0.1:{port}"):
        Segmenter.from_pretrained("facebook/sam2-hiera-small", cache_dir=tmp_path, local_files_only=False)
    assert time.monotonic() - start < 5


def test_hub_id_present_in_the_cache_loads_offline(tiny_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models--facebook--sam2.1-hiera-tiny"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((tiny_dir / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    seg = Segmenter.from_pretrained(
        "facebook/sam2.1-hiera-tiny", device="cpu", local_files_only=True, cache_dir=tmp_path
    )
    sha = hashlib.sha256((tiny_dir / "model.safetensors").read_bytes()).hexdigest()
    assert seg.model_version == f"facebook/sam2.1-hiera-tiny@{sha[:8]}"


def test_get_segmenter_loads_once_per_key(tiny_dir: Path) -> None:
    clear_cache()
    try:
        first = get_segmenter(str(tiny_dir), device="cpu", dtype="float32")
        again = get_segmenter(str(tiny_dir), device="cpu", dtype="float32")
        other = get_segmenter(str(tiny_dir), device="cpu", dtype="bfloat16")
        assert first is again and other is not first
        assert other.dtype == torch.bfloat16
        assert len(cached_keys()) == 2
    finally:
        clear_cache()
    assert cached_keys() == []


def test_bf16_autocast_on_cpu_gives_masks_close_to_float32(tiny_dir: Path) -> None:
    image = _image()
    boxes = np.array([[10, 10, 90, 80]], np.float32)
    fp32 = Segmenter.from_pretrained(tiny_dir, device="cpu", dtype="float32")
    bf16 = Segmenter.from_pretrained(tiny_dir, device="cpu", dtype="bf16")
    a = fp32.decode(fp32.embed(image), boxes=boxes).logits
    b = bf16.decode(bf16.embed(image), boxes=boxes).logits
    assert b.dtype == torch.float32
    assert torch.allclose(a, b, atol=0.05)


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("facebook/sam2.1-hiera-tiny", "tiny"),
        ("facebook/sam2-hiera-small", "small"),
        ("facebook/sam2.1-hiera-base-plus", "base-plus"),
        ("sam2.1_hiera_base_plus.pt", "base-plus"),
        ("sam2_hiera_large.pt", "large"),
        ("sam2.1_hiera_t.pt", "tiny"),
        ("weights.pt", None),
        ("", None),
    ],
)
def test_hiera_size_from_name(name: str, size: str | None) -> None:
    assert hiera_size_from_name(name) == size


@pytest.mark.parametrize(
    ("size", "blocks", "dim"), [("tiny", 12, 96), ("small", 16, 96), ("base-plus", 24, 112), ("large", 48, 144)]
)
def test_architecture_configs_match_released_hiera_sizes(size: str, blocks: int, dim: int) -> None:
    backbone = sam2_architecture_config(size).vision_config.backbone_config
    assert sum(backbone.blocks_per_stage) == blocks and backbone.hidden_size == dim


def test_unknown_architecture_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="SAM 2 size must be one of"):
        sam2_architecture_config("huge")


@pytest.mark.parametrize(
    ("meta", "hf"),
    [
        ("image_encoder.trunk.blocks.3.attn.qkv.weight", "vision_encoder.backbone.blocks.3.attn.qkv.weight"),
        ("image_encoder.trunk.blocks.3.mlp.layers.1.bias", "vision_encoder.backbone.blocks.3.mlp.proj_out.bias"),
        ("image_encoder.neck.convs.2.conv.bias", "vision_encoder.neck.convs.2.bias"),
        ("sam_mask_decoder.iou_prediction_head.layers.0.weight", "mask_decoder.iou_prediction_head.proj_in.weight"),
        ("sam_mask_decoder.iou_prediction_head.layers.1.weight", "mask_decoder.iou_prediction_head.layers.0.weight"),
        ("sam_mask_decoder.iou_prediction_head.layers.2.weight", "mask_decoder.iou_prediction_head.proj_out.weight"),
        (
            "sam_mask_decoder.transformer.layers.1.mlp.layers.0.weight",
            "mask_decoder.transformer.layers.1.mlp.proj_in.weight",
        ),
        ("sam_mask_decoder.transformer.layers.1.norm4.bias", "mask_decoder.transformer.layers.1.layer_norm4.bias"),
        ("sam_mask_decoder.output_upscaling.1.weight", "mask_decoder.upscale_layer_norm.weight"),
        ("sam_prompt_encoder.mask_downscaling.4.bias", "prompt_encoder.mask_embed.layer_norm2.bias"),
        ("no_mem_embed", "no_memory_embedding"),
        ("maskmem_tpos_enc", "memory_temporal_positional_encoding"),
        ("memory_encoder.fuser.layers.0.gamma", "memory_encoder.memory_fuser.layers.0.scale"),
        ("memory_encoder.fuser.layers.0.dwconv.weight", "memory_encoder.memory_fuser.layers.0.depthwise_conv.weight"),
    ],
)
def test_meta_key_renaming_table(meta: str, hf: str) -> None:
    assert meta_key_to_hf(meta) == hf


def test_point_embeddings_are_concatenated_and_gaussian_matrix_shared() -> None:
    state = {f"sam_prompt_encoder.point_embeddings.{i}.weight": torch.full((1, 4), float(i)) for i in range(4)} | {
        "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": torch.ones(2, 2)
    }
    converted = meta_to_hf_state_dict(state)
    assert converted["prompt_encoder.point_embed.weight"][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert torch.equal(converted["shared_image_embedding.positional_embedding"], torch.ones(2, 2))


@pytest.mark.parametrize(
    ("dtype", "device", "expected"),
    [
        (None, "cpu", torch.float32),
        (None, "cuda", torch.bfloat16),
        ("bf16", "cpu", torch.bfloat16),
        ("float16", "cpu", torch.float16),
        (torch.float32, "cuda", torch.float32),
    ],
)
def test_resolve_dtype_table(dtype: object, device: str, expected: torch.dtype) -> None:
    assert resolve_dtype(dtype, torch.device(device)) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["int8", torch.int64, "double"])
def test_resolve_dtype_rejects_unsupported(dtype: object) -> None:
    with pytest.raises(ValueError, match="dtype must be"):
        resolve_dtype(dtype, torch.device("cpu"))  # type: ignore[arg-type]


def test_select_device_auto_prefers_cuda_then_mps_then_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert select_device(None).type == expected
    assert select_device("cpu").type == "cpu"


def test_select_device_refuses_an_absent_accelerator() -> None:
    absent = [
        d for d, ok in (("cuda", torch.cuda.is_available()), ("mps", torch.backends.mps.is_available())) if not ok
    ]
    for device in absent:
        with pytest.raises(ValueError, match="not available"):
            select_device(device)
    assert absent or torch.cuda.is_available()


def test_importing_model_modules_loads_neither_torch_nor_transformers() -> None:
    code = (
        "import sys\n"
        "import model.segmenter, model.autoprompt, model.everything, model.detector, model.cache, model.loading\n"
        "import model.images, model.video, model.convert, model.nms, model.regions, model.contours, model.device\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_compile_flag_wraps_only_the_image_encoder() -> None:
    plain = Segmenter(build_tiny_sam2(), device="cpu")
    compiled = Segmenter(build_tiny_sam2(), device="cpu", compile_encoder=True)  # compilation itself is lazy
    assert not isinstance(plain.model.vision_encoder, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(compiled.model.vision_encoder, torch._dynamo.eval_frame.OptimizedModule)
    assert not isinstance(compiled.model.mask_decoder, torch._dynamo.eval_frame.OptimizedModule)


def test_checkpoint_identity_names_the_model_version_loading_records_without_loading(
    tiny_dir: Path, tmp_path: Path
) -> None:
    from model.loading import checkpoint_identity

    pt = save_tiny_sam2_meta_checkpoint(tmp_path / "my_sam2.pt", seed=1)
    for source, loaded in [
        (tiny_dir, Segmenter.from_pretrained(tiny_dir, device="cpu")),
        (pt, Segmenter.from_pretrained(pt, device="cpu", config=tiny_sam2_config())),
    ]:
        assert checkpoint_identity(source) == (loaded.model_id, loaded.checkpoint_sha256)


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("/nonexistent/dir/sam2.pt", "does not exist"),
        ("not-a-model-id", "neither a transformers-format directory"),
        ("facebook/sam2.1-hiera-tiny", "hf download facebook/sam2.1-hiera-tiny"),  # not in the (empty) cache
    ],
)
def test_checkpoint_identity_of_a_missing_model_says_what_is_missing(source: str, error: str, tmp_path: Path) -> None:
    from model.loading import checkpoint_identity

    with pytest.raises(ModelNotAvailableError, match=error):
        checkpoint_identity(source, cache_dir=tmp_path)
