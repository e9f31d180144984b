"""The local stack's Prefect pieces as real processes: the Prefect server (own SQLite database under the data dir,
loopback only, no telemetry), its process worker on ``maskloop-process`` and the S3 poller; logs in the data dir;
``status`` restarts a crashed worker; the CLI uses the stack's server when no PREFECT_API_URL is set; ``down`` stops
them; ``--no-prefect`` starts none of them."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from storage.settings import Settings
from storage.stack.manager import Stack
from storage.stack.prefect_server import WORKER_NAME, WORKER_POOL, PrefectServer, stack_api_url
from storage.stack.process import PortInUseError
from tests.storage.test_stack import _free_port_below
from tests.support.servers import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def _stack(data_dir: Path) -> Stack:
    extra = {name: _free_port_below() for name in ("master", "volume", "filer")}  # SeaweedFS also binds port + 10000
    return Stack(
        data_dir, s3_port=_free_port_below(), ls_port=free_port(), prefect_port=free_port(), s3_extra_ports=extra
    )


def _listen_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port`` (Linux /proc/net/tcp, hex little-endian IPv4)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if int(hex_port, 16) == port and state == "0A":
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def _running(statuses: list[object]) -> dict[str, bool]:
    return {s.name: s.running for s in statuses}  # type: ignore[attr-defined]


def test_stack_up_runs_prefect_server_worker_and_poller_restarts_a_crashed_worker_and_down_stops_them(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    stack = _stack(data)
    try:
        statuses = stack.up(label_studio=False)
        assert _running(statuses) == {
            "s3": True,
            "label-studio": False,
            "prefect-server": True,
            "prefect-worker": True,
            "s3-poller": True,
        }
        api = stack.prefect.api_url
        assert stack_api_url(data) == api and api == f"http://127.0.0.1:{stack.prefect.configured_port}/api"
        assert _listen_addresses(stack.prefect.port) == {"127.0.0.1"}, "the server binds loopback only"
        assert (data / "stack" / "prefect" / "prefect.db").exists(), "its own SQLite database under the data dir"
        server_env = Path(f"/proc/{stack.prefect.process.pid()}/environ").read_bytes().split(b"\0")
        assert b"PREFECT_SERVER_ANALYTICS_ENABLED=false" in server_env, "no telemetry"
        workers = httpx.post(f"{api}/work_pools/{WORKER_POOL}/workers/filter", json={}, timeout=10).json()
        assert WORKER_NAME in {w["name"] for w in workers}, "the worker polls maskloop-process"
        for name in ("prefect-server", "prefect-worker", "s3-poller"):
            assert (data / "stack" / f"{name}.log").stat().st_size > 0, f"{name} logs into the data dir"
        fingerprint = data / "stack" / "prefect-worker.json"  # a hash of settings that include secrets
        assert stat.S_IMODE(fingerprint.stat().st_mode) == 0o600

        crashed = stack.worker.process.pid()
        assert crashed is not None
        os.killpg(crashed, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while stack.worker.process.is_running() and time.monotonic() < deadline:
            time.sleep(0.2)
        status = {s.name: s for s in stack.status()}
        assert status["prefect-worker"].running and "restarted (it had exited" in status["prefect-worker"].detail
        assert stack.worker.process.pid() not in (None, crashed)
        assert "restarted" not in {s.name: s for s in stack.status()}["prefect-worker"].detail, "once"
        changed = Settings(data_dir=data, model_id="another/model")  # flow runs must see the new settings
        status = {s.name: s for s in stack.up(label_studio=False, base=changed)}
        assert status["prefect-worker"].running and status["prefect-worker"].detail == "(restarted (settings changed))"
        worker_env = Path(f"/proc/{stack.worker.process.pid()}/environ").read_bytes().split(b"\0")
        assert b"MASKLOOP_MODEL_ID=another/model" in worker_env

        # a maskloop command with no PREFECT_API_URL works on the stack's server, not a temporary one
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        argv = [sys.executable, "-m", "flows.cli", "--data-dir", str(data), "deploy", "--pools-only"]
        done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "temporary server" not in done.stdout + done.stderr
        assert httpx.get(f"{api}/work_pools/maskloop-gpu", timeout=10).status_code == 200
    finally:
        stopped = stack.down()
    assert {"s3-poller", "prefect-worker", "prefect-server", "s3"} <= set(stopped)
    assert stack_api_url(data) is None
    assert not list((data / "stack").glob("*.pid")), "no process of ours left"
    assert stack.down() == []


def test_no_prefect_starts_no_prefect_server_worker_or_poller_and_status_starts_none(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    try:
        running = _running(stack.up(label_studio=False, prefect=False))
        assert running == {
            "s3": True,
            "label-studio": False,
            "prefect-server": False,
            "prefect-worker": False,
            "s3-poller": False,
        }
        assert not _running(stack.status())["prefect-worker"]
        assert stack_api_url(tmp_path) is None
    finally:
        assert stack.down() == ["s3"]


def test_a_configured_prefect_port_already_taken_is_reported_not_moved(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = PrefectServer(tmp_path, port=port)
        with pytest.raises(PortInUseError, match=f"Prefect server: port 127.0.0.1:{port}"):
            server.start()
    assert not server.process.pid_file.exists()
