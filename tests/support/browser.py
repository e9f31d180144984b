"""Headless Debian Chromium for tests that look at pages (``scripts/install_label_studio.sh`` installs it; Playwright
drives it: never a browser build of Playwright's own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"  # screenshots a person can look at
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
]


def launch_chromium(playwright: Any) -> Any:
    """A headless Chromium browser (closed by the caller); fails with what to install when it is missing."""
    assert CHROMIUM.exists(), (
        "Debian chromium is missing: run scripts/install_label_studio.sh (apt-get install -y chromium)"
    )
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
