"""backend-neutral annotation tables: label_studio_projects/tasks become annotation_projects/tasks, ls_* columns
become backend_url / external_*_id, and projects name their backend

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 06:00:00

Every row is kept: tables and columns are renamed in place (``ALTER TABLE ... RENAME``), never copied. SQLite cannot
rename a constraint, and copying a parent table (a batch "recreate") would cascade its deletion into the tasks,
annotations and agreement rows below it (foreign keys are on and cannot be turned off inside the migration's
transaction); so on SQLite the unique constraints' names are changed in the stored table definition itself, the
documented way for an edit that does not change what is stored on disk (the constraints' indexes are named after the
table, not the constraint). On PostgreSQL the constraints, the primary keys' indexes, the foreign keys and the id
sequences that were named after the old tables are renamed too.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = [("label_studio_projects", "annotation_projects"), ("label_studio_tasks", "annotation_tasks")]
COLUMNS = [  # (table after the table renames, old column, new column)
    ("annotation_projects", "ls_url", "backend_url"),
    ("annotation_projects", "ls_project_id", "external_project_id"),
    ("annotation_tasks", "ls_task_id", "external_task_id"),
    ("annotations", "ls_task_row_id", "task_row_id"),
    ("annotations", "ls_annotation_id", "external_annotation_id"),
    ("annotations", "ls_updated_at", "external_updated_at"),
    ("al_round_items", "ls_task_id", "external_task_id"),
]
CONSTRAINTS = [  # (table after the table renames, old name, new name)
    ("annotation_projects", "uq_ls_projects_name", "uq_annotation_projects_name"),
    ("annotation_tasks", "uq_ls_tasks_asset", "uq_annotation_tasks_asset"),
    ("annotation_tasks", "uq_ls_tasks_task", "uq_annotation_tasks_task"),
]
INDEXES = [("annotations", "ix_annotations_ls_task_row_id", "ix_annotations_task_row_id", "task_row_id")]
# what PostgreSQL named after the old tables and columns (primary keys, foreign keys, sequences)
PG_NAME_PARTS = [*TABLES, ("annotations_ls_task_row_id", "annotations_task_row_id")]
BACKEND_DEFAULT = "label-studio"


def upgrade() -> None:
    bind = op.get_bind()
    _atomic_on_sqlite(bind, (3, 26, 0))  # renames carried into other tables' foreign keys
    for old, new in TABLES:
        op.rename_table(old, new)
    for table, old, new in COLUMNS:
        op.execute(f"ALTER TABLE {table} RENAME COLUMN {old} TO {new}")
    _rename_indexes(bind, INDEXES)
    _rename_constraints(bind, CONSTRAINTS)
    if bind.dialect.name == "postgresql":
        _pg_rename_generated(bind, PG_NAME_PARTS)
    # plain ADD COLUMN (see 0005: no batch copy of a table other tables reference)
    op.execute(f"ALTER TABLE annotation_projects ADD COLUMN backend VARCHAR(32) DEFAULT '{BACKEND_DEFAULT}' NOT NULL")


def downgrade() -> None:
    bind = op.get_bind()
    _atomic_on_sqlite(bind, (3, 35, 0))  # DROP COLUMN
    if bind.dialect.name == "sqlite":
        op.execute("ALTER TABLE annotation_projects DROP COLUMN backend")  # SQLite >= 3.35, in place
    else:
        op.drop_column("annotation_projects", "backend")
    if bind.dialect.name == "postgresql":
        _pg_rename_generated(bind, [(new, old) for old, new in PG_NAME_PARTS])
    _rename_constraints(bind, [(t, new, old) for t, old, new in CONSTRAINTS])
    for table, old, new in COLUMNS:
        op.execute(f"ALTER TABLE {table} RENAME COLUMN {new} TO {old}")
    _rename_indexes(bind, [(t, new, old, _old_column(t, column)) for t, old, new, column in INDEXES])
    for old, new in TABLES:
        op.rename_table(new, old)


def _atomic_on_sqlite(bind: Any, needs: tuple[int, int, int]) -> None:
    """On SQLite: refuse a library too old for these statements, and open the transaction now (Python's sqlite3
    opens one only before INSERT/UPDATE/DELETE, so the renames would otherwise commit one by one and a failure half
    way would leave a catalog that neither revision describes)."""
    if bind.dialect.name != "sqlite":
        return
    import sqlite3

    if sqlite3.sqlite_version_info < needs:
        raise RuntimeError(
            f"migration 0006 needs SQLite >= {'.'.join(map(str, needs))}, this Python has {sqlite3.sqlite_version}"
        )
    if not bind.connection.dbapi_connection.in_transaction:
        bind.exec_driver_sql("BEGIN")


def _old_column(table: str, new: str) -> str:
    return next(o for t, o, n in COLUMNS if t == table and n == new)


def _rename_indexes(bind: Any, indexes: list[tuple[str, str, str, str]]) -> None:
    for table, old, new, column in indexes:
        if bind.dialect.name == "sqlite":  # no ALTER INDEX: rebuild it (it only indexes stored rows)
            op.execute(f"DROP INDEX {old}")
            op.execute(f"CREATE INDEX {new} ON {table} ({column})")
        else:
            op.execute(f"ALTER INDEX {old} RENAME TO {new}")


def _rename_constraints(bind: Any, constraints: list[tuple[str, str, str]]) -> None:
    if bind.dialect.name != "sqlite":
        for table, old, new in constraints:
            op.execute(f"ALTER TABLE {table} RENAME CONSTRAINT {old} TO {new}")
        return
    # SQLite keeps a constraint's name only in the table's CREATE TABLE text: edit that text (schema_version + 1 so
    # every connection re-reads the schema), then check the tables.
    version = int(bind.exec_driver_sql("PRAGMA schema_version").scalar())
    bind.exec_driver_sql("PRAGMA writable_schema=ON")
    try:
        for table, old, new in constraints:
            edited = bind.exec_driver_sql(
                "UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE type = 'table' AND name = ? AND instr(sql, ?)",
                (f"CONSTRAINT {old} UNIQUE", f"CONSTRAINT {new} UNIQUE", table, f"CONSTRAINT {old} UNIQUE"),
            ).rowcount
            if edited != 1:
                raise RuntimeError(f"table {table}: constraint {old} not found in its definition")
        bind.exec_driver_sql(f"PRAGMA schema_version={version + 1}")
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema=OFF")
    for table in sorted({table for table, _, _ in constraints}):
        problems = [row[0] for row in bind.exec_driver_sql(f"PRAGMA integrity_check({table})").all()]
        if problems != ["ok"]:
            raise RuntimeError(f"SQLite integrity check of {table} failed after renaming its constraints: {problems}")


def _pg_rename_generated(bind: Any, parts: list[tuple[str, str]]) -> None:
    """Rename the constraints (and so their indexes) and sequences whose names PostgreSQL derived from an old name."""
    names = bind.execute(
        sa.text(
            "SELECT t.relname, c.conname FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid "
            "JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = current_schema()"
        )
    ).all()
    for table, name in names:
        new = _replaced(name, parts)
        if new != name:
            op.execute(f'ALTER TABLE {table} RENAME CONSTRAINT "{name}" TO "{new}"')
    sequences = bind.execute(
        sa.text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'S' AND n.nspname = current_schema()"
        )
    ).scalars()
    for name in list(sequences):
        new = _replaced(name, parts)
        if new != name:
            op.execute(f'ALTER SEQUENCE "{name}" RENAME TO "{new}"')


def _replaced(name: str, parts: list[tuple[str, str]]) -> str:
    for old, new in parts:
        if name.startswith(f"{old}_"):
            return new + name[len(old) :]
    return name
