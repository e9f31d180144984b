"""Prefect tasks of the harvest flow: pull annotations (retried on transient I/O errors), freeze a version."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from storage.catalog import Catalog
from storage.settings import Settings
from tasks.prelabel import _IO_RETRIES


def _ls_client(settings: Settings) -> Any:
    from storage.labelstudio.client import LabelStudioClient

    if settings.label_studio_token is None:
        raise ValueError("Label Studio token is not configured (MASKLOOP_LABEL_STUDIO_TOKEN, or `maskloop stack up`)")
    return LabelStudioClient(settings.label_studio_url, settings.label_studio_token.get_secret_value())


@task(name="harvest-annotations", **_IO_RETRIES)
def harvest_annotations(
    settings: Settings, catalog_url: str, project: str, page_size: int = 100, full: bool = False
) -> dict[str, Any]:
    """Incremental harvest of one Label Studio project (idempotent, so a retry is safe)."""
    from storage.harvest import harvest
    from storage.s3 import make_client

    with Catalog(catalog_url, migrate=False) as catalog, _ls_client(settings) as client:
        report = harvest(client, catalog, project, s3=make_client(settings), page_size=page_size, full=full)
    get_run_logger().info(
        "harvested %s: %d new, %d updated, %d invalid", project, report.created, report.updated, len(report.invalid)
    )
    return report.to_json()


@task(name="create-version", **_IO_RETRIES)
def freeze_version(
    settings: Settings, catalog_url: str, project: str, dest: str, dataset: str | None, tag: str | None, polygons: bool
) -> dict[str, Any]:
    """Freeze the project's accepted annotations (returns the existing version when nothing changed)."""
    from storage.harvest import find_project
    from storage.s3 import make_client
    from storage.versions import create_version

    with Catalog(catalog_url, migrate=False) as catalog, _ls_client(settings) as client:
        row = find_project(catalog, client, project)
        result = create_version(catalog, make_client(settings), row, dest, dataset=dataset, tag=tag, polygons=polygons)
    v = result.version
    get_run_logger().info("dataset %s v%d (%s)", v.dataset, v.number, "new" if result.created else "unchanged")
    return {
        "version_id": v.id,
        "dataset": v.dataset,
        "number": v.number,
        "created": result.created,
        "manifest_hash": v.manifest_hash,
        "skipped": result.skipped,
    }
