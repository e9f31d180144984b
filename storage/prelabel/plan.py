"""Planning a pre-label run on the catalog: its job, what is pending, the batches, and the failures it records.

Each stage takes and returns asset ids (arrays never cross a stage boundary) and reports a :class:`StageReport`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from storage.catalog import Asset, Catalog, RunFailure, jobs
from storage.params import PrelabelParams
from storage.s3 import parse_s3_uri

log = logging.getLogger(__name__)

# What a pre-label run counts (``refreshed``/``kept``: existing tasks given the job's prediction / left to the person
# who annotated them; ``video_frames``/``frame_tasks``: tracked frames with masks / their key-frame image tasks); the
# ``*_seconds`` (time spent in each stage's bodies) become timings when the run ends.
STAGE_SECONDS = ("fetch_seconds", "model_seconds", "import_seconds")
EMPTY_COUNTS: dict[str, float] = dict.fromkeys(
    (
        "assets",
        "done",
        "failed",
        "instances",
        "skipped",
        "refreshed",
        "kept",
        "video_frames",
        "frame_tasks",
        *STAGE_SECONDS,
    ),
    0,
)


@dataclass
class StageReport:
    ok: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    transient: set[int] = field(default_factory=set)  # of ``failed``, those a later run may get through (I/O, memory)
    skipped: list[int] = field(default_factory=list)
    instances: int = 0
    refreshed: int = 0  # import: existing tasks that got this model version's prediction
    kept: int = 0  # import: existing tasks a person already annotated, left alone
    video_frames: int = 0  # import: tracked video frames with masks (of the videos given key-frame tasks)
    frame_tasks: int = 0  # import: key-frame image tasks of those videos ('<project> (video frames)')
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU of the thread that ran the stage body (in the process it ran in)


def cpu_timed(fn: Callable[..., StageReport], *args: Any) -> StageReport:
    """``fn(*args)`` with ``cpu_seconds`` set to the CPU time of the calling thread (in the I/O helper process when
    it runs there). Threads the body starts (the fetch stage's parallel downloads) are not in it."""
    start = time.thread_time()
    report = fn(*args)
    report.cpu_seconds = time.thread_time() - start
    return report


@dataclass(frozen=True)
class JobRef:
    id: int
    model_version: str
    model_id: str = ""
    checkpoint_sha256: str = ""


def open_job(
    catalog: Catalog, run_id: int | None, params: PrelabelParams, model_id: str, checkpoint_sha256: str
) -> JobRef:
    """The pre-label job of ``params`` with this model (created when new), with ``run_id`` (if any) attached."""
    from storage.annotation.items import model_version_string

    prompts = params.prompts
    version = model_version_string(model_id, checkpoint_sha256, params.strategy, jobs.prompt_hash(prompts))
    spec = jobs.JobSpec(params.project, version, model_id, checkpoint_sha256, params.strategy, prompts, params.model_id)
    job_id = jobs.open_job(catalog, spec, params.source)
    if run_id is not None:
        jobs.attach_run(catalog, run_id, job_id)
    return JobRef(job_id, version, model_id, checkpoint_sha256)


def pending_of(
    catalog: Catalog,
    job_id: int,
    source: str,
    limit: int | None = None,
    *,
    retry_failed: bool = False,
    among: Sequence[int] | None = None,
) -> list[int]:
    """The asset revisions under ``source`` (of ``among``, if given) that job ``job_id`` still has to pre-label."""
    bucket, prefix = parse_s3_uri(source)
    with catalog.session() as session:
        return jobs.pending_asset_ids(session, job_id, bucket, prefix, limit, retry_failed=retry_failed, among=among)


def record_failures(
    catalog: Catalog, run_id: int, stage: str, failures: dict[int, str], transient: Collection[int] = ()
) -> None:
    """Mark assets failed with their reason, for the run and for its job (``transient`` ones are retried by the
    job's next run; the others only with ``retry_failed``); the run and its batch go on without them."""
    if not failures:
        return
    kinds: dict[int, jobs.FailureKind] = {a: "transient" if a in transient else "permanent" for a in failures}
    with catalog.session() as session:
        existing = set(
            session.scalars(
                select(RunFailure.asset_id).where(RunFailure.run_id == run_id, RunFailure.asset_id.in_(failures))
            )
        )
        for asset_id, reason in failures.items():
            asset = session.get(Asset, asset_id)
            if asset is not None:
                asset.status, asset.failure_reason = "failed", reason
            if asset_id not in existing:
                session.add(
                    RunFailure(run_id=run_id, asset_id=asset_id, stage=stage, reason=reason, kind=kinds[asset_id])
                )
            log.warning("asset %s failed at %s (%s): %s", asset_id, stage, kinds[asset_id], reason)
        job_id = jobs.job_of_run(session, run_id)
        if job_id is not None:
            jobs.mark_failed(session, job_id, run_id, stage, {a: (kinds[a], r) for a, r in failures.items()})


def batches_of(catalog: Catalog, asset_ids: Sequence[int], batch_size: int) -> list[list[int]]:
    """Images in batches of up to ``batch_size`` (sizes from :func:`tapered_sizes`); every video a batch of its own."""
    with catalog.session() as session:
        kinds = dict(session.execute(select(Asset.id, Asset.media_type).where(Asset.id.in_(asset_ids))).tuples().all())
    images = [a for a in asset_ids if kinds.get(a) == "image"]
    videos = [a for a in asset_ids if kinds.get(a) == "video"]
    batches, start = [], 0
    for size in tapered_sizes(len(images), batch_size):
        batches.append(images[start : start + size])
        start += size
    return batches + [[v] for v in videos]


def tapered_sizes(n: int, batch_size: int) -> list[int]:
    """Batch sizes for ``n`` images: full batches in the middle, ramps of halving sizes at both ends.

    The pipeline is serial at its ends: the model waits for the first download, and the last import runs after the
    model is done. Starting with ``batch_size / 8`` (then /8, /4, /2) and ending the same way mirrored cuts both waits
    to about an eighth of a batch. Runs shorter than two batches only ramp up; ``batch_size`` < 8 is not tapered.
    """
    if n < 0 or batch_size < 1:
        raise ValueError(f"tapered_sizes needs n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    if batch_size < 8 or n <= batch_size // 8:
        return [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    ramp = [batch_size // 8, batch_size // 8, batch_size // 4]
    ramp.append(batch_size - sum(ramp))  # together one full batch
    head, tail = ramp, (ramp[::-1] if n >= 2 * batch_size else [])
    middle = n - sum(head) - sum(tail)
    sizes: list[int] = []
    for size in head:
        take = min(size, n - sum(sizes))
        if take:
            sizes.append(take)
    if middle > 0:
        sizes += [batch_size] * (middle // batch_size) + ([middle % batch_size] if middle % batch_size else [])
    return sizes + tail
