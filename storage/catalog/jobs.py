"""Pre-label jobs: pending work keyed by (target project, model version, prompts), not by a global asset status.

A *job* is what one ``maskloop prelabel`` asks for: pre-label the current asset revisions under a source into one
project with one model version and one prompt configuration (strategy, classes, strategy parameters, video
sampling). Its ``model_version`` is the annotation backend's ``model_version``: ``<model>@<sha8>/<strategy>``, with
``+<prompt hash>`` when the prompts differ from the strategy's defaults, so two prompt configurations of one model
never share predictions. ``job_assets`` holds, per job, the asset revisions it covered (``done``) or could not
(``failed``, with the stage, the reason and whether the failure is ``transient`` — I/O, servers, memory: the next run
of the job tries again — or ``permanent`` — corrupt media, a deleted object: only ``--retry-failed`` tries again).

So the same bucket can feed several projects, models and prompt sets, each finding all of its own work, and a rerun
of an unchanged job finds nothing left to do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, exists, func, not_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.catalog.db import Catalog
from storage.catalog.models import Asset, JobAsset, PrelabelJob, Run, utcnow
from storage.s3 import parse_s3_uri

FailureKind = Literal["transient", "permanent"]
FAILURE_KINDS: tuple[FailureKind, ...] = ("transient", "permanent")


# -- pure parts -----------------------------------------------------------------------------------------------------
def prompt_hash(prompts: Mapping[str, Any]) -> str | None:
    """Eight hex digits of the canonical JSON of ``prompts`` (only the settings that differ from the strategy's
    defaults), or None when there are none: the plain ``<model>@<sha8>/<strategy>`` version stays what it was."""
    if not prompts:
        return None
    canonical = json.dumps(prompts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def merge_sources(sources: Sequence[str], source: str) -> list[str]:
    """``sources`` plus ``source``, keeping only the widest prefixes (an on-upload run's single object under a
    fan-out's prefix adds nothing), in the order first seen."""
    if any(source.startswith(s) for s in sources):
        return list(sources)
    return [s for s in sources if not s.startswith(source)] + [source]


@dataclass(frozen=True)
class JobSpec:
    """What identifies a job: the target project and the full model version (which carries the prompt hash)."""

    project: str
    model_version: str
    model_id: str
    checkpoint_sha256: str
    strategy: str
    prompts: Mapping[str, Any]
    model_uri: str = ""  # what was asked to load (hub id, directory, .pt), for commands that reuse the model

    def __post_init__(self) -> None:
        empty = [n for n in ("project", "model_version", "model_id", "strategy") if not getattr(self, n)]
        if empty:
            raise ValueError(f"JobSpec needs non-empty {empty}")


@dataclass(frozen=True)
class JobSummary:
    """One job as ``maskloop jobs list/show`` prints it."""

    id: int
    project: str
    model_version: str
    sources: tuple[str, ...]
    covered: int
    pending: int
    failed_transient: int
    failed_permanent: int
    runs: int
    created_at: Any
    updated_at: Any


# -- jobs -----------------------------------------------------------------------------------------------------------
def open_job(catalog: Catalog, spec: JobSpec, source: str) -> int:
    """The id of the job ``spec`` (created when new; ``source`` is added to the sources it has run on)."""
    for _attempt in range(3):
        try:
            with catalog.session() as session:
                job = session.scalar(
                    select(PrelabelJob).where(
                        PrelabelJob.project == spec.project, PrelabelJob.model_version == spec.model_version
                    )
                )
                if job is None:
                    job = PrelabelJob(
                        project=spec.project,
                        model_version=spec.model_version,
                        model_id=spec.model_id,
                        checkpoint_sha256=spec.checkpoint_sha256,
                        model_uri=spec.model_uri or spec.model_id,
                        strategy=spec.strategy,
                        prompts=dict(spec.prompts),
                        sources=[source],
                    )
                    session.add(job)
                else:
                    job.sources = merge_sources(job.sources, source)
                    job.model_uri = spec.model_uri or job.model_uri
                job.updated_at = utcnow()
                session.flush()
                return job.id
        except IntegrityError:  # another run created the same job at the same moment: read it back
            continue
    raise RuntimeError(f"could not create the pre-label job for {spec.project!r} / {spec.model_version!r}")


def project_model(catalog: Catalog, project: str) -> str | None:
    """The model that last pre-labelled ``project`` (a job's project, or its annotation project ``<project>
    (images)`` / ``(videos)`` / ``(video frames)``), as it was asked for (hub id, directory or .pt); None when no job targeted it."""
    from storage.annotation.projects import job_project

    names = {project, job_project(project)}
    with catalog.session() as session:
        uri = session.scalar(
            select(PrelabelJob.model_uri)
            .where(PrelabelJob.project.in_(names), PrelabelJob.model_uri != "")
            .order_by(PrelabelJob.updated_at.desc(), PrelabelJob.id.desc())
            .limit(1)
        )
    return str(uri) if uri else None


def attach_run(catalog: Catalog, run_id: int, job_id: int) -> None:
    with catalog.session() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise ValueError(f"run {run_id} does not exist")
        run.job_id = job_id


def job_of_run(session: Session, run_id: int) -> int | None:
    return session.scalar(select(Run.job_id).where(Run.id == run_id))


def _settled(job_id: int, retry_failed: bool) -> Any:
    """Asset revisions the job needs no more work on: done, or failed permanently (unless ``retry_failed``)."""
    settled = JobAsset.status == "done"
    if not retry_failed:
        settled = or_(settled, and_(JobAsset.status == "failed", JobAsset.failure_kind == "permanent"))
    return exists().where(JobAsset.job_id == job_id, JobAsset.asset_id == Asset.id, settled)


def _current_under(bucket: str, prefix: str) -> Any:
    return and_(Asset.bucket == bucket, Asset.key.startswith(prefix, autoescape=True), Asset.status != "superseded")


def pending_asset_ids(
    session: Session,
    job_id: int,
    bucket: str,
    prefix: str = "",
    limit: int | None = None,
    *,
    retry_failed: bool = False,
    among: Sequence[int] | None = None,
) -> list[int]:
    """Current asset revisions under ``prefix`` that job ``job_id`` has not covered yet, oldest first: never tried,
    failed transiently, or (``retry_failed``) failed for good; ``among`` narrows them to a work unit's assets."""
    stmt = select(Asset.id).where(_current_under(bucket, prefix), not_(_settled(job_id, retry_failed)))
    if among is not None:
        stmt = stmt.where(Asset.id.in_(list(among)))
    stmt = stmt.order_by(Asset.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def mark_done(session: Session, job_id: int, run_id: int, asset_ids: Iterable[int]) -> None:
    """Record that the job covered ``asset_ids`` (their annotation tasks carry its predictions)."""
    _upsert(session, job_id, run_id, {a: None for a in asset_ids})


def mark_failed(
    session: Session, job_id: int, run_id: int, stage: str, failures: Mapping[int, tuple[FailureKind, str]]
) -> None:
    """Record the job's failures: asset id -> (kind, reason). A done asset is never turned back into a failure."""
    _upsert(session, job_id, run_id, dict(failures), stage)


def _upsert(
    session: Session,
    job_id: int,
    run_id: int,
    outcomes: Mapping[int, tuple[FailureKind, str] | None],
    stage: str | None = None,
) -> None:
    if not outcomes:
        return
    rows = {
        r.asset_id: r
        for r in session.scalars(
            select(JobAsset).where(JobAsset.job_id == job_id, JobAsset.asset_id.in_(list(outcomes)))
        )
    }
    now = utcnow()
    for asset_id, failure in outcomes.items():
        row = rows.get(asset_id)
        if row is None:
            row = JobAsset(job_id=job_id, asset_id=asset_id, attempts=0)
            session.add(row)
        elif failure is not None and row.status == "done":
            continue
        if failure is not None and failure[0] not in FAILURE_KINDS:
            raise ValueError(f"failure kind must be one of {FAILURE_KINDS}, got {failure[0]!r}")
        row.status = "done" if failure is None else "failed"
        row.failure_kind, row.reason = (None, None) if failure is None else failure
        row.stage = stage if failure is not None else None
        row.run_id, row.updated_at = run_id, now
        row.attempts = (row.attempts or 0) + 1
    session.flush()


# -- reading --------------------------------------------------------------------------------------------------------
def summaries(catalog: Catalog, job_id: int | None = None) -> list[JobSummary]:
    """Every job (or one) with its covered / pending / failed counts over the current revisions of its sources."""
    with catalog.session() as session:
        stmt = select(PrelabelJob).order_by(PrelabelJob.id)
        if job_id is not None:
            stmt = stmt.where(PrelabelJob.id == job_id)
        out = []
        for job in session.scalars(stmt):
            counts = dict(
                session.execute(
                    select(
                        func.coalesce(JobAsset.failure_kind, JobAsset.status),
                        func.count(JobAsset.id),
                    )
                    .where(JobAsset.job_id == job.id)
                    .group_by(func.coalesce(JobAsset.failure_kind, JobAsset.status))
                )
                .tuples()
                .all()
            )
            pending: set[int] = set()
            for source in job.sources:
                bucket, prefix = parse_s3_uri(source)
                pending.update(pending_asset_ids(session, job.id, bucket, prefix))
            runs = session.scalar(select(func.count(Run.id)).where(Run.job_id == job.id)) or 0
            out.append(
                JobSummary(
                    id=job.id,
                    project=job.project,
                    model_version=job.model_version,
                    sources=tuple(job.sources),
                    covered=int(counts.get("done", 0)),
                    pending=len(pending),
                    failed_transient=int(counts.get("transient", 0)),
                    failed_permanent=int(counts.get("permanent", 0)),
                    runs=int(runs),
                    created_at=job.created_at,
                    updated_at=job.updated_at,
                )
            )
        return out


def failures(catalog: Catalog, job_id: int) -> list[tuple[str, str, str, str]]:
    """(S3 URI, kind, stage, reason) of the job's failed asset revisions, oldest asset first."""
    with catalog.session() as session:
        rows = session.execute(
            select(Asset, JobAsset)
            .join(JobAsset, JobAsset.asset_id == Asset.id)
            .where(JobAsset.job_id == job_id, JobAsset.status == "failed")
            .order_by(Asset.id)
        ).all()
        return [(a.uri, j.failure_kind or "", j.stage or "", j.reason or "") for a, j in rows]
