"""pre-label jobs: pending work per (project, model version, prompts); failure kinds; work units per job; objects
skipped as not media

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 03:00:00

Existing data is kept and becomes jobs: every (project, model version) that has Label Studio tasks is a job that
covered those tasks' assets; the pre-label runs that made them (matched on project and model version) give the job
its prompts, sources and runs, and their failures become the job's failures (classified transient or permanent by
their reason). Work units sharded before jobs existed get job 0.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The defaults of the pre-label parameters as of this revision (settings equal to them are not part of a job's key).
_VIDEO_DEFAULTS = {"video_every": 1, "video_target_fps": None, "key_frame_interval": 30, "video_max_frames": None}
_TRANSIENT = re.compile(
    r"SlowDown|InternalError|ServiceUnavailable|RequestTimeout|Timeout|timed out|Connection|EndpointConnection|"
    r"Throttl|\b5\d\d\b|OutOfMemory|out of memory|MemoryError|No such file",
    re.IGNORECASE,
)


def _prompts(params: dict[str, Any]) -> dict[str, Any]:
    prompts: dict[str, Any] = {}
    if params.get("classes"):
        prompts["classes"] = list(params["classes"])
    if params.get("strategy_params"):
        prompts["params"] = dict(params["strategy_params"])
    video = {k: params.get(k, d) for k, d in _VIDEO_DEFAULTS.items() if params.get(k, d) != d}
    if video:
        prompts["video"] = video
    return prompts


def _version(plain: str, prompts: dict[str, Any]) -> str:
    if not prompts:
        return plain
    canonical = json.dumps(prompts, sort_keys=True, separators=(",", ":"), default=str)
    return f"{plain}+{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"


def _project_prefix(name: str) -> str:
    for suffix in (" (images)", " (videos)"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def upgrade() -> None:
    op.create_table(
        "prelabel_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project", sa.String(length=255), nullable=False),
        sa.Column("model_version", sa.String(length=255), nullable=False),
        sa.Column("model_id", sa.String(length=255), nullable=False),
        sa.Column("checkpoint_sha256", sa.String(length=64), nullable=False),
        sa.Column("model_uri", sa.String(length=1024), nullable=False),
        sa.Column("strategy", sa.String(length=32), nullable=False),
        sa.Column("prompts", sa.JSON(), nullable=False),
        sa.Column("sources", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project", "model_version", name="uq_prelabel_jobs"),
    )
    op.create_table(
        "job_assets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("asset_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("failure_kind", sa.String(length=16), nullable=True),
        sa.Column("stage", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["asset_id"], ["assets.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["prelabel_jobs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "asset_id", name="uq_job_assets"),
    )
    op.create_index("ix_job_assets_asset_id", "job_assets", ["asset_id"], unique=False)
    op.create_table(
        "skipped_objects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("etag", sa.String(length=128), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("bucket", "key", "etag", name="uq_skipped_objects"),
    )
    # Plain ADD COLUMN (never a batch copy of ``runs``: on SQLite dropping the old table would cascade into
    # run_failures and null the run of every prediction).
    if op.get_bind().dialect.name == "sqlite":  # SQLite adds a column's foreign key only inline
        op.execute("ALTER TABLE runs ADD COLUMN job_id INTEGER REFERENCES prelabel_jobs (id) ON DELETE SET NULL")
    else:
        op.add_column("runs", sa.Column("job_id", sa.Integer(), nullable=True))
        op.create_foreign_key("fk_runs_job_id", "runs", "prelabel_jobs", ["job_id"], ["id"], ondelete="SET NULL")
    op.create_index("ix_runs_job_id", "runs", ["job_id"], unique=False)
    with op.batch_alter_table("run_failures", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), nullable=False, server_default="permanent"))
    with op.batch_alter_table("work_units", schema=None) as batch_op:
        batch_op.add_column(sa.Column("job_id", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("work_unit_assets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("job_id", sa.Integer(), nullable=False, server_default="0"))
        batch_op.drop_constraint("uq_work_unit_assets_asset", type_="unique")
        batch_op.create_unique_constraint("uq_work_unit_assets_job_asset", ["job_id", "asset_id"])
    _runs_become_jobs(op.get_bind())


def _runs_become_jobs(bind: Any) -> None:
    meta = sa.MetaData()
    runs = sa.Table("runs", meta, autoload_with=bind)
    failures = sa.Table("run_failures", meta, autoload_with=bind)
    projects = sa.Table("label_studio_projects", meta, autoload_with=bind)
    tasks = sa.Table("label_studio_tasks", meta, autoload_with=bind)
    jobs = sa.Table("prelabel_jobs", meta, autoload_with=bind)
    job_assets = sa.Table("job_assets", meta, autoload_with=bind)
    now = datetime.now(UTC)

    for fid, reason in bind.execute(sa.select(failures.c.id, failures.c.reason)).all():
        if _TRANSIENT.search(reason or ""):
            bind.execute(sa.update(failures).where(failures.c.id == fid).values(kind="transient"))

    # (project prefix, plain model version) -> the pre-label runs that wrote it
    made_by: dict[tuple[str, str], list[Any]] = {}
    for run in bind.execute(sa.select(runs).where(runs.c.flow_name == "prelabel").order_by(runs.c.id)).all():
        params = run.parameters if isinstance(run.parameters, dict) else json.loads(run.parameters or "{}")
        if not (run.model_id and run.checkpoint_sha256 and params.get("project")):
            continue
        plain = f"{run.model_id}@{run.checkpoint_sha256[:8]}/{params.get('strategy', 'everything')}"
        made_by.setdefault((params["project"], plain), []).append((run, params))

    covered: dict[tuple[str, str], set[int]] = {}
    rows = bind.execute(
        sa.select(projects.c.name, tasks.c.last_model_version, tasks.c.asset_id).join(
            projects, projects.c.id == tasks.c.project_id
        )
    ).all()
    for name, version, asset_id in rows:
        if version:
            covered.setdefault((_project_prefix(name), version), set()).add(asset_id)

    for key in sorted(set(covered) | set(made_by)):
        project, plain = key
        made = made_by.get(key, [])
        params = made[-1][1] if made else {}
        prompts = _prompts(params)
        head, _, strategy = plain.rpartition("/")
        model_id, _, sha8 = head.rpartition("@")
        job_id = bind.execute(
            sa.insert(jobs).values(
                project=project,
                model_version=_version(plain, prompts),
                model_id=model_id or head,
                checkpoint_sha256=(made[-1][0].checkpoint_sha256 if made else sha8) or "",
                model_uri=params.get("model_id") or model_id or head,
                strategy=strategy or params.get("strategy", ""),
                prompts=prompts,
                sources=sorted({p["source"] for _, p in made if p.get("source")}),
                created_at=now,
                updated_at=now,
            )
        ).inserted_primary_key[0]
        run_ids = [r.id for r, _ in made]
        if run_ids:
            bind.execute(sa.update(runs).where(runs.c.id.in_(run_ids)).values(job_id=job_id))
        done = covered.get(key, set())
        for asset_id in sorted(done):
            bind.execute(
                sa.insert(job_assets).values(
                    job_id=job_id, asset_id=asset_id, status="done", attempts=1, updated_at=now
                )
            )
        failed = bind.execute(sa.select(failures).where(failures.c.run_id.in_(run_ids)).order_by(failures.c.id)).all()
        last = {f.asset_id: f for f in failed if f.asset_id not in done}
        for asset_id, f in sorted(last.items()):
            bind.execute(
                sa.insert(job_assets).values(
                    job_id=job_id,
                    asset_id=asset_id,
                    status="failed",
                    failure_kind=f.kind,
                    stage=f.stage,
                    reason=f.reason,
                    run_id=f.run_id,
                    attempts=1,
                    updated_at=now,
                )
            )


def downgrade() -> None:
    with op.batch_alter_table("work_unit_assets", schema=None) as batch_op:
        batch_op.drop_constraint("uq_work_unit_assets_job_asset", type_="unique")
        batch_op.create_unique_constraint("uq_work_unit_assets_asset", ["asset_id"])
        batch_op.drop_column("job_id")
    with op.batch_alter_table("work_units", schema=None) as batch_op:
        batch_op.drop_column("job_id")
    with op.batch_alter_table("run_failures", schema=None) as batch_op:
        batch_op.drop_column("kind")
    op.drop_index("ix_runs_job_id", table_name="runs")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("job_id")
    op.drop_table("skipped_objects")
    op.drop_index("ix_job_assets_asset_id", table_name="job_assets")
    op.drop_table("job_assets")
    op.drop_table("prelabel_jobs")
