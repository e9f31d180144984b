"""EdgeTAM runs here only where timm does: timm needs a torchvision that loads, which the project's CPU torch lacks
and the reference venv has. So maskloop's EdgeTAM tests run inside ``.venv-ref`` and must all pass there, none
skipped: the model tests (image segmenter, everything mode, video model and session, the tracker, loading errors)
with this checkout on the path, and the end-to-end flow tests (S3 -> EdgeTAM images and video -> Label Studio, real
servers) with maskloop installed in that venv (``scripts/setup.sh --reference``)."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.reference.conftest import _require_reference_venv
from tests.reference.harness import REF_PYTHON, REPO_ROOT

REPO = REPO_ROOT


def _run_in_reference_venv(*args: str, minimum: int) -> None:
    _require_reference_venv()
    done = subprocess.run(
        [str(REF_PYTHON), "-m", "pytest", *args, "-q", "-p", "no:cacheprovider"],
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
    assert passed and int(passed.group(1)) >= minimum, summary
    if "skipped" in summary:
        pytest.fail(f"EdgeTAM tests skipped in the reference venv: {summary}")


def test_edgetam_model_tests_pass_in_the_reference_venv_with_none_skipped() -> None:
    _run_in_reference_venv("tests/model/test_edgetam.py", "--noconftest", minimum=8)


def test_edgetam_prelabels_images_and_videos_end_to_end_in_the_reference_venv() -> None:
    _run_in_reference_venv("tests/flows/test_prelabel_models.py", "-k", "edgetam", minimum=1)
