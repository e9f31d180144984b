"""SQLAlchemy 2 typed models of the active-learning loop's tables: the checkpoints maskloop pre-labels with, the
assets' embeddings, and each round with its scored items (the rest of the catalog: :mod:`storage.catalog.models`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from storage.catalog.models import Base, utcnow


class ModelVersion(Base):
    """A segmentation checkpoint maskloop pre-labels with: a base model, or one the active-learning loop fine-tuned
    (``parent_id`` the model it started from, ``data_version_id`` / ``train_manifest`` what it was trained on,
    ``metrics`` its held-out evaluation). ``name`` is the segmenter's ``<model id>@<sha8>``."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", name="uq_model_versions_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    model_id: Mapped[str] = mapped_column(String(255))
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    uri: Mapped[str] = mapped_column(String(1024))  # where the checkpoint lives (directory, hub id or s3://...)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    data_version_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"))
    train_manifest: Mapped[str | None] = mapped_column(String(64))  # manifest hash of the training split
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AssetEmbedding(Base):
    """A pooled image-encoder embedding of one asset (or video frame) by one model: float32 bytes, ``dim`` values."""

    __tablename__ = "asset_embeddings"
    __table_args__ = (UniqueConstraint("asset_id", "frame_index", "model_version", name="uq_asset_embeddings"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"), index=True)
    frame_index: Mapped[int] = mapped_column(Integer, default=-1)
    model_version: Mapped[str] = mapped_column(String(255))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ActiveLearningRound(Base):
    """One round of the active-learning loop on one annotation project: what it trained, how old and new models
    compared on held-out corrected items, whether the new model took over, and how the pool was re-scored.

    ``metrics`` holds every number of the round (sizes of the splits, old/new mean IoU and accepted-unchanged rate,
    gains, fine-tuning time, re-pre-label and re-score counts) so rounds can be plotted."""

    __tablename__ = "al_rounds"
    __table_args__ = (UniqueConstraint("project_id", "number", name="uq_al_rounds_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("annotation_projects.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    strategy: Mapped[str] = mapped_column(String(32))
    budget: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    base_model_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    new_model_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    promoted: Mapped[bool] = mapped_column(Boolean, default=False)
    data_version_id: Mapped[int | None] = mapped_column(ForeignKey("dataset_versions.id"))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | completed | failed
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ActiveLearningItem(Base):
    """One still-unannotated task's score in one round: its confidence (and the signals behind it), the task score
    written to the annotation backend, its review rank and cluster, and whether the round chose it for review."""

    __tablename__ = "al_round_items"
    __table_args__ = (UniqueConstraint("round_id", "asset_id", "frame_index", name="uq_al_round_items"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("al_rounds.id", ondelete="CASCADE"), index=True)
    asset_id: Mapped[int] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"))
    frame_index: Mapped[int] = mapped_column(Integer, default=-1)
    external_task_id: Mapped[int | None] = mapped_column(Integer)
    model_version: Mapped[str] = mapped_column(String(255))
    confidence: Mapped[float] = mapped_column(Float)
    task_score: Mapped[float] = mapped_column(Float)
    rank: Mapped[int] = mapped_column(Integer)
    cluster: Mapped[int | None] = mapped_column(Integer)
    chosen: Mapped[bool] = mapped_column(Boolean, default=False)
    signals: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
