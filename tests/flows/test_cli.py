"""The CLI entry point's process-wide defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flows.cli import main


@pytest.mark.parametrize(("preset", "expected"), [(None, "false"), ("true", "true")])
def test_cli_turns_prefect_server_telemetry_off_unless_the_user_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preset: str | None, expected: str
) -> None:
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "placeholder")  # restored after the test
    if preset is None:
        monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED")
    else:
        monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", preset)
    monkeypatch.setenv("MASKLOOP_DATA_DIR", str(tmp_path))
    assert main(["db", "upgrade"]) == 0
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == expected
