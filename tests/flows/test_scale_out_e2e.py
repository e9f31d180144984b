"""Scale-out end to end: a real ``prefect server start`` on loopback, two process workers (``prefect worker start``)
on the maskloop-process pool, the fan-out dispatching one ``prelabel-unit`` flow run per work unit through
``run_deployment``; the workers' flow runs claim their units through the catalog leases and pre-label into the real
Label Studio from the real S3 server (moto), with a tiny real SAM 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from storage.catalog import Asset, Catalog, LabelStudioTask, WorkUnit
from storage.labelstudio.client import LabelStudioClient
from storage.settings import Settings
from tests.flows.test_prelabel import LOOSE, ls_tasks
from tests.support.servers import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _secret(value: Any) -> str:
    return value.get_secret_value() if value is not None else ""


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture()
def prefect_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """``prefect server start`` on a free loopback port with its own home and SQLite database."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": url,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"prefect server exited: {(tmp_path / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("prefect server did not answer /api/health in 180 s")
        yield url, env
    finally:
        _stop([server])
        log.close()


def test_two_process_workers_share_the_units_of_one_fanout_without_duplicates(
    prefect_server: tuple[str, dict[str, str]],
    flow_settings: Settings,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
    tmp_path: Path,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deploy import POOLS, ensure_pools
    from flows.prelabel_fanout import prelabel_fanout_flow, prelabel_unit_flow

    url, server_env = prefect_server
    fill_bucket(images=4, videos=0, broken=0)
    source, project = f"s3://{bucket}/in/", f"scale-{bucket[-8:]}"
    worker_env = {
        **server_env,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "MASKLOOP_DATA_DIR": str(flow_settings.data_dir),
        "MASKLOOP_DATABASE_URL": flow_settings.resolved_database_url,
        "MASKLOOP_S3_ENDPOINT_URL": flow_settings.s3_endpoint_url or "",
        "MASKLOOP_S3_ACCESS_KEY_ID": _secret(flow_settings.s3_access_key_id),
        "MASKLOOP_S3_SECRET_ACCESS_KEY": _secret(flow_settings.s3_secret_access_key),
        "MASKLOOP_LABEL_STUDIO_URL": flow_settings.label_studio_url,
        "MASKLOOP_LABEL_STUDIO_TOKEN": _secret(flow_settings.label_studio_token),
        "MASKLOOP_MODEL_ID": flow_settings.model_id,
        "MASKLOOP_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
    }
    with temporary_settings({PREFECT_API_URL: url}):
        with get_client(sync_client=True) as client:
            ensure_pools(client, _report(), tuple(p for p in POOLS if p.type == "process"))
        deployment = prelabel_unit_flow.to_deployment(name="e2e", work_pool_name="maskloop-process")
        deployment.entrypoint = "flows/prelabel_fanout.py:prelabel_unit_flow"
        deployment._path = str(REPO_ROOT)
        deployment_id = deployment.apply(work_pool_name="maskloop-process")

        workers: list[subprocess.Popen[bytes]] = []
        try:
            for i in range(2):
                log = open(tmp_path / f"worker{i}.log", "wb")  # noqa: SIM115 - the worker process owns it
                argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", "maskloop-process"]
                argv += ["--type", "process", "--limit", "1", "--name", f"w{i}"]
                workers.append(
                    subprocess.Popen(
                        argv,
                        cwd=REPO_ROOT,
                        env=worker_env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            result = prelabel_fanout_flow(
                source,
                unit_size=2,
                deployment_name="prelabel-unit/e2e",
                project=project,
                batch_size=2,
                strategy_params=LOOSE,
                settings=flow_settings,
            )
            assert len(result["units"]) == 2 and len(result["flow_runs"]) == 2
            runs = _wait_final(get_client, deployment_id, 2, timeout_s=480, logs=tmp_path)
        finally:
            _stop(workers)
    assert [r.state.type.value for r in runs] == ["COMPLETED", "COMPLETED"], _logs(tmp_path)

    catalog = Catalog(flow_settings.resolved_database_url)
    with catalog.session() as session:
        units = session.scalars(select(WorkUnit).where(WorkUnit.source == source)).all()
        assert [u.status for u in units] == ["done", "done"]
        assert {u.lease_owner for u in units} == {f"flow-run/{r.id}" for r in runs}
        assert Counter(session.scalars(select(Asset.status).where(Asset.bucket == bucket))) == {"done": 4}
        per_asset = Counter(session.scalars(select(LabelStudioTask.asset_id)))
    assert len(per_asset) == 4 and set(per_asset.values()) == {1}
    assert len(ls_tasks(ls_client, catalog, f"{project} (images)")) == 4
    catalog.dispose()


def _report() -> Any:
    from flows.deploy import DeployReport

    return DeployReport()


def _logs(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(tmp_path.glob("*.log")))


def _wait_final(get_client: Any, deployment_id: Any, count: int, timeout_s: float, logs: Path) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + timeout_s
    runs: list[Any] = []
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                sort=FlowRunSort.ID_DESC,
                limit=20,
            )
            if len(runs) == count and all(r.state is not None and r.state.is_final() for r in runs):
                return runs
            time.sleep(2)
    pytest.fail(f"unit flow runs not final after {timeout_s}s: {[r.state for r in runs]}\n{_logs(logs)}")
