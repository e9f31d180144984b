"""Pre-label jobs on SQLite and PostgreSQL: pending work per (project, model version, prompts), failure kinds,
work units per job, and the migration that turns existing runs into jobs."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from storage import leases
from storage.catalog import AnnotationProject, AnnotationTask, Asset, Catalog, JobAsset, Run, RunFailure
from storage.catalog import PrelabelJob as JobRow
from storage.catalog.assets import discover
from storage.catalog.db import make_engine, upgrade
from storage.catalog.jobs import (
    JobSpec,
    mark_done,
    mark_failed,
    merge_sources,
    open_job,
    pending_asset_ids,
    project_model,
    prompt_hash,
    summaries,
)
from storage.s3 import S3Object


def _assets(catalog: Catalog, n: int, prefix: str = "in/") -> list[int]:
    return discover(
        catalog, [S3Object("bkt", f"{prefix}i{i:03d}.jpg", "e", 1, None, "image") for i in range(n)]
    ).new_asset_ids


def _job(catalog: Catalog, project: str = "p", version: str = "m@1/everything", source: str = "s3://bkt/in/") -> int:
    return open_job(catalog, JobSpec(project, version, "m", "1" * 64, "everything", {}), source)


def _pending(catalog: Catalog, job: int, retry_failed: bool = False) -> list[int]:
    with catalog.session() as session:
        return pending_asset_ids(session, job, "bkt", "in/", retry_failed=retry_failed)


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        ({}, None),
        ({"classes": ["cat"]}, prompt_hash({"classes": ["cat"]})),
        ({"params": {"b": 2, "a": 1}}, prompt_hash({"params": {"a": 1, "b": 2}})),  # key order does not matter
    ],
)
def test_prompt_hash_is_none_for_defaults_and_stable_for_settings(prompts: dict, expected: str | None) -> None:  # type: ignore[type-arg]
    got = prompt_hash(prompts)
    assert got == expected
    assert got is None or (len(got) == 8 and int(got, 16) >= 0)


def test_prompt_hash_differs_between_prompt_sets() -> None:
    assert prompt_hash({"classes": ["cat"]}) != prompt_hash({"classes": ["dog"]})
    assert prompt_hash({"params": {"points_per_side": 8}}) != prompt_hash({"params": {"points_per_side": 16}})


@pytest.mark.parametrize(
    ("sources", "source", "expected"),
    [
        ([], "s3://bkt/in/", ["s3://bkt/in/"]),
        (["s3://bkt/in/"], "s3://bkt/in/", ["s3://bkt/in/"]),
        (["s3://bkt/in/"], "s3://bkt/in/x.jpg", ["s3://bkt/in/"]),  # an on-upload object under the fan-out's prefix
        (["s3://bkt/in/a.jpg", "s3://bkt/other/"], "s3://bkt/in/", ["s3://bkt/other/", "s3://bkt/in/"]),
        (["s3://bkt/in/"], "s3://bkt/input/", ["s3://bkt/in/", "s3://bkt/input/"]),  # "in/" does not cover "input/"
    ],
)
def test_merge_sources_keeps_the_widest_prefixes(sources: list[str], source: str, expected: list[str]) -> None:
    assert merge_sources(sources, source) == expected


def test_same_spec_is_one_job_and_records_every_source(catalog: Catalog) -> None:
    first = _job(catalog, source="s3://bkt/in/")
    again = _job(catalog, source="s3://bkt/more/")
    assert first == again
    other_project = _job(catalog, project="q")
    other_model = _job(catalog, version="m@2/everything")
    assert len({first, other_project, other_model}) == 3
    with catalog.session() as session:
        job = session.get(JobRow, first)
        assert job is not None and job.sources == ["s3://bkt/in/", "s3://bkt/more/"]


def test_project_model_is_the_model_that_last_prelabelled_the_project(catalog: Catalog) -> None:
    assert project_model(catalog, "p (images)") is None
    open_job(
        catalog, JobSpec("p", "m@1/everything", "m", "1" * 64, "everything", {}, "maskloop/shapes-tiny"), "s3://bkt/"
    )
    assert project_model(catalog, "p (images)") == "maskloop/shapes-tiny"
    open_job(catalog, JobSpec("p", "n@2/everything", "n", "2" * 64, "everything", {}, "/models/n.pt"), "s3://bkt/")
    assert project_model(catalog, "p (videos)") == "/models/n.pt" and project_model(catalog, "p") == "/models/n.pt"
    assert project_model(catalog, "other (images)") is None


def test_a_second_job_over_the_same_bucket_finds_every_current_revision(catalog: Catalog) -> None:
    ids = _assets(catalog, 4)
    a, b = _job(catalog, project="a"), _job(catalog, project="b")
    with catalog.session() as session:
        mark_done(session, a, _run(session), ids)
    assert _pending(catalog, a) == []
    assert _pending(catalog, b) == ids


def test_transient_failures_are_pending_permanent_only_with_retry_failed(catalog: Catalog) -> None:
    ids = _assets(catalog, 3)
    job = _job(catalog)
    with catalog.session() as session:
        run = _run(session)
        mark_done(session, job, run, ids[:1])
        mark_failed(
            session, job, run, "fetch", {ids[1]: ("transient", "S3 error SlowDown"), ids[2]: ("permanent", "x")}
        )
    assert _pending(catalog, job) == [ids[1]]
    assert _pending(catalog, job, retry_failed=True) == ids[1:]
    (summary,) = summaries(catalog, job)
    assert (summary.covered, summary.pending, summary.failed_transient, summary.failed_permanent) == (1, 1, 1, 1)


def test_a_failure_never_overwrites_what_the_job_already_did(catalog: Catalog) -> None:
    (asset,) = _assets(catalog, 1)
    job = _job(catalog)
    with catalog.session() as session:
        run = _run(session)
        mark_done(session, job, run, [asset])
        mark_failed(session, job, run, "segment", {asset: ("permanent", "late failure")})
    with catalog.session() as session:
        row = session.scalar(select(JobAsset).where(JobAsset.job_id == job))
        assert row is not None and (row.status, row.failure_kind) == ("done", None)


def test_a_new_revision_is_pending_again_and_the_superseded_one_is_not(catalog: Catalog) -> None:
    (old,) = discover(catalog, [S3Object("bkt", "in/x.jpg", "e1", 1, None, "image")]).new_asset_ids
    job = _job(catalog)
    with catalog.session() as session:
        mark_done(session, job, _run(session), [old])
    (new,) = discover(catalog, [S3Object("bkt", "in/x.jpg", "e2", 2, None, "image")]).new_asset_ids
    assert _pending(catalog, job) == [new]


def test_units_are_sharded_per_job(catalog: Catalog) -> None:
    ids = _assets(catalog, 3)
    a, b = _job(catalog, project="a"), _job(catalog, project="b")
    units_a = leases.shard_pending(catalog, "s3://bkt/in/", ids, unit_size=2, job_id=a)
    assert leases.shard_pending(catalog, "s3://bkt/in/", ids, unit_size=2, job_id=a) == []
    units_b = leases.shard_pending(catalog, "s3://bkt/in/", ids, unit_size=2, job_id=b)
    assert len(units_a) == len(units_b) == 2
    assert leases.free_unit_ids(catalog, "s3://bkt/in/", job_id=a) == units_a
    lease = leases.claim(catalog, "w", 60, unit_id=units_b[0])
    assert lease is not None and lease.job_id == b


def _run(session) -> int:  # noqa: ANN001
    run = Run(flow_name="prelabel", parameters={})
    session.add(run)
    session.flush()
    return run.id


# -- migration ------------------------------------------------------------------------------------------------------
def test_migration_turns_runs_and_their_tasks_into_jobs(catalog_url: str) -> None:
    """A catalog at revision 0004 with two pre-label runs (one with default prompts, one with parameters) and their
    tasks and failures: after the upgrade each is a job that covers its tasks and keeps its failures, and a rerun of
    the same job finds only its transient failure pending."""
    url = catalog_url
    engine = make_engine(url)
    upgrade(engine, "0004")
    with engine.begin() as c:
        for i in range(4):
            c.exec_driver_sql(
                "INSERT INTO assets (id, bucket, key, etag, size, revision, media_type, status, discovered_at, "
                f"updated_at) VALUES ({i + 1}, 'b', 'in/{i}.jpg', 'e', 1, 1, 'image', 'done', '2026-01-01', '2026-01-01')"
            )
        runs = [
            (1, '{"project": "demo", "strategy": "everything", "source": "s3://b/in/"}'),
            (
                2,
                '{"project": "pts", "strategy": "everything", "source": "s3://b/in/", '
                '"strategy_params": {"points_per_side": 8}}',
            ),
        ]
        for rid, params in runs:
            c.exec_driver_sql(
                "INSERT INTO runs (id, flow_name, parameters, model_id, checkpoint_sha256, started_at, status, counts, "
                f"timings) VALUES ({rid}, 'prelabel', '{params}', 'shapes-tiny', 'abcdef0123456789', '2026-01-01', "
                "'completed', '{}', '{}')"
            )
        for pid, name in [(1, "demo (images)"), (2, "pts (images)")]:
            c.exec_driver_sql(
                "INSERT INTO label_studio_projects (id, ls_url, name, ls_project_id, media_kind, classes, label_config, "
                f"created_at) VALUES ({pid}, 'http://ls', '{name}', {pid}, 'image', '[]', '<View/>', '2026-01-01')"
            )
        for tid, (asset, project) in enumerate([(1, 1), (2, 1), (1, 2)], start=1):
            c.exec_driver_sql(
                "INSERT INTO label_studio_tasks (id, asset_id, project_id, frame_index, ls_task_id, last_model_version, "
                f"imported_at) VALUES ({tid}, {asset}, {project}, -1, {tid}, 'shapes-tiny@abcdef01/everything', "
                "'2026-01-01')"
            )
        for fid, (asset, reason) in enumerate(
            [(3, "S3 error SlowDown downloading s3://b/in/2.jpg"), (4, "s3://b/in/3.jpg: not a readable image")],
            start=1,
        ):
            c.exec_driver_sql(
                "INSERT INTO run_failures (id, run_id, asset_id, stage, reason, created_at) "
                f"VALUES ({fid}, 1, {asset}, 'fetch', '{reason}', '2026-01-01')"
            )
    engine.dispose()

    catalog = Catalog(url)  # migrates to head
    with catalog.session() as session:
        jobs = {j.project: j for j in session.scalars(select(JobRow))}
        assert set(jobs) == {"demo", "pts"}
        assert jobs["demo"].model_version == "shapes-tiny@abcdef01/everything"
        assert jobs["pts"].model_version.startswith("shapes-tiny@abcdef01/everything+")
        assert jobs["pts"].prompts == {"params": {"points_per_side": 8}}
        assert jobs["demo"].sources == ["s3://b/in/"] and jobs["demo"].model_uri == "shapes-tiny"
        assert {r.id: r.job_id for r in session.scalars(select(Run))} == {1: jobs["demo"].id, 2: jobs["pts"].id}
        kinds = {f.asset_id: f.kind for f in session.scalars(select(RunFailure))}
        assert kinds == {3: "transient", 4: "permanent"}
        assert session.scalar(select(AnnotationProject.name).where(AnnotationProject.id == 1)) == "demo (images)"
        assert session.query(AnnotationTask).count() == 3 and session.query(Asset).count() == 4
    with catalog.session() as session:
        assert pending_asset_ids(session, jobs["demo"].id, "b", "in/") == [3]
        assert pending_asset_ids(session, jobs["pts"].id, "b", "in/") == [2, 3, 4]
    catalog.dispose()
