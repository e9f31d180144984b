"""A worker's flow process killed (SIGKILL) while its work unit holds the lease: the fan-out runs in a process of its
own against Prefect's test server (as a process worker runs it), moto's S3 behind the fault proxy, the real Label
Studio and a SQLite catalog. The kill leaves the unit leased and both flow runs RUNNING on the Prefect server; the
next fan-out, once the lease TTL has passed, marks those runs CRASHED (``flows/reconcile.py``), takes the unit over
(attempt 2) and finishes it: nothing lost, nothing doubled.

The same kill against real ``prefect worker`` processes and a ``prefect server`` is in
``tests/flows/test_scale_out_e2e.py`` (slow); this case is the quick one of the fault suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from storage.catalog import Catalog, Run, WorkUnit
from storage.labelstudio.client import LabelStudioClient
from storage.settings import Settings
from tests.faults.conftest import Figures
from tests.faults.invariant import check_invariant
from tests.flows.test_prelabel import LOOSE
from tests.support.fault_proxy import Fault, fault_proxy

LEASE_TTL_S, HEARTBEAT_S = 6.0, 1.0
FANOUT = """
import json, sys
from flows.prelabel_fanout import prelabel_fanout_flow
from storage.params import FanoutParams
from storage.settings import Settings
prelabel_fanout_flow(FanoutParams.model_validate(json.loads(sys.argv[1])), settings=Settings())
"""


def _params(bucket: str, project: str) -> dict[str, Any]:
    return {
        "source": f"s3://{bucket}/in/",
        "unit_size": 2,
        "batch_size": 1,
        "project": project,
        "strategy_params": LOOSE,
        "lease_ttl_s": LEASE_TTL_S,
        "heartbeat_s": HEARTBEAT_S,
    }


def _env(settings: Settings, s3_url: str, prefect_api: str) -> dict[str, str]:
    def secret(value: Any) -> str:
        return value.get_secret_value() if value is not None else ""

    return {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "PREFECT_API_URL": prefect_api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "MASKLOOP_DATA_DIR": str(settings.data_dir),
        "MASKLOOP_DATABASE_URL": settings.resolved_database_url,
        "MASKLOOP_S3_ENDPOINT_URL": s3_url,
        "MASKLOOP_S3_ACCESS_KEY_ID": secret(settings.s3_access_key_id),
        "MASKLOOP_S3_SECRET_ACCESS_KEY": secret(settings.s3_secret_access_key),
        "MASKLOOP_LABEL_STUDIO_URL": settings.label_studio_url,
        "MASKLOOP_LABEL_STUDIO_TOKEN": secret(settings.label_studio_token),
        "MASKLOOP_MODEL_ID": str(settings.model_id),
        "MASKLOOP_DEVICE": "cpu",
        "MASKLOOP_IO_PROCESS": "false",
        "OMP_NUM_THREADS": "1",
    }


def _flow_run_states(prefect_api: str, ids: list[str]) -> dict[str, str]:
    from prefect.client.orchestration import get_client

    states: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        for run_id in ids:
            run = client.read_flow_run(run_id)  # type: ignore[arg-type]
            states[run_id] = run.state.type.value if run.state is not None else "?"
    return states


def _fanout_runs(source: str) -> list[str]:
    """The ``prelabel-fanout`` flow runs of ``source`` on the Prefect server (the fan-out keeps no catalog run row)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["prelabel-fanout"])), limit=200)
    return [str(r.id) for r in runs if (r.parameters.get("params") or {}).get("source") == source]


def test_worker_killed_while_its_unit_holds_the_lease_is_crashed_and_taken_over_after_the_ttl(
    prefect_api: str,
    flow_settings: Settings,
    s3: Any,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
    figures: Callable[..., Figures],
    tmp_path: Path,
) -> None:
    from flows.prelabel_fanout import prelabel_fanout_flow
    from storage.params import FanoutParams

    keys = fill_bucket(images=4, videos=0, broken=0)
    project = f"pk-{bucket[-6:]}"
    row = figures("worker's flow process SIGKILLed while its unit holds the lease", "the Prefect flow process")
    catalog = Catalog(flow_settings.resolved_database_url)
    with fault_proxy(str(flow_settings.s3_endpoint_url)) as proxy:
        log = (tmp_path / "fanout.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-c", FANOUT, json.dumps(_params(bucket, project))],
            env=_env(flow_settings, proxy.url, prefect_api),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        # the kill lands when the unit's second image is downloaded: its first is in Label Studio or on its way
        proxy.add(Fault("GET", f"/{bucket}/{keys['image'][1]}", kind="hook", times=1, action=lambda: proc.kill()))
        try:
            code = proc.wait(180)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
        killed_at = time.monotonic()
        assert code == -signal.SIGKILL, (tmp_path / "fanout.log").read_text()[-3000:]

        with catalog.session() as session:
            held = session.scalars(select(WorkUnit).where(WorkUnit.lease_owner.is_not(None))).all()
            unit_runs = [r.flow_run_id for r in session.scalars(select(Run)).all() if r.status == "running"]
        killed_runs = [*_fanout_runs(f"s3://{bucket}/in/"), *unit_runs]
        assert len(killed_runs) == 2, f"expected the killed fan-out and unit runs, got {killed_runs}"
        assert len(held) == 1 and held[0].status == "pending", "the kill should leave one unit leased"
        unit = held[0].id
        assert _flow_run_states(prefect_api, killed_runs) == dict.fromkeys(killed_runs, "RUNNING")

        # wait out the lease (its own expiry time, from the catalog), then the next fan-out takes the unit over
        expires = held[0].lease_expires_at
        assert expires is not None
        wait_s = ((expires if expires.tzinfo else expires.replace(tzinfo=UTC)) - datetime.now(UTC)).total_seconds()
        time.sleep(max(0.0, min(wait_s + 0.5, LEASE_TTL_S + 1)))
        settings = type(flow_settings).model_validate({**flow_settings.model_dump(), "s3_endpoint_url": proxy.url})
        result = prelabel_fanout_flow(FanoutParams.model_validate(_params(bucket, project)), settings=settings)
    recover_s = time.monotonic() - killed_at
    by_unit = {r.unit_id: r for r in result.results}
    assert unit in by_unit and by_unit[unit].claimed and by_unit[unit].attempt == 2, result
    states = _flow_run_states(prefect_api, killed_runs)
    assert states == dict.fromkeys(killed_runs, "CRASHED"), f"killed runs left as {states}"
    with catalog.session() as session:
        statuses = {r.flow_run_id: r.status for r in session.scalars(select(Run)).all()}
    assert {statuses[r] for r in unit_runs} == {"crashed"}
    try:
        checked = check_invariant(catalog, s3, ls_client, bucket, "in/", project)
    finally:
        catalog.dispose()
    assert checked.tasks == 4
    row.injected, row.runs_stopped, row.runs_completed = 1, 1, 1
    row.assets_lost, row.duplicates, row.recover_s = checked.lost, checked.duplicates, recover_s
    row.notes.append(
        f"{len(killed_runs)} killed flow runs (fan-out + unit) marked CRASHED in Prefect and the catalog; "
        f"unit {unit} taken over at attempt 2 after the {LEASE_TTL_S:g} s lease"
    )


@pytest.mark.parametrize(
    ("token", "gone"),
    [("{host}:{pid}:{start}", False), ("{host}:999999999:", True), ("other-host:{pid}:", None), ("garbage", None)],
)
def test_process_gone_tells_a_dead_local_process_from_a_live_one_and_never_judges_another_host(
    token: str, gone: bool | None
) -> None:
    import socket

    from flows.reconcile import _start_ticks, process_gone

    me = os.getpid()
    text = token.format(host=socket.gethostname(), pid=me, start=_start_ticks(me) or "")
    assert process_gone(text) is gone
