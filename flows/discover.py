"""Flow ``discover``: record the new objects of an S3 prefix in the catalog."""

from __future__ import annotations

from prefect import flow

from storage.catalog.assets import DiscoveryReport
from storage.services import Services
from storage.settings import Settings
from tasks.discovery import discover_assets


@flow(name="discover", log_prints=False)
def discover_flow(source: str, settings: Settings | None = None) -> DiscoveryReport:
    with Services(settings or Settings()) as services:
        return discover_assets(services, source)
