"""Prefect task: list a source prefix and record new asset revisions in the catalog (one task per source)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from storage.catalog.assets import DiscoveryReport, content_sniffer, discover
from storage.s3 import list_objects, parse_s3_uri
from storage.services import Services


@task(name="discover-assets", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=[2], retry_jitter_factor=0.5)
def discover_assets(services: Services, source: str) -> DiscoveryReport:
    """List ``source`` (``s3://bucket/prefix``) and insert new asset revisions; returns the report (ids only)."""
    bucket, prefix = parse_s3_uri(source)
    report = DiscoveryReport()
    sniff = content_sniffer(services.catalog, services.s3, bucket, report)
    discover(services.catalog, list_objects(services.s3, bucket, prefix, sniff=sniff), report=report)
    get_run_logger().info(
        "%s: listed %d media objects (%d by content), %d new (%d new revisions), %d unchanged; %d not media",
        source,
        report.listed,
        report.sniffed,
        len(report.new_asset_ids),
        report.new_revisions,
        report.unchanged,
        report.not_media,
    )
    return report
