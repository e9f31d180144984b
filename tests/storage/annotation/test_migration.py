"""Migration 0006 on SQLite and PostgreSQL: a catalog populated at 0005 (projects, tasks, annotations with their
agreement rows, a dataset version and an active-learning round) keeps every row under the backend-neutral names,
its constraints and cascades still hold, and a downgrade gives the old names back with the same rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from storage.catalog import (
    ActiveLearningItem,
    ActiveLearningRound,
    AgreementRow,
    Annotation,
    AnnotationProject,
    AnnotationTask,
    Catalog,
    DatasetVersion,
    DatasetVersionItem,
)
from storage.catalog.db import alembic_config, current_revision, make_engine, upgrade

NOW = datetime(2026, 1, 1, tzinfo=UTC)
EDITED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _insert(conn: sa.Connection, table: sa.Table, **values: Any) -> int:
    return int(conn.execute(sa.insert(table).values(**values).returning(table.c.id)).scalar_one())


def _populate_0005(engine: Engine) -> dict[str, int]:
    """Rows in every table the migration renames or that points at one, with the 0005 names; returns their ids."""
    meta = sa.MetaData()
    meta.reflect(engine)
    t = meta.tables
    ids: dict[str, int] = {}
    with engine.begin() as c:
        for i in (1, 2):
            ids[f"asset{i}"] = _insert(
                c, t["assets"], bucket="b", key=f"k{i}.png", etag="e", size=1, revision=1, media_type="image",
                status="done", sha256=f"{i}" * 64, width=4, height=3, discovered_at=NOW, updated_at=NOW,
            )  # fmt: skip
        ids["project"] = _insert(
            c, t["label_studio_projects"], ls_url="http://ls:8080", name="demo (images)", ls_project_id=7,
            media_kind="image", classes=["cat"], label_config="<View/>", created_at=NOW, harvested_until=NOW,
        )  # fmt: skip
        for i in (1, 2):
            ids[f"task{i}"] = _insert(
                c, t["label_studio_tasks"], asset_id=ids[f"asset{i}"], project_id=ids["project"], frame_index=-1,
                ls_task_id=100 + i, last_model_version="m@1/everything", imported_at=NOW,
            )  # fmt: skip
        ids["prediction"] = _insert(
            c, t["predictions"], asset_id=ids["asset1"], model_version="m@1/everything", frame_index=-1,
            instances=[], num_instances=0, created_at=NOW,
        )  # fmt: skip
        ids["annotation"] = _insert(
            c, t["annotations"], ls_task_row_id=ids["task1"], ls_annotation_id=555, status="accepted", result=[],
            instances=[], content_hash="h" * 64, ls_updated_at=EDITED, harvested_at=NOW,
        )  # fmt: skip
        for outcome in ("accepted", "deleted"):
            _insert(
                c, t["agreement_rows"], annotation_id=ids["annotation"], prediction_id=ids["prediction"],
                asset_id=ids["asset1"], frame_index=-1, model_version="m@1/everything", prompt_strategy="everything",
                label="cat", iou=1.0, boundary_f=1.0, outcome=outcome, created_at=NOW,
            )  # fmt: skip
        ids["version"] = _insert(
            c, t["dataset_versions"], dataset="demo", number=1, source_project_id=ids["project"],
            manifest_hash="m" * 64, counts={}, model_versions=[], agreement={}, created_at=NOW,
        )  # fmt: skip
        _insert(
            c, t["dataset_version_items"], version_id=ids["version"], asset_id=ids["asset1"], frame_index=-1,
            annotation_id=ids["annotation"], asset_sha256="1" * 64, annotation_hash="h" * 64,
        )  # fmt: skip
        ids["round"] = _insert(
            c, t["al_rounds"], project_id=ids["project"], number=1, strategy="uncertainty", budget=1, seed=0,
            promoted=False, status="completed", metrics={}, created_at=NOW,
        )  # fmt: skip
        _insert(
            c, t["al_round_items"], round_id=ids["round"], asset_id=ids["asset2"], frame_index=-1, ls_task_id=102,
            model_version="m@1/everything", confidence=0.5, task_score=0.5, rank=0, chosen=True, signals={},
        )  # fmt: skip
    return ids


def _downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, revision)


def test_upgrade_keeps_every_row_under_the_backend_neutral_names(catalog_url: str) -> None:
    engine = make_engine(catalog_url)
    upgrade(engine, "0005")
    ids = _populate_0005(engine)
    engine.dispose()

    catalog = Catalog(catalog_url)  # migrates to head
    try:
        assert {"annotation_projects", "annotation_tasks"} <= set(catalog.table_names())
        assert not {"label_studio_projects", "label_studio_tasks"} & set(catalog.table_names())
        with catalog.session() as session:
            project = session.get(AnnotationProject, ids["project"])
            assert project is not None
            assert (project.backend, project.backend_url, project.name, project.external_project_id) == (
                "label-studio",
                "http://ls:8080",
                "demo (images)",
                7,
            )
            assert project.classes == ["cat"] and project.harvested_until is not None
            tasks = session.scalars(select(AnnotationTask).order_by(AnnotationTask.id)).all()
            assert [(t.id, t.asset_id, t.external_task_id, t.project.name) for t in tasks] == [
                (ids["task1"], ids["asset1"], 101, "demo (images)"),
                (ids["task2"], ids["asset2"], 102, "demo (images)"),
            ]
            annotation = session.get(Annotation, ids["annotation"])
            assert annotation is not None
            assert (annotation.task_row_id, annotation.external_annotation_id) == (ids["task1"], 555)
            assert annotation.external_updated_at is not None
            assert annotation.external_updated_at.replace(tzinfo=UTC) == EDITED
            assert session.scalar(select(func.count(AgreementRow.id))) == 2  # nothing cascaded away
            assert session.scalar(select(DatasetVersion.source_project_id)) == ids["project"]
            assert session.scalar(select(DatasetVersionItem.annotation_id)) == ids["annotation"]
            assert session.scalar(select(ActiveLearningRound.project_id)) == ids["project"]
            assert session.scalar(select(ActiveLearningItem.external_task_id)) == 102

        # the renamed constraints still hold, and new rows get fresh ids
        with pytest.raises(IntegrityError), catalog.session() as session:
            session.add(AnnotationTask(asset_id=ids["asset1"], project_id=ids["project"], external_task_id=999))
        with pytest.raises(IntegrityError), catalog.session() as session:
            session.add(
                AnnotationProject(
                    backend_url="http://ls:8080",
                    name="demo (images)",
                    external_project_id=8,
                    media_kind="image",
                    label_config="<View/>",
                )  # fmt: skip
            )
        with catalog.session() as session:
            other = AnnotationProject(
                backend_url="http://ls:8080", name="demo (videos)", external_project_id=8, media_kind="video",
                label_config="<View/>",
            )  # fmt: skip
            session.add(other)
            session.flush()
            assert other.id > ids["project"] and other.backend == "label-studio"

        # ... and the foreign keys still cascade: deleting the project removes its tasks, annotations, agreement
        with catalog.session() as session:
            session.execute(sa.delete(DatasetVersion))  # (its items point at annotations without a cascade)
            session.execute(sa.delete(AnnotationProject).where(AnnotationProject.id == ids["project"]))
        with catalog.session() as session:
            assert session.scalar(select(func.count(AnnotationTask.id))) == 0
            assert session.scalar(select(func.count(Annotation.id))) == 0
            assert session.scalar(select(func.count(AgreementRow.id))) == 0
    finally:
        catalog.dispose()


def test_downgrade_gives_the_old_names_back_with_the_same_rows(catalog_url: str) -> None:
    engine = make_engine(catalog_url)
    upgrade(engine, "0005")
    ids = _populate_0005(engine)
    upgrade(engine)
    _downgrade(engine, "0005")
    try:
        assert current_revision(engine) == "0005"
        names = set(sa.inspect(engine).get_table_names())
        assert {"label_studio_projects", "label_studio_tasks"} <= names and "annotation_projects" not in names
        with engine.connect() as c:
            assert c.exec_driver_sql("SELECT ls_url, ls_project_id FROM label_studio_projects").all() == [
                ("http://ls:8080", 7)
            ]
            assert c.exec_driver_sql("SELECT ls_task_id FROM label_studio_tasks ORDER BY id").scalars().all() == [
                101,
                102,
            ]
            assert c.exec_driver_sql("SELECT ls_task_row_id, ls_annotation_id FROM annotations").all() == [
                (ids["task1"], 555)
            ]
            assert c.exec_driver_sql("SELECT count(*) FROM agreement_rows").scalar() == 2
            assert c.exec_driver_sql("SELECT ls_task_id FROM al_round_items").scalar() == 102
        uniques = {u["name"] for u in sa.inspect(engine).get_unique_constraints("label_studio_tasks")}
        assert uniques == {"uq_ls_tasks_asset", "uq_ls_tasks_task"}
        upgrade(engine)  # and up again
        with engine.connect() as c:
            assert c.exec_driver_sql("SELECT backend, external_project_id FROM annotation_projects").all() == [
                ("label-studio", 7)
            ]
    finally:
        engine.dispose()


def test_a_failed_upgrade_leaves_the_catalog_at_0005_with_its_old_names(catalog_url: str) -> None:
    """An index already named like the one the migration creates makes it fail after the tables and columns were
    renamed: everything is rolled back (on SQLite too, where Python would commit each ALTER on its own)."""
    engine = make_engine(catalog_url)
    upgrade(engine, "0005")
    ids = _populate_0005(engine)
    with engine.begin() as c:
        c.exec_driver_sql("CREATE INDEX ix_annotations_task_row_id ON assets (key)")
    try:
        with pytest.raises(sa.exc.DBAPIError):
            upgrade(engine)
        assert current_revision(engine) == "0005"
        names = set(sa.inspect(engine).get_table_names())
        assert {"label_studio_projects", "label_studio_tasks"} <= names and "annotation_tasks" not in names
        with engine.connect() as c:
            assert c.exec_driver_sql("SELECT ls_task_row_id FROM annotations").scalar() == ids["task1"]
    finally:
        engine.dispose()
