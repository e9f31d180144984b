"""The Label Studio launcher: generated owner-only credentials, real port detection, pid-file stop."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from storage.labelstudio.server import CREDENTIALS_NAME, PID_NAME, LabelStudioServer, _pid_alive

pytestmark = pytest.mark.labelstudio


def test_server_moved_off_the_taken_port_and_reports_the_port_it_really_got(
    label_studio_server: LabelStudioServer, blocked_port: int
) -> None:
    assert label_studio_server.port != blocked_port
    assert httpx.get(f"{label_studio_server.url}/health", timeout=10).status_code == 200
    state = json.loads((label_studio_server.data_dir / PID_NAME).read_text())
    assert state["port"] == label_studio_server.port


def test_credentials_are_generated_owner_only_and_the_token_is_required(label_studio_server: LabelStudioServer) -> None:
    path = label_studio_server.data_dir / CREDENTIALS_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    creds = json.loads(path.read_text())
    assert len(creds["password"]) >= 24 and len(creds["token"]) == 40
    assert creds["token"] not in repr(label_studio_server.credentials)
    url = f"{label_studio_server.url}/api/projects/"
    assert (
        httpx.get(url, headers={"Authorization": f"Token {label_studio_server.token}"}, timeout=10).status_code == 200
    )
    assert httpx.get(url, headers={"Authorization": "Token " + "0" * 40}, timeout=10).status_code == 401
    assert httpx.get(url, timeout=10).status_code == 401


def test_second_server_starts_from_the_template_with_its_own_credentials_and_stops_from_its_pid_file(
    label_studio_server: LabelStudioServer, tmp_path: Path
) -> None:
    other = LabelStudioServer(tmp_path / "ls2").start()
    try:
        assert other.token != label_studio_server.token
        pid = other.pid
        assert pid is not None and _pid_alive(pid)
        # a separate object (e.g. `maskloop stack down` in another process) stops it through the pid file
        LabelStudioServer(tmp_path / "ls2").stop()
        assert not _pid_alive(pid)
        assert not (tmp_path / "ls2" / PID_NAME).exists()
        assert _pid_alive(label_studio_server.pid or -1), "stopping one server must not touch another"
    finally:
        other.stop()


def test_missing_executable_names_the_install_script(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="install_label_studio.sh"):
        LabelStudioServer(tmp_path, executable=tmp_path / "nope").start()
    assert not os.listdir(tmp_path)


# as `label-studio start` does: Label Studio's package folder on sys.path, then the settings Django is told to load
SHOW_MIDDLEWARE = (
    "import os, sys, label_studio; sys.path.insert(0, os.path.dirname(label_studio.__file__)); "
    "from django.conf import settings; print('\\n'.join(settings.MIDDLEWARE))"
)


def test_the_server_runs_label_studios_settings_without_the_analytics_body_parser(
    label_studio_server: LabelStudioServer,
) -> None:
    """The running server's own environment loads, in Label Studio's interpreter, all of Label Studio's settings
    (the middleware its ``label_studio`` settings add is there) less ``ContextLogMiddleware``."""
    import subprocess

    from storage.labelstudio.server_settings import DIR_NAME, DROPPED_MIDDLEWARE, MODULE

    assert label_studio_server.pid is not None
    raw = Path(f"/proc/{label_studio_server.pid}/environ").read_bytes().split(b"\0")
    env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
    assert env["DJANGO_SETTINGS_MODULE"] == MODULE
    written = label_studio_server.data_dir / DIR_NAME / f"{MODULE}.py"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    python = Path(label_studio_server.executable).parent / "python"
    shown = subprocess.run(
        [str(python), "-c", SHOW_MIDDLEWARE],
        env=env,
        cwd=label_studio_server.data_dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert "organizations.middleware.DummyGetSessionMiddleware" in shown, "Label Studio's own settings were loaded"
    assert "core.middleware.DatabaseIsLockedRetryMiddleware" in shown
    assert not set(DROPPED_MIDDLEWARE) & set(shown)
