"""Flow ``prelabel``: bucket → SAM 2 → Label Studio, resumable and overlapped.

Discover new asset revisions, then per batch: fetch (threads) → decode (a thread) → segment (the model, in the
flow's thread) → store (a thread) → import into Label Studio (threads). The fetch and import bodies run in a helper
process (:mod:`storage.io_helper.process`). While batch k is being segmented, batch k+1 is downloaded and decoded and
batches k-1 and k-2 are imported. Kill it at any point and run it again: nothing already imported is lost or
imported twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.context import get_run_context
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from flows import reconcile
from storage import run_report
from storage.catalog.runs import recorded_run
from storage.io_helper.process import IoProcess
from storage.params import PrelabelParams
from storage.prelabel import plan
from storage.prelabel.predict import Prepared
from storage.services import Services
from storage.settings import Settings
from tasks.discovery import discover_assets
from tasks.prelabel import (
    fetch_batch,
    import_batch,
    open_job,
    plan_batches,
    prepare_batch,
    segment_batch,
    store_predictions,
)

# Batch progress for terminals: ``maskloop prelabel`` draws a bar from these records (extra: done, total, assets).
progress_log = logging.getLogger("maskloop.progress")
stage_log = logging.getLogger("maskloop.stage")  # one line per stage for terminals
PROGRESS_EVERY_S = 5.0  # the Prefect progress artifact is updated at most this often (and at the end)
# The I/O helper process takes ~1 s of a core to start, and calls run in the flow's threads until it is ready: a run
# of fewer batches than this (the first 1-2 run in-thread anyway) does not start it.
IO_PROCESS_MIN_BATCHES = 3


@dataclass(frozen=True)
class PrelabelResult:
    """What a pre-label run did: its run and job, the counts and the timings (seconds per stage, wall time)."""

    run_id: int
    job_id: int
    model_version: str
    counts: dict[str, float]
    timings: dict[str, float]
    io_helper_calls: int = 0

    def count(self, name: str) -> int:
        return int(self.counts.get(name, 0))


@flow(name="prelabel", task_runner=ThreadPoolTaskRunner(max_workers=4))  # type: ignore[arg-type]
def prelabel_flow(params: PrelabelParams, settings: Settings | None = None) -> PrelabelResult:
    """Pre-label every current image and video under ``params.source`` (``s3://bucket/prefix``) that this job
    (project, model version, prompts) has not covered yet into Label Studio; ``params.retry_failed`` also retries its
    permanent failures (transient ones are always retried)."""
    settings = settings or Settings()
    logger = get_run_logger()
    params = params.with_model(settings.model_id)
    source = params.source
    services = Services(settings)
    catalog = services.catalog
    reconcile.at_run_start(catalog)  # runs a killed process left RUNNING -> CRASHED (flows/reconcile.py)
    flow_run_id = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
    model_version, io_helper_calls, job_id = "", 0, 0
    try:
        with recorded_run(catalog, "prelabel", params.model_dump(mode="json"), flow_run_id, plan.EMPTY_COUNTS) as run:
            counts = run.counts
            job = open_job(services, run.id, params)  # loads the model: a missing checkpoint fails before any work
            run.lineage = (job.model_id, job.checkpoint_sha256)
            model_version, job_id = job.model_version, job.id
            found = discover_assets(services, source)
            stage_log.info(
                "%s: %d media objects listed (%d new)%s",
                source,
                found.listed,
                len(found.new_asset_ids),
                f", {found.not_media} skipped as not media (`maskloop skipped {source}`)" if found.not_media else "",
            )
            batches = plan_batches(services, job_id, params)
            todo = sum(len(b) for b in batches)
            counts["assets"] = todo
            logger.info(
                "job %d: %d assets to pre-label in %d batches with %s", job_id, todo, len(batches), model_version
            )
            stage_log.info("job %d: %d assets to pre-label from %s with %s", job_id, todo, source, model_version)
            on_batch = _progress_reporter(source, counts, batches, todo, time.perf_counter())
            io_helper_calls = run_batches(services, run.id, batches, params, model_version, counts, on_batch=on_batch)
    finally:
        services.close()
    create_markdown_artifact(
        run_report.markdown(run_report.summarize_run(catalog, run.id)),
        key="prelabel-report",
        description=f"prelabel {source} (the pictures: `maskloop runs show {run.id} --report out.html`)",
    )
    catalog.dispose()
    logger.info("prelabel run %d: %s in %.1fs", run.id, run.counts, run.timings["seconds"])
    return PrelabelResult(run.id, job_id, model_version, dict(run.counts), dict(run.timings), io_helper_calls)


def _progress_reporter(
    source: str, counts: dict[str, float], batches: list[list[int]], assets: int, started: float
) -> Callable[[int, int], None]:
    """Batch progress: the Prefect progress artifact (at most every ``PROGRESS_EVERY_S``) and a ``maskloop.progress``
    record per batch for terminals."""
    progress: Any = None  # created with the first batch's figure: one API call fewer per run
    shown = time.monotonic()

    def on_batch(done: int, total: int) -> None:
        nonlocal shown, progress
        if progress is None:
            progress = create_progress_artifact(100.0 * done / total, description=f"prelabel {source}")
            shown = time.monotonic()
        elif done == total or time.monotonic() - shown >= PROGRESS_EVERY_S:  # an API call: not per batch
            update_progress_artifact(progress, 100.0 * done / total)
            shown = time.monotonic()
        progress_log.info(
            "batch %d/%d",
            done,
            total,
            extra={
                "done": done,
                "total": total,
                "assets": assets,
                "processed": sum(len(b) for b in batches[:done]),
                "masks": int(counts["instances"]),
                "failed": int(counts["failed"]),
                "elapsed": time.perf_counter() - started,
            },
        )

    return on_batch


def gpu_slot(gpu_limit: str | None) -> AbstractContextManager[Any]:
    """Hold one slot of the global concurrency limit ``gpu_limit`` (strict: it must exist) around model work."""
    if not gpu_limit:
        return nullcontext()
    from prefect.concurrency.sync import concurrency

    return concurrency(gpu_limit, occupy=1, strict=True)


def store_thread() -> ThreadPoolExecutor:
    """The thread that stores each segmented batch (COCO RLE, catalog rows) while the model works on the next."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="maskloop-store")


def prepare_thread() -> ThreadPoolExecutor:
    """The thread that makes each fetched batch ready for the model (catalog query, image decode) while the model
    works on the batch before."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="maskloop-prepare")


def _fetched_and_prepared(
    services: Services, fetched: PrefectFuture[plan.StageReport], model_version: str
) -> tuple[plan.StageReport, Prepared]:
    """Wait for a batch's download, then prepare what it fetched (in the prepare thread)."""
    got = fetched.result()
    return got, prepare_batch(services, got.ok, model_version)


def run_batches(
    services: Services,
    run_id: int,
    batches: list[list[int]],
    params: PrelabelParams,
    model_version: str,
    counts: dict[str, float],
    gpu_limit: str | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> int:
    """The pre-label pipeline over ``batches``: batch k+1 downloads and is decoded (a thread) while batch k is on the
    model (in the flow's thread, inside a ``gpu_limit`` slot when given; its masks are then stored in a thread) and
    batches k-1 and k-2 are imported into Label Studio (so one batch of decoded images waits beside the model's). The
    download and import bodies run in an I/O helper process (``settings.io_process``) so they do not slow the model
    thread down.
    ``counts`` (done, failed, instances, skipped, stage seconds) is updated as batches finish, so a crash leaves what
    was counted. Returns how many I/O calls ran in the helper process (the rest ran in threads while it started)."""
    settings = services.settings
    helper = settings.io_process and len(batches) >= IO_PROCESS_MIN_BATCHES
    with (
        IoProcess(enabled=helper, wait_ready_s=settings.io_process_wait_s) as io,
        store_thread() as storer,
        prepare_thread() as preparer,
    ):
        ready_for_model: dict[int, Future[tuple[plan.StageReport, Prepared]]] = {}
        stores: list[Future[plan.StageReport]] = []
        imports: list[PrefectFuture[plan.StageReport]] = []

        def fetch_and_prepare(k: int) -> None:
            fetched = fetch_batch.submit(services, run_id, batches[k], io)
            ready_for_model[k] = preparer.submit(_fetched_and_prepared, services, fetched, model_version)

        if batches:
            fetch_and_prepare(0)
        for k in range(len(batches)):
            got, prepared = ready_for_model.pop(k).result()
            counts["fetch_seconds"] += got.seconds
            counts["model_seconds"] += prepared.seconds
            if k + 1 < len(batches):  # batch k+1 downloads and decodes while batch k is on the model (k goes first)
                fetch_and_prepare(k + 1)
            counts["failed"] += len(got.failed)
            with gpu_slot(gpu_limit):
                seg = segment_batch(services, prepared, params, model_version)
            counts["model_seconds"] += seg.seconds
            counts["failed"] += len(seg.failed)
            counts["instances"] += seg.instances
            counts["skipped"] += len(seg.skipped)
            # The masks' COCO RLE and the catalog rows in the store thread, so the model thread goes on to batch k+1;
            # batch k-1's store ends first (at most two batches of masks in memory).
            if stores:
                stores[-1].result()  # a failed store (the catalog gone) fails the run here, as the model step would
            stores.append(storer.submit(store_predictions, services, run_id, model_version, seg))
            ready = sorted([*seg.ok, *seg.skipped])
            # The first import creates the project(s); after it, two imports overlap (one builds its payload while the
            # other waits for Label Studio; the importer's project lock orders their posts): k waits for k-2.
            after = imports[:1] + [f for f in imports[-2:-1] if f is not imports[0]]
            imports.append(
                import_batch.submit(  # type: ignore[call-overload]
                    services, run_id, ready, params, model_version, io, stores[-1], wait_for=after
                )
            )
            if on_batch is not None:
                on_batch(k + 1, len(batches))
        for stored in stores:
            counts["model_seconds"] += stored.result().seconds
        for future in imports:
            imported = future.result()
            counts["import_seconds"] += imported.seconds
            counts["done"] += len(imported.ok)
            counts["failed"] += len(imported.failed)
            counts["refreshed"] += imported.refreshed
            counts["kept"] += imported.kept
            counts["video_frames"] += imported.video_frames
            counts["frame_tasks"] += imported.frame_tasks
    if batches:
        get_run_logger().info(
            "I/O stages: %d calls in the helper process, %d in the flow's threads",
            io.calls_in_child,
            io.calls_in_thread,
        )
    return io.calls_in_child
