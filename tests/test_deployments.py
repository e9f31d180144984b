"""deployments/prefect.yaml points at real flows with parameters those flows accept."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEC = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())


@pytest.mark.parametrize("deployment", SPEC["deployments"], ids=lambda d: d["name"])
def test_deployment_entrypoint_is_a_flow_accepting_its_parameters(deployment: dict) -> None:
    path, _, name = deployment["entrypoint"].partition(":")
    assert (ROOT / path).is_file(), f"entrypoint file {path} does not exist"
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, name)
    assert type(flow).__name__ == "Flow", f"{deployment['entrypoint']} is not a Prefect flow"
    signature = inspect.signature(flow.fn)
    given = deployment.get("parameters", {})
    assert set(given) <= set(signature.parameters)
    model = _params_model(flow)
    if model is not None and "params" in given:  # a flow with one parameters model: defaults are the model's
        if {k for k, f in model.model_fields.items() if f.is_required()} <= set(given["params"]):
            model.model_validate(given["params"])  # a complete parameter set is a valid one
        assert set(given["params"]) <= set(model.model_fields), sorted(set(given["params"]) - set(model.model_fields))
        restated = {k for k, v in given["params"].items() if model.model_fields[k].default == v}
        assert not restated, f"{deployment['name']} restates the model's defaults: {sorted(restated)}"
    assert deployment["work_pool"]["name"]


def _params_model(flow: object) -> type | None:
    """The pydantic parameters model of a flow whose one parameter is ``params`` (None otherwise)."""
    import typing

    from pydantic import BaseModel

    hints = typing.get_type_hints(flow.fn)  # type: ignore[attr-defined]
    model = hints.get("params")
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def test_trigger_parameters_are_a_whole_valid_params_model() -> None:
    from storage.params import FanoutParams

    (spec,) = BY_NAME["prelabel-on-upload"]["triggers"]
    rendered = {**spec["parameters"]["params"], "source": "s3://maskloop/incoming/a.jpg"}
    assert FanoutParams.model_validate(rendered).project == "maskloop"


# -- schedules, triggers, limits ------------------------------------------------------------------------------------
BY_NAME = {d["name"]: d for d in SPEC["deployments"]}
POOL_DIR = ROOT / "deployments" / "work-pools"


@pytest.mark.parametrize(
    ("name", "cron"), [("prelabel", "0 * * * *"), ("harvest", "30 2 * * *")], ids=["hourly", "nightly"]
)
def test_scheduled_deployments_have_their_cron_in_utc(name: str, cron: str) -> None:
    from prefect.schedules import Cron

    (schedule,) = BY_NAME[name]["schedules"]
    assert (schedule["cron"], schedule["timezone"]) == (cron, "UTC")
    Cron(schedule["cron"], timezone=schedule["timezone"])  # parses


def test_on_upload_deployment_is_triggered_by_s3_object_created_with_bucket_and_key_from_the_payload() -> None:
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    deployment = BY_NAME["prelabel-on-upload"]
    (spec,) = deployment["triggers"]
    trigger = DeploymentEventTrigger.model_validate(spec)
    assert trigger.expect == {"s3.object.created"}
    assert trigger.parameters["params"]["source"] == "s3://{{ event.payload.bucket }}/{{ event.payload.key }}"
    assert "parameters" not in deployment, "the trigger supplies the whole parameters model"


@pytest.mark.parametrize("name", ["prelabel", "prelabel-on-upload", "harvest", "discover-every-15-min"])
def test_each_source_deployment_runs_one_at_a_time(name: str) -> None:
    assert BY_NAME[name]["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}


def test_fanout_dispatches_to_the_unit_deployment_on_the_gpu_pool() -> None:
    unit = BY_NAME["prelabel-unit"]
    flow_name = "prelabel-unit"
    assert BY_NAME["prelabel"]["parameters"]["params"]["deployment_name"] == f"{flow_name}/{unit['name']}"
    assert unit["work_pool"]["name"] == "maskloop-gpu"


def test_active_learning_runs_weekly_after_the_nightly_harvest_on_the_gpu_pool_one_at_a_time() -> None:
    from prefect.schedules import Cron

    deployment = BY_NAME["active-learning"]
    (schedule,) = deployment["schedules"]
    assert (schedule["cron"], schedule["timezone"]) == ("0 4 * * 1", "UTC")
    Cron(schedule["cron"], timezone=schedule["timezone"])  # parses
    assert deployment["work_pool"]["name"] == "maskloop-gpu"
    assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert deployment["parameters"]["params"]["gpu_limit"] == "gpu"
    harvested = BY_NAME["harvest"]["parameters"]["params"]["project"]
    assert deployment["parameters"].get("params", deployment["parameters"])["project"] == harvested


# -- work pools -----------------------------------------------------------------------------------------------------
def _placeholders(value: object) -> set[str]:
    import re

    if isinstance(value, str):
        return set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", value))
    if isinstance(value, dict):
        return set().union(*(_placeholders(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_placeholders(v) for v in value)) if value else set()
    return set()


def _template(name: str) -> dict:
    import json

    return json.loads((POOL_DIR / name).read_text())


def _render_defaults(template: dict) -> dict:
    from prefect.utilities.templating import apply_values

    defaults = {k: v.get("default") for k, v in template["variables"]["properties"].items()}
    return apply_values(template["job_configuration"], defaults)


@pytest.mark.parametrize("name", ["process.json", "kubernetes-gpu.json", "docker-gpu.json"])
def test_base_job_template_is_job_configuration_plus_a_json_schema_declaring_every_placeholder(name: str) -> None:
    from jsonschema import Draft202012Validator

    template = _template(name)
    assert set(template) == {"job_configuration", "variables"}
    variables = template["variables"]
    Draft202012Validator.check_schema(variables)
    assert variables["type"] == "object"
    undeclared = _placeholders(template["job_configuration"]) - set(variables["properties"])
    assert not undeclared, f"{name}: placeholders without a variable: {sorted(undeclared)}"
    defaults = {k: v["default"] for k, v in variables["properties"].items() if "default" in v}
    Draft202012Validator(variables).validate(defaults)


def test_process_template_keeps_prefects_process_job_configuration() -> None:
    from prefect.workers.process import ProcessWorker

    default = ProcessWorker.get_default_base_job_template()
    template = _template("process.json")
    assert template["job_configuration"] == default["job_configuration"]
    assert set(template["variables"]["properties"]) == set(default["variables"]["properties"])


def test_kubernetes_template_requests_one_nvidia_gpu_per_pod() -> None:
    config = _render_defaults(_template("kubernetes-gpu.json"))
    (container,) = config["job_manifest"]["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert config["job_manifest"]["kind"] == "Job" and container["image"] == "maskloop-worker:latest"


def test_docker_template_requests_a_gpu_device() -> None:
    config = _render_defaults(_template("docker-gpu.json"))
    (request,) = config["container_create_kwargs"]["device_requests"]
    assert request == {"driver": "nvidia", "count": 1, "capabilities": [["gpu"]]}


def test_worker_dockerfile_installs_cuda_torch_and_the_project() -> None:
    text = (ROOT / "deployments" / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM ${CUDA_IMAGE}" in text and "nvidia/cuda:" in text
    assert "torch.version.cuda" in text and "pip install --no-deps -e ." in text
    for package in ("flows/", "tasks/", "model/", "storage/"):
        assert f"COPY {package} {package}" in text


def test_worker_dockerfile_names_no_package_index_host_and_takes_one_as_a_build_argument() -> None:
    text = (ROOT / "deployments" / "Dockerfile").read_text()
    assert 'ARG TORCH_INDEX=""' in text and '${TORCH_INDEX:+--index-url "$TORCH_INDEX"}' in text
    hosts = re.findall(r"https?://[^\s\"']+", text)
    assert hosts == [], f"the Dockerfile names hosts: {hosts}"
