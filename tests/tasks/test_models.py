"""Models.load: the worker's model settings (threads, shipped ids) take effect when the model is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from storage.settings import Settings
from tasks.models import SHIPPED_MODELS, Models, resolve_model_id


@pytest.fixture()
def restore_threads():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny_models import save_tiny_sam2

    return save_tiny_sam2(tmp_path_factory.mktemp("sam2-tiny"), image_size=64)


def test_cpu_threads_setting_sets_torch_threads_when_the_model_loads(
    tiny_dir: Path, tmp_path: Path, restore_threads: None
) -> None:
    torch.set_num_threads(2)
    Models.load(Settings(data_dir=tmp_path, device="cpu", cpu_threads=1), str(tiny_dir), "everything")
    assert torch.get_num_threads() == 1


def test_without_cpu_threads_torch_keeps_its_thread_count(
    tiny_dir: Path, tmp_path: Path, restore_threads: None
) -> None:
    torch.set_num_threads(2)
    Models.load(Settings(data_dir=tmp_path, device="cpu"), str(tiny_dir), "everything")
    assert torch.get_num_threads() == 2


def test_cpu_threads_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cpu_threads"):
        Settings(data_dir=tmp_path, cpu_threads=0)


def test_shipped_model_names_resolve_to_their_directory_and_others_pass_through() -> None:
    assert resolve_model_id("maskloop/shapes-tiny") == str(SHIPPED_MODELS["maskloop/shapes-tiny"])
    assert resolve_model_id("facebook/sam2.1-hiera-tiny") == "facebook/sam2.1-hiera-tiny"
