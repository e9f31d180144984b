"""The local stack's S3 server (real SeaweedFS process), its credentials and its pid-file discipline."""

from __future__ import annotations

import socket
import stat
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from storage.s3 import ensure_bucket, list_objects, make_client
from storage.settings import Settings
from storage.stack.credentials import load_or_create_credentials
from storage.stack.process import PortInUseError
from storage.stack.seaweed import SeaweedS3


def _free_port_below(limit: int = 50000) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port < limit:
            return port


def _seaweed(data_dir: Path) -> SeaweedS3:
    ports = {name: _free_port_below() for name in ("master", "volume", "filer")}
    return SeaweedS3(data_dir, load_or_create_credentials(data_dir), port=_free_port_below(), extra_ports=ports)


def test_credentials_are_generated_once_and_owner_only(tmp_path: Path) -> None:
    first = load_or_create_credentials(tmp_path)
    assert stat.S_IMODE((tmp_path / "credentials.json").stat().st_mode) == 0o600
    assert load_or_create_credentials(tmp_path) == first
    other = load_or_create_credentials(tmp_path / "other")
    assert other.s3_secret_access_key != first.s3_secret_access_key
    assert first.s3_secret_access_key not in repr(first)


def test_group_readable_credentials_file_is_refused(tmp_path: Path) -> None:
    load_or_create_credentials(tmp_path)
    (tmp_path / "credentials.json").chmod(0o644)
    with pytest.raises(PermissionError, match="owner-only"):
        load_or_create_credentials(tmp_path)


def test_seaweed_serves_sigv4_s3_with_generated_credentials_and_stops(tmp_path: Path) -> None:
    server = _seaweed(tmp_path)
    server.start()
    try:
        good = Settings(
            data_dir=tmp_path,
            s3_endpoint_url=server.endpoint_url,
            s3_access_key_id=server.credentials.s3_access_key_id,
            s3_secret_access_key=server.credentials.s3_secret_access_key,
        )
        client = make_client(good)
        ensure_bucket(client, "demo")
        client.put_object(Bucket="demo", Key="x/a.png", Body=b"png")
        assert [o.key for o in list_objects(client, "demo")] == ["x/a.png"]
        wrong = make_client(Settings.model_validate({**good.model_dump(), "s3_secret_access_key": "not-the-secret"}))
        with pytest.raises(ClientError):
            wrong.list_objects_v2(Bucket="demo")
    finally:
        assert server.stop() is True
    assert not server.process.is_running()
    assert server.stop() is False  # nothing of ours left to stop


def test_port_in_use_is_reported_not_moved(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = SeaweedS3(tmp_path, load_or_create_credentials(tmp_path), port=port)
        with pytest.raises(PortInUseError, match=str(port)):
            server.start()
    assert not server.process.pid_file.exists()


def test_stop_without_start_leaves_foreign_processes_alone(tmp_path: Path) -> None:
    server = SeaweedS3(tmp_path / uuid.uuid4().hex, load_or_create_credentials(tmp_path))
    assert server.stop() is False
