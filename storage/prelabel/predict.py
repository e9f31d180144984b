"""The model stage: run the model on a fetched batch and store its predictions in the catalog.

Three steps, so that the model's thread does only the model's work: :func:`prepare` (catalog query, image decode),
:func:`predict` (the model) and :func:`store` (COCO RLE, catalog rows); the flow runs the first and the last in
threads of their own, beside the model working on the batch after or before. :func:`segment` is the three in a row.
The model itself is injected as a :class:`Predictor` (functions from ``model/``, built by the task that loaded the
model), so this module only decodes, records and classifies failures: an image that does not decode fails alone, a
video whose tracking raises fails alone, out-of-memory and a lost cache file are transient (the next run retries).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from model.errors import BadMediaError
from storage.catalog import Asset, Prediction
from storage.prelabel.fetch import local_path, media_failure
from storage.prelabel.plan import StageReport, record_failures
from storage.services import Services

if TYPE_CHECKING:
    import numpy as np

    from model.instances import Instances
    from model.tracks import VideoTracks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Predictor:
    """The model as the predict stage sees it: decoded images -> one :class:`Instances` each; a video file -> tracks."""

    images: Callable[[list[np.ndarray]], list[Instances]]
    video: Callable[[Path], VideoTracks]


def task_score(scores: Iterable[float] | None) -> float:
    """Uncertainty for review order (Label Studio serves low first): the weakest instance's predicted IoU; an image
    with no instance at all scores 0 (someone should look)."""
    finite = [float(s) for s in (scores if scores is not None else []) if not math.isnan(float(s))]
    return min(finite) if finite else 0.0


@dataclass
class Prepared(StageReport):
    """A fetched batch made ready for the model (:func:`prepare` -> :func:`predict`): the report's skipped assets
    (this model version already predicted them) and failed ones (undecodable, or gone from the download cache), with
    ``images`` (asset, decoded pixels) and ``videos`` (tracked from their files by :func:`predict`)."""

    images: list[tuple[Asset, np.ndarray]] = field(default_factory=list)
    videos: list[Asset] = field(default_factory=list)


@dataclass
class Predicted(StageReport):
    """What the model made of a batch, not stored yet (:func:`predict` -> :func:`store`): the report's ok, failed,
    skipped assets and instance count, with ``images`` (asset, decoded size, masks) and ``videos`` (asset, tracks)."""

    images: list[tuple[int, tuple[int, ...], Instances]] = field(default_factory=list)
    videos: list[tuple[int, VideoTracks]] = field(default_factory=list)

    def stage_report(self) -> StageReport:
        """The plain report (its own timings): what :func:`store` returns."""
        return StageReport(
            **{f.name: getattr(self, f.name) for f in fields(StageReport) if f.name not in ("seconds", "cpu_seconds")}
        )


def segment(
    services: Services, run_id: int, asset_ids: Sequence[int], model_version: str, model: Predictor
) -> StageReport:
    """Run ``model`` on a fetched batch and store one prediction row per asset; assets that already have this
    model version's prediction are skipped (resume), undecodable ones are recorded as failed."""
    prepared = prepare(services, asset_ids, model_version)
    return store(services, run_id, model_version, predict(services, prepared, model))


def prepare(services: Services, asset_ids: Sequence[int], model_version: str) -> Prepared:
    """Everything of :func:`segment` before the model, which the flow runs in a thread while the model works on the
    batch before: read which of the fetched ``asset_ids`` this model version still lacks, and decode their images
    from the download cache (an undecodable one fails alone; one the cache lost is transient)."""
    from model.images import decode_image

    report = Prepared()
    settings, catalog = services.settings, services.catalog
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
    for asset in assets:
        if asset.media_type == "video":
            report.videos.append(asset)
            continue
        try:
            report.images.append((asset, decode_image(local_path(settings, asset).read_bytes(), asset.uri)))
        except BadMediaError as error:
            report.failed[asset.id] = media_failure(asset, error, local_path(settings, asset))
        except FileNotFoundError as error:
            _lost_from_cache(report, asset, error)
    return report


def predict(services: Services, prepared: Prepared, model: Predictor) -> Predicted:
    """The model thread's part of :func:`segment`: run ``model`` on the images of a batch from :func:`prepare`
    and track its videos; nothing is stored (the masks' COCO RLE and the catalog rows are :func:`store`'s, which may
    run in another thread). A video whose tracking raises fails alone (out of memory: transient)."""
    report = Predicted(failed=dict(prepared.failed), transient=set(prepared.transient), skipped=list(prepared.skipped))
    for asset in prepared.videos:
        path = local_path(services.settings, asset)
        try:
            video = model.video(path)
        except BadMediaError as error:
            report.failed[asset.id] = media_failure(asset, error, path)
            continue
        except FileNotFoundError as error:
            _lost_from_cache(report, asset, error)
            continue
        except Exception as error:  # noqa: BLE001 - one video must not sink the batch; the reason is recorded
            log.exception("tracking %s failed", asset.uri)
            report.failed[asset.id] = f"{asset.uri}: tracking failed ({type(error).__name__}: {error})"
            if is_out_of_memory(error):
                report.transient.add(asset.id)
            continue
        report.videos.append((asset.id, video))
        report.ok.append(asset.id)
    if prepared.images:
        results = model.images([image for _, image in prepared.images])
        for (asset, image), instances in zip(prepared.images, results, strict=True):
            report.images.append((asset.id, image.shape[:2], instances))
            report.ok.append(asset.id)
    report.instances = sum(len(v.tracks) for _, v in report.videos) + sum(len(i) for _, _, i in report.images)
    return report


def _lost_from_cache(report: StageReport, asset: Asset, error: FileNotFoundError) -> None:
    """The download cache lost ``asset``'s file: the next run fetches it again."""
    report.failed[asset.id] = f"{asset.uri}: not in the download cache ({error})"
    report.transient.add(asset.id)


def store(services: Services, run_id: int, model_version: str, predicted: Predicted) -> StageReport:
    """Store what :func:`predict` made: one prediction row per asset (the masks as COCO RLE, a video's tracks as
    JSON), the decoded sizes, and the failures. Returns the batch's report."""
    from model.tracks import tracks_to_json

    report, rows, catalog = predicted.stage_report(), [], services.catalog
    for asset_id, video in predicted.videos:
        scores = [f.score for t in video.tracks for f in t.frames]
        rows.append(
            Prediction(
                asset_id=asset_id,
                run_id=run_id,
                model_version=model_version,
                instances=[tracks_to_json(video)],
                num_instances=len(video.tracks),
                score=task_score([sum(scores) / len(scores)] if scores else []),
            )  # type: ignore[arg-type]
        )
    for asset_id, _, instances in predicted.images:
        records = instances.to_records()
        rows.append(
            Prediction(
                asset_id=asset_id,
                run_id=run_id,
                model_version=model_version,
                instances=records,
                num_instances=len(records),
                score=task_score(instances.scores),
            )  # type: ignore[arg-type]
        )
    with catalog.session() as session:
        session.add_all(rows)
        shapes = {asset_id: shape for asset_id, shape, _ in predicted.images}
        assets = session.scalars(select(Asset).where(Asset.id.in_(shapes))) if shapes else ()  # one query per batch
        for row in assets:
            if (row.height, row.width) != shapes[row.id]:  # the decoded size is the truth the masks are stored at
                row.height, row.width = shapes[row.id]
    record_failures(catalog, run_id, "segment", report.failed, report.transient)
    return report


def is_out_of_memory(error: BaseException) -> bool:
    """Host or accelerator memory ran out (``torch.OutOfMemoryError`` is a RuntimeError): worth another try."""
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error)
