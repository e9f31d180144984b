"""Pre-label jobs through the CLI (issue: one bucket, many pre-label jobs), against real servers: moto S3 behind a
fault proxy, the real Label Studio, Prefect's test harness, tiny real SAM 2 checkpoints, SQLite and PostgreSQL.

One bucket of 4 images and a corrupt one is pre-labelled: with one object's GET failing transiently, then again,
unchanged; into a second project; into the first project with another model (one task annotated meanwhile); and with
``--retry-failed``. Each step's printed counts, ``runs show``, ``jobs list/show`` and Label Studio's tasks are checked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flows.cli import main
from storage.catalog import Catalog
from storage.labelstudio.client import LabelStudioClient
from storage.settings import Settings
from tests.flows.test_prelabel import LOOSE, ls_tasks
from tests.support.fault_proxy import Fault, fault_proxy


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny SAM 2 (other seed, other weights): the 'new model' of a project."""
    from tests.support.tiny_models import save_tiny_sam2

    return save_tiny_sam2(tmp_path_factory.mktemp("sam2-other") / "tiny-v2", seed=7, image_size=64, hidden_size=128)


def _env(monkeypatch: pytest.MonkeyPatch, settings: Settings, s3_url: str) -> None:
    secret = {
        "MASKLOOP_S3_ACCESS_KEY_ID": settings.s3_access_key_id,
        "MASKLOOP_S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key,
        "MASKLOOP_LABEL_STUDIO_TOKEN": settings.label_studio_token,
    }
    for name, value in secret.items():
        monkeypatch.setenv(name, value.get_secret_value() if value is not None else "")
    monkeypatch.setenv("MASKLOOP_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("MASKLOOP_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("MASKLOOP_S3_ENDPOINT_URL", s3_url)
    monkeypatch.setenv("MASKLOOP_S3_RETRY_ATTEMPTS", "1")  # the S3 client's own retries; maskloop's still apply
    monkeypatch.setenv("MASKLOOP_LABEL_STUDIO_URL", settings.label_studio_url)
    monkeypatch.setenv("MASKLOOP_MODEL_ID", str(settings.model_id))
    monkeypatch.setenv("MASKLOOP_DEVICE", "cpu")
    monkeypatch.setenv("MASKLOOP_IO_PROCESS", "false")


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 0, f"maskloop {' '.join(argv)} failed"
    return capsys.readouterr().out


def _prelabel(capsys: pytest.CaptureFixture[str], source: str, *extra: str) -> tuple[str, dict[str, Any]]:
    loose = [arg for name, value in LOOSE.items() for arg in ("--param", f"{name}={value}")]
    out = _cli(capsys, "prelabel", source, "--batch-size", "2", *loose, *extra)
    found = re.search(r"run (\d+) \(job (\d+)\): (\d+)/(\d+) assets pre-labelled, (\d+) failed", out)
    assert found, f"no summary line in:\n{out}"
    run, job, done, assets, failed = map(int, found.groups())
    return out, {"run": run, "job": job, "done": done, "assets": assets, "failed": failed}


def _predicted_versions(client: LabelStudioClient, catalog: Catalog, project: str) -> dict[int, set[str]]:
    return {
        int(t["data"]["maskloop_asset_id"]): {p["model_version"] for p in t["predictions"]}
        for t in ls_tasks(client, catalog, project)
    }


def test_one_bucket_feeds_many_jobs_and_each_resumes_retries_and_refreshes_by_itself(
    prefect_api: str,
    flow_settings: Settings,
    second_checkpoint: Path,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = fill_bucket(images=4, videos=0, broken=1)
    source, tag = f"s3://{bucket}/in/", bucket[-6:]
    first, second = f"a-{tag}", f"b-{tag}"
    catalog = Catalog(flow_settings.resolved_database_url)
    flaky = keys["image"][3]
    with fault_proxy(str(flow_settings.s3_endpoint_url)) as proxy:
        _env(monkeypatch, flow_settings, proxy.url)

        # 1. one object's GET answers 503 SlowDown: a transient failure; the corrupt one is a permanent failure
        proxy.faults.append(Fault("GET", f"/{bucket}/{flaky}"))
        _, got = _prelabel(capsys, source, "--project", first)
        assert (got["done"], got["assets"], got["failed"]) == (3, 5, 2)
        assert proxy.faults[0].hits >= 1, "the fault proxy never saw the object's download"
        shown = _cli(capsys, "runs", "show", str(got["run"]))
        assert re.search(rf"s3://{bucket}/{re.escape(flaky)} \[fetch, transient\] .*SlowDown", shown), shown
        assert re.search(rf"s3://{bucket}/{re.escape(keys['broken'][0])} \[fetch, permanent\]", shown), shown
        job_a = got["job"]

        # 2. the outage is over: the same job retries only the transient failure
        proxy.heal()
        _, got = _prelabel(capsys, source, "--project", first)
        assert (got["job"], got["done"], got["assets"], got["failed"]) == (job_a, 1, 1, 0)
        assert len(ls_tasks(ls_client, catalog, f"{first} (images)")) == 4

        # 3. unchanged job: nothing to do, nothing imported
        forwarded = proxy.forwarded
        _, got = _prelabel(capsys, source, "--project", first)
        assert (got["job"], got["done"], got["assets"], got["failed"]) == (job_a, 0, 0, 0)
        assert len(ls_tasks(ls_client, catalog, f"{first} (images)")) == 4
        assert proxy.forwarded - forwarded <= 2, "an unchanged job should only list the bucket"

        # 4. a second project over the same bucket finds every current revision (the corrupt one fails for it too)
        _, got = _prelabel(capsys, source, "--project", second)
        assert got["job"] != job_a and (got["done"], got["assets"], got["failed"]) == (4, 5, 1)
        assert len(ls_tasks(ls_client, catalog, f"{second} (images)")) == 4
        job_b = got["job"]

        # 5. the first project switches model: unannotated tasks get the new prediction, the annotated one is kept
        tasks = ls_tasks(ls_client, catalog, f"{first} (images)")
        annotated = tasks[0]
        ls_client.create_annotation(annotated["id"], annotated["predictions"][0]["result"])
        old_version = annotated["predictions"][0]["model_version"]
        out, got = _prelabel(capsys, source, "--project", first, "--model", str(second_checkpoint))
        assert got["job"] not in (job_a, job_b) and (got["done"], got["assets"], got["failed"]) == (4, 5, 1)
        assert "existing tasks: 3 got the new prediction, 1 already annotated were left alone" in out, out
        versions = _predicted_versions(ls_client, catalog, f"{first} (images)")
        assert len(versions) == 4, "a model switch must not create tasks"
        kept_asset = int(annotated["data"]["maskloop_asset_id"])
        for asset_id, seen in versions.items():
            if asset_id == kept_asset:
                assert seen == {old_version}, f"the annotated task got a new prediction: {seen}"
            else:
                assert old_version in seen and len(seen) == 2, f"asset {asset_id}: predictions {seen}"
                assert any(v.startswith("tiny-v2@") for v in seen), f"asset {asset_id}: {seen}"

        # 6. --retry-failed tries the permanent failure again (and it fails again, named)
        _, got = _prelabel(capsys, source, "--project", second, "--retry-failed")
        assert (got["job"], got["done"], got["assets"], got["failed"]) == (job_b, 0, 1, 1)

    listed = _cli(capsys, "jobs", "list")
    rows = {
        int(m[0]): tuple(map(int, m[1:4])) for m in re.findall(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s", listed, re.M)
    }
    assert rows[job_a] == (4, 0, 1) and rows[job_b] == (4, 0, 1), listed
    shown = _cli(capsys, "jobs", "show", str(job_a))
    assert f"project '{first}'" in shown and "covered 4, pending 0, failed 1 (0 transient" in shown, shown
    assert f"s3://{bucket}/{keys['broken'][0]} [fetch, permanent]" in shown, shown
    catalog.dispose()
