"""A test's settings pointed elsewhere: at its own catalog and Label Studio, or (for the ``maskloop`` command run
in-process) at its catalog and S3 server through ``MASKLOOP_*`` variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.labelstudio.server import LabelStudioServer
from storage.settings import Settings


def with_label_studio(settings: Settings, server: LabelStudioServer, database_url: str) -> Settings:
    """``settings`` with the catalog at ``database_url`` and the test Label Studio ``server``."""
    changes = {"database_url": database_url, "label_studio_url": server.url, "label_studio_token": server.token}
    return Settings(**{**settings.model_dump(), **changes})


def point_cli_at(monkeypatch: pytest.MonkeyPatch, catalog_url: str, settings: Settings, data_dir: Path) -> None:
    """``MASKLOOP_*`` variables (undone after the test) for the catalog at ``catalog_url`` and the S3 server of
    ``settings``, with the CLI's own state under ``data_dir``."""
    assert settings.s3_access_key_id is not None and settings.s3_secret_access_key is not None
    for name, value in {
        "MASKLOOP_DATA_DIR": str(data_dir),
        "MASKLOOP_DATABASE_URL": catalog_url,
        "MASKLOOP_S3_ENDPOINT_URL": str(settings.s3_endpoint_url),
        "MASKLOOP_S3_ACCESS_KEY_ID": settings.s3_access_key_id.get_secret_value(),
        "MASKLOOP_S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key.get_secret_value(),
    }.items():
        monkeypatch.setenv(name, value)
