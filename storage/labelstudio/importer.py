"""Bulk pre-label import into Label Studio, idempotent through the SQL catalog (the projects it imports into:
:mod:`storage.labelstudio.projects`).

* :func:`import_predictions` -- new assets become tasks with their prediction inline (bulk ``/import`` in batches
  sized by payload); assets already imported get the new model version's prediction added (never a new task, so
  human annotations are never lost). The catalog's ``annotation_tasks`` rows decide what exists. A crash between
  a POST and the catalog commit leaves tasks that the catalog does not know: before posting, when Label Studio has
  more tasks than the catalog, the project's tasks are listed and matched on ``data.maskloop_asset_id`` /
  ``data.maskloop_frame_index``, so a rerun never duplicates them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import httpx
from sqlalchemy import func, select

from storage.annotation.items import ImportItem, ImportReport
from storage.catalog import AnnotationProject, AnnotationTask, Catalog
from storage.labelstudio.client import LabelStudioClient, LabelStudioError
from storage.labelstudio.config import LabelConfig
from storage.labelstudio.payload import (
    ASSET_KEY,
    FRAME_KEY,
    VERSION_KEY,
    as_item,
    batch_indices,
    prediction_json,
    results_for,
    task_json,
)
from storage.labelstudio.projects import project_lock
from storage.s3 import presigned_url_expiry

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_BYTES = 48 * 2**20  # Label Studio fails a POST over ~250 MiB with HTTP 500
DEFAULT_MAX_BATCH_TASKS = 1000


def _known_tasks(
    catalog: Catalog, project: AnnotationProject, asset_ids: Collection[int] | None = None
) -> dict[tuple[int, int], tuple[int, str | None]]:
    """The catalog's tasks of ``project`` (of ``asset_ids`` only, when given): ``(asset, frame) -> (task, version)``."""
    query = select(
        AnnotationTask.asset_id,
        AnnotationTask.frame_index,
        AnnotationTask.external_task_id,
        AnnotationTask.last_model_version,
    ).where(AnnotationTask.project_id == project.id)
    if asset_ids is not None:
        query = query.where(AnnotationTask.asset_id.in_(sorted(set(asset_ids))))
    with catalog.session() as session:
        rows = session.execute(query).all()
    return {(a, f): (t, v) for a, f, t, v in rows}


def _known_count(catalog: Catalog, project: AnnotationProject) -> int:
    with catalog.session() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(AnnotationTask).where(AnnotationTask.project_id == project.id)
            )
            or 0
        )


def _record_tasks(
    catalog: Catalog, project: AnnotationProject, rows: Iterable[tuple[tuple[int, int], int, str, str]]
) -> None:
    """One catalog row per ((asset, frame), task id, model version, media URL), with when that URL expires."""
    with catalog.session() as session:
        session.add_all(
            AnnotationTask(
                asset_id=a,
                frame_index=f,
                project_id=project.id,
                external_task_id=t,
                last_model_version=v,
                media_url_expires_at=presigned_url_expiry(url),
            )
            for (a, f), t, v, url in rows
        )


def _set_versions(catalog: Catalog, project: AnnotationProject, updates: Mapping[tuple[int, int], str]) -> None:
    if not updates:
        return
    with catalog.session() as session:
        rows = session.scalars(
            select(AnnotationTask).where(
                AnnotationTask.project_id == project.id,
                AnnotationTask.asset_id.in_(sorted({asset_id for asset_id, _ in updates})),
            )
        ).all()
        for row in rows:
            version = updates.get((row.asset_id, row.frame_index))
            if version is not None:
                row.last_model_version = version


def reconcile(client: LabelStudioClient, catalog: Catalog, project: AnnotationProject) -> int:
    """Record in the catalog every maskloop task Label Studio has but the catalog lacks; returns how many."""
    known = _known_tasks(catalog, project)
    known_ids = {t for t, _ in known.values()}
    data_key = LabelConfig.parse(project.label_config).data_key
    found: list[tuple[tuple[int, int], int, str, str]] = []
    for task in client.iter_tasks(project.external_project_id):
        data = task.get("data") or {}
        if task["id"] in known_ids or ASSET_KEY not in data:
            continue
        key = (int(data[ASSET_KEY]), int(data.get(FRAME_KEY, -1)))
        if key in known:
            logger.warning(
                "Label Studio task %s duplicates asset %s frame %s (task %s); leaving it",
                task["id"],
                key[0],
                key[1],
                known[key][0],
            )
            continue
        found.append((key, int(task["id"]), str(data.get(VERSION_KEY, "")), str(data.get(data_key, ""))))
        known[key] = (int(task["id"]), None)
    if found:
        _record_tasks(catalog, project, found)
        logger.info("Reconciled %d Label Studio tasks of project %s missing from the catalog", len(found), project.name)
    return len(found)


def _catalog_behind(ls_project: Mapping[str, Any], catalog: Catalog, project: AnnotationProject) -> bool:
    """Label Studio (``ls_project``: its project as just read) has more tasks than the catalog knows of."""
    return int(ls_project.get("task_number") or 0) > _known_count(catalog, project)


def _post_batch(
    client: LabelStudioClient,
    catalog: Catalog,
    project: AnnotationProject,
    body: bytes,
    attempts: int,
    backoff_s: float,
) -> tuple[list[int], int] | None:
    """POST one batch: the created task ids and how many predictions came with them. On a transport error or 5xx,
    wait and return None so the caller reconciles and re-sends."""
    for attempt in range(1, attempts + 1):
        try:
            return client.import_tasks_counted(project.external_project_id, body)
        except (httpx.TransportError, LabelStudioError) as exc:
            if isinstance(exc, LabelStudioError) and exc.status < 500 and exc.status != 429:
                raise
            logger.warning(
                "Label Studio import of %d bytes failed (%s); attempt %d/%d", len(body), exc, attempt, attempts
            )
            time.sleep(backoff_s * 2 ** (attempt - 1))
            if reconcile(client, catalog, project):
                return None
    raise RuntimeError(f"Label Studio import into project {project.name!r} failed {attempts} times")


def import_predictions(
    client: LabelStudioClient,
    catalog: Catalog,
    project: AnnotationProject,
    items: Iterable[ImportItem | Sequence[Any]],
    *,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    max_batch_tasks: int = DEFAULT_MAX_BATCH_TASKS,
    attempts: int = 4,
    backoff_s: float = 1.0,
    set_project_version: bool = True,
    keep_touched: bool = False,
) -> ImportReport:
    """Import pre-labels; every result is validated against the project's config before anything is sent.

    ``items`` are :class:`ImportItem` or tuples ``(asset_id, media_url, instances_or_results, model_version,
    task_score[, frame_index])``. Returns counts of created, skipped, refreshed and reconciled tasks. With
    ``keep_touched``, existing tasks that a person has annotated (or skipped) get no new prediction (``kept``).
    """
    config = LabelConfig.parse(project.label_config)
    todo = [as_item(i) for i in items]
    keys = [i.key for i in todo]
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise ValueError(f"import_predictions got the same (asset_id, frame_index) more than once: {dupes}")
    results = [results_for(item, config) for item in todo]  # validate everything before sending anything

    asset_ids = {item.asset_id for item in todo}
    # the task JSON of the items the catalog has no task of yet is built before taking the project's lock: the next
    # batch's import builds its payload while this one waits for Label Studio
    known = _known_tasks(catalog, project, asset_ids) if todo else {}
    ready = {i: task_json(item, results[i], config.data_key) for i, item in enumerate(todo) if item.key not in known}
    with project_lock(client.url, project.name):
        # one GET per call: the task count (a crashed run's tasks the catalog lacks) and the project's model version
        ls_project = client.get_project(project.external_project_id) if todo else {}
        reconciled = (
            reconcile(client, catalog, project) if todo and _catalog_behind(ls_project, catalog, project) else 0
        )
        known = _known_tasks(catalog, project, asset_ids)
        new_idx = [i for i, item in enumerate(todo) if item.key not in known]
        old_idx = [i for i, item in enumerate(todo) if item.key in known and known[item.key][1] != item.model_version]
        skipped = len(todo) - len(new_idx) - len(old_idx)

        created = batches = restored = 0
        pending = new_idx
        while pending:
            blobs = [ready[i] if i in ready else task_json(todo[i], results[i], config.data_key) for i in pending]
            resend: list[int] = []
            for batch in batch_indices(blobs, max_batch_bytes, max_batch_tasks):
                body = b"[" + b",".join(blobs[b] for b in batch) + b"]"
                posted = _post_batch(client, catalog, project, body, attempts, backoff_s)
                batches += 1
                if posted is None:  # partially applied; reconcile recorded what landed
                    resend.extend(pending[b] for b in batch)
                    continue
                task_ids, predicted = posted
                if len(task_ids) != len(batch):
                    raise RuntimeError(f"Label Studio created {len(task_ids)} tasks for a batch of {len(batch)}")
                _record_tasks(
                    catalog,
                    project,
                    (
                        (todo[pending[b]].key, tid, todo[pending[b]].model_version, todo[pending[b]].media_url)
                        for b, tid in zip(batch, task_ids, strict=True)
                    ),
                )
                created += len(batch)
                if predicted < len(batch):  # each task carries one prediction
                    made = [
                        (tid, todo[pending[b]], results[pending[b]]) for b, tid in zip(batch, task_ids, strict=True)
                    ]
                    restored += _restore_predictions(client, project, made)
            if resend:
                known = _known_tasks(catalog, project, asset_ids)
                reconciled += sum(1 for i in resend if todo[i].key in known)
                stale = [i for i in resend if todo[i].key in known and known[todo[i].key][1] != todo[i].model_version]
                old_idx.extend(stale)
                pending = [i for i in resend if todo[i].key not in known]
            else:
                pending = []

        kept = 0
        if keep_touched and old_idx:
            known = _known_tasks(catalog, project, asset_ids)
            touched = client.touched_task_ids(project.external_project_id, [known[todo[i].key][0] for i in old_idx])
            kept = sum(1 for i in old_idx if known[todo[i].key][0] in touched)
            old_idx = [i for i in old_idx if known[todo[i].key][0] not in touched]
        refreshed = _refresh(
            client, catalog, project, [todo[i] for i in old_idx], [results[i] for i in old_idx], max_batch_tasks
        )
        version = todo[-1].model_version if todo else None
        # Label Studio refuses a version it has no prediction of; a PATCH only when the version changes (not per batch)
        if set_project_version and created + refreshed + skipped and ls_project.get("model_version") != version:
            client.update_project(project.external_project_id, model_version=version)
    report = ImportReport(
        created=created,
        skipped=skipped,
        refreshed=refreshed,
        kept=kept,
        reconciled=reconciled,
        batches=batches,
        restored=restored,
    )
    logger.info("Label Studio import into %s: %s", project.name, report)
    return report


def _restore_predictions(
    client: LabelStudioClient,
    project: AnnotationProject,
    made: Sequence[tuple[int, ImportItem, list[dict[str, Any]]]],
) -> int:
    """Add the prediction of each new task that Label Studio created without it; returns how many.

    Label Studio 1.23 on SQLite retries an import that hit 'database is locked' (another import held the write lock)
    after the first try has already taken the predictions out of the tasks: the retry creates the tasks bare.
    """
    missing = [(tid, item, res) for tid, item, res in made if not client.list_predictions(tid)]
    if not missing:
        return 0
    logger.warning(
        "Label Studio created %d task(s) of project %s without their prediction (tasks %s); adding them",
        len(missing),
        project.name,
        [tid for tid, _, _ in missing],
    )
    client.import_predictions(
        project.external_project_id, [{"task": tid, **prediction_json(item, res)} for tid, item, res in missing]
    )
    still = [tid for tid, _, _ in missing if not client.list_predictions(tid)]
    if still:
        raise RuntimeError(f"Label Studio tasks {still} of project {project.name!r} still have no prediction")
    return len(missing)


def _refresh(
    client: LabelStudioClient,
    catalog: Catalog,
    project: AnnotationProject,
    items: Sequence[ImportItem],
    results: Sequence[list[dict[str, Any]]],
    batch_size: int,
) -> int:
    """Add the new model version's prediction to existing tasks (tasks and their annotations stay untouched)."""
    if not items:
        return 0
    known = _known_tasks(catalog, project, [item.asset_id for item in items])
    done = 0
    for start in range(0, len(items), batch_size):
        chunk = range(start, min(start + batch_size, len(items)))
        preds = [{"task": known[items[i].key][0], **prediction_json(items[i], results[i])} for i in chunk]
        client.import_predictions(project.external_project_id, preds)
        _set_versions(catalog, project, {items[i].key: items[i].model_version for i in chunk})
        done += len(preds)
    return done
