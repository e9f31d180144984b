"""Flow ``harvest``: Label Studio corrections → catalog annotations + agreement → (optionally) a frozen version."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.context import get_run_context

from storage.catalog import Catalog
from storage.settings import Settings
from tasks import prelabel_ops as ops
from tasks.harvest import freeze_version, harvest_annotations


@flow(name="harvest")
def harvest_flow(
    project: str,
    create_version: bool = False,
    dest: str | None = None,
    dataset: str | None = None,
    tag: str | None = None,
    polygons: bool = False,
    page_size: int = 100,
    full: bool = False,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Harvest ``project`` (catalog name, e.g. ``maskloop (images)``); with ``create_version`` freeze the result
    into a dataset version whose COCO export and manifest go to ``dest`` (``s3://bucket/prefix``)."""
    settings = settings or Settings()
    if create_version and not dest:
        raise ValueError("create_version needs dest (s3://bucket/prefix for the COCO export and manifest)")
    catalog_url = settings.resolved_database_url
    catalog = Catalog(catalog_url)
    params = {
        "project": project,
        "create_version": create_version,
        "dest": dest,
        "dataset": dataset,
        "tag": tag,
        "full": full,
    }
    run_id = ops.start_run(catalog, "harvest", params, str(get_run_context().flow_run.id))  # type: ignore[union-attr]
    status, result = "failed", {}
    try:
        result = {"run_id": run_id, "harvest": harvest_annotations(settings, catalog_url, project, page_size, full)}
        if create_version:
            result["version"] = freeze_version(settings, catalog_url, project, str(dest), dataset, tag, polygons)
        status = "completed"
        return result
    finally:
        harvested = result.get("harvest")
        counts = {k: v for k, v in harvested.items() if isinstance(v, int)} if isinstance(harvested, dict) else {}
        ops.finish_run(catalog, run_id, status, counts, {})
        catalog.dispose()
