"""Scale-out end to end, on real servers only: ``prefect server start`` on loopback (with its scheduler and triggers
services), ``maskloop deploy`` of a copy of ``deployments/prefect.yaml`` (only the test's bucket, a short schedule
and lease, and the unit deployment on the process pool differ), two ``prefect worker start`` process workers, moto's
S3 and SQS, the real Label Studio and a tiny real SAM 2. The catalog is PostgreSQL when one answers at
127.0.0.1:5432 (the shared truth across machines: ``SKIP LOCKED`` claims), SQLite otherwise.

The tests share that server, deployment and pair of workers, and run in file order:

1. the ``prelabel`` schedule fires; its fan-out's units run on both workers; each image reaches Label Studio once;
2. an upload's S3 notification goes through ``maskloop events listen`` to the ``prelabel-on-upload`` trigger;
3. a worker is SIGKILLed mid-unit: its lease expires, the next scheduled fan-out dispatches the unit again and the
   other worker finishes it; nothing is lost or duplicated. Last, since it leaves one worker.

Each test lets the ``prelabel`` schedule fire once (resume the deployment until the server's scheduler has created a
run and a worker started it, then pause it): later runs would find nothing new, and on this one shared pool, late
fan-outs queue up ahead of the unit runs they dispatched.

Which worker ran a unit is read from the catalog (the lease owner names the flow run and its worker) and checked
against Prefect's own record (the ``prefect.worker.name`` label the worker puts on the flow runs it starts).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import yaml
from pydantic import SecretStr
from sqlalchemy import select

from storage.catalog import AnnotationTask, Asset, Catalog, Run, WorkUnit, WorkUnitAsset
from storage.labelstudio.client import LabelStudioClient
from storage.s3 import make_client
from storage.settings import Settings
from tests.flows.test_events import _notifying_queue
from tests.flows.test_prelabel import LOOSE, ls_tasks
from tests.support.flow_fixtures import png_bytes
from tests.support.prefect_cluster import prefect_server, process_worker, stop, wait_started, worker_env
from tests.support.servers import postgres_available, throwaway_postgres_database

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

WORKERS = ("w0", "w1")
# The test's `prelabel` interval schedule (production: hourly cron). Longer than the workers' 10 s prefetch, so the
# run after the one a test waits for is still a future scheduled run, deleted when the test pauses the deployment.
SCHEDULE_S = 15
LEASE_TTL_S, HEARTBEAT_S = 8.0, 2.0  # production defaults: 300 s / 60 s
UNIT_SIZE = 3  # images per work unit; one image per batch, so a unit is several batches long
OWNER = re.compile(r"^flow-run/(?P<run>[0-9a-f-]{36}) worker/(?P<worker>\S+) pid/(?P<host>[^:\s]+):(?P<pid>\d+)$")
T = TypeVar("T")


# -- the cluster ----------------------------------------------------------------------------------------------------
@dataclass
class Cluster:
    url: str
    env: dict[str, str]  # the workers' environment (Prefect API + MASKLOOP_* settings)
    settings: Settings
    bucket: str
    project: str
    logs: Path
    deployments: dict[str, Any] = field(default_factory=dict)  # name -> id
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @contextmanager
    def api(self) -> Iterator[Any]:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.url}), get_client(sync_client=True) as client:
            yield client

    def catalog(self) -> Catalog:
        return Catalog(self.settings.resolved_database_url)

    def put_images(self, name: str, count: int, seed: int) -> list[str]:
        s3, rng = make_client(self.settings), np.random.default_rng(seed)
        keys = [f"in/{name}{i:02d}.png" for i in range(count)]
        for key in keys:
            s3.put_object(Bucket=self.bucket, Key=key, Body=png_bytes(rng))
        return keys

    def wait_for(self, what: str, check: Callable[[], T | None], timeout_s: float, every_s: float = 0.5) -> T:
        deadline = time.monotonic() + timeout_s
        while True:
            got = check()
            if got:
                return got
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not within {timeout_s:.0f} s\n{self.tail_logs()}")
            time.sleep(every_s)

    def scheduled_fanout(self, client: Any) -> Any:
        """Resume ``prelabel`` until the server's scheduler has created a run and a worker has started it, then pause
        it again (later runs would only find nothing new, and on this shared pool queue up ahead of the unit runs);
        returns that run once it is final."""
        prelabel = self.deployments["prelabel"]
        before = {r.id for r in _runs(client, prelabel)}
        client.resume_deployment(prelabel)
        run = self.wait_for("a scheduled prelabel run", _scheduled_run(self, client, prelabel, before), 120)
        client.pause_deployment(prelabel)
        return self.wait_for("the scheduled prelabel run to finish", _final(client, run.id), 240)

    def tail_logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.logs.glob("*.log"))
        )


@pytest.fixture(scope="module")
def e2e_catalog_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if postgres_available():
        with throwaway_postgres_database() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path_factory.mktemp('catalog') / 'catalog.sqlite'}"


def scale_out_spec(bucket: str, project: str) -> dict[str, Any]:
    """deployments/prefect.yaml with the scale-out deployments pointed at the test's bucket: a 15 s interval instead
    of the hourly cron, an 8 s lease, one image per batch, the unit deployment on the process pool (no GPU here),
    one torch thread per flow run. The other deployments (harvest, discovery, active learning) are left out."""
    spec = yaml.safe_load((REPO_ROOT / "deployments" / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    fanout, unit, on_upload = by_name["prelabel"], by_name["prelabel-unit"], by_name["prelabel-on-upload"]
    fanout_params = fanout["parameters"]["params"]  # storage.params.FanoutParams
    assert fanout_params["deployment_name"] == f"prelabel-unit/{unit['name']}"
    assert fanout_params["gpu_limit"] == "gpu" and fanout["schedules"][0]["cron"] == "0 * * * *"
    cpu = {"env": {"OMP_NUM_THREADS": "1", "MASKLOOP_DEVICE": "cpu"}}
    common = {"project": project, "batch_size": 1, "strategy_params": LOOSE}
    leases = {"lease_ttl_s": LEASE_TTL_S, "heartbeat_s": HEARTBEAT_S}
    fanout_params.update(source=f"s3://{bucket}/in/", unit_size=UNIT_SIZE, **common, **leases)
    fanout["schedules"] = [{"interval": SCHEDULE_S}]
    (trigger,) = on_upload["triggers"]
    trigger["parameters"]["params"].update(**common, **leases)  # a trigger's parameters are the whole model
    assert trigger["match"] == {"prefect.resource.id": "s3://maskloop/incoming/*"}
    trigger["match"] = {"prefect.resource.id": f"s3://{bucket}/in/*"}
    unit["work_pool"] = {"name": "maskloop-process", "job_variables": cpu}
    for deployment in (fanout, on_upload):
        assert deployment["work_pool"]["name"] == "maskloop-process"
        deployment["work_pool"]["job_variables"] = cpu
    spec["deployments"] = [fanout, unit, on_upload]
    return spec


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    s3_endpoint: str,
    s3_credentials: tuple[str, str],
    label_studio_server: Any,
    tiny_checkpoint: Path,
    e2e_catalog_url: str,
) -> Iterator[Cluster]:
    """Prefect server, ``maskloop deploy`` (with ``prelabel`` paused until a test resumes it), two workers."""
    from flows.cli import main

    tmp = tmp_path_factory.mktemp("scale-out")
    key, secret = s3_credentials
    settings = Settings(
        data_dir=tmp / "data",
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id=SecretStr(key),
        s3_secret_access_key=SecretStr(secret),
        database_url=e2e_catalog_url,
        label_studio_url=label_studio_server.url,
        label_studio_token=label_studio_server.token,
        model_id=str(tiny_checkpoint),
        device="cpu",
    )
    bucket = f"e2e-{os.urandom(5).hex()}"
    make_client(settings).create_bucket(Bucket=bucket)
    services = {
        # Both services are on by default in `prefect server start`; said here because the tests rely on them. The
        # scheduler's main loop runs every 60 s by default (a resumed deployment is also picked up by its 5 s
        # "recent deployments" loop); 5 s keeps a resumed schedule's first run close.
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "true",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "true",
    }
    workers: dict[str, subprocess.Popen[bytes]] = {}
    with prefect_server(tmp, services) as (url, server_env):
        cluster = Cluster(url, worker_env(server_env, settings), settings, bucket, f"e2e-{bucket[-10:]}", tmp)
        try:
            prefect_file = tmp / "prefect.yaml"
            prefect_file.write_text(yaml.safe_dump(scale_out_spec(bucket, cluster.project), sort_keys=False))
            with cluster.api() as client:
                # gpu slots = workers: a SIGKILLed unit's slot stays taken until Prefect's slot lease (300 s) lapses
                assert main(["deploy", "--gpu-slots", str(len(WORKERS)), "--prefect-file", str(prefect_file)]) == 0
                for name, flow in (("prelabel", "prelabel-fanout"), ("prelabel-unit", "prelabel-unit")):
                    cluster.deployments[name] = client.read_deployment_by_name(f"{flow}/{name}").id
                on_upload = client.read_deployment_by_name("prelabel-fanout/prelabel-on-upload")
                cluster.deployments["prelabel-on-upload"] = on_upload.id
                client.pause_deployment(cluster.deployments["prelabel"])  # each test resumes it once its images are in
            for name in WORKERS:
                log = tmp / f"{name}.log"
                workers[name] = process_worker(name, {**cluster.env, "PREFECT_LOGGING_LEVEL": "INFO"}, log)
            for name in WORKERS:
                wait_started(tmp / f"{name}.log", name)
            cluster.workers = workers
            yield cluster
        finally:
            stop(list(workers.values()))


# -- reading what happened ------------------------------------------------------------------------------------------
def _runs(client: Any, deployment_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    return list(
        client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            sort=FlowRunSort.ID_DESC,
            limit=200,
        )
    )


def _final(client: Any, flow_run_id: Any) -> Callable[[], Any]:
    """A check for ``wait_for``: the flow run once its state is final."""

    def check() -> Any:
        run = client.read_flow_run(flow_run_id)
        return run if run.state is not None and run.state.is_final() else None

    return check


def _scheduled_run(cluster: Cluster, client: Any, deployment_id: Any, before: set[Any]) -> Callable[[], Any]:
    """A check for ``wait_for``: a run (not in ``before``) that the server's scheduler created and a worker started.
    Fails at once when the scheduler cannot insert runs at all (prefect 3.8's bulk insert of flow runs carries the ORM
    hybrid ``state``, which SQLAlchemy 2.1 refuses: "Can't evaluate bulk DML statement"; SQLAlchemy 2.0 ignores it)."""

    def check() -> Any:
        if "Can't evaluate bulk DML statement" in (cluster.logs / "server.log").read_text(errors="replace"):
            import sqlalchemy

            pytest.fail(
                f"Prefect's scheduler cannot insert flow runs with SQLAlchemy {sqlalchemy.__version__} (< 2.1 works)"
            )
        started = [
            r
            for r in _runs(client, deployment_id)
            if r.id not in before and r.auto_scheduled and r.state is not None and not r.state.is_scheduled()
        ]
        return started[-1] if started else None

    return check


def _units_of(cluster: Cluster, keys: list[str]) -> list[WorkUnit]:
    catalog = cluster.catalog()
    try:
        with catalog.session() as session:
            stmt = (
                select(WorkUnit)
                .join(WorkUnitAsset, WorkUnitAsset.unit_id == WorkUnit.id)
                .join(Asset, Asset.id == WorkUnitAsset.asset_id)
                .where(Asset.bucket == cluster.bucket, Asset.key.in_(keys))
                .distinct()
                .order_by(WorkUnit.id)
            )
            units = list(session.scalars(stmt))
            session.expunge_all()
            return units
    finally:
        catalog.dispose()


def _all_done(cluster: Cluster, keys: list[str], units: int) -> list[WorkUnit] | None:
    got = _units_of(cluster, keys)
    covered = _asset_count(cluster, keys)
    return got if len(got) == units and covered == len(keys) and all(u.status == "done" for u in got) else None


def _asset_count(cluster: Cluster, keys: list[str]) -> int:
    catalog = cluster.catalog()
    try:
        with catalog.session() as session:
            stmt = (
                select(WorkUnitAsset.asset_id)
                .join(Asset, Asset.id == WorkUnitAsset.asset_id)
                .where(Asset.bucket == cluster.bucket, Asset.key.in_(keys))
            )
            return len(list(session.scalars(stmt)))
    finally:
        catalog.dispose()


def _owner(unit: WorkUnit) -> re.Match[str]:
    match = OWNER.match(unit.lease_owner or "")
    assert match, f"work unit {unit.id}: lease owner {unit.lease_owner!r} names no worker"
    return match


def _unit_runs(cluster: Cluster, unit_id: int) -> list[Run]:
    catalog = cluster.catalog()
    try:
        with catalog.session() as session:
            runs = [r for r in session.scalars(select(Run).where(Run.flow_name == "prelabel-unit").order_by(Run.id))]
            session.expunge_all()
        return [r for r in runs if r.parameters.get("unit_id") == unit_id]
    finally:
        catalog.dispose()


def assert_each_image_once_in_label_studio(cluster: Cluster, ls_client: LabelStudioClient) -> None:
    """Every image of the bucket is done, has one annotation_tasks row and one Label Studio task: no loss, no
    duplicate."""
    catalog = cluster.catalog()
    try:
        with catalog.session() as session:
            assets = dict(session.execute(select(Asset.id, Asset.status).where(Asset.bucket == cluster.bucket)).all())
            rows = Counter(session.scalars(select(AnnotationTask.asset_id).where(AnnotationTask.asset_id.in_(assets))))
        tasks = ls_tasks(ls_client, catalog, f"{cluster.project} (images)")
    finally:
        catalog.dispose()
    assert set(assets.values()) == {"done"}, assets
    assert rows == Counter(assets.keys()), "one annotation_tasks row per asset"
    in_ls = Counter(t["data"]["maskloop_asset_id"] for t in tasks)
    assert in_ls == Counter(assets.keys()), "one Label Studio task per asset"
    missing = [t for t in tasks if not t["predictions"]]
    assert not missing, "tasks without a prediction: " + "; ".join(
        _prediction_report(ls_client, t) for t in missing[:5]
    )


def _prediction_report(ls_client: LabelStudioClient, task: dict[str, Any]) -> str:
    """What Label Studio says about one task's predictions, for a failure message."""
    found = ls_client.list_predictions(task["id"])
    return (
        f"task {task['id']} (asset {task['data'].get('maskloop_asset_id')}, total_predictions "
        f"{task.get('total_predictions')}): /api/predictions?task= has {[(p['id'], p['model_version']) for p in found]}"
    )


# -- the tests ------------------------------------------------------------------------------------------------------
def test_prelabel_schedule_fans_out_units_that_both_workers_run_and_imports_each_image_once(
    cluster: Cluster, ls_client: LabelStudioClient
) -> None:
    keys = cluster.put_images("sched", 2 * UNIT_SIZE, seed=1)
    with cluster.api() as client:
        fanout = cluster.scheduled_fanout(client)
    assert fanout.state.is_completed(), cluster.tail_logs()
    assert fanout.auto_scheduled and fanout.created_by is not None and fanout.created_by.type == "SCHEDULE"

    units = cluster.wait_for("both units done", lambda: _all_done(cluster, keys, units=2), 300)
    owners = {u.id: _owner(u) for u in units}
    assert {m["worker"] for m in owners.values()} == set(WORKERS), "each worker ran one of the two units"
    with cluster.api() as client:
        for unit in units:
            run = client.read_flow_run(owners[unit.id]["run"])
            assert (
                run.deployment_id == cluster.deployments["prelabel-unit"]
                and run.parameters["params"]["unit_id"] == unit.id
            )
            assert run.idempotency_key == f"prelabel-unit-{fanout.id}-{unit.id}", "dispatched by the scheduled run"
            assert run.labels["prefect.worker.name"] == owners[unit.id]["worker"], "Prefect agrees on the worker"
            final = cluster.wait_for(f"unit run {run.id} final", _final(client, run.id), 60)
            assert final.state.is_completed()
    assert [u.attempts for u in units] == [1, 1]
    assert_each_image_once_in_label_studio(cluster, ls_client)


def test_upload_notification_through_the_bridge_triggers_prelabel_on_upload_and_imports_the_object_once(
    cluster: Cluster, ls_client: LabelStudioClient
) -> None:
    s3 = make_client(cluster.settings)
    sqs, queue = _notifying_queue(cluster.settings, s3, cluster.bucket)
    (key,) = cluster.put_images("upload", 1, seed=2)
    argv = [sys.executable, "-m", "flows.cli", "events", "listen", "--queue-url", queue]
    argv += ["--sqs-endpoint-url", str(cluster.settings.s3_endpoint_url), "--wait", "1", "--max-polls", "3"]
    bridge = subprocess.run(argv, cwd=REPO_ROOT, env=cluster.env, capture_output=True, text=True, timeout=180)
    assert bridge.returncode == 0, bridge.stderr[-3000:]
    assert "1 s3.object.created events emitted" in bridge.stdout, bridge.stdout

    on_upload = cluster.deployments["prelabel-on-upload"]
    with cluster.api() as client:
        (run,) = cluster.wait_for("the trigger's prelabel-on-upload run", lambda: _runs(client, on_upload), 90)
        run = cluster.wait_for("it to finish", _final(client, run.id), 240)
    assert run.state.is_completed(), cluster.tail_logs()
    assert run.parameters["params"]["source"] == f"s3://{cluster.bucket}/{key}" and not run.auto_scheduled
    (unit,) = _units_of(cluster, [key])
    assert (unit.source, unit.status) == (f"s3://{cluster.bucket}/{key}", "done"), "a unit of its own, under a lease"
    assert _owner(unit)["worker"] in WORKERS
    assert_each_image_once_in_label_studio(cluster, ls_client)


def _unit_in_progress(cluster: Cluster, keys: list[str]) -> WorkUnit | None:
    """A unit of ``keys`` whose holder is mid-unit: lease held, at least one of its images imported, not finished."""
    catalog = cluster.catalog()
    try:
        with catalog.session() as session:
            for unit in _units_of(cluster, keys):
                if unit.status != "pending" or unit.lease_owner is None:
                    continue
                statuses = session.scalars(
                    select(Asset.status)
                    .join(WorkUnitAsset, WorkUnitAsset.asset_id == Asset.id)
                    .where(WorkUnitAsset.unit_id == unit.id)
                )
                if "done" in set(statuses):
                    return unit
    finally:
        catalog.dispose()
    return None


def _descendants(pid: int) -> list[int]:
    """``pid``'s live descendants, from /proc (the flow-run process of a process worker is in a session of its own,
    so killing the worker's process group alone would leave it running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_host(worker: subprocess.Popen[bytes], flow_run_pid: int) -> None:
    """What a lost machine looks like: SIGKILL the worker's process group and every process under it."""
    tree = _descendants(worker.pid)
    assert flow_run_pid in tree, f"the lease holder (pid {flow_run_pid}) is not a process of this worker"
    os.killpg(worker.pid, signal.SIGKILL)
    for pid in tree:
        with suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
    worker.wait(10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{flow_run_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # reaped by init once orphaned


def test_worker_killed_mid_unit_loses_its_lease_and_the_other_worker_reruns_the_unit_with_nothing_lost_or_duplicated(
    cluster: Cluster, ls_client: LabelStudioClient
) -> None:
    from storage.catalog.models import utcnow

    keys = cluster.put_images("kill", 2 * UNIT_SIZE, seed=3)
    with cluster.api() as client:
        dispatch = cluster.scheduled_fanout(client)
    victim = cluster.wait_for("a unit mid-way", lambda: _unit_in_progress(cluster, keys), 300, every_s=0.2)
    dead = _owner(victim)
    _kill_host(cluster.workers[dead["worker"]], int(dead["pid"]))
    (survivor,) = set(WORKERS) - {dead["worker"]}
    (held,) = [u for u in _units_of(cluster, keys) if u.id == victim.id]
    assert held.status == "pending" and held.lease_owner == victim.lease_owner, "killed before it could finish"
    assert held.lease_expires_at is not None
    expired_at = _aware(held.lease_expires_at)
    cluster.wait_for("the dead worker's lease to expire", lambda: utcnow() > expired_at, LEASE_TTL_S + 30)

    with cluster.api() as client:
        redispatch = cluster.scheduled_fanout(client)  # the next scheduled fan-out after the lease expired
    assert redispatch.state.is_completed() and redispatch.id != dispatch.id
    units = cluster.wait_for("every unit done after the takeover", lambda: _all_done(cluster, keys, units=2), 300)
    (taken,) = [u for u in units if u.id == victim.id]
    new = _owner(taken)
    assert taken.attempts == 2 and new["worker"] == survivor and new["run"] != dead["run"]

    attempts = _unit_runs(cluster, victim.id)
    assert [(r.parameters["lease_owner"], r.status) for r in attempts] == [
        (victim.lease_owner, "crashed"),  # never finished; the re-dispatching fan-out's reconcile said so
        (taken.lease_owner, "completed"),
    ]
    assert _aware(attempts[1].started_at) >= expired_at, "taken over only once the lease had expired"
    with cluster.api() as client:
        first, second = (client.read_flow_run(m["run"]) for m in (dead, new))
        assert first.state is not None and first.state.is_crashed(), "a killed worker's run must not stay RUNNING"
        assert first.labels["prefect.worker.name"] == dead["worker"]
        assert second.labels["prefect.worker.name"] == survivor
        assert first.idempotency_key == f"prelabel-unit-{dispatch.id}-{victim.id}"
        by = re.fullmatch(rf"prelabel-unit-(?P<run>[0-9a-f-]{{36}})-{victim.id}", second.idempotency_key or "")
        assert by, second.idempotency_key
        dispatcher = client.read_flow_run(by["run"])  # `redispatch`, unless a run of the schedule slipped in first
    assert dispatcher.deployment_id == cluster.deployments["prelabel"] and dispatcher.auto_scheduled
    assert dispatcher.start_time is not None and dispatcher.start_time >= expired_at, "dispatched after the expiry"
    assert_each_image_once_in_label_studio(cluster, ls_client)


def _aware(value: datetime) -> datetime:
    from datetime import UTC

    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
