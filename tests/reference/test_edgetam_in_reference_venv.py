"""EdgeTAM runs here only where timm does: timm needs a torchvision that loads, which the project's CPU torch lacks
and the reference venv has. So maskloop's EdgeTAM tests (image segmenter, everything mode, the family's loading
errors) run inside ``.venv-ref`` with this checkout on the path, and must all pass there, none skipped."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.reference.conftest import _require_reference_venv
from tests.reference.harness import REF_PYTHON, REPO_ROOT

REPO = REPO_ROOT


def test_edgetam_tests_pass_in_the_reference_venv_with_none_skipped() -> None:
    _require_reference_venv()
    done = subprocess.run(
        [
            str(REF_PYTHON),
            "-m",
            "pytest",
            "tests/model/test_edgetam.py",
            "--noconftest",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 5, summary
    if "skipped" in summary:
        pytest.fail(f"EdgeTAM tests skipped in the reference venv: {summary}")
