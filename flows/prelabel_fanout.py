"""Flows ``prelabel-fanout`` and ``prelabel-unit``: scale pre-labelling out across workers (one GPU each).

``prelabel-fanout`` discovers new assets, shards the pending ones into work units in the catalog
(:mod:`storage.leases`) and runs each unit as its own flow run: ``run_deployment`` on ``deployment_name`` (workers
of that deployment's pool pick them up, one GPU each) or, without a deployment, in-process as a subflow per unit.
``prelabel-unit`` claims its unit with a lease (renewed by a heartbeat while it works), runs the same batch pipeline
as ``prelabel`` (fetch → segment → import, overlapped) on the unit's assets and marks the unit done. A unit whose
lease is held by a live worker is skipped.

Takeover: a worker that dies (machine lost, process killed) stops renewing; once its lease expires the unit is free
again, and the next fan-out of the same source (or of a prefix above it) dispatches it anew. The new flow run claims
it (``attempts`` + 1), skips the assets the dead worker already finished (the job covered them) and imports
nothing twice (Label Studio imports are decided by the catalog). Recovery takes at most the lease TTL plus the
fan-out's schedule interval. A unit that already has a dispatched run waiting to start is not dispatched again.

The lease owner names the flow run, the Prefect worker that started it (``PREFECT__WORKER_NAME``, set by Prefect's
workers for their flow runs) and the host and pid of the process, so the catalog says who holds or finished a unit.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import get_run_context
from prefect.task_runners import ThreadPoolTaskRunner

from flows.prelabel import run_batches
from storage import leases
from storage.catalog import Catalog
from storage.settings import Settings
from tasks import prelabel_ops as ops
from tasks.discovery import discover_assets
from tasks.models import Models, model_identity

# Parameters both flows pass through unchanged to the pipeline (JSON-serialisable, so run_deployment can send them).
PIPELINE_DEFAULTS: dict[str, Any] = {
    "classes": None,
    "strategy": "everything",
    "model_id": None,
    "project": "maskloop",
    "batch_size": 32,
    "video_every": 1,
    "video_target_fps": None,
    "key_frame_interval": 30,
    "video_max_frames": None,
    "strategy_params": None,
    "retry_failed": False,
    "lease_ttl_s": 300.0,
    "heartbeat_s": 60.0,
    "gpu_limit": None,
}


def _flow_run_id() -> str:
    return str(get_run_context().flow_run.id)  # type: ignore[union-attr]


def lease_owner(flow_run_id: str) -> str:
    """``flow-run/<id> worker/<name> pid/<host>:<pid>`` (``worker/`` only when a Prefect worker started the run)."""
    parts = [f"flow-run/{flow_run_id}"]
    if worker := os.environ.get("PREFECT__WORKER_NAME"):
        parts.append(f"worker/{worker}")
    parts.append(f"pid/{socket.gethostname()}:{os.getpid()}")
    return " ".join(parts)[:255]


def _params(source: str, options: dict[str, Any], settings: Settings) -> ops.PrelabelParams:
    return ops.PrelabelParams(
        source=source,
        strategy=options["strategy"],
        classes=tuple(options["classes"] or ()),
        model_id=options["model_id"] or settings.model_id,
        project=options["project"],
        batch_size=options["batch_size"],
        video_every=options["video_every"],
        video_target_fps=options["video_target_fps"],
        key_frame_interval=options["key_frame_interval"],
        video_max_frames=options["video_max_frames"],
        strategy_params=dict(options["strategy_params"] or {}),
        retry_failed=bool(options["retry_failed"]),
    )


@flow(name="prelabel-unit", task_runner=ThreadPoolTaskRunner(max_workers=4))  # type: ignore[arg-type]
def prelabel_unit_flow(
    unit_id: int,
    source: str,
    classes: list[str] | None = None,
    strategy: str = "everything",
    model_id: str | None = None,
    project: str = "maskloop",
    batch_size: int = 32,
    video_every: int = 1,
    video_target_fps: float | None = None,
    key_frame_interval: int = 30,
    video_max_frames: int | None = None,
    strategy_params: dict[str, Any] | None = None,
    retry_failed: bool = False,
    lease_ttl_s: float = 300.0,
    heartbeat_s: float = 60.0,
    gpu_limit: str | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Claim work unit ``unit_id`` with a lease and pre-label its assets; skipped when another worker holds it."""
    settings = settings or Settings()
    logger = get_run_logger()
    options = {k: v for k, v in locals().items() if k in PIPELINE_DEFAULTS}
    params = _params(source, options, settings)
    config = leases.LeaseConfig(ttl_s=lease_ttl_s, heartbeat_s=heartbeat_s)
    catalog_url = settings.resolved_database_url
    catalog = Catalog(catalog_url)
    owner = lease_owner(_flow_run_id())
    try:
        lease = leases.claim(catalog, owner, config.ttl_s, unit_id=unit_id)
        if lease is None:
            logger.info("work unit %d is held by a live lease or finished: skipped", unit_id)
            return {"unit_id": unit_id, "claimed": False}
        return _work_on(settings, catalog, lease, params, config, gpu_limit)
    finally:
        catalog.dispose()


def _work_on(
    settings: Settings,
    catalog: Catalog,
    lease: leases.Lease,
    params: ops.PrelabelParams,
    config: leases.LeaseConfig,
    gpu_limit: str | None,
) -> dict[str, Any]:
    logger = get_run_logger()
    run_id = ops.start_run(
        catalog,
        "prelabel-unit",
        {"unit_id": lease.unit_id, "source": params.source, "lease_owner": lease.owner, "attempt": lease.attempt},
        _flow_run_id(),
    )
    started = time.perf_counter()
    counts: dict[str, float] = {**ops.EMPTY_COUNTS}
    status, lineage = "failed", (None, None)
    try:
        with leases.Heartbeat(catalog, lease, config) as beat:
            models = Models.load(settings, params.model_id, params.strategy)
            model_id, sha = str(models.segmenter.model_id), str(models.segmenter.checkpoint_sha256)
            lineage = (model_id, sha)  # type: ignore[assignment]
            job = ops.open_job(catalog, run_id, params, model_id, sha)
            if job.id != lease.job_id:
                raise RuntimeError(
                    f"work unit {lease.unit_id} belongs to pre-label job {lease.job_id}, but this run's project, model "
                    f"and prompts make job {job.id} ({job.model_version}): run it with the fan-out's parameters"
                )
            todo = ops.pending_of(
                catalog, job.id, params.source, retry_failed=params.retry_failed, among=lease.asset_ids
            )
            counts["assets"] = len(todo)
            batches = ops.batches_of(catalog, todo, params.batch_size)
            run_batches(settings, catalog.url, run_id, batches, params, job.model_version, counts, gpu_limit)
        if beat.lost.is_set():
            raise RuntimeError(f"lost the lease on work unit {lease.unit_id} while working; another worker has it")
        if not leases.finish(catalog, beat.lease):
            raise RuntimeError(f"work unit {lease.unit_id} was taken over before it could be marked done")
        status = "completed"
    except BaseException:
        leases.release(catalog, lease)  # free for the next fan-out at once (no-op if the lease was lost)
        raise
    finally:
        elapsed = time.perf_counter() - started
        timings = ops.stage_timings(counts, elapsed)
        ops.finish_run(catalog, run_id, status, counts, timings, *lineage)
    logger.info("work unit %d (attempt %d): %s", lease.unit_id, lease.attempt, counts)
    return {"unit_id": lease.unit_id, "claimed": True, "run_id": run_id, "attempt": lease.attempt, **counts}


@flow(name="prelabel-fanout")
def prelabel_fanout_flow(
    source: str,
    unit_size: int = 256,
    deployment_name: str | None = None,
    limit: int | None = None,
    classes: list[str] | None = None,
    strategy: str = "everything",
    model_id: str | None = None,
    project: str = "maskloop",
    batch_size: int = 32,
    video_every: int = 1,
    video_target_fps: float | None = None,
    key_frame_interval: int = 30,
    video_max_frames: int | None = None,
    strategy_params: dict[str, Any] | None = None,
    retry_failed: bool = False,
    lease_ttl_s: float = 300.0,
    heartbeat_s: float = 60.0,
    gpu_limit: str | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Shard the pending assets of ``source`` into units of ``unit_size`` and run one ``prelabel-unit`` per free
    unit at or under ``source`` (new ones, and those whose holder's lease expired): through ``deployment_name``
    (e.g. ``"prelabel-unit/prelabel-unit-gpu"``; returns once they are scheduled, leaving out units that already
    have a run of that deployment waiting to start) or in-process one after another when it is None (returns their
    results). ``source`` may be a single object (``prelabel-on-upload``): it is then a unit of its own."""
    settings = settings or Settings()
    logger = get_run_logger()
    options = {k: v for k, v in locals().items() if k in PIPELINE_DEFAULTS}
    params = _params(source, options, settings)  # validate before any work
    leases.LeaseConfig(ttl_s=lease_ttl_s, heartbeat_s=heartbeat_s)
    catalog = Catalog(settings.resolved_database_url)
    try:
        # the job (project, model version, prompts) from the weight files: the dispatcher need not load the model
        job = ops.open_job(catalog, None, params, *model_identity(params.model_id))
        discover_assets(settings, source)
        pending = ops.pending_of(catalog, job.id, source, limit, retry_failed=params.retry_failed)
        new_units = leases.shard_pending(catalog, source, pending, unit_size, job_id=job.id)
        units = leases.free_unit_ids(catalog, source, job_id=job.id)
    finally:
        catalog.dispose()
    logger.info("%s, job %d: %d new units, %d free units to run", source, job.id, len(new_units), len(units))
    if deployment_name:
        from prefect.deployments import run_deployment

        queued = _queued_units(deployment_name) & set(units)
        if queued:
            logger.info("%d units already have a run waiting to start: not dispatched again", len(queued))
            units = [u for u in units if u not in queued]
        runs = [
            run_deployment(
                deployment_name,
                parameters={"unit_id": unit, "source": source, **options},
                timeout=0,
                as_subflow=False,
                idempotency_key=f"prelabel-unit-{_flow_run_id()}-{unit}",
            )
            for unit in units
        ]
        return {
            "job_id": job.id,
            "units": units,
            "new_units": new_units,
            "already_queued": sorted(queued),
            "flow_runs": [str(r.id) for r in runs],  # type: ignore[union-attr]
        }
    results = [prelabel_unit_flow(unit, source, settings=settings, **options) for unit in units]
    return {"job_id": job.id, "units": units, "new_units": new_units, "results": results}


def _queued_units(deployment_name: str, page: int = 200) -> set[int]:
    """Unit ids of the runs of ``deployment_name`` that wait to start (state type SCHEDULED: scheduled, late,
    awaiting a concurrency slot or a retry): each will claim its unit, so dispatching it again would only add a run
    that finds the unit taken. Started runs do not count: a live one holds its unit's lease (the unit is not free),
    and one whose process died stays RUNNING in Prefect while its expired lease makes the unit free for takeover."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    queued: set[int] = set()
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(deployment_name)
        waiting = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])))
        offset = 0
        while True:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=waiting,
                sort=FlowRunSort.ID_DESC,
                limit=page,
                offset=offset,
            )
            queued.update(int(r.parameters["unit_id"]) for r in runs if "unit_id" in r.parameters)
            if len(runs) < page:
                return queued
            offset += page
