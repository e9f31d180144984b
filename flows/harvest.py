"""Flow ``harvest``: annotation corrections → catalog annotations + agreement → (optionally) a frozen version; then
the tasks' media URLs that expire soon signed anew."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow
from prefect.context import get_run_context

from storage.catalog.runs import recorded_run
from storage.harvest import HarvestReport
from storage.media_refresh import MediaRefresh
from storage.params import HarvestParams
from storage.services import Services
from storage.settings import Settings
from storage.versions import FrozenVersion
from tasks.harvest import freeze_version, harvest_annotations, refresh_media


@dataclass(frozen=True)
class HarvestResult:
    run_id: int
    harvest: HarvestReport
    version: FrozenVersion | None = None
    media: MediaRefresh = MediaRefresh()


@flow(name="harvest")
def harvest_flow(params: HarvestParams, settings: Settings | None = None) -> HarvestResult:
    """Harvest ``params.project`` (catalog name, e.g. ``maskloop (images)``); with ``create_version`` freeze the
    result into a dataset version whose COCO export and manifest go to ``dest`` (``s3://bucket/prefix``); then sign
    anew the media URLs of its tasks that expire within ``refresh_urls_within_s``."""
    flow_run_id = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
    recorded = params.model_dump(mode="json", exclude={"polygons", "page_size"})
    with Services(settings or Settings()) as services:
        with recorded_run(services.catalog, "harvest", recorded, flow_run_id) as run:
            harvested = harvest_annotations(services, params.project, params.page_size, params.full)
            run.counts.update({k: v for k, v in harvested.to_json().items() if isinstance(v, int)})
            if harvested.frames is not None:  # a video project's key-frame project, harvested with it
                frames = harvested.frames.to_json().items()
                run.counts.update({f"frames_{k}": v for k, v in frames if isinstance(v, int)})
            version = None
            if params.create_version:
                version = freeze_version(
                    services, params.project, str(params.dest), params.dataset, params.tag, params.polygons
                )
            media = refresh_media(services, params.project, params.refresh_urls_within_s)
            run.counts.update({"media_urls_refreshed": media.refreshed, "media_tasks_gone": media.gone})
        return HarvestResult(run.id, harvested, version, media)
