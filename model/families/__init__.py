"""Model families: a name -> :class:`FamilySpec` table, the one place that lists the checkpoints maskloop runs.

``--model`` / ``MASKLOOP_MODEL_ID`` names a checkpoint (hub id, transformers-format directory or Meta ``.pt``);
:func:`family_of` says which family it is (``config.json`` ``model_type`` where there is one, else the name), and
:mod:`model.cache` / :mod:`model.segmenter` build it through the family's spec. Lineage is family-agnostic:
``{model_id}@{checkpoint sha256[:8]}`` (:mod:`model.loading`).

Adding a family is one module in this package (its ``SPEC``) plus one line in :data:`FAMILIES`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from model.errors import ModelNotAvailableError
from model.families import edgetam, sam2, sam3
from model.families.spec import CAPABILITIES, FamilySpec

logger = logging.getLogger(__name__)

FAMILIES: dict[str, FamilySpec] = {
    "sam2": sam2.SPEC,
    "sam3": sam3.SPEC,
    "edgetam": edgetam.SPEC,
}
DEFAULT_FAMILY = "sam2"

__all__ = ["CAPABILITIES", "FAMILIES", "FamilySpec", "family_by_name", "family_of", "get_family"]


def get_family(name: str) -> FamilySpec:
    spec = FAMILIES.get(name)
    if spec is None:
        raise ValueError(f"model family must be one of {', '.join(FAMILIES)}, got {name!r}")
    return spec


def family_by_name(name: str) -> FamilySpec:
    """The family a hub id or file name names (no I/O): the first family with a matching name token, else SAM 2."""
    lowered = name.lower()
    for spec in FAMILIES.values():
        if any(token in lowered for token in spec.name_tokens):
            return spec
    return FAMILIES[DEFAULT_FAMILY]


def family_of_model_type(model_type: str, where: str) -> FamilySpec:
    for spec in FAMILIES.values():
        if model_type in spec.model_types:
            return spec
    known = sorted(t for spec in FAMILIES.values() for t in spec.model_types)
    raise ModelNotAvailableError(
        f"{where}: config.json has model_type {model_type!r}, which is no model family maskloop runs "
        f"(known model types: {', '.join(known)})"
    )


def _config_model_type(config: Path) -> str:
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(f"{config}: not a readable config.json ({exc})") from exc
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if not isinstance(model_type, str):
        raise ModelNotAvailableError(f"{config}: config.json has no model_type; expected save_pretrained output")
    return model_type


def family_of(source: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None) -> FamilySpec:
    """The family of a checkpoint: a directory by its ``config.json`` ``model_type``; a ``.pt``/``.pth`` file by
    its name (``edgetam.pt``, ``sam3.pt``, ``sam2.1_hiera_tiny.pt``); a hub id by the cached ``config.json`` when
    the snapshot is in the local cache, else by its name. Unknown names fall back to SAM 2."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise ModelNotAvailableError(
                f"{path} has no config.json; expected a transformers-format directory (save_pretrained output)"
            )
        return family_of_model_type(_config_model_type(config), str(path))
    if path.suffix in {".pt", ".pth"}:
        return family_by_name(path.name)
    cached = _cached_config(text, cache_dir)
    if cached is not None:
        return family_of_model_type(_config_model_type(cached), text)
    return family_by_name(text)


def _cached_config(model_id: str, cache_dir: str | os.PathLike[str] | None) -> Path | None:
    if model_id.count("/") != 1 or model_id.startswith((".", "/")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(
            model_id, "config.json", cache_dir=None if cache_dir is None else Path(cache_dir)
        )
    except Exception as exc:  # an invalid repo id: not a hub id, the loader says so
        logger.debug("no cached config for %s (%s)", model_id, exc)
        return None
    return Path(found) if isinstance(found, str) else None
