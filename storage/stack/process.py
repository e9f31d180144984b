"""Background service processes with pid files: start detached, check, stop only what we started."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from model.errors import MaskloopError

log = logging.getLogger(__name__)


class PortInUseError(MaskloopError, RuntimeError):
    def __init__(self, service: str, port: int) -> None:
        super().__init__(
            f"{service}: port 127.0.0.1:{port} is already in use; stop what holds it or choose another port"
        )
        self.service = service
        self.port = port


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_until(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(interval_s)
    raise TimeoutError(f"{what} did not become ready within {timeout_s:.0f} s")


@dataclass
class BackgroundProcess:
    """A detached process whose pid lives in ``pid_file`` and output in ``log_file``."""

    name: str
    pid_file: Path
    log_file: Path

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid if self._alive(pid) else None  # a child of this process that exited is a zombie until reaped

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> int:
        if self.is_running():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid()}, pid file {self.pid_file})")
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log_handle:
            proc = subprocess.Popen(  # noqa: S603 - argv built by us
                list(argv),
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        log.info("started %s (pid %d), log %s", self.name, proc.pid, self.log_file)
        return proc.pid

    def exited_early(self) -> bool:
        return self.pid_file.exists() and not self.is_running()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, timeout_s: float = 20) -> bool:
        """Stop the process group we started; True if something was stopped."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._alive(pid):
            time.sleep(0.2)
        if self._alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)
            if waited == pid:
                return False
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
