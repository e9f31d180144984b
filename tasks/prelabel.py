"""Prefect tasks of the pre-label flow: one task per batch (32-256 images or one video), ids in, ids out.

I/O tasks (S3, Label Studio, SQL) retry with exponential backoff and jitter; the model task is not retried on bad
input (bad objects are recorded and skipped inside it). The model is loaded once per worker process. The I/O task
bodies run in the flow's I/O helper process when it has one (``io``; :mod:`storage.io_helper.process`), so their Python does
not take the GIL from the model thread; retries, states and logs stay with the task here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, cast

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from storage import leases
from storage.io_helper.process import IoProcess
from storage.params import FanoutParams, PrelabelParams
from storage.prelabel import fetch, imports, plan, predict
from storage.prelabel.plan import JobRef, StageReport
from storage.services import Services
from tasks.models import Models, model_identity


def is_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry what the clients' own retry layer (:mod:`storage.retry`) did not: a lost I/O helper process, connection
    errors outside a policy, and a catalog that stayed unavailable (a database restart may outlast its bounds).
    Never an error a policy already retried to its bounds, bad input, or a 4xx answer."""
    from botocore.exceptions import ClientError

    from storage.catalog.db import CatalogUnavailableError
    from storage.labelstudio.client import LabelStudioError
    from storage.retry import retries_exhausted

    error = state.result(raise_on_failure=False)
    if isinstance(error, CatalogUnavailableError):
        return True
    if isinstance(error, BaseException) and retries_exhausted(error):
        return False
    if isinstance(error, LabelStudioError):
        return error.status >= 500 or error.status == 429
    if isinstance(error, ClientError):
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return status >= 500 or status == 429
    return not isinstance(error, (ValueError, TypeError, KeyError, PermissionError))


_IO_RETRIES: dict[str, Any] = {
    "retry_condition_fn": is_transient,
    "retries": 1,
    "retry_delay_seconds": [2],
    "retry_jitter_factor": 0.5,
    "cache_policy": NO_CACHE,
}


def _timed(call: Any, fn: Any, *args: Any) -> StageReport:
    """``call(fn, *args)`` (here or in the I/O helper) with its wall ``seconds`` and the body's ``cpu_seconds``."""
    start = time.perf_counter()
    report: StageReport = call(plan.cpu_timed, fn, *args)
    report.seconds = time.perf_counter() - start
    return report


def _here(fn: Any, *args: Any) -> Any:
    return fn(*args)


def _in(io: IoProcess | None) -> Any:
    """How a stage body is called: in the I/O helper process when there is one (and it is up), else here."""
    return io.call if io is not None else _here


@task(name="open-job", cache_policy=NO_CACHE)
def open_job(services: Services, run_id: int | None, params: PrelabelParams, *, load_model: bool = True) -> JobRef:
    """The pre-label job of ``params`` (project, model version, prompts), created when new. With ``load_model`` the
    model is loaded (once per process; a checkpoint that is not here fails now, before any work) and its lineage
    named; without, the dispatcher names it from the weight files alone."""
    if load_model:
        models = Models.load(services.settings, params.model_id, params.strategy)
        identity = (str(models.segmenter.model_id), str(models.segmenter.checkpoint_sha256))
    else:
        identity = model_identity(params.model_id)
    return plan.open_job(services.catalog, run_id, params, *identity)


@task(name="plan-batches", cache_policy=NO_CACHE)
def plan_batches(
    services: Services, job_id: int, params: PrelabelParams, among: Sequence[int] | None = None
) -> list[list[int]]:
    """The job's pending assets under ``params.source`` in batches (videos alone): at most ``params.limit`` of
    them, or those of a work unit's ``among``."""
    limit = params.limit if among is None else None
    todo = plan.pending_of(
        services.catalog, job_id, params.source, limit, retry_failed=params.retry_failed, among=among
    )
    return plan.batches_of(services.catalog, todo, params.batch_size)


@task(name="shard-units", cache_policy=NO_CACHE)
def shard_units(services: Services, job_id: int, params: FanoutParams) -> tuple[list[int], list[int]]:
    """Shard the job's pending assets under the source into work units: ``(new unit ids, free unit ids)`` (free: new,
    or whose holder's lease expired)."""
    catalog, source = services.catalog, params.source
    pending = plan.pending_of(catalog, job_id, source, params.limit, retry_failed=params.retry_failed)
    new_units = leases.shard_pending(catalog, source, pending, params.unit_size, job_id=job_id)
    return new_units, leases.free_unit_ids(catalog, source, job_id=job_id)


@task(name="fetch-batch", **_IO_RETRIES)
def fetch_batch(services: Services, run_id: int, asset_ids: list[int], io: IoProcess | None = None) -> StageReport:
    report = _timed(_in(io), fetch.fetch, services, run_id, asset_ids)
    get_run_logger().info("fetched %d assets (%d failed) in %.2fs", len(report.ok), len(report.failed), report.seconds)
    return report


def prepare_batch(services: Services, asset_ids: list[int], model_version: str) -> predict.Prepared:
    """A fetched batch made ready for the model: which assets still lack this model version's prediction, their
    images decoded. Not a task of its own (a task run costs ~5 API calls, and nothing here needs a retry the catalog
    layer does not give): the flow runs it in a thread while the model works on the batch before."""
    return cast(predict.Prepared, _timed(_here, predict.prepare, services, asset_ids, model_version))


# No task tag here: a tag costs a concurrency-slot API round trip per call (~1-3 s on a busy server). Model work across
# workers is capped by the global concurrency limit `gpu`, one slot held around each batch (flows.prelabel.gpu_slot).
@task(name="segment-batch", cache_policy=NO_CACHE)
def segment_batch(
    services: Services, prepared: predict.Prepared, params: PrelabelParams, model_version: str
) -> predict.Predicted:
    """The model's part of a batch, in the calling (model) thread: the model on a batch from :func:`prepare_batch`;
    nothing stored yet. Pass the result to :func:`store_predictions` (another thread), so the masks' COCO RLE and the
    catalog write of batch k run while the model works on batch k+1."""
    models = Models.load(services.settings, params.model_id, params.strategy)
    report = _timed(_here, predict.predict, services, prepared, models.predictor(params))
    get_run_logger().info(
        "segmented %d assets -> %d instances (%d failed, %d already done) in %.2fs",
        len(report.ok),
        report.instances,
        len(report.failed),
        len(report.skipped),
        report.seconds,
    )
    return cast(predict.Predicted, report)  # predict.predict's report is a Predicted


def store_predictions(services: Services, run_id: int, model_version: str, predicted: predict.Predicted) -> StageReport:
    """Store a segmented batch: the masks as COCO RLE in one prediction row per asset, and its failures. Not a task
    of its own (a task run costs ~5 API calls): the flow runs it in a thread, and ``import_batch`` waits for it."""
    return _timed(_here, predict.store, services, run_id, model_version, predicted)


@task(name="import-batch", **_IO_RETRIES)
def import_batch(
    services: Services,
    run_id: int,
    asset_ids: list[int],
    params: PrelabelParams,
    model_version: str,
    io: IoProcess | None = None,
    stored: Future[StageReport] | None = None,
) -> StageReport:
    """Import a batch's stored predictions (``stored``: the batch's :func:`store_predictions`, waited for first; its
    failure fails this task, which the flow reports)."""
    if stored is not None:
        stored.result()
    report = _timed(_in(io), imports.import_predictions, services, run_id, asset_ids, params, model_version)
    get_run_logger().info(
        "imported %d assets into Label Studio (%d new tasks, %d video key-frame tasks, %d failed) in %.2fs",
        len(report.ok),
        report.instances,
        report.frame_tasks,
        len(report.failed),
        report.seconds,
    )
    return report
