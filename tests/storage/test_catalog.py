"""The SQL catalog on SQLite and PostgreSQL: migrations, incremental discovery, idempotency constraints."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from storage.catalog import AnnotationProject, AnnotationTask, Asset, Catalog, Prediction
from storage.catalog.assets import discover
from storage.catalog.db import current_revision
from storage.catalog.jobs import JobSpec, open_job, pending_asset_ids
from storage.s3 import S3Object, list_objects

EXPECTED_TABLES = {
    "alembic_version",
    "annotation_projects",
    "annotation_tasks",
    "annotations",
    "assets",
    "dataset_version_items",
    "dataset_versions",
    "predictions",
    "run_failures",
    "runs",
}


def obj(key: str, etag: str = "e1", size: int = 10) -> S3Object:
    return S3Object("bucket", key, etag, size, None, "image")


def test_migrations_create_every_table_from_empty(catalog: Catalog) -> None:
    assert set(catalog.table_names()) >= EXPECTED_TABLES
    assert current_revision(catalog.engine) is not None


def test_reopening_a_migrated_catalog_is_a_no_op(catalog: Catalog) -> None:
    revision = current_revision(catalog.engine)
    again = Catalog(catalog.url)
    assert current_revision(again.engine) == revision
    again.dispose()


def test_second_discovery_of_same_listing_finds_nothing_new(catalog: Catalog) -> None:
    listing = [obj(f"k{i}.jpg") for i in range(25)]
    first = discover(catalog, listing, chunk=10)
    assert (first.listed, len(first.new_asset_ids), first.unchanged) == (25, 25, 0)
    second = discover(catalog, listing, chunk=10)
    assert (second.listed, len(second.new_asset_ids), second.unchanged) == (25, 0, 25)
    with catalog.session() as s:
        assert s.query(Asset).count() == 25


def test_changed_etag_is_a_new_revision_not_a_duplicate(catalog: Catalog) -> None:
    discover(catalog, [obj("a.jpg", "e1"), obj("b.jpg", "e1")])
    report = discover(catalog, [obj("a.jpg", "e2", 11), obj("b.jpg", "e1")])
    assert len(report.new_asset_ids) == 1 and report.new_revisions == 1 and report.unchanged == 1
    with catalog.session() as s:
        rows = s.scalars(select(Asset).where(Asset.key == "a.jpg").order_by(Asset.revision)).all()
        assert [(r.etag, r.revision, r.status) for r in rows] == [("e1", 1, "superseded"), ("e2", 2, "new")]
    job = open_job(catalog, JobSpec("p", "m@1/everything", "m", "1" * 64, "everything", {}), "s3://bucket/")
    with catalog.session() as s:
        assert pending_asset_ids(s, job, "bucket") == sorted(
            [rows[1].id, *[a.id for a in s.scalars(select(Asset).where(Asset.key == "b.jpg"))]]
        )


def test_same_asset_revision_cannot_be_inserted_twice(catalog: Catalog) -> None:
    with pytest.raises(IntegrityError), catalog.session() as s:
        for _ in range(2):
            s.add(Asset(bucket="b", key="k.jpg", etag="e", size=1, media_type="image"))
            s.flush()


def test_asset_cannot_be_imported_twice_into_one_label_studio_project(catalog: Catalog) -> None:
    with catalog.session() as s:
        asset = Asset(bucket="b", key="k.jpg", etag="e", size=1, media_type="image")
        project = AnnotationProject(
            backend_url="http://ls", name="p", external_project_id=1, media_kind="image", label_config="<View/>"
        )
        s.add_all([asset, project])
        s.flush()
        s.add(AnnotationTask(asset_id=asset.id, project_id=project.id, external_task_id=1))
        asset_id, project_id = asset.id, project.id
    with pytest.raises(IntegrityError), catalog.session() as s:
        s.add(AnnotationTask(asset_id=asset_id, project_id=project_id, external_task_id=2))
    with pytest.raises(IntegrityError), catalog.session() as s:
        s.add(Prediction(asset_id=asset_id, model_version="m@1", instances=[]))
        s.add(Prediction(asset_id=asset_id, model_version="m@1", instances=[]))


def test_discovery_from_real_s3_listing_is_incremental(catalog: Catalog, s3, bucket: str) -> None:  # noqa: ANN001
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"in/{i}.png", Body=b"v1")
    assert len(discover(catalog, list_objects(s3, bucket, "in/")).new_asset_ids) == 5
    assert len(discover(catalog, list_objects(s3, bucket, "in/")).new_asset_ids) == 0
    s3.put_object(Bucket=bucket, Key="in/3.png", Body=b"v2-changed")
    report = discover(catalog, list_objects(s3, bucket, "in/"))
    assert len(report.new_asset_ids) == 1 and report.new_revisions == 1


def test_migrations_build_exactly_the_schema_the_models_declare(catalog: Catalog) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from storage.catalog import Base

    with catalog.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        if catalog.dialect == "sqlite":
            diff = _without_inline_fk_actions(connection, diff)
    assert diff == [], f"models and migrations differ: {diff}"


def _without_inline_fk_actions(connection, diff: list) -> list:  # type: ignore[type-arg]  # noqa: ANN001
    """SQLite's reflection misses ON DELETE of a foreign key added inline by ALTER TABLE ADD COLUMN (migration 0005):
    drop that remove/add pair when SQLite itself (PRAGMA foreign_key_list) enforces the model's action."""
    added = {(d[1].table.name, tuple(c.name for c in d[1].columns)): d[1] for d in diff if d[0] == "add_fk"}
    dropped = {(d[1].table.name, tuple(c.name for c in d[1].columns)) for d in diff if d[0] == "remove_fk"}
    same = set()
    for table, columns in added.keys() & dropped:
        rows = connection.exec_driver_sql(f"PRAGMA foreign_key_list({table})").all()
        actions = {(r[3],): r[6] for r in rows}  # (from column,) -> on_delete
        if actions.get(columns) == (added[(table, columns)].ondelete or "NO ACTION"):
            same.add((table, columns))
    return [
        d
        for d in diff
        if d[0] not in ("add_fk", "remove_fk") or (d[1].table.name, tuple(c.name for c in d[1].columns)) not in same
    ]
