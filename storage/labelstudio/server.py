"""Launch a local Label Studio server (SQLite, loopback only) for tests, the demo and ``maskloop stack up``.

Label Studio lives in its own virtual environment (``<repo>/.venv-ls``, made by ``scripts/install_label_studio.sh``)
because it pins ``label-studio-sdk==2.1.2``; the executable comes from ``MASKLOOP_LABEL_STUDIO_BIN`` or that default.

A fresh SQLite database takes about a minute of migrations, so the first start migrates an empty database once into
a template directory (``<repo>/.data/ls-template/``, keyed by the Label Studio version) and every later start copies
it (a few seconds). The admin user, password and API token are generated per data directory on its first start and
stored owner-only (0600) in ``<data_dir>/credentials.json``; nothing is a fixed password.

SSRF: by default Label Studio refuses to fetch from loopback/private addresses (an S3 endpoint on 127.0.0.1 answers
403 for cloud-storage sync). ``ssrf_protection=False`` sets ``SSRF_PROTECTION_ENABLED=false`` so a local S3 server
can be attached as cloud storage -- acceptable on a loopback-only development server, *not* on a shared deployment
where users could make the server request internal URLs. maskloop's tasks carry presigned S3 URLs that the
annotator's *browser* loads directly, so the pipeline does not need it; the S3 server must then send CORS headers
(``Access-Control-Allow-Origin``) or the editor shows an image load error.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from storage.labelstudio.server_settings import settings_env

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_ENV = "MASKLOOP_LABEL_STUDIO_BIN"
DB_NAME = "label_studio.sqlite3"
CREDENTIALS_NAME = "credentials.json"
PID_NAME = "label-studio.pid"
LOG_NAME = "label-studio.log"
# Variables Label Studio reads with or without a LABEL_STUDIO_ prefix: never inherit them from the caller.
_LS_UNPREFIXED = ("USERNAME", "PASSWORD", "USER_TOKEN", "PORT", "HOST", "DATABASE_NAME", "BASE_DATA_DIR")
_PORT_RE = re.compile(r"(?:Starting development server at http://[^:]+:|Trying to start at )(\d+)")


def default_executable() -> Path:
    """``$MASKLOOP_LABEL_STUDIO_BIN`` or ``<repo>/.venv-ls/bin/label-studio``."""
    return Path(os.environ.get(BIN_ENV) or REPO_ROOT / ".venv-ls" / "bin" / "label-studio")


def default_template_dir() -> Path:
    return REPO_ROOT / ".data" / "ls-template"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    token: str

    @classmethod
    def generate(cls) -> Credentials:
        return cls(f"admin-{secrets.token_hex(4)}@maskloop.local", secrets.token_urlsafe(24), secrets.token_hex(20))

    @classmethod
    def load_or_create(cls, path: Path) -> Credentials:
        if path.exists():
            data = json.loads(path.read_text())
            return cls(data["username"], data["password"], data["token"])
        creds = cls.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"username": creds.username, "password": creds.password, "token": creds.token}, fh)
        return creds

    def __repr__(self) -> str:  # never leak secrets into logs
        return f"Credentials(username={self.username!r}, password='***', token='***')"


def _ls_env(data_dir: Path, creds: Credentials | None, ssrf_protection: bool) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LABEL_STUDIO_", "HEARTEX_")) and k not in _LS_UNPREFIXED
    }
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_DATABASE_NAME=str(data_dir / DB_NAME),
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
        SSRF_PROTECTION_ENABLED="true" if ssrf_protection else "false",
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        PYTHONUNBUFFERED="1",
    )
    env.update(settings_env(data_dir, env.get("PYTHONPATH")))
    if creds is not None:
        env.update(
            LABEL_STUDIO_USERNAME=creds.username,
            LABEL_STUDIO_PASSWORD=creds.password,
            LABEL_STUDIO_USER_TOKEN=creds.token,
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        )
    return env


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LabelStudioServer:
    """One Label Studio process serving ``data_dir`` on 127.0.0.1.

    ``start()`` copies the migrated template into an empty data dir, generates credentials, launches the server in
    its own process group (pid file ``<data_dir>/label-studio.pid``, log ``label-studio.log``), waits until the API
    answers with the token and records the port it really got (Label Studio silently moves to the next free port).
    ``stop()`` terminates only the process group this data dir's pid file names, also from another process
    (``LabelStudioServer(data_dir).stop()`` after ``maskloop stack up``).
    """

    def __init__(
        self,
        data_dir: Path | str,
        port: int | None = None,
        *,
        executable: Path | str | None = None,
        template_dir: Path | str | None = None,
        ssrf_protection: bool = True,
        startup_timeout_s: float = 240.0,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.requested_port = port
        self.executable = Path(executable) if executable else default_executable()
        self.template_dir = Path(template_dir) if template_dir else default_template_dir()
        self.ssrf_protection = ssrf_protection
        self.startup_timeout_s = startup_timeout_s
        self.port: int | None = None
        self._credentials: Credentials | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public ----------------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            self._load_state()
        if self.port is None:
            raise RuntimeError(f"Label Studio at {self.data_dir} is not running (no pid file)")
        return f"http://127.0.0.1:{self.port}"

    @property
    def credentials(self) -> Credentials:
        if self._credentials is None:
            path = self.data_dir / CREDENTIALS_NAME
            if not path.exists():
                raise RuntimeError(f"Label Studio data dir {self.data_dir} has no {CREDENTIALS_NAME}; start() it first")
            self._credentials = Credentials.load_or_create(path)
        return self._credentials

    @property
    def token(self) -> str:
        return self.credentials.token

    @property
    def pid(self) -> int | None:
        state = self._read_pid_file()
        return state["pid"] if state else None

    def start(self) -> LabelStudioServer:
        if not self.executable.exists():
            raise FileNotFoundError(
                f"Label Studio executable {self.executable} not found: run scripts/install_label_studio.sh or set {BIN_ENV}"
            )
        state = self._read_pid_file()
        if state and _pid_alive(state["pid"]):
            self.port = int(state["port"])
            if self._healthy(self.url, self.credentials.token):
                logger.info("Label Studio already running at %s (pid %s)", self.url, state["pid"])
                return self
            raise RuntimeError(f"Label Studio pid {state['pid']} of {self.data_dir} is alive but not answering")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        if not (self.data_dir / DB_NAME).exists():
            template = ensure_template(self.executable, self.template_dir)
            for path in template.glob(f"{DB_NAME}*"):
                shutil.copy2(path, self.data_dir / path.name)
        self._credentials = Credentials.load_or_create(self.data_dir / CREDENTIALS_NAME)
        port = self.requested_port or free_port()
        log_path = self.data_dir / LOG_NAME
        self._proc = _launch(
            self.executable,
            self.data_dir,
            port,
            _ls_env(self.data_dir, self._credentials, self.ssrf_protection),
            log_path,
        )
        try:
            self.port = _wait_ready(self._proc, log_path, port, self._credentials.token, self.startup_timeout_s)
        except BaseException:
            _terminate_group(self._proc.pid)
            raise
        (self.data_dir / PID_NAME).write_text(json.dumps({"pid": self._proc.pid, "port": self.port}))
        logger.info("Label Studio ready at %s (pid %d)", self.url, self._proc.pid)
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        state = self._read_pid_file()
        pid = self._proc.pid if self._proc is not None else (state["pid"] if state else None)
        if pid is not None:
            _terminate_group(pid, timeout_s)
            if self._proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout_s)
        (self.data_dir / PID_NAME).unlink(missing_ok=True)
        self._proc = None
        self.port = None

    def __enter__(self) -> LabelStudioServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------------------------------
    def _read_pid_file(self) -> dict[str, int] | None:
        path = self.data_dir / PID_NAME
        if not path.exists():
            return None
        return {k: int(v) for k, v in json.loads(path.read_text()).items()}

    def _load_state(self) -> None:
        state = self._read_pid_file()
        if state:
            self.port = state["port"]

    @staticmethod
    def _healthy(url: str, token: str) -> bool:
        return _api_ready(url, token)


def _launch(
    executable: Path, data_dir: Path, port: int, env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    cmd = [
        str(executable),
        "start",
        "--no-browser",
        "--data-dir",
        str(data_dir),
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "WARNING",
    ]
    if "LABEL_STUDIO_USERNAME" in env:
        cmd.append("--enable-legacy-api-token")
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=data_dir,
        )
    finally:
        log.close()


def _api_ready(url: str, token: str | None) -> bool:
    try:
        if token is None:
            return httpx.get(f"{url}/health", timeout=2.0).status_code == 200
        r = httpx.get(f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {token}"}, timeout=5.0)
        return r.status_code == 200
    except httpx.HTTPError:
        return False


def _wait_ready(proc: subprocess.Popen[bytes], log_path: Path, port: int, token: str | None, timeout_s: float) -> int:
    """Wait until the server answers; return the port it really bound (parsed from its log)."""
    deadline = time.monotonic() + timeout_s
    offset = log_path.stat().st_size if log_path.exists() else 0
    actual: int | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"Label Studio exited with code {proc.returncode} during start; log tail:\n{tail}")
        text = log_path.read_text(errors="replace")[offset:] if log_path.exists() else ""
        found = _PORT_RE.findall(text)
        if found:
            actual = int(found[-1])
        if (
            "Starting development server" in text
            and actual is not None
            and _api_ready(f"http://127.0.0.1:{actual}", token)
        ):
            return actual
        time.sleep(0.5)
    raise TimeoutError(
        f"Label Studio did not become ready on port {actual or port} within {timeout_s:.0f} s; see {log_path}"
    )


def _terminate_group(pid: int, timeout_s: float = 15.0) -> None:
    """SIGTERM then SIGKILL the process group led by ``pid`` (started with ``start_new_session``)."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid != pid:  # not a group we created: only signal the process itself
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _pid_alive(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def _ls_version(executable: Path) -> str:
    dist = list(executable.parent.parent.glob("lib/python*/site-packages/label_studio-*.dist-info"))
    if dist:
        return dist[0].name.removeprefix("label_studio-").removesuffix(".dist-info")
    return "unknown"


def ensure_template(executable: Path, template_dir: Path, timeout_s: float = 600.0) -> Path:
    """A directory holding a fully migrated, user-less Label Studio SQLite database; built once per LS version."""
    version = _ls_version(executable)
    target = template_dir / version
    if (target / DB_NAME).exists():
        return target
    template_dir.mkdir(parents=True, exist_ok=True)
    with open(template_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / DB_NAME).exists():
            return target
        work = template_dir / f".build-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        logger.info("Migrating a fresh Label Studio %s database into %s (about a minute, once)", version, target)
        log_path = work / LOG_NAME
        proc = _launch(executable, work, free_port(), _ls_env(work, None, True), log_path)
        try:
            _wait_ready(proc, log_path, 0, None, timeout_s)
        finally:
            _terminate_group(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        for path in work.glob(f"{DB_NAME}*"):  # the database plus any -wal/-shm side files
            shutil.copy2(path, target / path.name)
        shutil.rmtree(work, ignore_errors=True)
    return target
