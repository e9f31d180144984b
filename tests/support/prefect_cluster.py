"""A real Prefect server (``prefect server start``) and process workers (``prefect worker start``) as subprocesses on
loopback, for the scale-out test and benchmark. Each process gets a session of its own, so it and its children can be
stopped (or killed) as a group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from storage.settings import Settings
from tests.support.servers import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in the repository root, in a new session, with stdout and stderr to ``log``."""
    with open(log, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process group, SIGKILL what is still there after 20 s."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def prefect_server(
    home: Path, extra_env: dict[str, str] | None = None, timeout_s: float = 180
) -> Iterator[tuple[str, dict[str, str]]]:
    """``prefect server start`` on a free loopback port with its own home and SQLite database; yields the API URL and
    the environment that points a client at it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(home / "prefect-home"),
        "PREFECT_API_URL": url,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server = spawn(argv, env, home / "server.log")
    try:
        deadline = time.monotonic() + timeout_s
        while not healthy(url):
            if server.poll() is not None:
                raise RuntimeError(f"prefect server exited: {(home / 'server.log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect server did not answer {url}/health in {timeout_s:.0f} s")
            time.sleep(1)
        yield url, env
    finally:
        stop([server])


def worker_env(server_env: dict[str, str], settings: Settings) -> dict[str, str]:
    """A process worker's environment: the Prefect API, maskloop's settings as MASKLOOP_* variables, one torch
    thread, and a 1 s poll of the work pool (Prefect's default is 10 s)."""

    def secret(value: object) -> str:
        return value.get_secret_value() if value is not None else ""  # type: ignore[attr-defined]

    return {
        **server_env,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "MASKLOOP_DATA_DIR": str(settings.data_dir),
        "MASKLOOP_DATABASE_URL": settings.resolved_database_url,
        "MASKLOOP_S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
        "MASKLOOP_S3_ACCESS_KEY_ID": secret(settings.s3_access_key_id),
        "MASKLOOP_S3_SECRET_ACCESS_KEY": secret(settings.s3_secret_access_key),
        "MASKLOOP_LABEL_STUDIO_URL": settings.label_studio_url,
        "MASKLOOP_LABEL_STUDIO_TOKEN": secret(settings.label_studio_token),
        "MASKLOOP_MODEL_ID": settings.model_id,
        "MASKLOOP_DEVICE": settings.device,
        "OMP_NUM_THREADS": "1",
    }


def process_worker(
    name: str, env: dict[str, str], log: Path, pool: str = "maskloop-process"
) -> subprocess.Popen[bytes]:
    """``prefect worker start`` on ``pool``, one flow run at a time."""
    argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool]
    argv += ["--type", "process", "--limit", "1", "--name", name]
    return spawn(argv, env, log)


def wait_started(log: Path, name: str, timeout_s: float = 120) -> None:
    """Until the worker's log says it started (it then polls its pool)."""
    deadline = time.monotonic() + timeout_s
    while f"Worker {name!r} started" not in (log.read_text(errors="replace") if log.exists() else ""):
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker {name} did not start in {timeout_s:.0f} s: {log.read_text()[-2000:]}")
        time.sleep(0.5)
