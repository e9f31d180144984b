"""Model families: checkpoints are recognised by config.json / name, built by their family, and fail clearly when
missing, unconvertible, or missing a package."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import transformers

from model.cache import clear_cache, get_segmenter
from model.concept import ConceptSegmenter
from model.errors import ModelCapabilityError, ModelDependencyError, ModelNotAvailableError
from model.families import CAPABILITIES, FAMILIES, family_by_name, family_of
from model.loading import checkpoint_identity, load_pretrained
from model.segmenter import Segmenter
from tests.support.tiny_models import save_tiny_sam2, save_tiny_sam3


def _config_dir(root: Path, model_type: str) -> Path:
    path = root / f"ckpt-{model_type}"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    (path / "model.safetensors").write_bytes(b"not used")
    return path


@pytest.mark.parametrize(
    ("model_type", "family"),
    [
        ("sam2", "sam2"),
        ("sam2_video", "sam2"),
        ("sam3", "sam3"),
        ("sam3_video", "sam3"),
        ("edgetam", "edgetam"),
        ("edgetam_video", "edgetam"),
    ],
)
def test_directory_family_comes_from_config_model_type(tmp_path: Path, model_type: str, family: str) -> None:
    assert family_of(_config_dir(tmp_path, model_type)).name == family


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("facebook/sam2.1-hiera-tiny", "sam2"),
        ("facebook/sam2-hiera-large", "sam2"),
        ("facebook/sam3", "sam3"),
        ("yonigozlan/EdgeTAM-hf", "edgetam"),
        ("facebook/EdgeTAM", "edgetam"),
        ("/ckpts/sam2.1_hiera_tiny.pt", "sam2"),
        ("/ckpts/edgetam.pt", "edgetam"),
        ("/ckpts/sam3.pt", "sam3"),
        ("someone/finetuned-model", "sam2"),  # unknown names keep today's behaviour: SAM 2
        ("", "sam2"),
    ],
)
def test_hub_ids_and_checkpoint_files_are_recognised_by_name(name: str, family: str) -> None:
    assert family_by_name(name).name == family
    if name:
        assert family_of(name, cache_dir="/nonexistent-cache").name == family


def test_cached_hub_config_beats_the_name(tmp_path: Path) -> None:
    snapshot = tmp_path / "models--someone--my-model" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "sam3_video"}))
    (tmp_path / "models--someone--my-model" / "refs").mkdir()
    (tmp_path / "models--someone--my-model" / "refs" / "main").write_text("0123abcd")
    assert family_of("someone/my-model", cache_dir=tmp_path).name == "sam3"


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (None, "has no config.json"),
        ({"model_type": "llama"}, "model_type 'llama', which is no model family"),
        ({"architectures": ["Sam2Model"]}, "has no model_type"),
        ("{not json", "not a readable config.json"),
    ],
)
def test_directories_that_are_no_known_family_fail_clearly(tmp_path: Path, content: object, error: str) -> None:
    path = tmp_path / "model"
    path.mkdir()
    if isinstance(content, dict):
        (path / "config.json").write_text(json.dumps(content))
    elif isinstance(content, str):
        (path / "config.json").write_text(content)
    with pytest.raises(ModelNotAvailableError, match=error):
        family_of(path)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_names_real_transformers_classes_and_known_capabilities(name: str) -> None:
    spec = FAMILIES[name]
    assert spec.name == name
    assert hasattr(transformers, spec.image_class) and hasattr(transformers, spec.video_class)
    assert spec.supports and spec.supports <= CAPABILITIES
    assert spec.released and spec.download and spec.model_types
    assert any(hub_id in spec.download for hub_id in spec.released)
    assert spec.architecture_config is not None and spec.sizes


def test_a_family_with_an_unknown_capability_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown capabilities"):
        dataclasses.replace(FAMILIES["sam2"], supports=frozenset({"points", "telepathy"}))


def test_edgetam_declares_timm_and_a_missing_package_names_what_to_install() -> None:
    assert FAMILIES["edgetam"].requires == ("timm",)
    spec = dataclasses.replace(FAMILIES["edgetam"], requires=("maskloop_no_such_package",))
    with pytest.raises(ModelDependencyError, match=r"EdgeTAM needs .*maskloop_no_such_package.*pip install"):
        spec.check_requirements("yonigozlan/EdgeTAM-hf")


@pytest.mark.parametrize(
    ("file_name", "download"),
    [("edgetam.pt", "hf download yonigozlan/EdgeTAM-hf"), ("sam3.pt", "hf download facebook/sam3")],
)
def test_meta_checkpoints_maskloop_does_not_convert_name_the_transformers_download(
    tmp_path: Path, file_name: str, download: str
) -> None:
    path = tmp_path / file_name
    path.write_bytes(b"x")
    with pytest.raises(ModelNotAvailableError, match=f"does not convert .*{download}"):
        get_segmenter(path, device="cpu")


@pytest.mark.parametrize(
    ("model_id", "download"),
    [
        ("facebook/sam3", "hf download facebook/sam3"),
        ("yonigozlan/EdgeTAM-hf", "hf download yonigozlan/EdgeTAM-hf"),
        ("facebook/sam2.1-hiera-large", "hf download facebook/sam2.1-hiera-tiny"),
    ],
)
def test_uncached_hub_id_offline_names_the_family_download(tmp_path: Path, model_id: str, download: str) -> None:
    spec = family_by_name(model_id)
    if spec.requires:  # EdgeTAM without timm stops earlier, at the missing package
        pytest.importorskip(spec.requires[0])
    with pytest.raises(ModelNotAvailableError) as info:
        get_segmenter(model_id, device="cpu", local_files_only=True, cache_dir=tmp_path)
    assert model_id in str(info.value) and download in str(info.value)


def test_get_segmenter_builds_each_family_with_lineage_from_the_weights(tmp_path: Path) -> None:
    clear_cache()
    sam2_dir = save_tiny_sam2(tmp_path / "tiny-sam2")
    sam3_dir = save_tiny_sam3(tmp_path / "tiny-sam3")
    sam2 = get_segmenter(sam2_dir, device="cpu")
    sam3 = get_segmenter(sam3_dir, device="cpu")
    assert isinstance(sam2, Segmenter) and type(sam2.model).__name__ == "Sam2Model"
    assert isinstance(sam3, ConceptSegmenter) and type(sam3.model).__name__ == "Sam3Model"
    for seg, path in ((sam2, sam2_dir), (sam3, sam3_dir)):
        model_id, sha = checkpoint_identity(path)
        assert (seg.model_id, seg.checkpoint_sha256) == (model_id, sha)
        assert seg.model_version == f"{model_id}@{sha[:8]}"
    assert get_segmenter(sam3_dir, device="cpu") is sam3
    clear_cache()
    for path, class_name in ((sam2_dir, "Sam2Model"), (sam3_dir, "Sam3Model")):
        loaded = load_pretrained(None, path)  # no class given: the family's
        assert type(loaded.model).__name__ == class_name
        assert loaded.model_version == f"{path.name}@{checkpoint_identity(path)[1][:8]}"


def test_segmenter_refuses_a_sam3_checkpoint_naming_the_concept_strategy(tmp_path: Path) -> None:
    with pytest.raises(ModelCapabilityError, match="SAM 3 checkpoint.*strategy 'concept'"):
        Segmenter.from_pretrained(_config_dir(tmp_path, "sam3"), device="cpu")
