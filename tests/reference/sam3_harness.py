"""The project's side of the SAM 3 reference comparison: what both implementations are asked, the tokenizer both
read, how Meta's side is run (in ``.venv-ref``, through ``sam3_meta_side.py``) and how Meta's state dict becomes a
transformers ``Sam3Model``.

Meta's ``sam3`` 0.1.4 wheel lacks its CLIP BPE file, so both sides read one written here: a gzip of merges that
make each word of the phrases one token (Meta's ``SimpleTokenizer``), and the same vocabulary and merges as a
transformers ``CLIPTokenizer`` (same ids). Meta's outputs and its checkpoint are cached under
``test-artifacts/reference/sam3-<hash>`` keyed by the spec and ``sam3_meta_side.py``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.reference.harness import CACHE, IMAGES, REF_PYTHON

META_SIDE = Path(__file__).with_name("sam3_meta_side.py")
SEED = 3
THREADS = 2
IMAGE = IMAGES[0]  # coco128 000000000009.jpg, 640x480
PHRASES = ("person", "red bowl")
# preprocessing alone (no forward): one image SAM 3 upscales (640x480) and one it downscales (1800x1200)
PREPROCESS_IMAGES = IMAGES


# -- the tokenizer both sides read ------------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte -> printable character table (Meta's ``bytes_to_unicode``, in its order)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def merges_for(phrases: tuple[str, ...]) -> list[tuple[str, str]]:
    """Left-to-right merges that make every word of ``phrases`` a single end-of-word token."""
    merges: list[tuple[str, str]] = []
    for word in sorted({w for p in phrases for w in p.lower().split()}):
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            if pair not in merges:
                merges.append(pair)
            symbols = [symbols[0] + symbols[1], *symbols[2:]]
    return merges


def vocabulary(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Meta's ``SimpleTokenizer`` vocabulary (bytes, bytes + ``</w>``, merges, start/end) under CLIP's special-token
    names, so a ``CLIPTokenizer`` gives the same ids."""
    base = list(_bytes_to_unicode().values())
    tokens = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def write_bpe(path: Path, merges: list[tuple[str, str]]) -> None:
    """Meta's format: a gzip of CLIP's merges file (a header line, then one merge per line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # no final newline: Meta's tokenizer splits on "\n" and would take a trailing empty line for a merge (one more id)
    text = "#version: 0.2 (maskloop test merges)\n" + "\n".join(" ".join(m) for m in merges)
    path.write_bytes(gzip.compress(text.encode(), mtime=0))


def clip_tokenizer(merges: list[tuple[str, str]]) -> Any:
    """A transformers ``CLIPTokenizer`` with the same vocabulary and merges (what ``ConceptSegmenter`` calls)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=vocabulary(merges), merges=list(merges), model_max_length=32)


# -- Meta's side ------------------------------------------------------------------------------------------------
def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_spec() -> dict[str, Any]:
    merges = merges_for(PHRASES)
    workdir = CACHE / f"sam3-{_digest(SEED, merges)}"
    spec: dict[str, Any] = {
        "seed": SEED,
        "threads": THREADS,
        "bpe": str(workdir / "bpe_test_merges.txt.gz"),
        "checkpoint": str(workdir / "sam3_seeded.pt"),
        "images": [str(IMAGE)],
        "preprocess_only": [str(p) for p in PREPROCESS_IMAGES],
        "phrases": list(PHRASES),
    }
    spec["out"] = str(workdir / f"meta-{_digest(spec, META_SIDE.read_text())}.npz")
    return spec


def run_meta(spec: dict[str, Any]) -> float:
    """Build Meta's seeded model and run it (skipped when both its outputs and the checkpoint are cached)."""
    out, checkpoint = Path(spec["out"]), Path(spec["checkpoint"])
    if out.is_file() and checkpoint.is_file():
        return 0.0
    write_bpe(Path(spec["bpe"]), merges_for(tuple(spec["phrases"])))
    spec_path = out.with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec, indent=1))
    started = time.perf_counter()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
    done = subprocess.run(
        [str(REF_PYTHON), str(META_SIDE), str(spec_path)], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"sam3_meta_side.py failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return time.perf_counter() - started


# -- Meta's state dict -> transformers Sam3Model ----------------------------------------------------------------
# Ported from transformers' convert_sam3_to_hf.py (ORIGINAL_TO_CONVERTED_KEY_MAPPING, split_qkv and the special cases
# of convert_sam3_checkpoint; Apache-2.0, huggingface/transformers src/transformers/models/sam3/). The script is not
# in the transformers wheel, so it cannot be imported; the rules below are applied in order, as there.
_B = r"^vision_encoder\.backbone\."
_TE = r"^text_encoder\.transformer\.resblocks\.(\d+)\."
_GE = r"^geometry_encoder\.encode\.(\d+)\."
_EN = r"^transformer\.encoder\.layers\.(\d+)\."
_DE = r"^transformer\.decoder\."
_DL = r"^transformer\.decoder\.layers\.(\d+)\."
KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^sam3_model\.", ""),
    # vision encoder: ViT backbone
    (r"^backbone\.vision_backbone\.trunk\.", "vision_encoder.backbone."),
    (_B + r"pos_embed", "vision_encoder.backbone.embeddings.position_embeddings"),
    (_B + r"patch_embed\.proj\.", "vision_encoder.backbone.embeddings.patch_embeddings.projection."),
    (_B + r"ln_pre\.", "vision_encoder.backbone.layer_norm."),
    (_B + r"blocks\.(\d+)\.norm1\.", r"vision_encoder.backbone.layers.\1.layer_norm1."),
    (_B + r"blocks\.(\d+)\.norm2\.", r"vision_encoder.backbone.layers.\1.layer_norm2."),
    (_B + r"blocks\.(\d+)\.attn\.qkv\.", r"vision_encoder.backbone.layers.\1.attention.qkv."),
    (_B + r"blocks\.(\d+)\.attn\.proj\.", r"vision_encoder.backbone.layers.\1.attention.o_proj."),
    (_B + r"blocks\.(\d+)\.attn\.freqs_cis", r"vision_encoder.backbone.layers.\1.rotary_emb.rope_embeddings"),
    (_B + r"blocks\.(\d+)\.mlp\.fc1\.", r"vision_encoder.backbone.layers.\1.mlp.fc1."),
    (_B + r"blocks\.(\d+)\.mlp\.fc2\.", r"vision_encoder.backbone.layers.\1.mlp.fc2."),
    # vision encoder: FPN neck
    (r"^backbone\.vision_backbone\.neck\.fpn\.(\d+)\.", r"vision_encoder.neck.fpn_layers.\1."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.dconv_2x2_0\.", r"vision_encoder.neck.fpn_layers.\1.scale_layers.0."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.dconv_2x2_1\.", r"vision_encoder.neck.fpn_layers.\1.scale_layers.2."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.dconv_2x2\.", r"vision_encoder.neck.fpn_layers.\1.scale_layers.0."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.maxpool_2x2\.", r"vision_encoder.neck.fpn_layers.\1.scale_layers.0."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.conv_1x1\.", r"vision_encoder.neck.fpn_layers.\1.proj1."),
    (r"^backbone\.vision_backbone\.convs\.(\d+)\.conv_3x3\.", r"vision_encoder.neck.fpn_layers.\1.proj2."),
    # text encoder (CLIP)
    (r"^backbone\.language_backbone\.encoder\.", "text_encoder."),
    (r"^text_encoder\.token_embedding\.", "text_encoder.text_model.embeddings.token_embedding."),
    (r"^text_encoder\.positional_embedding", "text_encoder.text_model.embeddings.position_embedding.weight"),
    (r"^text_encoder\.ln_final\.", "text_encoder.text_model.final_layer_norm."),
    (r"^text_encoder\.text_projection", "text_encoder.text_projection.weight"),
    (_TE + r"attn\.in_proj_", r"text_encoder.text_model.encoder.layers.\1.self_attn.in_proj_"),
    (_TE + r"attn\.out_proj\.", r"text_encoder.text_model.encoder.layers.\1.self_attn.out_proj."),
    (_TE + r"ln_1\.", r"text_encoder.text_model.encoder.layers.\1.layer_norm1."),
    (_TE + r"ln_2\.", r"text_encoder.text_model.encoder.layers.\1.layer_norm2."),
    (_TE + r"mlp\.c_fc\.", r"text_encoder.text_model.encoder.layers.\1.mlp.fc1."),
    (_TE + r"mlp\.c_proj\.", r"text_encoder.text_model.encoder.layers.\1.mlp.fc2."),
    (r"^backbone\.language_backbone\.resizer\.", "text_projection."),
    # geometry encoder
    (_GE + r"cross_attn_image\.out_proj\.", r"geometry_encoder.layers.\1.cross_attn.o_proj."),
    (_GE + r"cross_attn_image\.", r"geometry_encoder.layers.\1.cross_attn."),
    (_GE + r"self_attn\.out_proj\.", r"geometry_encoder.layers.\1.self_attn.o_proj."),
    (_GE + r"self_attn\.", r"geometry_encoder.layers.\1.self_attn."),
    (_GE + r"linear1\.", r"geometry_encoder.layers.\1.mlp.fc1."),
    (_GE + r"linear2\.", r"geometry_encoder.layers.\1.mlp.fc2."),
    (_GE + r"norm1\.", r"geometry_encoder.layers.\1.layer_norm1."),
    (_GE + r"norm2\.", r"geometry_encoder.layers.\1.layer_norm2."),
    (_GE + r"norm3\.", r"geometry_encoder.layers.\1.layer_norm3."),
    (r"^geometry_encoder\.img_pre_norm\.", "geometry_encoder.vision_layer_norm."),
    (r"^geometry_encoder\.norm\.", "geometry_encoder.prompt_layer_norm."),
    (r"^geometry_encoder\.encode_norm\.", "geometry_encoder.output_layer_norm."),
    # DETR encoder
    (_EN + r"cross_attn_image\.out_proj\.", r"detr_encoder.layers.\1.cross_attn.o_proj."),
    (_EN + r"cross_attn_image\.", r"detr_encoder.layers.\1.cross_attn."),
    (_EN + r"self_attn\.out_proj\.", r"detr_encoder.layers.\1.self_attn.o_proj."),
    (_EN + r"self_attn\.", r"detr_encoder.layers.\1.self_attn."),
    (_EN + r"cross_attn\.out_proj\.", r"detr_encoder.layers.\1.cross_attn.o_proj."),
    (_EN + r"cross_attn\.", r"detr_encoder.layers.\1.cross_attn."),
    (_EN + r"linear1\.", r"detr_encoder.layers.\1.mlp.fc1."),
    (_EN + r"linear2\.", r"detr_encoder.layers.\1.mlp.fc2."),
    (_EN + r"norm1\.", r"detr_encoder.layers.\1.layer_norm1."),
    (_EN + r"norm2\.", r"detr_encoder.layers.\1.layer_norm2."),
    (_EN + r"norm3\.", r"detr_encoder.layers.\1.layer_norm3."),
    # DETR decoder
    (_DE + r"query_embed\.", "detr_decoder.query_embed."),
    (_DE + r"reference_points\.", "detr_decoder.reference_points."),
    (_DE + r"instance_query_embed\.", "detr_decoder.instance_query_embed."),
    (_DE + r"instance_reference_points\.", "detr_decoder.instance_reference_points."),
    (_DE + r"presence_token\.", "detr_decoder.presence_token."),
    (_DE + r"presence_token_head\.layers\.0\.", "detr_decoder.presence_head.layer1."),
    (_DE + r"presence_token_head\.layers\.1\.", "detr_decoder.presence_head.layer2."),
    (_DE + r"presence_token_head\.layers\.2\.", "detr_decoder.presence_head.layer3."),
    (_DE + r"presence_token_out_norm\.", "detr_decoder.presence_layer_norm."),
    (_DE + r"norm\.", "detr_decoder.output_layer_norm."),
    (_DE + r"bbox_embed\.layers\.0\.", "detr_decoder.box_head.layer1."),
    (_DE + r"bbox_embed\.layers\.1\.", "detr_decoder.box_head.layer2."),
    (_DE + r"bbox_embed\.layers\.2\.", "detr_decoder.box_head.layer3."),
    (_DE + r"instance_bbox_embed\.layers\.0\.", "detr_decoder.instance_box_head.layer1."),
    (_DE + r"instance_bbox_embed\.layers\.1\.", "detr_decoder.instance_box_head.layer2."),
    (_DE + r"instance_bbox_embed\.layers\.2\.", "detr_decoder.instance_box_head.layer3."),
    (_DE + r"ref_point_head\.layers\.0\.", "detr_decoder.ref_point_head.layer1."),
    (_DE + r"ref_point_head\.layers\.1\.", "detr_decoder.ref_point_head.layer2."),
    (_DE + r"boxRPB_embed_x\.layers\.0\.", "detr_decoder.box_rpb_embed_x.layer1."),
    (_DE + r"boxRPB_embed_x\.layers\.1\.", "detr_decoder.box_rpb_embed_x.layer2."),
    (_DE + r"boxRPB_embed_y\.layers\.0\.", "detr_decoder.box_rpb_embed_y.layer1."),
    (_DE + r"boxRPB_embed_y\.layers\.1\.", "detr_decoder.box_rpb_embed_y.layer2."),
    (_DL + r"self_attn\.out_proj\.", r"detr_decoder.layers.\1.self_attn.o_proj."),
    (_DL + r"self_attn\.", r"detr_decoder.layers.\1.self_attn."),
    (_DL + r"ca_text\.out_proj\.", r"detr_decoder.layers.\1.text_cross_attn.o_proj."),
    (_DL + r"ca_text\.", r"detr_decoder.layers.\1.text_cross_attn."),
    (_DL + r"cross_attn\.out_proj\.", r"detr_decoder.layers.\1.vision_cross_attn.o_proj."),
    (_DL + r"cross_attn\.", r"detr_decoder.layers.\1.vision_cross_attn."),
    (_DL + r"linear1\.", r"detr_decoder.layers.\1.mlp.fc1."),
    (_DL + r"linear2\.", r"detr_decoder.layers.\1.mlp.fc2."),
    (_DL + r"norm1\.", r"detr_decoder.layers.\1.vision_cross_attn_layer_norm."),
    (_DL + r"catext_norm\.", r"detr_decoder.layers.\1.text_cross_attn_layer_norm."),
    (_DL + r"norm2\.", r"detr_decoder.layers.\1.self_attn_layer_norm."),
    (_DL + r"norm3\.", r"detr_decoder.layers.\1.mlp_layer_norm."),
    # dot-product scoring
    (r"^dot_prod_scoring\.prompt_mlp\.layers\.0\.", "dot_product_scoring.text_mlp.layer1."),
    (r"^dot_prod_scoring\.prompt_mlp\.layers\.1\.", "dot_product_scoring.text_mlp.layer2."),
    (r"^dot_prod_scoring\.prompt_mlp\.out_norm\.", "dot_product_scoring.text_mlp_out_norm."),
    (r"^dot_prod_scoring\.prompt_proj\.", "dot_product_scoring.text_proj."),
    (r"^dot_prod_scoring\.hs_proj\.", "dot_product_scoring.query_proj."),
    # mask decoder
    (r"^segmentation_head\.pixel_decoder\.conv_layers\.(\d+)\.", r"mask_decoder.pixel_decoder.conv_layers.\1."),
    (r"^segmentation_head\.pixel_decoder\.norms\.(\d+)\.", r"mask_decoder.pixel_decoder.norms.\1."),
    (r"^segmentation_head\.mask_embed\.layers\.(\d+)\.", r"mask_decoder.mask_embedder.layers.\1."),
    (r"^segmentation_head\.mask_predictor\.mask_embed\.layers\.(\d+)\.", r"mask_decoder.mask_embedder.layers.\1."),
    (r"^segmentation_head\.instance_seg_head\.", "mask_decoder.instance_projection."),
    (r"^segmentation_head\.semantic_seg_head\.", "mask_decoder.semantic_projection."),
    (r"^segmentation_head\.cross_attend_prompt\.out_proj\.", "mask_decoder.prompt_cross_attn.o_proj."),
    (r"^segmentation_head\.cross_attend_prompt\.", "mask_decoder.prompt_cross_attn."),
    (r"^segmentation_head\.cross_attn_norm\.", "mask_decoder.prompt_cross_attn_norm."),
)


def convert_key(key: str) -> str:
    for pattern, replacement in KEY_RULES:
        key = re.sub(pattern, replacement, key)
    return key


def convert_state_dict(meta: dict[str, Any]) -> dict[str, Any]:
    """Meta's SAM 3 image-model state dict -> transformers ``Sam3Model`` keys (as convert_sam3_to_hf.py does: the
    renames, the ViT position embedding without its cls-token slot, fused qkv / in_proj split into q, k, v, and the
    CLIP text projection transposed)."""
    import torch

    out: dict[str, Any] = {}
    for key, value in meta.items():
        new = convert_key(key)
        if new == "vision_encoder.backbone.embeddings.position_embeddings":
            value = value[:, 1:, :]
        out[new] = value
    for key in [k for k in out if ".attention.qkv." in k]:
        for name, part in zip(("q_proj", "k_proj", "v_proj"), torch.chunk(out.pop(key), 3, dim=0), strict=True):
            out[key.replace(".qkv.", f".{name}.")] = part
    for key in [k for k in out if ".in_proj_" in k]:
        base, kind = key.rsplit("in_proj_", 1)
        for name, part in zip(("q_proj", "k_proj", "v_proj"), torch.chunk(out.pop(key), 3, dim=0), strict=True):
            out[f"{base}{name}.{kind}"] = part
    if "text_encoder.text_projection.weight" in out:
        out["text_encoder.text_projection.weight"] = out["text_encoder.text_projection.weight"].T
    return out


def load_meta_result(spec: dict[str, Any]) -> dict[str, np.ndarray]:
    with np.load(spec["out"]) as data:
        return {k: data[k] for k in data.files}
