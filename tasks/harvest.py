"""Prefect tasks of the harvest flow: pull annotations (retried on transient I/O errors), freeze a version, sign
the tasks' media URLs anew before they expire."""

from __future__ import annotations

from prefect import get_run_logger, task

from storage.harvest import HarvestReport
from storage.media_refresh import MediaRefresh
from storage.services import Services
from storage.versions import FrozenVersion
from tasks.prelabel import _IO_RETRIES


@task(name="harvest-annotations", **_IO_RETRIES)
def harvest_annotations(services: Services, project: str, page_size: int = 100, full: bool = False) -> HarvestReport:
    """Incremental harvest of one annotation project (idempotent, so a retry is safe)."""
    from storage.harvest import harvest

    report = harvest(services.annotation, services.catalog, project, s3=services.s3, page_size=page_size, full=full)
    get_run_logger().info(
        "harvested %s: %d new, %d updated, %d invalid", project, report.created, report.updated, len(report.invalid)
    )
    return report


@task(name="create-version", **_IO_RETRIES)
def freeze_version(
    services: Services, project: str, dest: str, dataset: str | None, tag: str | None, polygons: bool
) -> FrozenVersion:
    """Freeze the project's accepted annotations (returns the existing version when nothing changed)."""
    from storage.annotation import find_project
    from storage.versions import create_version

    backend = services.annotation
    row = find_project(services.catalog, project, backend=backend.name, url=backend.url)
    frozen = create_version(
        services.catalog, services.s3, row, dest, dataset=dataset, tag=tag, polygons=polygons
    ).summary()
    get_run_logger().info(
        "dataset %s v%d (%s)", frozen.dataset, frozen.number, "new" if frozen.created else "unchanged"
    )
    return frozen


@task(name="refresh-media-urls", **_IO_RETRIES)
def refresh_media(services: Services, project: str, within_s: int) -> MediaRefresh:
    """Sign anew the project's task media URLs that expire within ``within_s`` (idempotent: a retry does what is
    still due)."""
    from storage.media_refresh import refresh_media_urls

    refreshed = refresh_media_urls(services, project, within_s)
    if refreshed.refreshed or refreshed.gone:
        get_run_logger().info(
            "%s: %d media URLs signed anew, %d tasks gone from the backend",
            project,
            refreshed.refreshed,
            refreshed.gone,
        )
    return refreshed
