"""maskloop's one validated settings object (pydantic-settings, env prefix ``MASKLOOP_``).

Built once at the entry point (CLI, flow) and passed down; nothing reads the environment behind its back.
Secrets are ``SecretStr``: their values never appear in ``repr``, logs or Prefect parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    return Path.home() / ".maskloop"


class Settings(BaseSettings):
    """Configuration of one maskloop process. Every field can be set as ``MASKLOOP_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MASKLOOP_", env_file=None, extra="ignore", frozen=True)

    data_dir: Path = Field(
        default_factory=default_data_dir, description="State: SQLite catalog, caches, stack pids, credentials"
    )

    # S3 (any S3-compatible endpoint; None means AWS)
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_max_concurrency: int = Field(default=16, ge=1, le=256)
    s3_retry_attempts: int = Field(
        default=5,
        ge=1,
        le=50,
        description="Calls per S3 request (GET, LIST, ...) on transient errors (5xx, SlowDown, resets, timeouts); "
        "the one retry layer for S3 (storage/retry.py)",
    )
    s3_retry_total_s: float = Field(
        default=30.0, ge=0.0, le=3600.0, description="Time one S3 request may take in all, its retries included"
    )
    s3_read_timeout_s: float = Field(
        default=60.0, gt=0.0, le=3600.0, description="A stalled S3 response fails (and is retried) after this long"
    )
    presign_ttl_s: int = Field(default=7 * 24 * 3600, ge=60, le=7 * 24 * 3600)
    frames_prefix: str = Field(
        default=".maskloop/frames",
        description="Key prefix, in each video's own bucket, of the key-frame JPEGs that the '(video frames)' "
        "Label Studio project shows (<prefix>/<video sha256>/<frame:06d>.jpg); discovery never lists keys under "
        "'.maskloop/'",
    )

    # SQL catalog
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default: SQLite file under data_dir")
    catalog_retry_attempts: int = Field(
        default=8,
        ge=1,
        le=100,
        description="Tries of one catalog unit of work when the database is unreachable, restarting or locked",
    )
    catalog_retry_total_s: float = Field(
        default=60.0, ge=0.0, le=3600.0, description="Time one catalog unit of work may wait for the database in all"
    )

    # Label Studio
    label_studio_url: str = "http://127.0.0.1:8080"
    label_studio_token: SecretStr | None = None
    annotation_retry_attempts: int = Field(
        default=8,
        ge=1,
        le=100,
        description="Calls per idempotent annotation-server (Label Studio) request on connection errors, 429 and "
        "502/503/504 (Retry-After honoured)",
    )
    annotation_retry_total_s: float = Field(
        default=90.0,
        ge=0.0,
        le=3600.0,
        description="Time one annotation-server request may take in all, its retries included (covers a restart)",
    )

    # Model
    model_id: str = "facebook/sam2.1-hiera-tiny"
    detector_id: str = "IDEA-Research/grounding-dino-tiny"
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    cpu_threads: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="torch intra-op threads of a worker; default: torch's (all cores). On a CPU-only worker, "
        "cores minus one leaves a core to the download and Label Studio import threads.",
    )

    io_process: bool = Field(
        default=True,
        description="Run the pre-label flow's download and Label Studio import task bodies in a helper process, so "
        "their Python does not take the GIL from the model thread (only for runs of 3 or more batches: smaller runs "
        "end before it would be ready); false runs them in the flow's threads.",
    )
    io_process_wait_s: float = Field(
        default=0.0,
        ge=0.0,
        le=600.0,
        description="How long the pre-label flow's I/O calls may wait, in all, for the helper process to start "
        "(~1 s). 0 never waits: calls run in the flow's threads until it is ready, which suits short runs.",
    )

    @field_validator("frames_prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        prefix = value.strip("/")
        if not prefix or any(part in ("", ".", "..") for part in prefix.split("/")):
            raise ValueError(f"frames_prefix must be an S3 key prefix like '.maskloop/frames', got {value!r}")
        if not prefix.startswith(".maskloop/"):
            # discovery, the poller and upload events skip '.maskloop/': frames elsewhere would come back as images
            raise ValueError(f"frames_prefix must be under '.maskloop/' (discovery skips it), got {value!r}")
        return prefix

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'catalog.sqlite'}"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"
