"""The plain functions behind the pre-label tasks (no Prefect here, so they are tested and reused directly).

Each stage takes and returns asset ids; arrays never cross a stage boundary. Every stage is idempotent, so a rerun
after a crash at any point resumes: fetched files are reused from the cache, stored predictions are not
recomputed, and Label Studio imports are decided by the catalog (with reconciliation for a crash mid-POST).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select

from model.errors import BadMediaError
from storage.catalog import Asset, Catalog, Prediction, Run, RunFailure, jobs
from storage.catalog.models import utcnow
from storage.s3 import S3Object, cache_path, download_many, make_client, parse_s3_uri, presigned_get_url
from storage.settings import Settings

log = logging.getLogger(__name__)

Strategy = Literal["everything", "text", "prior"]
MAX_PROJECT_NAME = 41  # Label Studio caps project titles at 50 characters; we append " (images)" / " (videos)"


@dataclass(frozen=True)
class PrelabelParams:
    """What a pre-label run was asked to do (JSON-serialisable; recorded on the run row)."""

    source: str
    strategy: Strategy = "everything"
    classes: tuple[str, ...] = ()
    model_id: str = ""
    project: str = "maskloop"
    batch_size: int = 32
    limit: int | None = None
    video_every: int = 1
    video_target_fps: float | None = None
    key_frame_interval: int = 30
    video_max_frames: int | None = None
    strategy_params: dict[str, Any] = field(default_factory=dict)
    retry_failed: bool = False  # also retry the assets this job failed on for good (corrupt media, deleted objects)

    def __post_init__(self) -> None:
        if self.strategy not in ("everything", "text", "prior"):
            raise ValueError(f"strategy must be everything, text or prior, got {self.strategy!r}")
        if self.strategy == "text" and not self.classes:
            raise ValueError("strategy 'text' needs at least one class name")
        if not self.project or len(self.project) > MAX_PROJECT_NAME:
            raise ValueError(
                f"project must be 1..{MAX_PROJECT_NAME} characters (Label Studio titles are <= 50 with ' (images)'), got {self.project!r}"
            )
        if not 1 <= self.batch_size <= 1024:
            raise ValueError(f"batch_size must be in 1..1024, got {self.batch_size}")

    @property
    def labels(self) -> list[str]:
        return list(self.classes) if self.classes else ["object"]

    @property
    def prompts(self) -> dict[str, Any]:
        """The prompt settings that differ from the defaults: with the project and the model version, what makes a
        pre-label job (:mod:`storage.catalog.jobs`); empty for the strategy's defaults."""
        prompts: dict[str, Any] = {}
        if self.classes:
            prompts["classes"] = list(self.classes)
        if self.strategy_params:
            prompts["params"] = dict(self.strategy_params)
        video = {
            name: getattr(self, name) for name, default in _VIDEO_DEFAULTS.items() if getattr(self, name) != default
        }
        if video:
            prompts["video"] = video
        return prompts


# What a pre-label run counts (``refreshed``/``kept``: existing tasks given the job's prediction / left to the person
# who annotated them); the ``*_seconds`` (time spent in each stage's bodies) become timings when the run ends.
STAGE_SECONDS = ("fetch_seconds", "model_seconds", "import_seconds")
EMPTY_COUNTS: dict[str, float] = dict.fromkeys(
    ("assets", "done", "failed", "instances", "skipped", "refreshed", "kept", *STAGE_SECONDS), 0
)


def stage_timings(counts: dict[str, float], elapsed: float) -> dict[str, float]:
    """Move the stage seconds out of ``counts`` into the run's timings (with the wall time and images/s)."""
    timings = {name: round(float(counts.pop(name, 0.0)), 3) for name in STAGE_SECONDS}
    timings["seconds"] = round(elapsed, 3)
    timings["assets_per_s"] = round(counts.get("done", 0) / elapsed, 3) if elapsed else 0.0
    return timings


_VIDEO_DEFAULTS = {
    f.name: f.default for f in fields(PrelabelParams) if f.name.startswith("video_") or f.name == "key_frame_interval"
}


@dataclass
class StageReport:
    ok: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    transient: set[int] = field(default_factory=set)  # of ``failed``, those a later run may get through (I/O, memory)
    skipped: list[int] = field(default_factory=list)
    instances: int = 0
    refreshed: int = 0  # import: existing tasks that got this model version's prediction
    kept: int = 0  # import: existing tasks a person already annotated, left alone
    seconds: float = 0.0


# -- runs -----------------------------------------------------------------------------------------------------------
def start_run(catalog: Catalog, flow_name: str, parameters: dict[str, Any], flow_run_id: str | None) -> int:
    with catalog.session() as session:
        run = Run(flow_name=flow_name, flow_run_id=flow_run_id, parameters=parameters, status="running")
        session.add(run)
        session.flush()
        return run.id


def finish_run(
    catalog: Catalog,
    run_id: int,
    status: str,
    counts: dict[str, Any],
    timings: dict[str, Any],
    model_id: str | None = None,
    checkpoint_sha256: str | None = None,
) -> None:
    with catalog.session() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise ValueError(f"run {run_id} does not exist")
        run.status, run.counts, run.timings, run.finished_at = status, counts, timings, utcnow()
        if model_id:
            run.model_id, run.checkpoint_sha256 = model_id, checkpoint_sha256


def open_job(
    catalog: Catalog, run_id: int | None, params: PrelabelParams, model_id: str, checkpoint_sha256: str
) -> JobRef:
    """The pre-label job of ``params`` with this model (created when new), with ``run_id`` (if any) attached."""
    from storage.labelstudio.importer import model_version_string

    prompts = params.prompts
    version = model_version_string(model_id, checkpoint_sha256, params.strategy, jobs.prompt_hash(prompts))
    spec = jobs.JobSpec(params.project, version, model_id, checkpoint_sha256, params.strategy, prompts, params.model_id)
    job_id = jobs.open_job(catalog, spec, params.source)
    if run_id is not None:
        jobs.attach_run(catalog, run_id, job_id)
    return JobRef(job_id, version)


@dataclass(frozen=True)
class JobRef:
    id: int
    model_version: str


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


# -- stage entry points that open their own catalog (what the I/O helper process runs) --------------------------------
def fetch_at(settings: Settings, catalog_url: str, run_id: int, asset_ids: Sequence[int]) -> StageReport:
    """:func:`fetch` with a catalog opened from ``catalog_url`` for the call."""
    with Catalog(catalog_url, migrate=False) as catalog:
        return fetch(settings, catalog, run_id, asset_ids)


def import_at(
    settings: Settings,
    catalog_url: str,
    run_id: int,
    asset_ids: Sequence[int],
    params: PrelabelParams,
    model_version: str,
) -> StageReport:
    """:func:`import_to_label_studio` with a catalog opened from ``catalog_url`` for the call."""
    with Catalog(catalog_url, migrate=False) as catalog:
        return import_to_label_studio(settings, catalog, run_id, asset_ids, params, model_version)


# -- fetch ----------------------------------------------------------------------------------------------------------
def _s3_object(asset: Asset) -> S3Object:
    return S3Object(asset.bucket, asset.key, asset.etag, asset.size, asset.last_modified, asset.media_type)  # type: ignore[arg-type]


def local_path(settings: Settings, asset: Asset) -> Path:
    return cache_path(settings.cache_dir, asset.bucket, asset.key, asset.etag)


def fetch(settings: Settings, catalog: Catalog, run_id: int, asset_ids: Sequence[int]) -> StageReport:
    """Download a batch into the cache (parallel, retried), record sha256 and size/frames; bad objects fail alone."""
    report = StageReport()
    with catalog.session() as session:
        assets = list(session.scalars(select(Asset).where(Asset.id.in_(asset_ids))))
    results = download_many(
        make_client(settings), [_s3_object(a) for a in assets], settings.cache_dir, settings.s3_max_concurrency
    )
    facts: dict[int, dict[str, Any]] = {}
    for asset, result in zip(assets, results, strict=True):
        if result.path is None:
            report.failed[asset.id] = result.error or "download failed"
            if result.transient:
                report.transient.add(asset.id)
            continue
        try:
            facts[asset.id] = _probe(result.path, asset)
            report.ok.append(asset.id)
        except BadMediaError as error:
            report.failed[asset.id] = media_failure(asset, error, result.path)
    with catalog.session() as session:
        for asset_id, values in facts.items():
            row = session.get(Asset, asset_id)
            for name, value in values.items():
                setattr(row, name, value)
    record_failures(catalog, run_id, "fetch", report.failed, report.transient)
    return report


def media_failure(asset: Asset, error: BadMediaError, path: Path) -> str:
    """``<S3 URI>: <reason>``: bad media named as the user uploaded it, never by the cache file it was read from."""
    return f"{asset.uri}: {error.reason.replace(str(path), 'the downloaded file')}"


def _probe(path: Path, asset: Asset) -> dict[str, Any]:
    data = path.read_bytes() if asset.media_type == "image" else None
    sha = hashlib.sha256(data).hexdigest() if data is not None else _sha256_file(path)
    if asset.media_type == "image":
        from model.images import probe_image

        # header only: the pixels are decoded once, by the model step, which also records the decoded size
        height, width = probe_image(data or b"", asset.uri)
        return {"sha256": sha, "width": width, "height": height, "frames": 1}
    from model.video import probe_video

    info = probe_video(path)
    return {"sha256": sha, "width": info.width, "height": info.height, "frames": info.frame_count, "fps": info.fps}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- segment --------------------------------------------------------------------------------------------------------
def task_score(scores: Iterable[float] | None) -> float:
    """Uncertainty for review order (Label Studio serves low first): the weakest instance's predicted IoU; an image
    with no instance at all scores 0 (someone should look)."""
    finite = [float(s) for s in (scores if scores is not None else []) if not math.isnan(float(s))]
    return min(finite) if finite else 0.0


def segment(
    settings: Settings,
    catalog: Catalog,
    run_id: int,
    asset_ids: Sequence[int],
    params: PrelabelParams,
    model_version: str,
    models: Any,
) -> StageReport:
    """Run the model on a fetched batch and store one prediction row per asset; assets that already have this
    model version's prediction are skipped (resume), undecodable ones are recorded as failed."""
    from model.autoprompt import auto_segment
    from model.images import decode_image

    report = StageReport()
    with catalog.session() as session:
        done = set(
            session.scalars(
                select(Prediction.asset_id).where(
                    Prediction.asset_id.in_(asset_ids), Prediction.model_version == model_version
                )
            )
        )
        assets = [
            a
            for a in session.scalars(select(Asset).where(Asset.id.in_(asset_ids)).order_by(Asset.id))
            if a.id not in done
        ]
    report.skipped = sorted(done)
    images: list[tuple[Asset, Any]] = []
    rows: list[Prediction] = []
    for asset in assets:
        try:
            if asset.media_type == "video":
                rows.append(_segment_video(settings, asset, params, model_version, models, run_id))
                report.ok.append(asset.id)
            else:
                images.append((asset, decode_image(local_path(settings, asset).read_bytes(), asset.uri)))
        except BadMediaError as error:
            report.failed[asset.id] = media_failure(asset, error, local_path(settings, asset))
        except FileNotFoundError as error:  # the download cache lost it: the next run fetches it again
            report.failed[asset.id] = f"{asset.uri}: not in the download cache ({error})"
            report.transient.add(asset.id)
        except Exception as error:  # noqa: BLE001 - one video must not sink the batch; the reason is recorded
            log.exception("tracking %s failed", asset.uri)
            report.failed[asset.id] = f"{asset.uri}: tracking failed ({type(error).__name__}: {error})"
            if is_out_of_memory(error):
                report.transient.add(asset.id)
    if images:
        results = auto_segment(
            models.segmenter,
            [img for _, img in images],
            params.strategy,
            classes=list(params.classes) or None,
            detector=models.detector,
            **params.strategy_params,
        )
        for (asset, _), instances in zip(images, results, strict=True):
            records = instances.to_records()
            rows.append(
                Prediction(
                    asset_id=asset.id,
                    run_id=run_id,
                    model_version=model_version,
                    instances=records,
                    num_instances=len(records),
                    score=task_score(instances.scores),
                )  # type: ignore[arg-type]
            )
            report.ok.append(asset.id)
    report.instances = sum(r.num_instances for r in rows)
    with catalog.session() as session:
        session.add_all(rows)
        for asset, image in images:  # the decoded size is the truth the masks are stored at
            row = session.get(Asset, asset.id)
            if row is not None and (row.height, row.width) != image.shape[:2]:
                row.height, row.width = image.shape[:2]
    record_failures(catalog, run_id, "segment", report.failed, report.transient)
    return report


def is_out_of_memory(error: BaseException) -> bool:
    """Host or accelerator memory ran out (``torch.OutOfMemoryError`` is a RuntimeError): worth another try."""
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error)


def _segment_video(
    settings: Settings, asset: Asset, params: PrelabelParams, model_version: str, models: Any, run_id: int
) -> Prediction:
    from model.tracker import make_proposer, track_video
    from model.tracks import tracks_to_json

    proposer = make_proposer(
        params.strategy,
        segmenter=models.segmenter,
        classes=list(params.classes) or None,
        text_detector=models.detector,
        autoprompt_params=params.strategy_params,
    )
    video = track_video(
        models.video,
        local_path(settings, asset),
        params.strategy,
        classes=list(params.classes) or None,
        every=params.video_every,
        target_fps=params.video_target_fps,
        key_frame_interval=params.key_frame_interval,
        segmenter=models.segmenter,
        proposer=proposer,
        max_frames=params.video_max_frames,
    )
    scores = [f.score for t in video.tracks for f in t.frames]
    return Prediction(
        asset_id=asset.id,
        run_id=run_id,
        model_version=model_version,
        instances=[tracks_to_json(video)],
        num_instances=len(video.tracks),
        score=task_score([sum(scores) / len(scores)] if scores else []),
    )


# -- import ---------------------------------------------------------------------------------------------------------
def import_to_label_studio(
    settings: Settings,
    catalog: Catalog,
    run_id: int,
    asset_ids: Sequence[int],
    params: PrelabelParams,
    model_version: str,
) -> StageReport:
    """Import the stored predictions of a batch into the (images|videos) project and mark the assets done."""
    from model.instances import Instances
    from model.tracks import tracks_from_json
    from storage.labelstudio.client import LabelStudioClient
    from storage.labelstudio.importer import ImportItem, ensure_project, import_predictions

    report = StageReport()
    if not asset_ids:
        return report
    if settings.label_studio_token is None:
        raise ValueError("Label Studio token is not configured (MASKLOOP_LABEL_STUDIO_TOKEN, or `maskloop stack up`)")
    s3 = make_client(settings)
    with catalog.session() as session:
        pairs = session.execute(
            select(Asset, Prediction)
            .join(Prediction, Prediction.asset_id == Asset.id)
            .where(Asset.id.in_(asset_ids), Prediction.model_version == model_version)
        ).all()
    by_kind: dict[str, list[ImportItem]] = {"image": [], "video": []}
    for asset, prediction in pairs:
        url = presigned_get_url(s3, asset.bucket, asset.key, settings.presign_ttl_s)
        if asset.media_type == "video":
            results: Any = tracks_from_json(prediction.instances[0])
        else:
            results = Instances.from_records(prediction.instances, asset.height or 0, asset.width or 0)
        by_kind[asset.media_type].append(ImportItem(asset.id, url, results, model_version, prediction.score))
    with LabelStudioClient(settings.label_studio_url, settings.label_studio_token.get_secret_value()) as client:
        for kind, items in by_kind.items():
            if not items:
                continue
            project = ensure_project(client, catalog, f"{params.project} ({kind}s)", kind, params.labels)
            outcome = import_predictions(client, catalog, project, items, keep_touched=True)
            report.instances += outcome.created
            report.refreshed += outcome.refreshed
            report.kept += outcome.kept
    report.ok = [asset.id for asset, _ in pairs]
    with catalog.session() as session:
        for asset in session.scalars(select(Asset).where(Asset.id.in_(report.ok))):
            asset.status, asset.failure_reason = "done", None
        job_id = jobs.job_of_run(session, run_id)
        if job_id is not None:
            jobs.mark_done(session, job_id, run_id, report.ok)
    return report
