"""pytest plugin: one real Label Studio server per test session, a CORS-enabled loopback image server, catalogs.

Register with ``pytest_plugins = ["tests.storage.labelstudio.fixtures"]``. The server comes from
``$MASKLOOP_LABEL_STUDIO_BIN`` or ``<repo>/.venv-ls/bin/label-studio`` (``scripts/install_label_studio.sh``).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storage.catalog import Asset, Catalog
from storage.labelstudio.client import LabelStudioClient
from storage.labelstudio.server import LabelStudioServer


@pytest.fixture(scope="session")
def blocked_port() -> Iterator[int]:
    """A loopback port held by a listening socket, so Label Studio must move to another one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def label_studio_server(tmp_path_factory: pytest.TempPathFactory, blocked_port: int) -> Iterator[LabelStudioServer]:
    """The session's Label Studio, started on a port that is already taken (it must detect where it landed)."""
    server = LabelStudioServer(tmp_path_factory.mktemp("label-studio"), port=blocked_port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ls_client(label_studio_server: LabelStudioServer) -> Iterator[LabelStudioClient]:
    with LabelStudioClient(label_studio_server.url, label_studio_server.token) as client:
        yield client


@pytest.fixture
def ls_catalog(tmp_path: Path) -> Iterator[Catalog]:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    try:
        yield catalog
    finally:
        catalog.dispose()


@pytest.fixture
def make_assets(ls_catalog: Catalog) -> Callable[..., list[int]]:
    """``make_assets(n, media_type="image", width=640, height=480)`` -> catalog asset ids."""

    def make(n: int, media_type: str = "image", width: int = 640, height: int = 480) -> list[int]:
        with ls_catalog.session() as session:
            assets = [
                Asset(
                    bucket="raw",
                    key=f"{media_type}/{i:05d}",
                    etag=f"etag{i}",
                    size=1000 + i,
                    media_type=media_type,
                    width=width,
                    height=height,
                )
                for i in range(n)
            ]
            session.add_all(assets)
            session.flush()
            return [a.id for a in assets]

    return make


_CORS_SERVER = """
import functools, sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

class H(SimpleHTTPRequestHandler):
    def end_headers(self):
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()

    def log_message(self, *args):
        pass

httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(H, directory=sys.argv[1]))
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"""


@pytest.fixture(scope="session")
def cors_file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base url, directory): a loopback HTTP server (own process, so the browser is never starved by the test's
    GIL) sending ``Access-Control-Allow-Origin: *`` for its files."""
    root = tmp_path_factory.mktemp("served")
    proc = subprocess.Popen([sys.executable, "-c", _CORS_SERVER, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}", root
    finally:
        proc.terminate()
        proc.wait(10)
