"""Fan-out pre-labelling in-process: real S3 HTTP server (moto), real Label Studio, Prefect's test harness, a tiny
real SAM 2; units claimed through catalog leases, a live holder's unit skipped, a dead holder's unit taken over."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from sqlalchemy import select, update

from storage import leases
from storage.catalog import AnnotationTask, Asset, Catalog, WorkUnit
from storage.catalog.assets import discover
from storage.labelstudio.client import LabelStudioClient
from storage.params import FanoutParams, PrelabelParams, UnitParams
from storage.prelabel import plan
from storage.s3 import list_objects, make_client
from storage.settings import Settings
from tasks.models import model_identity
from tests.flows.test_prelabel import LOOSE, ls_tasks


def test_fanout_runs_each_unit_once_skips_a_live_lease_and_takes_over_a_dead_one(
    prefect_api: str,
    flow_settings: Settings,
    bucket: str,
    fill_bucket: Callable[..., dict[str, list[str]]],
    ls_client: LabelStudioClient,
) -> None:
    from flows.prelabel_fanout import UnitResult, prelabel_fanout_flow, prelabel_unit_flow

    fill_bucket(images=4, videos=0, broken=1)
    source, project = f"s3://{bucket}/in/", f"fan-{bucket[-8:]}"
    catalog = Catalog(flow_settings.resolved_database_url)
    # another worker already sharded the listing and holds the first unit with a live lease
    ids = discover(catalog, list_objects(make_client(flow_settings), bucket, "in/")).new_asset_ids
    params = PrelabelParams(source=source, model_id=flow_settings.model_id, project=project, strategy_params=LOOSE)
    job = plan.open_job(catalog, None, params, *model_identity(params.model_id))
    first_unit, *_ = leases.shard_pending(catalog, source, ids, unit_size=2, job_id=job.id)
    held = leases.claim(catalog, "other-worker", 3600, unit_id=first_unit)
    assert held is not None

    fanout = FanoutParams(source=source, unit_size=2, project=project, batch_size=1, strategy_params=LOOSE)
    result = prelabel_fanout_flow(fanout, settings=flow_settings)
    assert result.job_id == job.id, "the fan-out keyed its work by another job than the one sharded"
    assert result.new_units == [] and first_unit not in result.units and len(result.units) == 2
    assert all(r.claimed for r in result.results)
    unit = UnitParams.model_validate({**fanout.model_dump(), "unit_id": first_unit})
    assert prelabel_unit_flow(unit, settings=flow_settings) == UnitResult(first_unit, claimed=False)
    waiting = set(plan.pending_of(catalog, job.id, source))
    assert waiting == set(held.asset_ids), "only the held unit's assets are still pending"

    # the other worker dies: its lease expires and the next fan-out takes the unit over
    with catalog.session() as session:
        session.execute(update(WorkUnit).where(WorkUnit.id == first_unit).values(lease_expires_at=None))
    again = prelabel_fanout_flow(fanout, settings=flow_settings)
    assert again.units == [first_unit]
    (taken,) = again.results
    assert taken.claimed and taken.attempt == 2

    with catalog.session() as session:
        units = session.scalars(select(WorkUnit).where(WorkUnit.source == source)).all()
        assert sorted(u.status for u in units) == ["done"] * 3
        statuses = Counter(session.scalars(select(Asset.status).where(Asset.bucket == bucket)))
        assert statuses == {"done": 4, "failed": 1}
        per_asset = Counter(session.scalars(select(AnnotationTask.asset_id)))
    assert all(n == 1 for n in per_asset.values()) and len(per_asset) == 4
    tasks = ls_tasks(ls_client, catalog, f"{project} (images)")
    assert len(tasks) == 4 and all(t["predictions"] for t in tasks)
    catalog.dispose()
