"""Flow ``discover``: record the new objects of an S3 prefix in the catalog."""

from __future__ import annotations

from prefect import flow

from storage.catalog.assets import DiscoveryReport
from storage.settings import Settings
from tasks.discovery import discover_assets


@flow(name="discover", log_prints=False)
def discover_flow(source: str, settings: Settings | None = None) -> DiscoveryReport:
    settings = settings or Settings()
    return discover_assets(settings, source)
