"""Credentials of the S3 server maskloop starts (Label Studio keeps its own, see storage.labelstudio.server): generated on first start, stored owner-only (0600) in the data dir."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class StackCredentials:
    s3_access_key_id: str
    s3_secret_access_key: str

    def __repr__(self) -> str:  # never show secrets in logs or tracebacks
        return f"StackCredentials(s3_access_key_id={self.s3_access_key_id!r}, s3_secret_access_key='**********')"


def credentials_path(data_dir: Path) -> Path:
    return data_dir / "credentials.json"


def load_or_create_credentials(data_dir: Path) -> StackCredentials:
    """Read the stack's credentials, creating them (random, 0600) on first use. Refuses a group/world-readable file."""
    path = credentials_path(data_dir)
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(f"{path} has mode {oct(mode)}; credentials must be owner-only (chmod 600 {path})")
        return StackCredentials(**json.loads(path.read_text()))
    data_dir.mkdir(parents=True, exist_ok=True)
    creds = StackCredentials(
        s3_access_key_id="ML" + secrets.token_hex(9).upper(),
        s3_secret_access_key=secrets.token_urlsafe(30),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(creds), handle, indent=2)
    return creds
