"""SQLAlchemy 2 typed models of the maskloop catalog.

Uniqueness constraints carry idempotency: a rerun never inserts a second row for the same asset revision, the
same (asset, annotation project, frame), the same annotation or the same dataset version number.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Asset(Base):
    """One revision of one S3 object. A changed ETag is a new revision (new row, ``revision`` + 1) of the same key."""

    __tablename__ = "assets"
    __table_args__ = (
        UniqueConstraint("bucket", "key", "etag", "size", name="uq_assets_revision"),
        Index("ix_assets_bucket_key", "bucket", "key"),
        Index("ix_assets_status", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(1024))
    etag: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(BigInteger)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    last_modified: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sha256: Mapped[str | None] = mapped_column(String(64))
    media_type: Mapped[str] = mapped_column(String(16))  # "image" | "video"
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    frames: Mapped[int | None] = mapped_column(Integer)
    fps: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="new")  # new | done | failed | superseded
    failure_reason: Mapped[str | None] = mapped_column(Text)
    discovered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class SkippedObject(Base):
    """A listed object that is not an image or video by its content (no media extension, and its first bytes are
    no known signature): counted and listable, and not read again while its ETag stays the same."""

    __tablename__ = "skipped_objects"
    __table_args__ = (UniqueConstraint("bucket", "key", "etag", name="uq_skipped_objects"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(1024))
    etag: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class Run(Base):
    """One flow run: what it was asked, which model did it, how it went."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    flow_name: Mapped[str] = mapped_column(String(64))
    flow_run_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_id: Mapped[str | None] = mapped_column(String(255))
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | completed | failed | crashed
    job_id: Mapped[int | None] = mapped_column(ForeignKey("prelabel_jobs.id", ondelete="SET NULL"), index=True)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class RunFailure(Base):
    """An asset a run could not process, and why (the run and its batch went on)."""

    __tablename__ = "run_failures"
    __table_args__ = (UniqueConstraint("run_id", "asset_id", name="uq_run_failures"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16), default="permanent")  # transient (retried) | permanent
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PrelabelJob(Base):
    """One pre-label job: a target project, a model version and its prompts (``model_version`` carries the prompt
    hash, see :mod:`storage.catalog.jobs`). Pending work is per job, so one bucket can feed many jobs."""

    __tablename__ = "prelabel_jobs"
    __table_args__ = (UniqueConstraint("project", "model_version", name="uq_prelabel_jobs"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[str] = mapped_column(String(255))
    model_id: Mapped[str] = mapped_column(String(255))
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    model_uri: Mapped[str] = mapped_column(String(1024), default="")  # what the user asked to load (hub id, dir, .pt)
    strategy: Mapped[str] = mapped_column(String(32))
    prompts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # classes, strategy params, video sampling
    sources: Mapped[list[Any]] = mapped_column(JSON, default=list)  # the s3:// sources it has run on
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class JobAsset(Base):
    """What one job did with one asset revision: ``done`` (its task carries the job's prediction) or ``failed``
    (``failure_kind`` transient: the next run retries it; permanent: only ``--retry-failed`` does)."""

    __tablename__ = "job_assets"
    __table_args__ = (
        UniqueConstraint("job_id", "asset_id", name="uq_job_assets"),
        Index("ix_job_assets_asset_id", "asset_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("prelabel_jobs.id", ondelete="CASCADE"))
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))  # done | failed
    failure_kind: Mapped[str | None] = mapped_column(String(16))
    stage: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Prediction(Base):
    """The instances one model version produced for one asset (one row per asset, frame and model version).

    ``instances`` holds :meth:`model.instances.Instances.to_records` (COCO RLE, box, label, scores, prompt lineage).
    """

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("asset_id", "model_version", "frame_index", name="uq_predictions"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    model_version: Mapped[str] = mapped_column(String(255))
    frame_index: Mapped[int] = mapped_column(Integer, default=-1)
    instances: Mapped[list[Any]] = mapped_column(JSON, default=list)
    num_instances: Mapped[int] = mapped_column(Integer, default=0)
    score: Mapped[float | None] = mapped_column(Float)  # task-level score (uncertainty: low = review first)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AnnotationProject(Base):
    """One project on one annotation backend (``backend``: a name in :data:`storage.annotation.registry.BACKENDS`,
    at ``backend_url``), holding the tasks of one media kind; ``external_project_id`` is the backend's own id."""

    __tablename__ = "annotation_projects"
    __table_args__ = (UniqueConstraint("backend_url", "name", name="uq_annotation_projects_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    backend: Mapped[str] = mapped_column(String(32), default="label-studio", server_default="label-studio")
    backend_url: Mapped[str] = mapped_column(String(512))
    name: Mapped[str] = mapped_column(String(255))
    external_project_id: Mapped[int] = mapped_column(Integer)
    media_kind: Mapped[str] = mapped_column(String(16))
    classes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    label_config: Mapped[str] = mapped_column(Text)  # the backend's labeling configuration (Label Studio: XML)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    harvested_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # incremental harvest cursor


class AnnotationTask(Base):
    """Asset (or one key frame of a video asset) ↔ the backend's task. Unique: never imported twice."""

    __tablename__ = "annotation_tasks"
    __table_args__ = (
        UniqueConstraint("asset_id", "project_id", "frame_index", name="uq_annotation_tasks_asset"),
        UniqueConstraint("project_id", "external_task_id", name="uq_annotation_tasks_task"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("annotation_projects.id", ondelete="CASCADE"))
    frame_index: Mapped[int] = mapped_column(Integer, default=-1)
    external_task_id: Mapped[int] = mapped_column(Integer)
    last_model_version: Mapped[str | None] = mapped_column(String(255))
    imported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # when the task's media URL (presigned) stops working; None: unknown (imported before it was recorded)
    media_url_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    project: Mapped[AnnotationProject] = relationship()


class Annotation(Base):
    """One human annotation harvested from the annotation backend (final instances as records, like predictions)."""

    __tablename__ = "annotations"
    __table_args__ = (UniqueConstraint("task_row_id", "external_annotation_id", name="uq_annotations"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_row_id: Mapped[int] = mapped_column(ForeignKey("annotation_tasks.id", ondelete="CASCADE"), index=True)
    external_annotation_id: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # accepted | skipped (skip/cancel) | invalid (see skip_reason)
    skip_reason: Mapped[str | None] = mapped_column(Text)
    result: Mapped[list[Any]] = mapped_column(JSON, default=list)  # the backend's raw result
    instances: Mapped[list[Any]] = mapped_column(JSON, default=list)
    content_hash: Mapped[str] = mapped_column(String(64))
    external_updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    harvested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AgreementRow(Base):
    """How one predicted instance fared against the final human instances of one annotation (or one human-added
    instance): outcome ``accepted`` (IoU >= 0.9, same label), ``modified`` (matched, reshaped), ``relabelled``,
    ``deleted`` (prediction without a match) or ``added`` (human instance without a match)."""

    __tablename__ = "agreement_rows"
    __table_args__ = (Index("ix_agreement_rows_group", "model_version", "prompt_strategy", "label"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotations.id", ondelete="CASCADE"), index=True)
    prediction_id: Mapped[int | None] = mapped_column(ForeignKey("predictions.id", ondelete="SET NULL"))
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"))
    frame_index: Mapped[int] = mapped_column(Integer, default=-1)
    model_version: Mapped[str] = mapped_column(String(255))
    prompt_strategy: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(255))  # the human label, else the predicted one
    pred_index: Mapped[int | None] = mapped_column(Integer)
    human_index: Mapped[int | None] = mapped_column(Integer)
    pred_label: Mapped[str | None] = mapped_column(String(255))
    human_label: Mapped[str | None] = mapped_column(String(255))
    iou: Mapped[float] = mapped_column(Float)
    boundary_f: Mapped[float] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetVersion(Base):
    """An immutable frozen dataset. Never updated in place; (dataset, number) unique makes concurrent creation safe."""

    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset", "number", name="uq_dataset_versions_number"),
        UniqueConstraint("dataset", "manifest_hash", name="uq_dataset_versions_manifest"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset: Mapped[str] = mapped_column(String(255))
    number: Mapped[int] = mapped_column(Integer)
    tag: Mapped[str | None] = mapped_column(String(255))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"))
    source_project_id: Mapped[int | None] = mapped_column(ForeignKey("annotation_projects.id"))
    manifest_hash: Mapped[str] = mapped_column(String(64))
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_versions: Mapped[list[Any]] = mapped_column(JSON, default=list)
    agreement: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    coco_uri: Mapped[str | None] = mapped_column(String(1024))
    manifest_uri: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetVersionItem(Base):
    __tablename__ = "dataset_version_items"
    __table_args__ = (UniqueConstraint("version_id", "asset_id", "frame_index", name="uq_dataset_version_items"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id", ondelete="CASCADE"), index=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id"))
    frame_index: Mapped[int] = mapped_column(Integer, default=-1)
    annotation_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id"))
    asset_sha256: Mapped[str] = mapped_column(String(64))
    annotation_hash: Mapped[str] = mapped_column(String(64))


class WorkUnit(Base):
    """A shard of pending assets that one worker processes under a lease (``lease_owner`` until ``lease_expires_at``).

    A free unit (no owner, or an expired lease) can be claimed; a worker that dies stops renewing, its lease expires
    and another worker takes the unit over (``attempts`` + 1). ``status``: pending | done | failed.
    """

    __tablename__ = "work_units"
    __table_args__ = (Index("ix_work_units_claimable", "status", "lease_expires_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(1024))
    job_id: Mapped[int] = mapped_column(Integer, default=0)  # the pre-label job (0: sharded before jobs existed)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WorkUnitAsset(Base):
    """Asset revision ↔ work unit. Unique per (job, asset): within a job an asset revision is in exactly one unit."""

    __tablename__ = "work_unit_assets"
    __table_args__ = (UniqueConstraint("job_id", "asset_id", name="uq_work_unit_assets_job_asset"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("work_units.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[int] = mapped_column(Integer, default=0)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"))
