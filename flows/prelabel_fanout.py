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
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import get_run_context
from prefect.task_runners import ThreadPoolTaskRunner

from flows import reconcile
from flows.prelabel import run_batches
from storage import leases
from storage.catalog.runs import recorded_run
from storage.params import FanoutParams, UnitParams
from storage.prelabel import plan
from storage.services import Services
from storage.settings import Settings
from tasks.discovery import discover_assets
from tasks.prelabel import open_job, plan_batches, shard_units


def _flow_run_id() -> str:
    return str(get_run_context().flow_run.id)  # type: ignore[union-attr]


def lease_owner(flow_run_id: str) -> str:
    """``flow-run/<id> worker/<name> pid/<host>:<pid>`` (``worker/`` only when a Prefect worker started the run)."""
    parts = [f"flow-run/{flow_run_id}"]
    if worker := os.environ.get("PREFECT__WORKER_NAME"):
        parts.append(f"worker/{worker}")
    parts.append(f"pid/{socket.gethostname()}:{os.getpid()}")
    return " ".join(parts)[:255]


@dataclass(frozen=True)
class UnitResult:
    unit_id: int
    claimed: bool
    run_id: int | None = None
    attempt: int = 0
    counts: dict[str, float] = field(default_factory=dict)


@flow(name="prelabel-unit", task_runner=ThreadPoolTaskRunner(max_workers=4))  # type: ignore[arg-type]
def prelabel_unit_flow(params: UnitParams, settings: Settings | None = None) -> UnitResult:
    """Claim work unit ``params.unit_id`` with a lease and pre-label its assets; skipped when another worker
    holds it."""
    settings = settings or Settings()
    logger = get_run_logger()
    owner = lease_owner(_flow_run_id())
    with Services(settings) as services:
        lease = leases.claim(services.catalog, owner, params.lease_ttl_s, unit_id=params.unit_id)
        if lease is None:
            logger.info("work unit %d is held by a live lease or finished: skipped", params.unit_id)
            return UnitResult(params.unit_id, claimed=False)
        return _work_on(services, lease, params.with_model(settings.model_id))  # type: ignore[arg-type]


def _work_on(services: Services, lease: leases.Lease, params: UnitParams) -> UnitResult:
    logger = get_run_logger()
    catalog = services.catalog
    recorded = {"unit_id": lease.unit_id, "source": params.source, "lease_owner": lease.owner, "attempt": lease.attempt}
    try:
        with recorded_run(catalog, "prelabel-unit", recorded, _flow_run_id(), plan.EMPTY_COUNTS) as run:
            with leases.Heartbeat(catalog, lease, params.lease_config()) as beat:
                job = open_job(services, run.id, params)
                run.lineage = (job.model_id, job.checkpoint_sha256)
                if job.id != lease.job_id:
                    raise RuntimeError(
                        f"work unit {lease.unit_id} belongs to pre-label job {lease.job_id}, but this run's project, "
                        f"model and prompts make job {job.id} ({job.model_version}): run it with the fan-out's "
                        "parameters"
                    )
                batches = plan_batches(services, job.id, params, among=lease.asset_ids)
                run.counts["assets"] = sum(len(b) for b in batches)
                pipeline = params.pipeline()
                run_batches(services, run.id, batches, pipeline, job.model_version, run.counts, params.gpu_limit)
            if beat.lost.is_set():
                raise RuntimeError(f"lost the lease on work unit {lease.unit_id} while working; another worker has it")
            if not leases.finish(catalog, beat.lease):
                raise RuntimeError(f"work unit {lease.unit_id} was taken over before it could be marked done")
    except BaseException:
        leases.release(catalog, lease)  # free for the next fan-out at once (no-op if the lease was lost)
        raise
    logger.info("work unit %d (attempt %d): %s", lease.unit_id, lease.attempt, run.counts)
    return UnitResult(lease.unit_id, True, run.id, lease.attempt, dict(run.counts))


@dataclass(frozen=True)
class FanoutResult:
    job_id: int
    units: list[int]
    new_units: list[int]
    already_queued: list[int] = field(default_factory=list)
    flow_runs: list[str] = field(default_factory=list)  # dispatched through a deployment
    results: list[UnitResult] = field(default_factory=list)  # run in-process


@flow(name="prelabel-fanout")
def prelabel_fanout_flow(params: FanoutParams, settings: Settings | None = None) -> FanoutResult:
    """Shard the pending assets of ``params.source`` into units of ``unit_size`` and run one ``prelabel-unit`` per
    free unit at or under the source (new ones, and those whose holder's lease expired): through ``deployment_name``
    (e.g. ``"prelabel-unit/prelabel-unit-gpu"``; returns once they are scheduled, leaving out units that already
    have a run of that deployment waiting to start) or in-process one after another when it is None (returns their
    results). The source may be a single object (``prelabel-on-upload``): it is then a unit of its own."""
    settings = settings or Settings()
    logger = get_run_logger()
    source, resolved = params.source, params.with_model(settings.model_id)
    with Services(settings) as services:
        reconcile.at_run_start(services.catalog)  # runs a killed process left RUNNING -> CRASHED (flows/reconcile.py)
        # the job (project, model version, prompts) from the weight files: the dispatcher need not load the model
        job = open_job(services, None, resolved, load_model=False)
        discover_assets(services, source)
        new_units, units = shard_units(services, job.id, params)
    logger.info("%s, job %d: %d new units, %d free units to run", source, job.id, len(new_units), len(units))
    # a unit gets the fan-out's parameters as given (model_id unresolved: each worker resolves its own default)
    unit_params = [UnitParams.model_validate({**params.model_dump(), "unit_id": unit}) for unit in units]
    if params.deployment_name:
        from prefect.deployments import run_deployment

        queued = _queued_units(params.deployment_name) & set(units)
        if queued:
            logger.info("%d units already have a run waiting to start: not dispatched again", len(queued))
        runs = [
            run_deployment(
                params.deployment_name,
                parameters={"params": unit.model_dump(mode="json")},
                timeout=0,
                as_subflow=False,
                idempotency_key=f"prelabel-unit-{_flow_run_id()}-{unit.unit_id}",
            )
            for unit in unit_params
            if unit.unit_id not in queued
        ]
        return FanoutResult(
            job.id,
            [u for u in units if u not in queued],
            new_units,
            sorted(queued),
            [str(r.id) for r in runs],  # type: ignore[union-attr]
        )
    results = [prelabel_unit_flow(unit, settings=settings) for unit in unit_params]
    return FanoutResult(job.id, units, new_units, results=results)


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
            queued.update(_unit_of(r.parameters) for r in runs if _unit_of(r.parameters))
            if len(runs) < page:
                return queued
            offset += page


def _unit_of(parameters: dict[str, Any]) -> int:
    """The work unit a ``prelabel-unit`` run's parameters name (0 when none)."""
    params = parameters.get("params")
    return int(params.get("unit_id") or 0) if isinstance(params, dict) else 0
