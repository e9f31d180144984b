"""``maskloop stack up|down|status``: the local S3 server and Label Studio, started in the background.

``up`` starts what is not running yet and records pid files under ``<data_dir>/stack``; ``down`` stops only
processes whose pid files ``up`` wrote. A port already taken by something else is reported, never silently moved.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.settings import Settings
from storage.stack.credentials import StackCredentials, load_or_create_credentials
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
    def __init__(self, data_dir: Path, *, s3_port: int = 8333, ls_port: int = 8080) -> None:
        self.data_dir = data_dir
        self.credentials: StackCredentials = load_or_create_credentials(data_dir)
        self.s3 = SeaweedS3(data_dir, self.credentials, port=s3_port)
        self.ls_port = ls_port

    def label_studio(self) -> Any:
        from storage.labelstudio.server import LabelStudioServer

        return LabelStudioServer(self.data_dir / "stack" / "label-studio", port=self.ls_port)

    def up(self, label_studio: bool = True) -> list[ServiceStatus]:
        self.s3.start()
        if label_studio:
            ls = self.label_studio()
            if ls.pid is None and port_in_use(self.ls_port):
                raise PortInUseError("Label Studio", self.ls_port)
            ls.start()
        return self.status()

    def down(self) -> list[str]:
        stopped = []
        if label_studio_stop(self):
            stopped.append("label-studio")
        if self.s3.stop():
            stopped.append("s3")
        return stopped

    def status(self) -> list[ServiceStatus]:
        statuses = [ServiceStatus("s3", self.s3.process.is_running() and self.s3.healthy(), self.s3.endpoint_url)]
        try:
            ls = self.label_studio()
            running = ls.pid is not None
            statuses.append(
                ServiceStatus("label-studio", running, ls.url if running else f"http://127.0.0.1:{self.ls_port}")
            )
        except ImportError as error:
            statuses.append(ServiceStatus("label-studio", False, "", f"unavailable: {error}"))
        return statuses

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
