"""``maskloop deploy``: set up a Prefect server for maskloop — the global concurrency limit ``gpu`` (one slot per
GPU; flows take it with ``strict=True``, so a missing limit is an error rather than unlimited GPU work), the work
pools of ``deployments/work-pools/`` and the deployments of ``deployments/prefect.yaml``."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.errors import MaskloopError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS_DIR = REPO_ROOT / "deployments"
GPU_LIMIT = "gpu"


@dataclass(frozen=True)
class PoolSpec:
    name: str
    type: str
    template_file: str


POOLS = (
    PoolSpec("maskloop-process", "process", "process.json"),
    PoolSpec("maskloop-gpu", "kubernetes", "kubernetes-gpu.json"),
    PoolSpec("maskloop-docker-gpu", "docker", "docker-gpu.json"),
)


@dataclass
class DeployReport:
    gpu_limit: int = 0
    pools_created: list[str] = field(default_factory=list)
    pools_updated: list[str] = field(default_factory=list)
    deployed: list[str] = field(default_factory=list)


def load_template(spec: PoolSpec, directory: Path = DEPLOYMENTS_DIR / "work-pools") -> dict[str, Any]:
    path = directory / spec.template_file
    template: dict[str, Any] = json.loads(path.read_text())
    if set(template) != {"job_configuration", "variables"}:
        raise ValueError(f"{path}: a base job template has job_configuration and variables, got {sorted(template)}")
    return template


def ensure_gpu_limit(client: Any, slots: int) -> None:
    """Create (or resize) the global concurrency limit ``gpu`` with ``slots`` slots."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    if slots < 1:
        raise ValueError(f"gpu slots must be >= 1, got {slots}")
    try:
        client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        client.update_global_concurrency_limit(GPU_LIMIT, GlobalConcurrencyLimitUpdate(limit=slots, active=True))
    except ObjectNotFound:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=slots, active=True))


def ensure_pools(client: Any, report: DeployReport, pools: tuple[PoolSpec, ...] = POOLS) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    for spec in pools:
        template = load_template(spec)
        try:
            client.read_work_pool(spec.name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=spec.name, type=spec.type, base_job_template=template))
            report.pools_created.append(spec.name)
            continue
        client.update_work_pool(spec.name, WorkPoolUpdate(base_job_template=template))
        report.pools_updated.append(spec.name)


def _schedules(spec: dict[str, Any]) -> list[Any]:
    from prefect.schedules import Cron, Interval

    out: list[Any] = []
    for item in spec.get("schedules") or []:
        if "cron" in item:
            out.append(Cron(item["cron"], timezone=item.get("timezone")))
        elif "interval" in item:
            out.append(Interval(item["interval"], timezone=item.get("timezone")))
        else:
            raise ValueError(f"deployment {spec['name']}: schedule needs cron or interval, got {sorted(item)}")
    return out


def apply_deployments(prefect_file: Path, repo_dir: Path) -> list[str]:
    """Create or update every deployment of ``prefect_file`` (schedules, triggers, concurrency limits, pools).

    Done through the Python API rather than ``prefect deploy``: prefect 3.8's CLI asks the server for a pool's
    workers with ``limit: null``, which the 3.8 server answers with 422 after the first deployment. Flow runs start
    in ``repo_dir`` ($MASKLOOP_REPO_DIR on the workers; /opt/maskloop in deployments/Dockerfile); on the process
    pool that is also their working directory (job variable ``working_dir``, unless the file sets one).
    """
    import importlib

    import yaml
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.events.schemas.deployment_triggers import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    triggers_adapter: TypeAdapter[Any] = TypeAdapter(DeploymentTriggerTypes)
    spec = yaml.safe_load(prefect_file.read_text())
    pool_types = {p.name: p.type for p in POOLS}
    applied = []
    for item in spec["deployments"]:
        path, _, attr = item["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), attr)
        limit = item.get("concurrency_limit")
        job_variables = dict(item["work_pool"].get("job_variables") or {})
        if pool_types.get(item["work_pool"]["name"]) == "process":
            # Without a working_dir a process worker copies the deployment's path (the whole checkout, virtual
            # environments included) into a temporary directory for every flow run and deletes it afterwards,
            # blocking the worker for minutes; run in the checkout itself instead.
            job_variables.setdefault("working_dir", str(repo_dir))
        deployment = flow.to_deployment(
            name=item["name"],
            description=item.get("description"),
            parameters=item.get("parameters") or {},
            schedules=_schedules(item),
            triggers=[triggers_adapter.validate_python(t) for t in item.get("triggers") or []],
            concurrency_limit=ConcurrencyLimitConfig(**limit) if limit else None,
            work_pool_name=item["work_pool"]["name"],
            job_variables=job_variables,
        )
        deployment.entrypoint = item["entrypoint"]
        deployment._path = str(repo_dir)
        deployment.apply(work_pool_name=item["work_pool"]["name"])
        applied.append(f"{flow.name}/{item['name']}")
    return applied


class NoPrefectServerError(MaskloopError, RuntimeError):
    """No Prefect server to deploy into: without one, Prefect would start a temporary server that ends with the
    command, taking the pools, schedules and triggers with it."""


def require_prefect_server() -> str:
    """The configured Prefect API URL; NoPrefectServerError (one line) when there is none."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise NoPrefectServerError(
            "no Prefect server: PREFECT_API_URL is not set and the local stack's Prefect server is not running; "
            "start one with `maskloop stack up` (or set PREFECT_API_URL) — a temporary server would lose the "
            "deployments when the command ends"
        )
    return str(url)


def deploy(
    gpu_slots: int = 1,
    prefect_file: Path = DEPLOYMENTS_DIR / "prefect.yaml",
    deployments: bool = True,
) -> DeployReport:
    """Create the ``gpu`` limit and the pools on the configured Prefect API, then apply the deployments. Refuses
    (NoPrefectServerError) when no Prefect API is configured."""
    from prefect.client.orchestration import get_client

    require_prefect_server()
    report = DeployReport(gpu_limit=gpu_slots)
    with get_client(sync_client=True) as client:
        ensure_gpu_limit(client, gpu_slots)
        ensure_pools(client, report)
    if deployments:
        report.deployed = apply_deployments(prefect_file, Path(os.environ.get("MASKLOOP_REPO_DIR", REPO_ROOT)))
    return report
