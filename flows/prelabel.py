"""Flow ``prelabel``: bucket → SAM 2 → Label Studio, resumable and overlapped.

Discover new asset revisions, then per batch: fetch (threads) → segment (the model, in the flow's thread) →
import into Label Studio (threads). The fetch and import bodies run in a helper process (:mod:`tasks.io_process`). While batch k is being segmented, batch k+1 is downloaded and batch k-1 is
imported. Kill it at any point and run it again: nothing already imported is lost or imported twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.context import get_run_context
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from storage import run_report
from storage.catalog import Catalog
from storage.settings import Settings
from tasks import prelabel_ops as ops
from tasks.discovery import discover_assets
from tasks.io_process import IoProcess
from tasks.models import Models
from tasks.prelabel import fetch_batch, import_batch, segment_batch

# Batch progress for terminals: ``maskloop prelabel`` draws a bar from these records (extra: done, total, assets).
progress_log = logging.getLogger("maskloop.progress")
stage_log = logging.getLogger("maskloop.stage")  # one line per stage for terminals
PROGRESS_EVERY_S = 5.0  # the Prefect progress artifact is updated at most this often (and at the end)


@flow(name="prelabel", task_runner=ThreadPoolTaskRunner(max_workers=4))  # type: ignore[arg-type]
def prelabel_flow(
    source: str,
    classes: list[str] | None = None,
    strategy: str = "everything",
    model_id: str | None = None,
    project: str = "maskloop",
    batch_size: int = 32,
    limit: int | None = None,
    video_every: int = 1,
    video_target_fps: float | None = None,
    key_frame_interval: int = 30,
    video_max_frames: int | None = None,
    strategy_params: dict[str, Any] | None = None,
    retry_failed: bool = False,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Pre-label every current image and video under ``source`` (``s3://bucket/prefix``) that this job (project,
    model version, prompts) has not covered yet into Label Studio; ``retry_failed`` also retries its permanent
    failures (transient ones are always retried)."""
    settings = settings or Settings()
    logger = get_run_logger()
    params = ops.PrelabelParams(
        source=source,
        strategy=strategy,  # type: ignore[arg-type]
        classes=tuple(classes or ()),
        model_id=model_id or settings.model_id,
        project=project,
        batch_size=batch_size,
        limit=limit,
        video_every=video_every,
        video_target_fps=video_target_fps,
        key_frame_interval=key_frame_interval,
        video_max_frames=video_max_frames,
        strategy_params=dict(strategy_params or {}),
        retry_failed=retry_failed,
    )
    catalog_url = settings.resolved_database_url
    catalog = Catalog(catalog_url)
    flow_run_id = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
    run_id = ops.start_run(catalog, "prelabel", _jsonable(params), flow_run_id)
    started = time.perf_counter()
    counts: dict[str, float] = {**ops.EMPTY_COUNTS}
    status, model_version, io_helper_calls, job_id = "failed", "", 0, 0
    lineage: tuple[str | None, str | None] = (None, None)
    try:
        models = Models.load(settings, params.model_id, params.strategy)  # once per process; fails before any work
        model_id, checkpoint_sha = str(models.segmenter.model_id), str(models.segmenter.checkpoint_sha256)
        lineage = (model_id, checkpoint_sha)
        job = ops.open_job(catalog, run_id, params, model_id, checkpoint_sha)
        model_version, job_id = job.model_version, job.id
        found = discover_assets(settings, source)
        stage_log.info(
            "%s: %d media objects listed (%d new)%s",
            source,
            found.listed,
            len(found.new_asset_ids),
            f", {found.not_media} skipped as not media (`maskloop skipped {source}`)" if found.not_media else "",
        )
        todo = ops.pending_of(catalog, job_id, source, limit, retry_failed=params.retry_failed)
        batches = ops.batches_of(catalog, todo, params.batch_size)
        counts["assets"] = len(todo)
        logger.info(
            "job %d: %d assets to pre-label in %d batches with %s", job_id, len(todo), len(batches), model_version
        )
        stage_log.info("job %d: %d assets to pre-label from %s with %s", job_id, len(todo), source, model_version)
        progress = create_progress_artifact(0.0, description=f"prelabel {source}")
        shown = time.monotonic()

        def on_batch(done: int, total: int) -> None:
            nonlocal shown
            if done == total or time.monotonic() - shown >= PROGRESS_EVERY_S:  # an API call: not per batch
                update_progress_artifact(progress, 100.0 * done / total)  # type: ignore[arg-type]
                shown = time.monotonic()
            progress_log.info(
                "batch %d/%d",
                done,
                total,
                extra={
                    "done": done,
                    "total": total,
                    "assets": len(todo),
                    "processed": sum(len(b) for b in batches[:done]),
                    "masks": int(counts["instances"]),
                    "failed": int(counts["failed"]),
                    "elapsed": time.perf_counter() - started,
                },
            )

        io_helper_calls = run_batches(
            settings, catalog_url, run_id, batches, params, model_version, counts, on_batch=on_batch
        )
        status = "completed"
    finally:
        elapsed = time.perf_counter() - started
        timings = ops.stage_timings(counts, elapsed)  # the overhead is what the wall time adds to the stages
        ops.finish_run(catalog, run_id, status, counts, timings, *lineage)
        catalog.dispose()
    create_markdown_artifact(
        run_report.markdown(run_report.summarize_run(catalog, run_id)),
        key="prelabel-report",
        description=f"prelabel {source} (the pictures: `maskloop runs show {run_id} --report out.html`)",
    )
    catalog.dispose()
    logger.info("prelabel run %d: %s in %.1fs", run_id, counts, elapsed)
    return {
        "run_id": run_id,
        "job_id": job_id,
        "model_version": model_version,
        **counts,
        **timings,
        "io_helper_calls": io_helper_calls,
    }


def _jsonable(params: ops.PrelabelParams) -> dict[str, Any]:
    from dataclasses import asdict

    data = asdict(params)
    data["classes"] = list(params.classes)
    return data


def gpu_slot(gpu_limit: str | None) -> AbstractContextManager[Any]:
    """Hold one slot of the global concurrency limit ``gpu_limit`` (strict: it must exist) around model work."""
    if not gpu_limit:
        return nullcontext()
    from prefect.concurrency.sync import concurrency

    return concurrency(gpu_limit, occupy=1, strict=True)


def run_batches(
    settings: Settings,
    catalog_url: str,
    run_id: int,
    batches: list[list[int]],
    params: ops.PrelabelParams,
    model_version: str,
    counts: dict[str, float],
    gpu_limit: str | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> int:
    """The pre-label pipeline over ``batches``: batch k+1 downloads while batch k is on the model (in the flow's
    thread, inside a ``gpu_limit`` slot when given) and batch k-1 is imported into Label Studio. The download and
    import bodies run in an I/O helper process (``settings.io_process``) so they do not slow the model thread down.
    ``counts`` (done, failed, instances, skipped, stage seconds) is updated as batches finish, so a crash leaves what
    was counted. Returns how many I/O calls ran in the helper process (the rest ran in threads while it started)."""
    with IoProcess(enabled=settings.io_process and bool(batches), wait_ready_s=settings.io_process_wait_s) as io:
        fetched: dict[int, PrefectFuture[ops.StageReport]] = {}
        imports: list[PrefectFuture[ops.StageReport]] = []
        if batches:
            fetched[0] = fetch_batch.submit(settings, catalog_url, run_id, batches[0], io)
        for k in range(len(batches)):
            got = fetched.pop(k).result()
            counts["fetch_seconds"] += got.seconds
            if k + 1 < len(batches):  # download batch k+1 while batch k is on the model (not before: k goes first)
                fetched[k + 1] = fetch_batch.submit(settings, catalog_url, run_id, batches[k + 1], io)
            counts["failed"] += len(got.failed)
            with gpu_slot(gpu_limit):
                seg = segment_batch(settings, catalog_url, run_id, got.ok, params, model_version)
            counts["model_seconds"] += seg.seconds
            counts["failed"] += len(seg.failed)
            counts["instances"] += seg.instances
            counts["skipped"] += len(seg.skipped)
            ready = sorted([*seg.ok, *seg.skipped])
            imports.append(
                import_batch.submit(
                    settings, catalog_url, run_id, ready, params, model_version, io, wait_for=imports[-1:]
                )  # type: ignore[call-overload]
            )
            if on_batch is not None:
                on_batch(k + 1, len(batches))
        for future in imports:
            imported = future.result()
            counts["import_seconds"] += imported.seconds
            counts["done"] += len(imported.ok)
            counts["refreshed"] += imported.refreshed
            counts["kept"] += imported.kept
    if batches:
        get_run_logger().info(
            "I/O stages: %d calls in the helper process, %d in the flow's threads",
            io.calls_in_child,
            io.calls_in_thread,
        )
    return io.calls_in_child
