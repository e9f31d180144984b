"""``maskloop stack up|down|status``: the local S3 server, Label Studio and Prefect (server, process worker, S3
poller), started in the background.

``up`` starts what is not running yet and records pid files under ``<data_dir>/stack``; ``down`` stops only
processes whose pid files ``up`` wrote. A port already taken by something else is reported, never silently moved
(the Prefect server, when no port is configured, takes 4200 or else a free port; see
:mod:`storage.stack.prefect_server`). ``up`` and ``status`` restart a Prefect worker or S3 poller that exited.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.settings import Settings
from storage.stack.credentials import StackCredentials, load_or_create_credentials
from storage.stack.prefect_server import WORKER_POOL, WORKER_QUERY_S, PrefectServer, poller, settings_env, worker
from storage.stack.process import PortInUseError, port_in_use
from storage.stack.seaweed import SeaweedS3

log = logging.getLogger(__name__)

DEMO_BUCKET = "maskloop"


@dataclass
class ServiceStatus:
    name: str
    running: bool
    url: str
    detail: str = ""


class Stack:
    def __init__(
        self,
        data_dir: Path,
        *,
        s3_port: int = 8333,
        ls_port: int = 8080,
        prefect_port: int | None = None,
        s3_extra_ports: dict[str, int] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.credentials: StackCredentials = load_or_create_credentials(data_dir)
        self.s3 = SeaweedS3(data_dir, self.credentials, port=s3_port)
        if s3_extra_ports is not None:
            self.s3.extra_ports = dict(s3_extra_ports)
        self.ls_port = ls_port
        self.prefect = PrefectServer(data_dir, prefect_port)
        self.worker = worker(data_dir)
        self.poller = poller(data_dir)

    def label_studio(self) -> Any:
        from storage.labelstudio.server import LabelStudioServer

        return LabelStudioServer(self.data_dir / "stack" / "label-studio", port=self.ls_port)

    def up(self, label_studio: bool = True, prefect: bool = True, base: Settings | None = None) -> list[ServiceStatus]:
        """Start what is not running; ``prefect``: also the Prefect server, its worker and the S3 poller (after S3
        and Label Studio, whose endpoints and credentials the worker's flow runs get)."""
        self.s3.start()
        if label_studio:
            ls = self.label_studio()
            if ls.pid is None and port_in_use(self.ls_port):
                raise PortInUseError("Label Studio", self.ls_port)
            ls.start()
        if prefect:
            self.prefect.start()
        return self.status(base, start=prefect)

    def down(self) -> list[str]:
        stopped = [
            name for name, service in (("s3-poller", self.poller), ("prefect-worker", self.worker)) if service.stop()
        ]
        if self.prefect.stop():
            stopped.append("prefect-server")
        if label_studio_stop(self):
            stopped.append("label-studio")
        if self.s3.stop():
            stopped.append("s3")
        return stopped

    def status(self, base: Settings | None = None, start: bool = False) -> list[ServiceStatus]:
        """What runs; a worker or poller that exited is restarted (``start``: also one that was never started)."""
        statuses = [ServiceStatus("s3", self.s3.process.is_running() and self.s3.healthy(), self.s3.endpoint_url)]
        try:
            ls = self.label_studio()
            running = ls.pid is not None
            statuses.append(
                ServiceStatus("label-studio", running, ls.url if running else f"http://127.0.0.1:{self.ls_port}")
            )
        except ImportError as error:
            statuses.append(ServiceStatus("label-studio", False, "", f"unavailable: {error}"))
        return statuses + self._prefect_status(base, start)

    def _prefect_status(self, base: Settings | None, start: bool) -> list[ServiceStatus]:
        """The Prefect server, worker and poller; the worker and poller are started when ``start`` and restarted
        when they exited (only while the server answers: they have nothing to talk to otherwise)."""
        server_up = self.prefect.running_api_url() is not None
        server = ServiceStatus("prefect-server", server_up, self.prefect.url, f"(UI; API {self.prefect.api_url})")
        env = self.prefect.base_env()
        env.update(settings_env(self.settings(base or Settings(data_dir=self.data_dir))))
        env["PREFECT_WORKER_QUERY_SECONDS"] = str(WORKER_QUERY_S)
        out = [server]
        for name, service, where in (
            ("prefect-worker", self.worker, f"pool {WORKER_POOL}"),
            ("s3-poller", self.poller, "s3.object.created for watched prefixes"),
        ):
            done = service.ensure(env, start=start) if server_up else "stopped"
            running = service.process.is_running()
            detail = "" if done in ("running", "stopped") else f"({done})"
            out.append(ServiceStatus(name, running, where, detail))
        return out

    def settings(self, base: Settings) -> Settings:
        """``base`` with the stack's endpoints and credentials filled in where the user configured none."""
        update: dict[str, Any] = {}
        if base.s3_endpoint_url is None:
            update.update(
                s3_endpoint_url=self.s3.endpoint_url,
                s3_access_key_id=self.credentials.s3_access_key_id,
                s3_secret_access_key=self.credentials.s3_secret_access_key,
            )
        if base.label_studio_token is None:
            ls = self.label_studio()
            if ls.pid is not None:
                update.update(label_studio_url=ls.url, label_studio_token=ls.token)
        return type(base).model_validate({**base.model_dump(), **update}) if update else base


def label_studio_stop(stack: Stack) -> bool:
    try:
        ls = stack.label_studio()
    except ImportError:
        return False
    if ls.pid is None:
        return False
    ls.stop()
    return True
