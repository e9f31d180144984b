"""The import stage: the stored predictions of a batch into the annotation backend's (images|videos) project and the
videos' key frames into its (video frames) project (:mod:`storage.prelabel.frames`), then the assets marked done for
the run's job. Idempotent and resumable: the backend decides through the catalog, and an asset is done only once
both of its views are in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from storage.annotation.projects import view_project
from storage.catalog import Asset, Prediction, jobs
from storage.params import PrelabelParams
from storage.prelabel.frames import frames_project_name, video_frame_items
from storage.prelabel.plan import StageReport, record_failures
from storage.s3 import presigned_get_url
from storage.services import Services

if TYPE_CHECKING:
    from model.tracks import VideoTracks


def import_predictions(
    services: Services,
    run_id: int,
    asset_ids: Sequence[int],
    params: PrelabelParams,
    model_version: str,
) -> StageReport:
    """Import the stored predictions of a batch into the (images|videos) project of the annotation backend and mark
    the assets done."""
    from model.tracks import tracks_from_json
    from storage.annotation import ImportItem
    from storage.annotation.items import EncodedInstances

    report = StageReport()
    if not asset_ids:
        return report
    settings, catalog, backend = services.settings, services.catalog, services.annotation
    with catalog.session() as session:
        pairs = session.execute(
            select(Asset, Prediction)
            .join(Prediction, Prediction.asset_id == Asset.id)
            .where(Asset.id.in_(asset_ids), Prediction.model_version == model_version)
        ).all()
    by_kind: dict[str, list[ImportItem]] = {"image": [], "video": []}
    videos: list[tuple[Asset, VideoTracks, float | None]] = []
    for asset, prediction in pairs:
        url = presigned_get_url(services.s3, asset.bucket, asset.key, settings.presign_ttl_s)
        if asset.media_type == "video":
            results: Any = tracks_from_json(prediction.instances[0])
            videos.append((asset, results, prediction.score))
        else:
            # the masks stay COCO RLE: Label Studio's brush RLE is made from it without decoding them
            results = EncodedInstances(prediction.instances, asset.height or 0, asset.width or 0)
        by_kind[asset.media_type].append(ImportItem(asset.id, url, results, model_version, prediction.score))
    for kind, items in by_kind.items():
        if not items:
            continue
        project = backend.ensure_project(catalog, view_project(params.project, kind), kind, params.labels)
        outcome = backend.import_predictions(catalog, project, items, keep_touched=True)
        report.instances += outcome.created
        report.refreshed += outcome.refreshed
        report.kept += outcome.kept
    if videos and params.video_frame_tasks_every > 0:
        frames = video_frame_items(services, videos, params.video_frame_tasks_every, model_version)
        if frames.items:
            project = backend.ensure_project(catalog, frames_project_name(params.project), "image", params.labels)
            outcome = backend.import_predictions(catalog, project, frames.items, keep_touched=True)
            report.frame_tasks += len(frames.items)
            report.refreshed += outcome.refreshed
            report.kept += outcome.kept
        report.video_frames += frames.video_frames
        report.failed, report.transient = frames.failed, frames.transient
        record_failures(catalog, run_id, "import", frames.failed, frames.transient)
    report.ok = [asset.id for asset, _ in pairs if asset.id not in report.failed]
    with catalog.session() as session:
        for asset in session.scalars(select(Asset).where(Asset.id.in_(report.ok))):
            asset.status, asset.failure_reason = "done", None
        job_id = jobs.job_of_run(session, run_id)
        if job_id is not None:
            jobs.mark_done(session, job_id, run_id, report.ok)
    return report
