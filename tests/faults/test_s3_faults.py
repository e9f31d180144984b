"""S3 misbehaving while ``maskloop prelabel`` runs: moto's S3 server behind the fault proxy, the real Label Studio,
Prefect's test server, the tiny SAM 2; SQLite and PostgreSQL catalogs.

Each case injects one fault between maskloop and S3, checks the run either completes or stops with a named error,
that a plain rerun completes, and then the invariant (:mod:`tests.faults.invariant`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from storage.catalog import Asset, Catalog, RunFailure
from storage.labelstudio.client import LabelStudioClient
from storage.settings import Settings
from tests.faults.conftest import Figures, Outcome, failed_attempts, maskloop_env, slowest_recovery
from tests.faults.invariant import check_invariant
from tests.support.fault_proxy import INTERNAL_ERROR, Fault, FaultProxy, fault_proxy

# A short S3 policy so the cases stay short; the production defaults are 5 attempts / 30 s / 60 s read timeout.
S3_BOUNDS = {"S3_RETRY_ATTEMPTS": "8", "S3_RETRY_TOTAL_S": "20", "S3_READ_TIMEOUT_S": "2"}


@pytest.fixture()
def s3_proxy(flow_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Any:
    with fault_proxy(str(flow_settings.s3_endpoint_url)) as proxy:
        maskloop_env(monkeypatch, flow_settings, S3_ENDPOINT_URL=proxy.url, **S3_BOUNDS)
        yield proxy


def _check(flow_settings: Settings, s3: Any, ls: LabelStudioClient, bucket: str, project: str, bad: list[str]) -> Any:
    catalog = Catalog(flow_settings.resolved_database_url, migrate=False)
    try:
        return check_invariant(catalog, s3, ls, bucket, "in/", project, bad=frozenset(bad))
    finally:
        catalog.dispose()


def _failures(flow_settings: Settings, run: int | None) -> list[str]:
    catalog = Catalog(flow_settings.resolved_database_url, migrate=False)
    try:
        with catalog.session() as session:
            rows = session.execute(
                RunFailure.__table__.select().where(RunFailure.run_id == run)  # type: ignore[attr-defined]
            ).all()
            uris = {a.id: f"s3://{a.bucket}/{a.key}" for a in session.query(Asset).all()}
        return [f"{uris[r.asset_id]} {r.kind}: {r.reason}" for r in rows]
    finally:
        catalog.dispose()


def _completed(outcome: Outcome) -> Outcome:
    assert outcome.code == 0 and outcome.run is not None, f"the run did not complete:\n{outcome.out}\n{outcome.err}"
    return outcome


@pytest.mark.parametrize(
    ("fault_name", "make_faults"),
    [
        (
            "503 SlowDown on LIST and 500 InternalError on GET (2 s bursts)",
            lambda bucket: [
                Fault.for_seconds(2.0, "GET", "list-type=2"),
                Fault.for_seconds(2.0, "GET", f"/{bucket}/in/", status=INTERNAL_ERROR[0], body=INTERNAL_ERROR[1]),
            ],
        ),
    ],
)
def test_s3_error_bursts_on_list_and_get_are_retried_within_bounds_and_logged_once_per_call(
    fault_name: str,
    make_faults: Callable[[str], list[Fault]],
    prefect_api: str,
    flow_settings: Settings,
    s3_proxy: FaultProxy,
    s3: Any,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
    prelabel: Callable[..., Outcome],
    figures: Callable[..., Figures],
    retry_lines: list[str],
) -> None:
    keys = fill_bucket(images=4, videos=0, broken=1)
    project, row = f"s3b-{bucket[-6:]}", figures(fault_name, "proxy between maskloop and S3 (moto)")
    for fault in make_faults(bucket):
        s3_proxy.add(fault)
    got = _completed(prelabel(f"s3://{bucket}/in/", "--project", project))
    assert (got.done, got.assets, got.failed) == (4, 5, 1), got.out
    lines = list(retry_lines)
    assert s3_proxy.faulted >= 2, "the burst never reached maskloop"
    # every faulted request belongs to exactly one call that recovered, and each such call logged one line
    assert failed_attempts(lines) == s3_proxy.faulted, lines
    assert all("recovered after" in line for line in lines), lines
    assert len(lines) < s3_proxy.faulted, f"a line per attempt, not per failure: {lines}"
    checked = _check(flow_settings, s3, ls_client, bucket, project, keys["broken"])
    row.injected, row.runs_completed, row.recover_s = s3_proxy.faulted, 1, slowest_recovery(lines)
    row.assets_lost, row.duplicates = checked.lost, checked.duplicates
    assert checked.readable == 4 and checked.tasks == 4


@pytest.mark.parametrize(
    ("fault_name", "fault_kind"),
    [("connection reset mid-body (GET, twice)", "reset"), ("stalled GET response (read timeout 2 s)", "stall")],
)
def test_s3_reset_or_stalled_downloads_are_retried_and_never_leave_partial_bytes(
    fault_name: str,
    fault_kind: str,
    prefect_api: str,
    flow_settings: Settings,
    s3_proxy: FaultProxy,
    s3: Any,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
    prelabel: Callable[..., Outcome],
    figures: Callable[..., Figures],
    retry_lines: list[str],
) -> None:
    keys = fill_bucket(images=4, videos=0, broken=0)
    project, row = f"s3r-{bucket[-6:]}", figures(fault_name, "proxy between maskloop and S3 (moto)")
    victim = keys["image"][1]
    s3_proxy.add(Fault("GET", f"/{bucket}/{victim}", kind=fault_kind, times=2 if fault_kind == "reset" else 1))  # type: ignore[arg-type]
    got = _completed(prelabel(f"s3://{bucket}/in/", "--project", project))
    assert (got.done, got.assets, got.failed) == (4, 4, 0), got.out
    lines = list(retry_lines)
    assert len(lines) == 1 and f"download s3://{bucket}/{victim}: recovered after" in lines[0], lines
    checked = _check(flow_settings, s3, ls_client, bucket, project, [])  # sha256 == the object's: no partial bytes
    row.injected, row.runs_completed, row.recover_s = s3_proxy.faulted, 1, slowest_recovery(lines)
    row.assets_lost, row.duplicates = checked.lost, checked.duplicates


@pytest.mark.parametrize("change", ["overwritten", "deleted"])
def test_s3_object_changed_between_listing_and_download_is_a_named_failure_then_its_new_revision(
    change: str,
    prefect_api: str,
    flow_settings: Settings,
    s3_proxy: FaultProxy,
    s3: Any,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
    prelabel: Callable[..., Outcome],
    figures: Callable[..., Figures],
) -> None:
    from tests.support.flow_fixtures import png_bytes

    keys = fill_bucket(images=3, videos=0, broken=0)
    project = f"s3c-{bucket[-6:]}"
    row = figures(f"object {change} between listing and download", "S3 itself, at the download's request")
    victim = keys["image"][0]
    uri = f"s3://{bucket}/{victim}"
    import numpy as np

    def act() -> None:
        if change == "overwritten":
            s3.put_object(Bucket=bucket, Key=victim, Body=png_bytes(np.random.default_rng(99), 80, 80))
        else:
            s3.delete_object(Bucket=bucket, Key=victim)

    s3_proxy.add(Fault("GET", f"/{bucket}/{victim}", kind="hook", times=1, action=act))
    first = _completed(prelabel(f"s3://{bucket}/in/", "--project", project))
    assert (first.done, first.assets, first.failed) == (2, 3, 1), first.out
    (failure,) = _failures(flow_settings, first.run)
    expected = "changed after it was listed" if change == "overwritten" else "NoSuchKey"
    assert failure.startswith(f"{uri} permanent: ") and expected in failure, failure
    second = _completed(prelabel(f"s3://{bucket}/in/", "--project", project))
    # the rewritten object is a new revision (new ETag) and is pre-labelled; a deleted one is simply gone
    assert (second.done, second.failed) == ((1, 0) if change == "overwritten" else (0, 0)), second.out
    checked = _check(flow_settings, s3, ls_client, bucket, project, [])
    assert checked.tasks == 3 if change == "overwritten" else checked.tasks == 2
    row.injected, row.runs_completed, row.recover_s = 1, 2, second.seconds  # the rerun that records the change
    row.assets_lost, row.duplicates = checked.lost, checked.duplicates
    row.notes.append(f"first run: a permanent failure naming {change} object's URI; rerun: {second.done} new revision")
