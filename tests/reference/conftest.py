"""Fixtures of the reference comparison: Meta's answers per released size, computed once per session.

The reference venv (``bash scripts/setup.sh --reference`` -> ``.venv-ref``) is required in CI (``CI`` set); on a
developer machine without it the tests skip, saying how to make it.
"""

from __future__ import annotations

import os

import pytest

from tests.reference.harness import REF_PYTHON, SIZES, Reference, Size, reference_for


def _require_reference_venv() -> None:
    if REF_PYTHON.exists():
        return
    message = f"{REF_PYTHON} is missing: run `bash scripts/setup.sh --reference` (Meta's sam2 in its own venv)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


_CACHE: dict[str, Reference] = {}


def get_reference(size: Size) -> Reference:
    _require_reference_venv()
    if size.name not in _CACHE:
        _CACHE[size.name] = reference_for(size)
    return _CACHE[size.name]


@pytest.fixture(scope="session", params=SIZES, ids=[s.name for s in SIZES])
def reference(request: pytest.FixtureRequest) -> Reference:
    return get_reference(request.param)
