"""``maskloop deploy`` against Prefect's test harness (a real temporary API server): the gpu limit, the work pools
with their base job templates, every deployment of deployments/prefect.yaml with its schedule/trigger/limit; and the
fan-out's run_deployment path creating one flow run per unit on the unit deployment."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.cli import main
from flows.deploy import GPU_LIMIT, POOLS, load_template
from storage.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())


def test_maskloop_deploy_creates_gpu_limit_pools_and_every_deployment(
    prefect_api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.client.orchestration import get_client

    assert main(["deploy", "--gpu-slots", "2"]) == 0
    assert "gpu: 2 slot(s)" in capsys.readouterr().out
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        assert (limit.limit, limit.active) == (2, True)
        for spec in POOLS:
            pool = client.read_work_pool(spec.name)
            assert pool.type == spec.type and pool.base_job_template == load_template(spec)
        for wanted in SPEC["deployments"]:
            flow_name = _flow_name(wanted["entrypoint"])
            got = client.read_deployment_by_name(f"{flow_name}/{wanted['name']}")
            assert got.work_pool_name == wanted["work_pool"]["name"]
            assert got.parameters == wanted.get("parameters", {})
            if wanted["work_pool"]["name"] == "maskloop-process":  # flow runs start in the checkout, never a copy
                assert got.job_variables["working_dir"] == str(ROOT)
            assert len(got.schedules) == len(wanted.get("schedules", []))
            if "concurrency_limit" in wanted:
                assert got.global_concurrency_limit is not None
                assert got.global_concurrency_limit.limit == wanted["concurrency_limit"]["limit"]
        (on_upload_spec,) = [d for d in SPEC["deployments"] if d["name"] == "prelabel-on-upload"]
        on_upload = client.read_deployment_by_name(f"{_flow_name(on_upload_spec['entrypoint'])}/prelabel-on-upload")
        automations = client.read_automations_by_name("prelabel-on-upload__automation_1")
        assert automations, "the s3.object.created trigger was not created"
        assert automations[0].trigger.expect == {"s3.object.created"}  # type: ignore[union-attr]
        assert automations[0].actions[0].deployment_id == on_upload.id  # type: ignore[union-attr]
    # idempotent: a second deploy resizes the limit and updates the pools
    assert main(["deploy", "--gpu-slots", "1", "--pools-only"]) == 0
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).limit == 1


def _flow_name(entrypoint: str) -> str:
    import importlib

    path, _, attr = entrypoint.partition(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), attr).name


def test_fanout_through_a_deployment_schedules_one_unit_run_per_free_unit(
    prefect_api: str, settings: Settings, catalog_url: str, s3: Any, bucket: str, tiny_checkpoint: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    from flows.prelabel_fanout import prelabel_fanout_flow, prelabel_unit_flow
    from storage.params import FanoutParams

    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"in/{i}.png", Body=b"x")
    name = f"unit-{uuid.uuid4().hex[:8]}"
    deployment_id = prelabel_unit_flow.to_deployment(name=name).apply()
    # the dispatcher names the job's model version from the weight files (it never loads the model)
    flow_settings = settings.model_copy(update={"database_url": catalog_url, "model_id": str(tiny_checkpoint)})
    params = FanoutParams(source=f"s3://{bucket}/in/", unit_size=2, deployment_name=f"prelabel-unit/{name}")
    result = prelabel_fanout_flow(params, settings=flow_settings)
    assert len(result.units) == 3 and len(result.flow_runs) == 3
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            sort=FlowRunSort.ID_DESC,
            limit=50,
        )
    assert sorted(r.parameters["params"]["unit_id"] for r in runs) == sorted(result.units)
    assert {r.parameters["params"]["source"] for r in runs} == {f"s3://{bucket}/in/"}
    # no worker took them yet: the next fan-out finds the same free units, each with a run waiting to start
    again = prelabel_fanout_flow(params, settings=flow_settings)
    assert (again.units, again.already_queued, again.flow_runs) == ([], sorted(result.units), [])


def test_fanout_that_cannot_read_the_model_says_what_to_download_before_any_work(
    prefect_api: str, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.prelabel_fanout import prelabel_fanout_flow
    from model.errors import ModelNotAvailableError
    from storage.params import FanoutParams

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    flow_settings = settings.model_copy(
        update={"database_url": f"sqlite:///{tmp_path / 'c.sqlite'}", "model_id": "facebook/sam2.1-hiera-tiny"}
    )
    with pytest.raises(ModelNotAvailableError, match="hf download facebook/sam2.1-hiera-tiny"):
        prelabel_fanout_flow(FanoutParams(source="s3://some-bucket/in/"), settings=flow_settings)


def test_model_work_holds_one_slot_of_the_strict_gpu_limit_and_fails_without_the_limit(prefect_api: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError

    from flows.deploy import ensure_gpu_limit
    from flows.prelabel import gpu_slot

    with pytest.raises(ConcurrencySlotAcquisitionError), gpu_slot(f"missing-{uuid.uuid4().hex[:6]}"):
        pass
    with get_client(sync_client=True) as client:
        ensure_gpu_limit(client, 1)
        with gpu_slot(GPU_LIMIT):
            assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots == 1
        assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots == 0
    with gpu_slot(None):  # no limit configured: model work is not gated
        pass


def test_deploy_without_a_prefect_server_fails_with_one_line_naming_prefect_api_url_and_stack_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    # no PREFECT_API_URL (also not the test harness's) and no stack server in this data dir: nothing to deploy into
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["--data-dir", str(tmp_path), "deploy"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("maskloop deploy: no Prefect server: PREFECT_API_URL is not set")
    assert "`maskloop stack up`" in line


def test_cli_points_prefect_commands_at_the_stacks_server_only_when_no_prefect_api_url_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse
    import os

    from prefect.settings import PREFECT_API_URL, temporary_settings

    import storage.stack.prefect_server
    from flows.cli import _stack_prefect_api

    stack_url = "http://127.0.0.1:4999/api"
    monkeypatch.setattr(storage.stack.prefect_server, "stack_api_url", lambda data_dir: stack_url)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    args = argparse.Namespace(command="prelabel", data_dir=str(tmp_path))
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with _stack_prefect_api(args):
            assert (PREFECT_API_URL.value(), os.environ["PREFECT_API_URL"]) == (stack_url, stack_url)
        assert "PREFECT_API_URL" not in os.environ and PREFECT_API_URL.value() is None
        with _stack_prefect_api(argparse.Namespace(command="stack", data_dir=str(tmp_path))):
            assert PREFECT_API_URL.value() is None, "commands without Prefect are left alone"
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4998/api"}), _stack_prefect_api(args):
        assert PREFECT_API_URL.value() == "http://127.0.0.1:4998/api", "the profile's server wins"
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4997/api")
    with _stack_prefect_api(args):
        assert os.environ["PREFECT_API_URL"] == "http://127.0.0.1:4997/api", "the user's variable wins"
