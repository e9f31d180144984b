"""The invariant every fault case checks afterwards, written once.

For a pre-label job over ``s3://bucket/prefix`` into a Label Studio project:

1. every current revision under the prefix (each listed object's key and ETag) is exactly one catalog asset row;
2. each current revision that is media maskloop can read has exactly one prediction set of the job's model version
   and exactly one Label Studio task (in the catalog and in Label Studio itself, found by ``data.maskloop_asset_id``);
3. every failure row (run failures and the job's failed assets) names its object (an asset with an S3 URI) and a
   reason;
4. nothing is half-written: no run left ``running``, no asset left ``new`` among the current revisions, every job row
   ``done`` has its prediction and task, every catalog task row exists in Label Studio, no prediction whose instance
   count disagrees with its instances, and each revision's recorded sha256 is its object's (never stale or mixed
   bytes).

It returns the counts the figures table needs: assets lost (a readable current revision with no task) and
duplicates (extra tasks, task rows or prediction sets for one asset).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from storage.catalog import (
    AnnotationProject,
    AnnotationTask,
    Asset,
    Catalog,
    JobAsset,
    Prediction,
    Run,
    RunFailure,
)
from storage.labelstudio.client import LabelStudioClient

ASSET_KEY = "maskloop_asset_id"


@dataclass
class Checked:
    current: int = 0  # current revisions under the prefix
    readable: int = 0  # of which maskloop can read (not known-bad media)
    tasks: int = 0  # Label Studio tasks of the project
    lost: int = 0
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)


def check_invariant(
    catalog: Catalog,
    s3: Any,
    ls: LabelStudioClient,
    bucket: str,
    prefix: str,
    project: str,
    *,
    bad: frozenset[str] = frozenset(),
) -> Checked:
    """Check the invariant for ``project (images)`` over ``s3://bucket/prefix``; ``bad`` are keys of objects that are
    not readable media (they must be failure rows, not tasks). Raises AssertionError listing every problem."""
    got = Checked()
    listed = {o["Key"]: o["ETag"].strip('"') for o in _list(s3, bucket, prefix)}
    with catalog.session() as session:
        rows = session.scalars(select(Asset).where(Asset.bucket == bucket, Asset.key.startswith(prefix))).all()
        current = [a for a in rows if a.status != "superseded"]
        by_key = Counter(a.key for a in current)
        got.current = len(listed)
        for key, etag in listed.items():
            mine = [a for a in current if a.key == key]
            if len(mine) != 1 or mine[0].etag != etag:
                got.problems.append(f"s3://{bucket}/{key} (ETag {etag}): {len(mine)} current asset rows {mine!r}")
        got.problems += [f"{n} current rows for s3://{bucket}/{k}" for k, n in by_key.items() if n > 1]
        ls_project = session.scalar(select(AnnotationProject).where(AnnotationProject.name == f"{project} (images)"))
        if ls_project is None:
            raise AssertionError(f"Label Studio project {project!r} (images) was never created")
        job_rows = {
            (j.job_id, j.asset_id): j
            for j in session.scalars(select(JobAsset).where(JobAsset.asset_id.in_([a.id for a in rows])))
        }
        task_rows = Counter(
            t.asset_id
            for t in session.scalars(select(AnnotationTask).where(AnnotationTask.project_id == ls_project.id))
        )
        task_ids = set(
            session.scalars(select(AnnotationTask.external_task_id).where(AnnotationTask.project_id == ls_project.id))
        )
        version = ls_project_version(session, ls_project.id)
        predictions = Counter(
            (p.asset_id, p.model_version, p.frame_index)
            for p in session.scalars(select(Prediction).where(Prediction.asset_id.in_([a.id for a in rows])))
        )
        for p in session.scalars(select(Prediction).where(Prediction.asset_id.in_([a.id for a in rows]))):
            if p.num_instances != len(p.instances):
                got.problems.append(f"prediction {p.id}: num_instances {p.num_instances} != {len(p.instances)}")
        failures = session.execute(select(RunFailure, Asset).join(Asset, Asset.id == RunFailure.asset_id)).all()
        for failure, asset in failures:
            if not failure.reason or not asset.bucket or not asset.key:
                got.problems.append(f"failure row {failure.id} names no object or no reason: {failure.reason!r}")
        orphans = session.scalars(select(RunFailure).where(RunFailure.asset_id.not_in(select(Asset.id)))).all()
        got.problems += [f"failure row {f.id} names no asset" for f in orphans]
        for row in job_rows.values():
            if row.status == "failed" and not row.reason:
                got.problems.append(f"job asset {row.asset_id} failed without a reason")
        running = session.scalars(select(Run).where(Run.status == "running")).all()
        got.problems += [f"run {r.id} ({r.flow_name}) left running" for r in running]

        ls_tasks = list(ls.iter_tasks(ls_project.external_project_id))
        got.tasks = len(ls_tasks)
        in_ls = Counter(int((t.get("data") or {}).get(ASSET_KEY, -1)) for t in ls_tasks)
        missing_in_ls = task_ids - {int(t["id"]) for t in ls_tasks}
        got.problems += [f"catalog task row names Label Studio task {t}, which does not exist" for t in missing_in_ls]
        for asset in current:
            if asset.key not in listed:
                continue
            uri = f"s3://{bucket}/{asset.key}"
            if asset.key in bad:
                if in_ls[asset.id] or task_rows[asset.id]:
                    got.problems.append(f"{uri} is not readable media but has a Label Studio task")
                if asset.status != "failed" or not asset.failure_reason:
                    got.problems.append(f"{uri}: bad media not recorded as failed with a reason ({asset.status})")
                continue
            got.readable += 1
            if asset.sha256 is not None and asset.sha256 != _sha256(s3, bucket, asset.key):
                got.problems.append(f"{uri}: catalog sha256 is not the object's (mixed or stale bytes)")
            if asset.status == "new":
                got.problems.append(f"{uri} left new (never processed)")
            if in_ls[asset.id] == 0 or task_rows[asset.id] == 0:
                got.lost += 1
                got.problems.append(f"{uri}: {in_ls[asset.id]} Label Studio tasks, {task_rows[asset.id]} task rows")
            extra = max(0, in_ls[asset.id] - 1) + max(0, task_rows[asset.id] - 1)
            sets = predictions[(asset.id, version, -1)] if version else 0
            if version and sets != 1:
                got.problems.append(f"{uri}: {sets} prediction sets of {version}")
                extra += max(0, sets - 1)
            if extra:
                got.duplicates += extra
                got.problems.append(f"{uri}: duplicated ({in_ls[asset.id]} tasks, {task_rows[asset.id]} task rows)")
    if got.problems:
        raise AssertionError("invariant broken:\n  " + "\n  ".join(got.problems))
    return got


def ls_project_version(session: Any, project_row_id: int) -> str | None:
    """The model version the project's tasks were last given (all equal in these cases), None when mixed/unknown."""
    versions = set(
        session.scalars(select(AnnotationTask.last_model_version).where(AnnotationTask.project_id == project_row_id))
    )
    return versions.pop() if len(versions) == 1 else None


def _sha256(s3: Any, bucket: str, key: str) -> str:
    return hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def _list(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects += page.get("Contents", [])
    return objects
