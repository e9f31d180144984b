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


def logged_in_page(browser: Any, url: str, username: str, password: str) -> tuple[Any, list[str]]:
    """A 1400x1000 page of ``browser`` logged in to the Label Studio at ``url``, and the list its page errors are
    appended to (slow default timeout: the dev server serves its bundles slowly on a loaded machine)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(90_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)[:300]))
    page.goto(f"{url}/user/login/")
    page.fill("input[name=email]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda current: "/user/login" not in current)
    return page, errors
