"""The import stage: the stored predictions of a batch into the annotation backend's (images|videos) project, then
the assets marked done for the run's job. Idempotent and resumable: the backend decides through the catalog."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from storage.catalog import Asset, Prediction, jobs
from storage.params import PrelabelParams
from storage.prelabel.plan import StageReport
from storage.s3 import presigned_get_url
from storage.services import Services


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
    for asset, prediction in pairs:
        url = presigned_get_url(services.s3, asset.bucket, asset.key, settings.presign_ttl_s)
        if asset.media_type == "video":
            results: Any = tracks_from_json(prediction.instances[0])
        else:
            # the masks stay COCO RLE: Label Studio's brush RLE is made from it without decoding them
            results = EncodedInstances(prediction.instances, asset.height or 0, asset.width or 0)
        by_kind[asset.media_type].append(ImportItem(asset.id, url, results, model_version, prediction.score))
    for kind, items in by_kind.items():
        if not items:
            continue
        project = backend.ensure_project(catalog, f"{params.project} ({kind}s)", kind, params.labels)
        outcome = backend.import_predictions(catalog, project, items, keep_touched=True)
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
