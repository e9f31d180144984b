"""The layout's import rules hold: flows → tasks → model / storage; model/ and storage/ never import Prefect,
flows or tasks; tasks never imports flows."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "model": {"prefect", "flows", "tasks", "storage", "boto3"},
    "storage": {"prefect", "flows", "tasks"},
    "tasks": {"flows"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downward(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
        if imported_roots(path) & FORBIDDEN[package]
    }
    assert offenders == {}, f"{package}/ imports what it must not: {offenders}"


def test_layering_check_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from prefect import flow\nimport flows.cli\n")
    assert imported_roots(bad) == {"prefect", "flows"}


# model/ modules that build or run a network: storage/ gets models injected (e.g. storage.prelabel.predict.Predictor)
RUNNING_MODELS = {
    "model.segmenter",
    "model.tracker",
    "model.cache",
    "model.detector",
    "model.everything",
    "model.autoprompt",
    "model.video_model",
    "model.video_session",
    "model.loading",
    "model.finetune",
    "model.families",
    "model.concept",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_storage_uses_model_data_types_never_a_model_that_runs() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            n for n in imported_modules(path) if any(n == m or n.startswith(m + ".") for m in RUNNING_MODELS)
        )
        for path in sorted((ROOT / "storage").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_storage_never_loads_torch_or_transformers() -> None:
    """storage/ may use model/'s data types and numpy helpers (Instances, masks, tracks, decoders): importing every
    storage module must leave torch and transformers unloaded."""
    import subprocess
    import sys

    modules = sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "storage").rglob("*.py")
        if "migrations" not in path.parts
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
