"""The local stack's Prefect pieces: a Prefect server, a process worker on ``maskloop-process`` and the S3 poller.

- The server (``prefect server start``) keeps its own SQLite database under ``<data_dir>/stack/prefect``, binds
  127.0.0.1 on the configured port, else the port it had last time, else 4200 when free, else a free one (the port it
  got is recorded in ``stack/prefect-server.json``), and sends no telemetry.
- The worker (``prefect worker start --type process``) runs the flow runs of ``maskloop-process`` with the stack's
  settings as ``MASKLOOP_*`` variables (S3 keys and Label Studio token included: a child's environment, never a
  deployment parameter). A hash of those settings is kept, so ``up`` restarts a worker whose settings changed.
- The S3 poller (``python -m flows.s3_poller``) turns new objects under the prefixes that ``s3.object.created`` triggers
  watch into those events: SeaweedFS sends no S3 notifications.

``up``/``status`` restart a worker or poller that exited (its pid file is there, its process is not). Logs go to
``<data_dir>/stack/*.log``. This module starts processes only; it imports neither Prefect nor maskloop's flows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from storage.settings import Settings
from storage.stack.process import BackgroundProcess, PortInUseError, port_in_use, wait_until

log = logging.getLogger(__name__)

PREFECT_PORT = 4200
WORKER_POOL = "maskloop-process"
WORKER_NAME = "maskloop-stack"
POLL_INTERVAL_S = 5.0
# Prefect's worker polls its pool every 10 s by default; 2 s keeps an upload's flow run close to its event.
WORKER_QUERY_S = 2
# Variables that would point the stack's processes at another Prefect than the stack's own server.
_FOREIGN_PREFECT = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_API_DATABASE_CONNECTION_URL")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(api_url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the ``MASKLOOP_*`` variables a worker's flow run reads back (``Settings()``): every field that
    is set, secrets included (a child's environment, never a deployment parameter), the catalog URL resolved."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, bool | dict | list | int | float):
            env[f"MASKLOOP_{name.upper()}"] = json.dumps(value)
        else:
            env[f"MASKLOOP_{name.upper()}"] = str(value)
    env["MASKLOOP_DATABASE_URL"] = settings.resolved_database_url
    return env


class PrefectServer:
    """``prefect server start`` on 127.0.0.1 with its own home and SQLite database under the data dir."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.configured_port = port
        self.root = data_dir / "stack" / "prefect"
        self.state_file = data_dir / "stack" / "prefect-server.json"
        self.process = BackgroundProcess(
            "Prefect server", data_dir / "stack" / "prefect-server.pid", data_dir / "stack" / "prefect-server.log"
        )

    @property
    def port(self) -> int:
        """The port it runs on (or last ran on); else the configured one; else 4200."""
        try:
            return int(json.loads(self.state_file.read_text())["port"])
        except (FileNotFoundError, KeyError, ValueError):
            return self.configured_port or PREFECT_PORT

    @property
    def url(self) -> str:
        """Where the Prefect UI is."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def base_env(self) -> dict[str, str]:
        """The environment of the server and of every process that talks to it."""
        env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_PREFECT}
        env.update(
            PREFECT_HOME=str(self.root / "home"),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        return env

    def _choose_port(self) -> int:
        if self.configured_port is not None:
            if port_in_use(self.configured_port):
                raise PortInUseError("Prefect server", self.configured_port)
            return self.configured_port
        for candidate in dict.fromkeys((self.port, PREFECT_PORT)):
            if not port_in_use(candidate):
                return candidate
        return _free_port()

    def start(self, timeout_s: float = 180) -> None:
        if self.process.is_running():
            return
        port = self._choose_port()
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps({"port": port}))
        env = self.base_env()
        env.update(
            PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{self.root / 'prefect.db'}",
            PREFECT_SERVER_API_HOST="127.0.0.1",
            PREFECT_SERVER_API_PORT=str(port),
            PREFECT_UI_SHOW_PROMOTIONAL_CONTENT="false",
            PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false",
        )
        argv = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        self.process.start(argv, env=env, cwd=self.root)

        def ready() -> bool:
            if self.process.exited_early():
                raise RuntimeError(f"the Prefect server exited during start:\n{self.process.log_tail()}")
            return self.healthy()

        wait_until(ready, timeout_s, f"Prefect server on {self.url}", interval_s=1)

    def healthy(self) -> bool:
        return _healthy(self.api_url)

    def running_api_url(self) -> str | None:
        """The API URL when this data dir's server runs and answers, else None."""
        return self.api_url if self.process.is_running() and self.healthy() else None

    def stop(self) -> bool:
        return self.process.stop()


@dataclass
class StackService:
    """A process of the stack that talks to the stack's Prefect server: the worker or the S3 poller."""

    name: str
    data_dir: Path
    stem: str  # of its pid, log and settings-hash files under <data_dir>/stack
    argv: list[str]
    ready_line: str = ""  # text its log shows once it works

    @property
    def process(self) -> BackgroundProcess:
        stack = self.data_dir / "stack"
        return BackgroundProcess(self.name, stack / f"{self.stem}.pid", stack / f"{self.stem}.log")

    @property
    def fingerprint_file(self) -> Path:
        return self.data_dir / "stack" / f"{self.stem}.json"

    def ensure(self, env: dict[str, str], *, start: bool, timeout_s: float = 120) -> str:
        """Start it when ``start`` (or restart it when it exited or its settings changed); what was done, in words."""
        config = sorted((k, v) for k, v in env.items() if k.startswith(("MASKLOOP_", "PREFECT_")))
        fingerprint = hashlib.sha256(json.dumps(config).encode()).hexdigest()
        process = self.process
        if process.is_running():
            if self._fingerprint() == fingerprint:
                return "running"
            if not start:
                return "running (settings changed since it started; `maskloop stack up` restarts it)"
            process.stop()
            done = "restarted (settings changed)"
        elif process.exited_early():
            log.warning("%s had exited; restarting it. Its log ends:\n%s", self.name, process.log_tail(10))
            done = f"restarted (it had exited; see {process.log_file})"
        elif start:
            done = f"started; log {process.log_file}"
        else:
            return "stopped"
        offset = process.log_file.stat().st_size if process.log_file.exists() else 0
        process.start(self.argv, env=env, cwd=Path(__file__).resolve().parents[2])
        fd = os.open(self.fingerprint_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"settings_sha256": fingerprint}, handle)
        if self.ready_line:

            def ready() -> bool:
                if process.exited_early():
                    raise RuntimeError(f"{self.name} exited during start:\n{process.log_tail()}")
                with open(process.log_file, "rb") as handle:
                    handle.seek(offset)
                    return self.ready_line in handle.read().decode(errors="replace")

            wait_until(ready, timeout_s, self.name)
        return done

    def _fingerprint(self) -> str | None:
        try:
            return str(json.loads(self.fingerprint_file.read_text())["settings_sha256"])
        except (FileNotFoundError, KeyError, ValueError):
            return None

    def stop(self) -> bool:
        self.fingerprint_file.unlink(missing_ok=True)
        return self.process.stop()


def worker(data_dir: Path) -> StackService:
    argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", WORKER_POOL, "--type", "process"]
    argv += ["--name", WORKER_NAME]
    return StackService(
        "Prefect worker", data_dir, "prefect-worker", argv, ready_line=f"Worker '{WORKER_NAME}' started"
    )


def poller(data_dir: Path) -> StackService:
    argv = [sys.executable, "-m", "flows.s3_poller", "--data-dir", str(data_dir), "--interval", str(POLL_INTERVAL_S)]
    return StackService("S3 poller", data_dir, "s3-poller", argv, ready_line="polling")


def stack_api_url(data_dir: Path) -> str | None:
    """The API URL of the stack's Prefect server for ``data_dir`` when it runs and answers, else None."""
    return PrefectServer(data_dir).running_api_url()
