"""Resolve and load model weights of any family (:mod:`model.families`): a transformers-format directory, a Meta
``.pt`` checkpoint (families that convert them), or a hub id.

Every load records the checkpoint's sha256 for lineage. A hub id that is not in the local cache while the hub is
unreachable (or offline mode is on) fails within seconds with :class:`ModelNotAvailableError` saying what to
download and where to put it — no long retries.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from model.errors import ModelNotAvailableError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, Sam2Config

logger = logging.getLogger(__name__)

KNOWN_HUB_IDS = tuple(
    f"facebook/{family}-hiera-{size}"
    for family in ("sam2.1", "sam2")
    for size in ("tiny", "small", "base-plus", "large")
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model plus its lineage: ``model_id`` (hub id, dir or file name) and checkpoint sha256."""

    model: Any
    model_id: str
    checkpoint_sha256: str

    @property
    def model_version(self) -> str:
        return f"{self.model_id}@{self.checkpoint_sha256[:8]}"


def sha256_of_files(paths: Iterable[Path]) -> str:
    """sha256 over the bytes of ``paths`` in sorted order (one file: that file's usual sha256)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _weight_files(directory: Path) -> list[Path]:
    files = [p for p in directory.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file()]
    if not files:
        raise ModelNotAvailableError(
            f"{directory} has no *.safetensors or *.bin weights; expected save_pretrained output"
        )
    return files


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_reachable(timeout_s: float = 3.0) -> tuple[bool, str]:
    """A TCP connect to the hub endpoint (``HF_ENDPOINT``), bounded by ``timeout_s``: (reachable, reason)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True, ""
    except OSError as exc:
        return False, f"cannot connect to {host}:{port} ({exc.__class__.__name__}: {exc})"


def _not_available(model_id: str, cache_dir: Path, reason: str) -> ModelNotAvailableError:
    from model.families import family_by_name

    family = family_by_name(model_id)
    return ModelNotAvailableError(
        f"model {model_id!r} is not in the local Hugging Face cache {cache_dir} and cannot be downloaded: {reason}. "
        f"On a machine with internet access run `hf download {model_id}` (or `huggingface-cli download {model_id}`) "
        f"and copy the resulting models--{model_id.replace('/', '--')} folder into {cache_dir}; or save the model "
        f"with save_pretrained and pass that local path instead of the hub id. For {family.title} that is "
        f"{family.download}."
    )


def checkpoint_identity(
    model_id_or_path: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[str, str]:
    """``(model_id, checkpoint sha256)`` as :func:`load_pretrained` would record them, without building the model:
    hashes the local weights only (a hub id must be in the local cache). For a dispatcher that keys work by model
    version but does not run the model itself."""
    source = str(model_id_or_path)
    path = Path(source).expanduser()
    if path.is_dir():
        return path.name, sha256_of_files(_weight_files(path))
    if path.suffix in {".pt", ".pth"}:
        if not path.is_file():
            raise ModelNotAvailableError(f"checkpoint file {path} does not exist")
        return path.stem, sha256_of_files([path])
    if path.exists() or source.count("/") != 1 or source.startswith((".", "/")):
        raise ModelNotAvailableError(
            f"{source!r} is neither a transformers-format directory, a .pt/.pth checkpoint, nor a hub id 'org/name'"
        )
    from huggingface_hub import constants, snapshot_download

    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    try:
        snapshot = Path(snapshot_download(source, cache_dir=cache, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError
        raise _not_available(source, cache, "it is needed here to name the job's model version") from exc
    return source, sha256_of_files(_weight_files(snapshot))


def load_pretrained(
    model_class: type[PreTrainedModel] | None,
    model_id_or_path: str | os.PathLike[str],
    *,
    config: Any = None,
    local_files_only: bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    hub_timeout_s: float = 3.0,
    convert_state_dict: Any = None,
) -> LoadedModel:
    """Load ``model_class`` from a local directory, a ``.pt``/``.pth`` file (converted with ``convert_state_dict``,
    architecture from ``config``), or a hub id (cache first; download only when the hub answers quickly).
    ``model_class=None`` builds the still-image class of the checkpoint's family (:func:`model.families.family_of`)."""
    source = str(model_id_or_path)
    path = Path(source).expanduser()
    if model_class is None:
        from model.families import family_of

        model_class = family_of(source, cache_dir=cache_dir).model_class()
    if path.is_dir():
        model = model_class.from_pretrained(path, local_files_only=True)
        return LoadedModel(model.eval(), path.name, sha256_of_files(_weight_files(path)))
    if path.suffix in {".pt", ".pth"}:
        if not path.is_file():
            raise ModelNotAvailableError(f"checkpoint file {path} does not exist")
        return _load_torch_checkpoint(model_class, path, config, convert_state_dict)
    if path.exists() or source.count("/") != 1 or source.startswith((".", "/")):
        raise ModelNotAvailableError(
            f"{source!r} is neither a transformers-format directory, a .pt/.pth checkpoint, nor a hub id 'org/name'"
        )
    return _load_from_hub(model_class, source, local_files_only, cache_dir, hub_timeout_s)


def _load_from_hub(
    model_class: type[PreTrainedModel],
    model_id: str,
    local_files_only: bool | None,
    cache_dir: str | os.PathLike[str] | None,
    hub_timeout_s: float,
) -> LoadedModel:
    from huggingface_hub import constants, snapshot_download

    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    try:
        snapshot = Path(snapshot_download(model_id, cache_dir=cache, local_files_only=True))
    except Exception as exc:  # huggingface_hub raises LocalEntryNotFoundError (an OSError/ValueError subclass)
        logger.info("model %s not in cache %s (%s)", model_id, cache, exc.__class__.__name__)
        if local_files_only or (local_files_only is None and is_offline()):
            raise _not_available(model_id, cache, "offline mode (local_files_only / HF_HUB_OFFLINE)") from exc
        reachable, reason = hub_reachable(hub_timeout_s)
        if not reachable:
            raise _not_available(model_id, cache, reason) from exc
        try:
            snapshot = Path(snapshot_download(model_id, cache_dir=cache, etag_timeout=hub_timeout_s))
        except Exception as download_exc:
            raise _not_available(model_id, cache, f"download failed ({download_exc})") from download_exc
    model = model_class.from_pretrained(snapshot, local_files_only=True)
    return LoadedModel(model.eval(), model_id, sha256_of_files(_weight_files(snapshot)))


def _load_torch_checkpoint(
    model_class: type[PreTrainedModel], path: Path, config: Sam2Config | None, convert_state_dict: Any
) -> LoadedModel:
    import torch

    if config is None:
        raise ValueError(f"{path.name}: a .pt checkpoint has no config; pass config= (e.g. sam2_architecture_config)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelNotAvailableError(
            f"{path}: not a readable torch checkpoint ({exc.__class__.__name__}: {exc})"
        ) from exc
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise ModelNotAvailableError(
            f"{path}: expected a state dict or {{'model': state_dict}}, got {type(checkpoint)}"
        )
    if convert_state_dict is not None:
        state_dict = convert_state_dict(state_dict)
    model = model_class(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise ValueError(
            f"{path.name}: checkpoint lacks {len(missing)} weights of {model_class.__name__}, e.g. {missing[:5]}"
        )
    mismatched = [k for k in expected if tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if mismatched:
        k = mismatched[0]
        raise ValueError(
            f"{path.name}: {len(mismatched)} weights do not match the config, e.g. {k}: expected "
            f"{tuple(expected[k].shape)}, got {tuple(state_dict[k].shape)}"
        )
    unused = sorted(set(state_dict) - set(expected))
    if unused:
        logger.debug(
            "%s: %d checkpoint tensors unused by %s (e.g. %s)", path.name, len(unused), model_class.__name__, unused[:3]
        )
    model.load_state_dict({k: state_dict[k] for k in expected}, strict=True)
    return LoadedModel(model.eval(), path.stem, sha256_of_files([path]))
