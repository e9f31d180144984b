"""Prefect tasks of the pre-label flow: one task per batch (32-256 images or one video), ids in, ids out.

I/O tasks (S3, Label Studio, SQL) retry with exponential backoff and jitter; the model task is not retried on bad
input (bad objects are recorded and skipped inside it). The model is loaded once per worker process. The I/O task
bodies run in the flow's I/O helper process when it has one (``io``; :mod:`tasks.io_process`), so their Python does
not take the GIL from the model thread; retries, states and logs stay with the task here.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from storage.catalog import Catalog
from storage.settings import Settings
from tasks import prelabel_ops as ops
from tasks.io_process import IoProcess
from tasks.models import Models


def is_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry I/O failures that may pass (connection errors, 5xx, 429); not bad input or 4xx answers."""
    from botocore.exceptions import ClientError

    from storage.labelstudio.client import LabelStudioError

    error = state.result(raise_on_failure=False)
    if isinstance(error, LabelStudioError):
        return error.status >= 500 or error.status == 429
    if isinstance(error, ClientError):
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return status >= 500 or status == 429
    return not isinstance(error, (ValueError, TypeError, KeyError, PermissionError))


_IO_RETRIES: dict[str, Any] = {
    "retry_condition_fn": is_transient,
    "retries": 3,
    "retry_delay_seconds": [1, 4, 16],
    "retry_jitter_factor": 0.5,
    "cache_policy": NO_CACHE,
}


def _timed(fn: Any, *args: Any) -> ops.StageReport:
    start = time.perf_counter()
    report: ops.StageReport = fn(*args)
    report.seconds = time.perf_counter() - start
    return report


def _in(io: IoProcess | None) -> Any:
    """How a stage body is called: in the I/O helper process when there is one (and it is up), else here."""
    return io.call if io is not None else lambda fn, *args: fn(*args)


@task(name="fetch-batch", **_IO_RETRIES)
def fetch_batch(
    settings: Settings, catalog_url: str, run_id: int, asset_ids: list[int], io: IoProcess | None = None
) -> ops.StageReport:
    report = _timed(_in(io), ops.fetch_at, settings, catalog_url, run_id, asset_ids)
    get_run_logger().info("fetched %d assets (%d failed) in %.2fs", len(report.ok), len(report.failed), report.seconds)
    return report


# No task tag here: a tag costs a concurrency-slot API round trip per call (~1-3 s on a busy server). Model work across
# workers is capped by the global concurrency limit `gpu`, one slot held around each batch (flows.prelabel.gpu_slot).
@task(name="segment-batch", cache_policy=NO_CACHE)
def segment_batch(
    settings: Settings,
    catalog_url: str,
    run_id: int,
    asset_ids: list[int],
    params: ops.PrelabelParams,
    model_version: str,
) -> ops.StageReport:
    models = Models.load(settings, params.model_id, params.strategy)
    with Catalog(catalog_url, migrate=False) as catalog:
        report = _timed(ops.segment, settings, catalog, run_id, asset_ids, params, model_version, models)
    get_run_logger().info(
        "segmented %d assets -> %d instances (%d failed, %d already done) in %.2fs",
        len(report.ok),
        report.instances,
        len(report.failed),
        len(report.skipped),
        report.seconds,
    )
    return report


@task(name="import-batch", **_IO_RETRIES)
def import_batch(
    settings: Settings,
    catalog_url: str,
    run_id: int,
    asset_ids: list[int],
    params: ops.PrelabelParams,
    model_version: str,
    io: IoProcess | None = None,
) -> ops.StageReport:
    report = _timed(_in(io), ops.import_at, settings, catalog_url, run_id, asset_ids, params, model_version)
    get_run_logger().info(
        "imported %d assets into Label Studio (%d new tasks) in %.2fs", len(report.ok), report.instances, report.seconds
    )
    return report
